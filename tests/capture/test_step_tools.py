"""The tools offered at each decision (``Step.tools``, schema 1.4), where a run's model calls are not all offered the
same tools: a middleware choosing them per call (a ``wrap_model_call`` setting ``request.tools``,
``LLMToolSelectorMiddleware``) or a tool added at a later turn (BFCL ``multi_turn_miss_func``). Before, a trajectory
kept only the union of the run's tools: every IL row offered all of them (tools the model never saw at that step) and
replay proposed calls to tools the agent could not call there. Real ``create_agent`` graphs recorded with
``record_experience`` (on the capture thread and in the capture process), replayed with the mutation policy and built
into datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import LLMToolSelectorMiddleware, wrap_model_call
from langchain_core.messages import AIMessage

from ee_middleware import record_experience
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.capture.test_middleware_shapes import TASK, planned_model, shop_tools
from tests.conftest import record_once

WANTED = {0: "check_stock", 1: "check_stock", 2: "order_item"}
"""The tool offered at the k-th decision (by the tool results the model has seen); none at the last."""


@wrap_model_call
def one_tool_per_turn(request: Any, handler: Any) -> Any:
    done = sum(1 for m in request.messages if m.type == "tool")
    return handler(request.override(tools=[t for t in request.tools if t.name == WANTED.get(done)]))


def _names(schemas: list[dict[str, Any]] | str) -> list[str]:
    return [t["function"]["name"] for t in (json.loads(schemas) if isinstance(schemas, str) else schemas)]


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_tools_chosen_per_call_are_each_steps_and_il_rows_offer_only_those(tmp_path: Path, offload: str) -> None:
    model = planned_model()
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[one_tool_per_turn])
    store = tmp_path / "s"
    trajectory = record_once(record_experience(graph, app="shop", store=store, offload=offload), store, TASK)

    offered = [tools for _, tools in model.seen]
    assert offered == [["check_stock"], ["check_stock"], ["order_item"], []]
    assert [s.tools for s in trajectory.steps] == offered  # each step: what its model call was offered
    assert _names(trajectory.tools) == ["check_stock", "order_item"]  # the run's, as before
    assert [_names(trajectory.step_tools(s)) for s in trajectory.steps] == offered

    opened = LocalExperienceStore(store)
    opened.approve([trajectory.id], by="test")
    opened.close()
    build_datasets(DatasetConfig.load(store=store, out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet").sort("step_index")
    assert [_names(t) for t in rows["tools"]] == offered  # before: both tools on every row, none at the answer
    assert json.loads(rows["tools"][0]) == trajectory.tools[:1]  # the schema itself, as recorded


def test_tools_that_never_change_are_no_step_tools(tmp_path: Path) -> None:
    """A run whose model is offered the same tools at every call stores no ``tools`` on its steps (``None``: all of the
    trajectory's), so it serializes as it did before schema 1.4."""
    store = tmp_path / "s"
    trajectory = record_once(
        record_experience(create_agent(planned_model(), shop_tools({"pear": 0})), app="shop", store=store), store, TASK
    )
    assert [s.tools for s in trajectory.steps] == [None] * 4
    assert all("tools" not in s.model_dump(mode="json") for s in trajectory.steps)


def test_llm_tool_selector_choices_are_recorded_per_step(tmp_path: Path) -> None:
    """LLMToolSelectorMiddleware offers at each call the tools its selection model chose (its own call is no step)."""
    chosen = [["check_stock"], ["check_stock"], ["order_item"], ["check_stock"]]
    picks: list[int] = []

    def select(messages: Any, tools: Any) -> AIMessage:
        picks.append(1)
        return AIMessage(content="", tool_calls=[tool_call("ToolSelectionResponse", tools=chosen[len(picks) - 1])])

    model = planned_model()
    selector = LLMToolSelectorMiddleware(model=ScriptedChatModel(policy=select, model_name="selector"), max_tools=1)
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[selector])
    store = tmp_path / "s"
    trajectory = record_once(record_experience(graph, app="shop", store=store), store, TASK)
    assert [tools for _, tools in model.seen] == chosen
    assert [s.tools for s in trajectory.steps] == chosen
    assert _names(trajectory.tools) == ["check_stock", "order_item"]


def shop_sandbox() -> Any:
    from tests.capture.test_middleware_shapes import shop_sandbox as sandbox

    return sandbox()


def test_replay_proposes_only_the_tools_offered_at_each_step(tmp_path: Path) -> None:
    """The mutation policy proposes calls of other tools too (``same_tool_share=0``): at a step offered one tool, only
    that one. Before, the check_stock steps got order_item proposals (and the order_item step check_stock ones). The
    IL, IWM and SR rows built from them offer their step's tool only (before: both)."""
    model = planned_model()
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[one_tool_per_turn])
    store = tmp_path / "s"
    environment = {"stock": {"pear": 0, "apple": 3}}
    trajectory = record_once(record_experience(graph, app="shop", store=store, environment=environment), store, TASK)
    opened = LocalExperienceStore(store)
    opened.approve([trajectory.id], by="test")
    opened.close()
    config = ReplayConfig.load(store=store, k=6, sandbox=f"{__name__}:shop_sandbox", policy_settings={"same_tool_share": 0.0})
    summary = run_replay(config)
    assert summary.done == 1
    opened = LocalExperienceStore(store)
    rollouts = opened.rollouts([trajectory.id])
    opened.close()
    assert rollouts.height > 0
    by_step = {s.index: s.tools for s in trajectory.steps}
    for step_index, name in rollouts.select("step_index", "tool_name").iter_rows():
        assert name in by_step[step_index], (step_index, name)

    # every kind of row offers its step's tools: IL's expert turn, IWM's rollouts and expert steps, SR's turn
    build_datasets(DatasetConfig.load(store=store, out=tmp_path / "data", iwm_max_error_share=1.0))
    for kind in ("il", "iwm", "sr"):
        rows = pl.read_parquet(tmp_path / "data" / f"{kind}.parquet")
        assert rows.height > 0, kind
        for step_index, tools in rows.select("step_index", "tools").iter_rows():
            assert _names(tools) == by_step[step_index], (kind, step_index)


def test_a_reviewed_call_whose_tool_this_run_was_never_offered_is_not_taught_with_other_tools(tmp_path: Path) -> None:
    """Tools chosen per call and a human review: the resumed run's own model calls were offered other tools (or none)
    than the paused decision, so its reviewed order_item step was taught with a tool list that lacked order_item (found
    by review: IL offered [] and targeted order_item). Which tools the paused decision had is not known to the resumed
    run, so such a reviewed turn is not taught from it; every IL row offers the tools its target calls."""
    from langchain.agents.middleware import HumanInTheLoopMiddleware
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    model = planned_model()
    middleware = [one_tool_per_turn, HumanInTheLoopMiddleware(interrupt_on={"order_item": True})]
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=middleware, checkpointer=InMemorySaver())
    agent = record_experience(graph, app="shop", store=tmp_path / "s")
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke(TASK, config)
    agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "s")
    paused, resumed = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert "order_item" not in [s.action.tool_call.name for s in resumed.steps if s.action.tool_call is not None]
    store.approve([paused.id, resumed.id], by="me")
    store.close()
    build_datasets(DatasetConfig.load(store=tmp_path / "s", out=tmp_path / "data", kinds="il"))
    for row in pl.read_parquet(tmp_path / "data" / "il.parquet").iter_rows(named=True):
        target = json.loads(row["completion"])[0]
        called = {c["function"]["name"] for c in target.get("tool_calls") or ()}
        assert called <= set(_names(row["tools"])), (called, row["tools"])
