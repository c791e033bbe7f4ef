"""The run that resumed a paused run is the next run of its thread not nested in it. A sub-agent recorded with its own
``record_experience`` (or a plain graph) invoked in a tool of the outer run is stored on the outer run's thread, of its
trace, and started and ended inside the paused run: it is not the paused run's continuation. Was: the nested run was
taken as the resumed run, so the paused turn's call that ran was taught twice (IWM, the replay buffer), uncounted. A
paused run nested in one (a sub-agent paused in a tool, resumed with the outer run) is resumed by the run nested in the
outer run's resumed run that holds its call awaiting review.
Real ``create_agent`` graphs recorded into a real local store, built by ``ee datasets build``'s own code."""

from __future__ import annotations

import datetime as dt
import time
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


@tool
def refund(order: str) -> str:
    """Refund an order (a reviewer approves it first)."""
    return f"refunded {order}" if interrupt({"refund": order}) else "refused"


def _record_siblings(store: Path, recorded_sub_agent: bool) -> None:
    """One outer turn asks the ``billing`` tool three times in parallel (thread ``T1``): its sub-agent looks ``C-9`` up
    and answers, and pauses on ``refund`` (beside a ``find``) for ``A-7`` and for ``B-8``; then both are approved in
    one resume. The tool asking for ``B-8`` waits a little on its first run, the one for ``A-7`` on its second: the
    recorded sub-agents start in one order when paused and in the other when resumed (as parallel tools may)."""

    def inner_policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(f"inner done: {messages[-1].content}")
        words = messages[0].content.split()
        calls = [tool_call("find", key=words[-1])]
        return AIMessage("", tool_calls=[*calls, tool_call("refund", order=words[-1])] if words[0] == "refund" else calls)

    inner = create_agent(ScriptedChatModel(policy=inner_policy), [find, refund])
    if recorded_sub_agent:
        inner = record_experience(inner, app="inner", store=store)
    runs_of: dict[str, int] = {}

    @tool
    def billing(request: str) -> str:
        """Ask the billing agent."""
        runs_of[request] = runs_of.get(request, 0) + 1
        if (request, runs_of[request]) in {("refund B-8", 1), ("refund A-7", 2)}:
            time.sleep(0.1)
        return inner.invoke({"messages": [("user", request)]})["messages"][-1].content

    def outer_policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage("outer done")
        return AIMessage("", tool_calls=[tool_call("billing", request=r) for r in ("look up C-9", "refund A-7", "refund B-8")])

    graph = create_agent(ScriptedChatModel(policy=outer_policy), [billing], checkpointer=InMemorySaver())
    outer = record_experience(graph, app="outer", store=store)
    config = {"configurable": {"thread_id": "T1"}}
    try:
        paused = outer.invoke({"messages": [("user", "refund A-7 and B-8, look up C-9")]}, config)
        assert len(paused["__interrupt__"]) == 2
        resumed = outer.invoke(Command(resume={pause.id: True for pause in paused["__interrupt__"]}), config)
        assert resumed["messages"][-1].content == "outer done"
        assert runs_of == {"look up C-9": 1, "refund A-7": 2, "refund B-8": 2}  # the tool that ran is not run again
    finally:
        for agent in (inner, outer) if recorded_sub_agent else (outer,):
            agent.flush()
            agent.recorder.close()


@pytest.mark.parametrize("recorded_sub_agent", [True, False], ids=["recorded-sub-agent", "plain-graph-in-a-tool"])
def test_sibling_sub_agents_paused_in_one_turn_are_each_resumed_by_their_own_run(tmp_path: Path, recorded_sub_agent: bool) -> None:
    """Two sub-agents paused by parallel tools of one outer turn: each paused run is resumed by the sub-agent run holding
    its call awaiting review, nested in the outer run's resumed run. Not by order: they resumed in the other order, and
    the third sub-agent (its tool done) did not run again. Was: each was taken as resumed by the outer's resumed run
    (the next run not nested in it), so the ``find`` beside each ``refund`` was taught twice."""
    store = tmp_path / "store"
    _record_siblings(store, recorded_sub_agent)
    _approve_all(store)
    trajectories = _trajectories(store)
    [outer_paused, outer_resumed] = [t for t in trajectories if t.task == "refund A-7 and B-8, look up C-9"]
    paused = [t.task for t in trajectories if t.status == "interrupted" and t.id != outer_paused.id]
    resumed = [t.task for t in trajectories if t.trace_id == outer_resumed.trace_id and t.id != outer_resumed.id]
    assert paused == ["refund A-7", "refund B-8"]
    if recorded_sub_agent:  # started the other way round (a plain graph's run is stored from its tool's start)
        assert resumed == ["refund B-8", "refund A-7"]

    left = paused_steps_left_out(trajectories)
    names = {t.id: (t.task, t.status) for t in trajectories}
    held = sorted((*names[t], i) for t, i in left.filter(pl.col("held_later")).select("trajectory_id", "step_index").rows())
    assert held == [
        ("refund A-7", "interrupted", 0),
        ("refund A-7", "interrupted", 1),
        ("refund A-7 and B-8, look up C-9", "interrupted", 0),
        ("refund A-7 and B-8, look up C-9", "interrupted", 1),
        ("refund A-7 and B-8, look up C-9", "interrupted", 2),
        ("refund B-8", "interrupted", 0),
        ("refund B-8", "interrupted", 1),
    ]
    taught: dict[tuple[str, str], list[str]] = {}
    for trajectory in trajectories:
        for transition in expert_transitions(trajectories).get(trajectory.id, []):
            call = trajectory.steps[transition.step_index].action.tool_call
            if call is not None:
                taught.setdefault((call.name, str(call.arguments)), []).append(trajectory.id)
    assert len(taught) == 8 and all(len(where) == 1 for where in taught.values()), taught


