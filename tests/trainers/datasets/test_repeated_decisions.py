"""A decision two recorded runs both hold is taught once (sweep I).

A graph wrapped with ``record_experience`` and used as a node of another recorded graph is a subgraph: its steps are the
outer run's too, and its own recorder stores its run as well (README). Both trajectories then hold the node's decisions,
the same state and the same model call; a build taught each of them twice (5 of 18 IL rows were copies in the sweep's
supervisor app) and gave their states twice the rollouts. Built here from real runs: a real LangGraph supervisor whose
specialist is a recorded ReAct graph, the real recorder and store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph

from ee_middleware import record_experience
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.source import load_source

CUSTOMERS = {"C1": "Ada Okafor, gold tier", "C2": "Lin Wu, silver tier"}


@tool
def lookup_customer(customer_id: str) -> str:
    """Look a customer up by id."""
    return CUSTOMERS.get(customer_id, "no such customer")


def specialist(customer_id: str) -> Any:
    """The CRM specialist: a ReAct agent (``create_agent``) that looks the customer up, then answers."""
    script = [
        AIMessage(content="", tool_calls=[tool_call("lookup_customer", customer_id=customer_id)]),
        AIMessage(content=f"{customer_id}: {CUSTOMERS[customer_id]}"),
    ]
    return create_agent(ScriptedChatModel(script=script), [lookup_customer])


def record_supervisor_runs(store: Path) -> None:
    """Two runs of a supervisor whose only node is the recorded specialist (app ``crm-sub``), itself recorded
    (app ``supervisor``), then every trajectory approved."""
    for customer in CUSTOMERS:
        inner = record_experience(specialist(customer), app="crm-sub", store=str(store), offload="thread")
        outer = StateGraph(MessagesState)
        outer.add_node("crm", inner)
        outer.add_edge(START, "crm")
        outer.add_edge("crm", END)
        supervisor = record_experience(outer.compile(), app="supervisor", store=str(store), offload="thread")
        supervisor.invoke({"messages": [("user", f"Who is customer {customer}?")]})
        supervisor.flush()
        inner.flush()
    experience = LocalExperienceStore(store)
    experience.approve(experience.trajectories()["id"].to_list(), by="test")
    experience.close()


def test_a_recorded_subgraphs_decisions_are_taught_once_and_from_the_outer_run(tmp_path: Path) -> None:
    store = tmp_path / "experience"
    record_supervisor_runs(store)
    experience = LocalExperienceStore(store)
    trajectories = {t.id: t for t in experience.iter_trajectories()}
    by_app = {app: [t for t in trajectories.values() if t.app == app] for app in ("supervisor", "crm-sub")}
    assert len(by_app["supervisor"]) == 2 and len(by_app["crm-sub"]) == 2
    for inner in by_app["crm-sub"]:  # what the README says: the node's steps are the outer run's too
        outer = next(t for t in by_app["supervisor"] if t.trace_id == inner.trace_id)
        assert [s.action.model_dump() for s in inner.steps] == [s.action.model_dump() for s in outer.steps]

    summary = build_datasets(DatasetConfig.load(store=store, out=tmp_path / "built", kinds=["il"]))
    rows = pl.read_parquet(tmp_path / "built" / "il.parquet")
    pairs = rows.select("prompt", "completion") if "completion" in rows.columns else rows.drop("trajectory_id")
    assert pairs.height == pairs.unique().height, "no decision is taught twice"
    assert set(rows["trajectory_id"]) == {t.id for t in by_app["supervisor"]}, "taught from the run that started first"
    assert summary["repeated_decisions_left_out"] == {"steps": 4, "trajectories": 2, "rollouts": 0}

    alone = build_datasets(DatasetConfig.load(store=store, out=tmp_path / "sub", kinds=["il"], app="crm-sub"))
    assert set(pl.read_parquet(tmp_path / "sub" / "il.parquet")["trajectory_id"]) == {t.id for t in by_app["crm-sub"]}
    assert "repeated_decisions_left_out" not in alone, "built alone, the sub-agent's app keeps every decision"


def test_the_rollouts_of_a_repeated_decision_are_left_out_with_it(tmp_path: Path) -> None:
    store = tmp_path / "experience"
    record_supervisor_runs(store)
    experience = LocalExperienceStore(store)
    trajectories = list(experience.iter_trajectories())
    rollouts = []
    for t in trajectories:  # a replay's alternatives at every lookup: each state branched under both trajectories
        for step in t.steps:
            if step.action.tool_call is None:
                continue
            call = ToolCall(id=f"alt-{step.index}-0", name="lookup_customer", arguments={"customer_id": "C9"})
            rollouts.append(
                Rollout(
                    id=f"ro-{t.id}-{step.index}",
                    replay_id="replay-test",
                    trajectory_id=t.id,
                    step_index=step.index,
                    branch_index=0,
                    action=Action(kind="tool_call", tool_call=call),
                    proposer=ProposerInfo(policy="test"),
                    observation=Observation(content="no such customer"),
                    sandbox="test",
                    duration_ms=1.0,
                )
            )
    for t in trajectories:
        mine = [r for r in rollouts if r.trajectory_id == t.id]
        record = ReplayRecord(replay_id="replay-test", trajectory_id=t.id, status="done", policy="test", sandbox="test", k=1, seed=0)
        experience.write_replay(record.model_copy(update={"branches": len(mine)}), mine)
    experience.close()

    source = load_source(LocalExperienceStore(store))
    kept = set(source.rollouts["trajectory_id"])
    assert kept == {t.id for t in trajectories if t.app == "supervisor"} and source.repeated_decisions == 4
    summary = build_datasets(DatasetConfig.load(store=store, out=tmp_path / "built", kinds=["iwm"]))
    assert summary["repeated_decisions_left_out"] == {"steps": 4, "trajectories": 2, "rollouts": 2}
    iwm = pl.read_parquet(tmp_path / "built" / "iwm.parquet")
    assert set(iwm["trajectory_id"]) <= {t.id for t in trajectories if t.app == "supervisor"}
    assert json.loads((tmp_path / "built" / "datasets.json").read_text())["repeated_decisions_left_out"]["rollouts"] == 2


def test_the_experience_models_rows_and_buffer_hold_a_repeated_decision_once(tmp_path: Path) -> None:
    """The same rule for the experience model: its rows, its replay buffer and ee experience eval read
    expert_transitions; a twin left in the buffer would be retrieved as the example of its own decision, its
    observation the very target (and a held-out split could put the twins on both sides)."""
    from ee_middleware.replay.repeated_decisions import repeated_steps
    from ee_middleware.replay.retrieval import buffer_transitions, expert_transitions

    store = tmp_path / "experience"
    record_supervisor_runs(store)
    experience = LocalExperienceStore(store)
    approved = list(experience.iter_trajectories(status="approved"))
    inner = {t.id for t in approved if t.app == "crm-sub"}
    assert {trajectory_id for trajectory_id, _ in repeated_steps(approved)} == inner
    taught = expert_transitions(approved)
    assert all(not taught[i] for i in inner) and all(taught[t.id] for t in approved if t.id not in inner)
    keys = [(json.dumps(tr.state), tr.tool, json.dumps(tr.arguments)) for tr in buffer_transitions(experience, approved)]
    assert len(keys) == len(set(keys)), "each decision once in the replay buffer"
    alone = [t for t in approved if t.id in inner]  # the sub-agent's app read alone keeps its decisions
    assert all(expert_transitions(alone)[i] for i in inner)
