"""IWM from a run paused for a human review, or cancelled: no row shows a call awaiting review (or cut off) with a result
nobody saw, no row is built on a state after such a call, and a call that ran in the paused turn is taught once, from the
resumed run that holds the turn as the reviewer decided it. Real ``create_agent`` graphs paused on a real checkpointer
(``HumanInTheLoopMiddleware``, ``interrupt()`` in a tool) and resumed, or cancelled with real asyncio cancellation,
recorded into a real local store, replayed by ``ee replay run``'s own job, datasets built by ``ee datasets build``'s
own code (Parquet), checked against the one-pass builder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt

from ee_middleware import record_experience
from ee_middleware.records import ReplayRecord
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.runner import rollout_id
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.iwm import IWMOptions, build_iwm
from ee_middleware.trainers.datasets.source import load_source
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.replay.test_paused_runs import (
    POLICY,
    SANDBOX,
    _agent_tools,
    _approve_all,
    _trajectories,
    record_cancelled_parallel_calls,
    record_rejected_review,
)

pytestmark = pytest.mark.usefixtures("no_child_left")


def _build(store: Path, out: Path, **settings: Any) -> tuple[pl.DataFrame, dict[str, Any]]:
    """``iwm.parquet`` and its summary, as ``ee datasets build`` writes them (checked equal to the one-pass builder's)."""
    summary = build_datasets(DatasetConfig.load(store=store, out=out, kinds="il,iwm", **settings))
    built = pl.read_parquet(out / "iwm.parquet")
    opened = LocalExperienceStore(store)
    try:
        direct = build_iwm(load_source(opened), IWMOptions(max_error_share=settings.get("iwm_max_error_share", 0.5)))
    finally:
        opened.close()
    assert built.select("id", "prompt", "completion").rows() == direct.select("id", "prompt", "completion").rows()
    return built, summary["datasets"]["iwm"]


def _tool_results_shown(prompt: str) -> list[tuple[str, str]]:
    """(call name, the result the prompt shows for it) of each call an assistant message of ``prompt`` makes."""
    messages = json.loads(prompt)
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()}
    return [(names.get(m["tool_call_id"], "?"), m["content"]) for m in messages if m["role"] == "tool"]


def _store_older_replay(store: Path, trajectory_id: str) -> None:
    """What ``ee replay run`` stored before it stopped at a call awaiting review: it ran the rejected note to reach the
    turn's second call and branched there too (the note probe there answered ``noted 2``; stored as an error, so that
    the error cap would count it). Stored as another replay configuration of the same trajectory, with its record."""
    opened = LocalExperienceStore(store)
    try:
        [first] = opened.iter_rollouts([trajectory_id])
        older = "older-replay"
        rollouts = [
            first.model_copy(update={"id": rollout_id(older, trajectory_id, step, 0), "replay_id": older, "step_index": step})
            for step in (0, 1)
        ]
        observation = first.observation.model_copy(update={"content": "noted 2", "is_error": True})
        rollouts[1] = rollouts[1].model_copy(update={"observation": observation, "is_error": True})
        record = ReplayRecord(
            replay_id=older,
            trajectory_id=trajectory_id,
            status="done",
            policy="note-probe",
            sandbox="notes",
            k=1,
            seed=0,
            states=2,
            branches=2,
        )
        opened.write_replay(record, rollouts)
    finally:
        opened.close()


def test_iwm_never_shows_a_call_awaiting_review_nor_uses_a_state_after_it(tmp_path: Path) -> None:
    """Was: the rollout at the paused turn's second call (replayed after running the note the reviewer rejected) became an
    IWM row whose prompt showed the rejected call with an empty result (``''``) the model never saw, and whose target,
    ``noted 2``, came from a world production never had."""
    store = tmp_path / "store"
    record_rejected_review(store)
    paused, _ = _trajectories(store)
    run_replay(ReplayConfig.load(store=store, k=1, sandbox=SANDBOX, policy=POLICY))
    _store_older_replay(store, paused.id)

    iwm, info = _build(store, tmp_path / "out", iwm_max_error_share=0.0)

    mine = iwm.filter(pl.col("trajectory_id") == paused.id)
    assert mine.select("step_index", "completion").rows() == [(0, '[{"role":"assistant","content":"noted 1"}]')]  # one: the repeat
    assert not [prompt for prompt in iwm["prompt"] if "DELETE EVERYTHING" in prompt]
    assert not [prompt for prompt in iwm["prompt"] if ("note", "") in _tool_results_shown(prompt)]
    assert info["rollouts_after_call_awaiting_review_left_out"] == 1
    assert info["repeats_left_out"] == 1  # the older replay's rollout at the paused state repeats the new one's
    assert info["errors_left_out"] == 0  # left out before the error cap counts


def test_iwm_never_uses_a_state_after_a_call_cancellation_cut_off(tmp_path: Path) -> None:
    """Was: the note that ran beside a search the cancellation cut off gave an expert row whose prompt showed the search
    with an empty result (``''``), and replay's rollout after the search gave another."""
    store = tmp_path / "store"
    cancelled = record_cancelled_parallel_calls(store)
    run_replay(ReplayConfig.load(store=store, k=1, sandbox=SANDBOX, policy=POLICY))

    iwm, info = _build(store, tmp_path / "out")

    assert iwm.select("trajectory_id", "step_index", "branch_index").rows() == [(cancelled.id, 0, 0)]
    assert not [prompt for prompt in iwm["prompt"] if ("slow", "") in _tool_results_shown(prompt)]
    # the note's expert row: its state shows the search cut off before it; no later run holds it, so it is no repeat
    assert info["expert_steps_after_unanswered_call_left_out"] == 1 and "paused_turn_repeats_left_out" not in info


@tool("confirm_pay")
def confirm_pay(amount: int) -> str:
    """Pay once a human confirms."""
    return f"paid {amount}" if interrupt({"question": f"pay {amount}?"}) == "yes" else "declined"


def test_a_call_that_ran_beside_a_call_awaiting_review_is_taught_once_from_the_resumed_run(tmp_path: Path) -> None:
    """A tool that calls ``interrupt()`` beside a parallel lookup, resumed with ``Command(resume="yes")``: the lookup ran
    once in production, and both trajectories hold it with its result. Was: IWM taught the same (prompt, completion)
    twice, uncounted. The resumed run's copy is kept: it holds the turn as the reviewer decided it (IL and SR teach the
    turn from there too), while the paused run's turn awaits a decision."""
    store = tmp_path / "store"
    script = [
        AIMessage(content="", tool_calls=[tool_call("lookup", city="tokyo"), tool_call("confirm_pay", amount=42)]),
        AIMessage("Paid."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [*_agent_tools(), confirm_pay], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="pay", store=store)
    config = {"configurable": {"thread_id": "pay-1"}}
    agent.invoke({"messages": [("user", "Pay 42 and look Tokyo up")]}, config)
    agent.invoke(Command(resume="yes"), config)
    agent.flush()
    agent.recorder.close()
    _approve_all(store)
    paused, resumed = _trajectories(store)
    assert paused.status == "interrupted" and [s.observation is not None for s in paused.steps] == [True, False]

    iwm, info = _build(store, tmp_path / "out")

    assert iwm.group_by("prompt", "completion").len().filter(pl.col("len") > 1).is_empty()
    assert set(iwm["trajectory_id"]) == {resumed.id}
    lookups = iwm.filter(pl.col("completion").str.contains("tokyo: sunny"))
    assert lookups["trajectory_id"].to_list() == [resumed.id]
    assert info["paused_turn_repeats_left_out"] == 1
