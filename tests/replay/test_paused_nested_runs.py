"""The run that resumed a paused run is the next run of its thread not nested in it. A sub-agent recorded with its own
``record_experience`` (or a plain graph) invoked in a tool of the outer run is stored on the outer run's thread, of its
trace, and started and ended inside the paused run: it is not the paused run's continuation. Was: the nested run was
taken as the resumed run, so the paused turn's call that ran was taught twice (IWM, the replay buffer), uncounted.
Real ``create_agent`` graphs recorded into a real local store, built by ``ee datasets build``'s own code."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from ee_middleware import record_experience
from ee_middleware.replay.paused_turns import RUNS_SCHEMA, paused_turn_steps, steps_schema
from ee_middleware.replay.retrieval import expert_transitions, paused_steps_left_out
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.replay.test_paused_runs import _approve_all, _trajectories
from tests.trainers.datasets.test_paused_iwm import _build, confirm_pay

pytestmark = pytest.mark.usefixtures("no_child_left")

ANSWER = "x is 7"


@tool
def find(key: str) -> str:
    """Find a key."""
    return f"found: {key}"


def _record(store: Path, recorded_sub_agent: bool, parallel: bool = True) -> None:
    """An outer agent whose ``research`` tool runs a sub-agent, beside ``confirm_pay`` (``interrupt()``) in one turn
    (else in the turn before it), on thread ``T1``; then resumed with ``Command(resume="yes")``."""
    inner_script = [AIMessage(content="", tool_calls=[tool_call("find", key="x")]), AIMessage(ANSWER)]
    inner = create_agent(ScriptedChatModel(script=inner_script), [find])
    if recorded_sub_agent:
        inner = record_experience(inner, app="inner", store=store)

    @tool("research")
    def research_tool(q: str) -> str:
        """Ask the research sub-agent."""
        return inner.invoke({"messages": [("user", q)]})["messages"][-1].content

    research, pay = tool_call("research", q="x"), tool_call("confirm_pay", amount=42)
    turns = [[research, pay]] if parallel else [[research], [pay]]
    script = [*(AIMessage(content="", tool_calls=calls) for calls in turns), AIMessage("Paid.")]
    graph = create_agent(ScriptedChatModel(script=script), [research_tool, confirm_pay], checkpointer=InMemorySaver())
    outer = record_experience(graph, app="outer", store=store)
    config = {"configurable": {"thread_id": "T1"}}
    outer.invoke({"messages": [("user", "Research x and pay 42")]}, config)
    outer.invoke(Command(resume="yes"), config)
    for agent in (inner, outer) if recorded_sub_agent else (outer,):
        agent.flush()
        agent.recorder.close()


@pytest.mark.parametrize("recorded_sub_agent", [True, False], ids=["recorded-sub-agent", "plain-graph-in-a-tool"])
def test_a_run_nested_in_a_paused_run_is_not_the_run_that_resumed_it(tmp_path: Path, recorded_sub_agent: bool) -> None:
    store = tmp_path / "store"
    _record(store, recorded_sub_agent)
    _approve_all(store)
    trajectories = _trajectories(store)
    [paused] = [t for t in trajectories if t.status == "interrupted"]
    [resumed] = [
        t for t in trajectories if any(s.action.tool_call and s.action.tool_call.name == "confirm_pay" and s.observation for s in t.steps)
    ]
    [nested] = [t for t in trajectories if t.id not in (paused.id, resumed.id)]
    # stored on the outer thread, started inside the paused run, before the resumed run (the rule before took it)
    assert nested.thread_id == "T1" and nested.trace_id == paused.trace_id != resumed.trace_id
    assert paused.started_at < nested.started_at < resumed.started_at
    research_step = next(s.index for s in paused.steps if s.action.tool_call and s.action.tool_call.name == "research")
    assert any(s.action.tool_call and s.action.tool_call.name == "research" and s.observation for s in resumed.steps)

    left = paused_steps_left_out(trajectories)
    assert (paused.id, research_step) in left.filter(pl.col("held_later")).select("trajectory_id", "step_index").rows()
    assert research_step not in [t.step_index for t in expert_transitions(trajectories).get(paused.id, [])]

    iwm, info = _build(store, tmp_path / "out")
    # the research call ran once in production: one row, from the resumed run (the sub-agent's own steps aside)
    research_rows = iwm.filter(pl.col("completion").str.contains(ANSWER, literal=True)).select("trajectory_id", "step_index").rows()
    assert research_rows == [
        (resumed.id, next(s.index for s in resumed.steps if s.action.tool_call and s.action.tool_call.name == "research"))
    ]
    assert info["paused_turn_repeats_left_out"] == 1


@pytest.mark.parametrize("recorded_sub_agent", [True, False], ids=["recorded-sub-agent", "plain-graph-in-a-tool"])
def test_the_paused_call_is_held_by_the_resumed_run_after_a_sub_agent_ran_in_an_earlier_turn(
    tmp_path: Path, recorded_sub_agent: bool
) -> None:
    """The research turn first, then the turn pausing for a review (the reviewer's repro): the paused call is the
    resumed run's, not the sub-agent's."""
    store = tmp_path / "store"
    _record(store, recorded_sub_agent, parallel=False)
    trajectories = _trajectories(store)
    [paused] = [t for t in trajectories if t.status == "interrupted"]
    assert [(s.action.tool_call.name, s.observation is not None) for s in paused.steps if s.action.tool_call] == [
        ("research", True),
        ("confirm_pay", False),
    ]
    left = paused_steps_left_out(trajectories)
    assert left.filter(pl.col("held_later")).select("trajectory_id", "step_index").rows() == [(paused.id, 1)]


def _frames(ended: list[dt.datetime | None] | None, traces: list[str | None] | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A paused run ``p`` (a call that ran, then one awaiting review), a run ``n`` starting inside it and a run ``r``
    after it holding the call, on one thread; ``ended`` and ``traces`` the runs' ``ended_at`` and ``trace_id``
    (``None``: no such column)."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    runs: dict[str, list[Any]] = {
        "id": ["p", "n", "r"],
        "status": ["interrupted", "approved", "approved"],
        "thread_id": ["T"] * 3,
        "started_at": [t0, t0 + dt.timedelta(seconds=1), t0 + dt.timedelta(seconds=5)],
        "ended_at": ended or [None] * 3,
        "trace_id": traces or [None] * 3,
    }
    schema = dict(RUNS_SCHEMA)
    for column, given in (("ended_at", ended), ("trace_id", traces)):
        if given is None:
            del runs[column], schema[column]
    steps = pl.DataFrame(
        {
            "trajectory_id": ["p", "p", "r"],
            "index": [0, 1, 0],
            "action_kind": ["tool_call"] * 3,
            "decision_index": [0, 0, 0],
            "tool_call_id": ["c0", "c1", "c0"],
            "tool_name": ["research", "pay", "research"],
            "arguments_json": ["{}", "{}", "{}"],
            "observed": [True, False, True],
        },
        schema=steps_schema("observed"),
    )
    return pl.DataFrame(runs, schema=schema), steps


def _held(ended: list[dt.datetime | None] | None, traces: list[str | None] | None = None) -> list[tuple[str, int]]:
    runs, steps = _frames(ended, traces)
    left = paused_turn_steps(runs, steps, pl.col("observed"))
    return left.filter(pl.col("held_later")).select("trajectory_id", "step_index").rows()


def test_a_nested_run_needs_the_paused_runs_trace_and_times_else_the_next_run_of_the_thread_resumed_it() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    # p's last span ends late (after r started, as a paused run's can); n is of its trace and started within it: r
    # resumed p
    ends = [t0 + dt.timedelta(seconds=9), t0 + dt.timedelta(seconds=2), t0 + dt.timedelta(seconds=10)]
    assert _held(ends, ["a", "a", "b"]) == [("p", 0)]
    # n's last span ending after p's (as a sub-agent's can) does not matter: it started within p
    assert _held([t0 + dt.timedelta(seconds=3), t0 + dt.timedelta(seconds=4), ends[2]], ["a", "a", "b"]) == [("p", 0)]
    # n of another trace, or starting once p ended: not nested, so it is the next run, as before (it holds nothing)
    assert _held(ends, ["a", "c", "b"]) == []
    assert _held([t0 + dt.timedelta(seconds=1), *ends[1:]], ["a", "a", "b"]) == []
    # without a trace or an end (no column, or nulls: older rows) the next run of the thread, as before
    assert _held(None, None) == []
    assert _held(ends, None) == []
    assert _held(None, ["a", "a", "b"]) == []
    assert _held([None, None, None], [None, None, None]) == []


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_run_resumed_at_once_inside_the_users_span_is_the_paused_runs_continuation(tmp_path: Path, offload: str) -> None:
    """Pause and resume inside one span of the user's (a chat session, a request that approves by itself) share a trace:
    the resumed run, started right after the paused one returned, must not count as nested in it. Was (thread mode): the
    paused run's root ended when the finisher thread got to it, 10-120 ms late, so a resume made at once started "inside"
    it and was passed over; the paused call was taught twice."""
    from opentelemetry.sdk.trace import TracerProvider

    user_tracer = TracerProvider().get_tracer("the-users-app")
    store = tmp_path / "store"

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if any(m.type == "tool" for m in messages):
            return AIMessage("Paid.")
        return AIMessage(content="", tool_calls=[tool_call("confirm_pay", amount=42)])

    graph = create_agent(ScriptedChatModel(policy=policy), [confirm_pay], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="outer", store=store, offload=offload)
    threads = [f"T{i}" for i in range(4)]
    try:
        for thread in threads:
            config = {"configurable": {"thread_id": thread}}
            with user_tracer.start_as_current_span("chat-session"):
                agent.invoke({"messages": [("user", "pay 42")]}, config)
                agent.invoke(Command(resume="yes"), config)
        assert agent.flush(30)
    finally:
        agent.recorder.close()
    trajectories = _trajectories(store)
    paused = [t for t in trajectories if t.status == "interrupted"]
    assert sorted(t.thread_id for t in paused) == threads
    assert all(len({t.trace_id for t in trajectories if t.thread_id == thread}) == 1 for thread in threads), "one trace each"
    left = paused_steps_left_out(trajectories)
    held = set(left.filter(pl.col("held_later"))["trajectory_id"].to_list()) if left.height else set()
    assert held == {t.id for t in paused}, "every paused run's call is held by the run that resumed it"