def _held_in(runs: list[tuple[str, str, float, float, str]], calls: dict[str, list[tuple[str, str, bool]]]) -> list[tuple[str, int]]:
    """The ``held_later`` steps of ``runs`` (id, status, start and end in seconds, trace; all on thread ``T``) whose
    ``calls`` are (call id, tool name and arguments, observed), in step order, all of one turn."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    frame = pl.DataFrame(
        [
            (i, status, "T", t0 + dt.timedelta(seconds=start), t0 + dt.timedelta(seconds=end), trace)
            for i, status, start, end, trace in runs
        ],
        schema=RUNS_SCHEMA,
        orient="row",
    )
    steps = pl.DataFrame(
        [(run, index, "tool_call", 0, *call) for run, made in calls.items() for index, call in enumerate(made)],
        schema=["trajectory_id", "index", "action_kind", "decision_index", "tool_call_id", "tool_name", "observed"],
        orient="row",
    ).with_columns(pl.lit("{}").alias("arguments_json"))
    steps = steps.cast(steps_schema("observed")).select(list(steps_schema("observed")))
    left = paused_turn_steps(frame, steps, pl.col("observed"))
    return sorted(left.filter(pl.col("held_later")).select("trajectory_id", "step_index").rows())


def test_overlapping_sibling_sub_agents_numbering_their_calls_are_each_resumed_by_the_run_holding_their_call() -> None:
    """Sub-agents of parallel tools overlap: ``b`` started inside ``a`` reads as nested in it (same thread, trace and
    times), so neither the run each is nested in nor the order tells their resumed runs apart (``b2`` started before
    ``a2``; ``c2``, the tool run afresh, calls ``lookup`` too). Their calls awaiting review do, even numbered per reply
    (``call_1`` twice), by tool name and arguments; two runs awaiting the very same call take the runs holding it in
    start order."""
    runs = [
        ("o", "interrupted", 0, 10, "x"),
        ("a", "interrupted", 1, 8, "x"),
        ("b", "interrupted", 2, 9, "x"),
        ("o2", "approved", 11, 20, "y"),
        ("c2", "approved", 12, 13, "y"),
        ("b2", "approved", 13, 18, "y"),
        ("a2", "approved", 14, 19, "y"),
    ]
    answered = {
        "o": [("call_0", "billing:a", False), ("call_1", "billing:b", False)],
        "a": [("call_0", "lookup", True), ("call_1", "refund:a", False)],
        "b": [("call_0", "lookup", True), ("call_1", "refund:b", False)],
        "o2": [("call_0", "billing:a", True), ("call_1", "billing:b", True)],
        "c2": [("call_0", "lookup", True)],
        "b2": [("call_0", "lookup", True), ("call_1", "refund:b", True)],
        "a2": [("call_0", "lookup", True), ("call_1", "refund:a", True)],
    }
    everything = [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("o", 0), ("o", 1)]
    assert _held_in(runs, answered) == everything
    # b2 does not hold b's call awaiting review: b was not resumed (its lookup is its only copy), a still was
    assert _held_in(runs, answered | {"b2": [("call_0", "lookup", True)]}) == [("a", 0), ("a", 1), ("o", 0), ("o", 1)]
    # the same call awaited by both: the first paused run takes the first run holding it
    same = answered | {name: [("call_0", "lookup", name.endswith("2")), ("call_1", "refund:a", name.endswith("2"))] for name in "ab"}
    same |= {name: [("call_0", "lookup", True), ("call_1", "refund:a", True)] for name in ("a2", "b2")}
    same["a"] = [("call_0", "lookup", True), ("call_1", "refund:a", False)]
    same["b"] = [("call_0", "lookup", True), ("call_1", "refund:a", False)]
    assert _held_in(runs, same) == everything


def test_a_sub_agent_paused_twice_and_one_nested_two_deep_are_resumed_inside_the_outer_runs_resumed_runs() -> None:
    """The outer run paused twice (its sub-agent asked for two reviews in turn: ``s1`` resumed by ``s2``, ``s2`` by
    ``s3``), and a sub-agent of the sub-agent (``d1``, nested two deep) resumed by ``d2``, nested in ``o2``."""
    runs = [
        ("o1", "interrupted", 0, 10, "x"),
        ("s1", "interrupted", 1, 9, "x"),
        ("d1", "interrupted", 2, 8, "x"),
        ("o2", "interrupted", 11, 20, "y"),
        ("s2", "interrupted", 12, 19, "y"),
        ("d2", "approved", 13, 14, "y"),
        ("o3", "approved", 21, 30, "z"),
        ("s3", "approved", 22, 29, "z"),
    ]
    calls = {
        "o1": [("c0", "billing", False)],
        "s1": [("k0", "ask-deep", False)],
        "d1": [("d0", "find", True), ("d1", "refund:a", False)],
        "o2": [("c0", "billing", False)],
        "s2": [("k0", "ask-deep", True), ("k1", "refund:b", False)],
        "d2": [("d0", "find", True), ("d1", "refund:a", True)],
        "o3": [("c0", "billing", True)],
        "s3": [("k1", "refund:b", True)],
    }
    # o1's call is not held: o2 paused on it again (it holds no result of it), o3 holds it
    assert _held_in(runs, calls) == [("d1", 0), ("d1", 1), ("o2", 0), ("s1", 0), ("s2", 1)]


def test_a_run_of_the_trace_started_once_the_paused_run_ended_resumed_it_though_a_sub_agent_ended_later() -> None:
    """A user's span around the pause and the resume gives them one trace; the sub-agent's last span ended after the
    paused run did, and after the resumed run started: the resumed run started once the paused run ended, so it is nested
    in neither."""
    runs = [("p", "interrupted", 0, 3, "a"), ("n", "approved", 1, 5, "a"), ("r", "approved", 4, 9, "a")]
    calls = {"p": [("c0", "research", True), ("c1", "pay", False)], "r": [("c0", "research", True), ("c1", "pay", True)]}
    assert _held_in(runs, calls) == [("p", 0), ("p", 1)]


def test_twenty_thousand_runs_of_one_thread_and_trace_each_sub_agent_resumed_by_its_own() -> None:
    """A user's span around a whole conversation (one trace): 5,000 outer runs paused in a sub-agent's review, each
    resumed, 20,000 runs on one thread. Nesting is found in one pass over the thread's runs (a join of its runs with
    each other would pair 400 million)."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    runs: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    for i in range(5_000):
        at = [t0 + dt.timedelta(seconds=10 * i + s) for s in range(10)]
        runs += [
            (f"o{i}", "interrupted", "T", at[0], at[4], "chat"),
            (f"s{i}", "interrupted", "T", at[1], at[3], "chat"),
            (f"O{i}", "approved", "T", at[5], at[9], "chat"),
            (f"S{i}", "approved", "T", at[6], at[8], "chat"),
        ]
        for run, observed in ((f"o{i}", False), (f"O{i}", True)):
            steps += [(run, 0, "tool_call", 0, "call_0", "find", "{}", True), (run, 1, "tool_call", 0, "call_1", "billing", "{}", observed)]
        for run, observed in ((f"s{i}", False), (f"S{i}", True)):
            steps += [(run, 0, "tool_call", 0, "call_0", "find", '{"k":1}', True)]
            steps += [(run, 1, "tool_call", 0, "call_1", "refund", f'{{"order":{i}}}', observed)]
    trajectories = pl.DataFrame(runs, schema=RUNS_SCHEMA, orient="row")
    frame = pl.DataFrame(steps, schema=steps_schema("observed"), orient="row")

    out = paused_turn_steps(trajectories, frame, pl.col("observed"))

    held = set(out.filter(pl.col("held_later")).select("trajectory_id", "step_index").iter_rows())
    assert held == {(f"{run}{i}", s) for i in range(5_000) for run in "os" for s in (0, 1)}


def test_a_completed_run_whose_last_span_ended_late_holds_no_paused_run_of_the_next_turn() -> None:
    """Review R1 of 92e3a8a: one trace for the thread (a user's span around the session) and a completed run whose last
    span ended after the next turn's paused run started (thread-mode recordings before 5759824, ingested traces): the
    paused run read as nested in the completed one, no resumer was found and its reviewed turn was taught twice. Only a
    paused (interrupted) run holds a paused run."""
    calls = {
        "a": [("call_0", "search", True)],
        "p": [("call_0", "lookup", True), ("call_1", "pay", False)],
        "r": [("call_0", "lookup", True), ("call_1", "pay", True)],
    }
    for a_end in (1.05, 2.05):  # past p's start; past r's start too
        runs = [("a", "approved", 0, a_end, "T"), ("p", "interrupted", 1, 1.5, "T"), ("r", "approved", 2, 3, "T")]
        assert _held_in(runs, calls) == [("p", 0), ("p", 1)], a_end
