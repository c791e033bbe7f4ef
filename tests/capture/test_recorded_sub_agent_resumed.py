"""A sub-agent wrapped with its own ``record_experience``, invoked in a tool of a recorded outer agent, pauses
(``interrupt()`` in one of its tools, beside a parallel call that ran) and is resumed with the outer run
(``Command(resume=...)``): LangGraph resumes it from its own checkpoint in the tool's namespace and ignores the input
the tool gives it again. Its resumed run must hold the reviewed turn (the call that paused, run as the reviewer
decided, and the call beside it), as the same graph unwrapped does. Before, it was stored as a run from new input: it
held only its answer, and the call that paused (which ran in production, with its result) was in no trajectory.

Real ``create_agent`` graphs, a real checkpointer (``InMemorySaver``), both recorders writing one real local store;
sync and async, both offload modes."""

from __future__ import annotations

import asyncio
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
from ee_middleware.records import Trajectory
from ee_middleware.replay.retrieval import expert_transitions, paused_steps_left_out
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_child_left")

THREAD = {"configurable": {"thread_id": "T1"}}


@tool
def find(key: str) -> str:
    """Find a key."""
    return f"found {key}"


@tool
def refund(order: str) -> str:
    """Refund an order (a reviewer approves it first)."""
    return f"refunded {order}" if interrupt({"refund": order}) else "refused"


@tool("refund")
def refund_at_once(order: str) -> str:
    """Refund an order."""
    return f"refunded {order}"


def _inner_policy(messages: list[Any], tools: Any) -> AIMessage:
    if messages[-1].type == "tool":
        return AIMessage(f"inner done: {messages[-1].content}")
    return AIMessage("", tool_calls=[tool_call("find", key="acct"), tool_call("refund", order="A-7")])


def _record(store: Path, how: str, offload: str, resume_inner: bool = True) -> None:
    """The outer agent (thread ``T1``) asks for ``find`` and the ``billing`` tool, which runs the recorded inner agent
    (no config of its own: the tool's). With ``resume_inner`` the inner agent's ``refund`` pauses the run; else the
    billing tool asks for a review itself first, and runs the inner agent afresh once resumed (``refund`` then
    approved at once). The tool words its request anew each time it runs (LangGraph ignores it on a resume)."""
    inner_tools = [find, refund if resume_inner else refund_at_once]
    inner_graph = create_agent(ScriptedChatModel(policy=_inner_policy, model_name="inner-m"), inner_tools)
    inner = record_experience(inner_graph, app="inner", store=store, offload=offload)
    attempts: list[int] = []

    def request(text: str) -> dict[str, Any]:
        attempts.append(1)
        asked = text if len(attempts) == 1 else f"{text} (asked again)"
        return {"messages": [("user", asked)]}

    if how == "invoke":

        @tool
        def billing(request_text: str) -> str:
            """Ask the billing agent."""
            if not resume_inner and not interrupt({"ask billing": request_text}):
                return "not asked"
            return inner.invoke(request(request_text))["messages"][-1].content

    else:

        @tool
        async def billing(request_text: str) -> str:
            """Ask the billing agent."""
            if not resume_inner and not interrupt({"ask billing": request_text}):
                return "not asked"
            return (await inner.ainvoke(request(request_text)))["messages"][-1].content

    def outer_policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(f"outer done: {messages[-1].content}")
        return AIMessage("", tool_calls=[tool_call("find", key="cust"), tool_call("billing", request_text="refund A-7")])

    outer_graph = create_agent(ScriptedChatModel(policy=outer_policy, model_name="outer-m"), [find, billing], checkpointer=InMemorySaver())
    outer = record_experience(outer_graph, app="outer", store=store, offload=offload)
    try:
        if how == "invoke":
            outer.invoke({"messages": [("user", "refund A-7 please")]}, THREAD)
            out = outer.invoke(Command(resume=True), THREAD)
        else:

            async def both() -> Any:
                await outer.ainvoke({"messages": [("user", "refund A-7 please")]}, THREAD)
                return await outer.ainvoke(Command(resume=True), THREAD)

            out = asyncio.run(both())
        assert out["messages"][-1].content == "outer done: inner done: refunded A-7"
        assert inner.flush(30) and outer.flush(30)
    finally:
        inner.recorder.close()
        outer.recorder.close()


def _stored(store: Path) -> list[Trajectory]:
    opened = LocalExperienceStore(store)
    try:
        opened.approve(opened.trajectories()["id"].to_list(), by="alice", reason="looks right")
        return sorted(opened.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        opened.close()


def _calls(trajectory: Trajectory) -> list[tuple[str, Any, str | None]]:
    out = []
    for step in trajectory.steps:
        call = step.action.tool_call
        name, arguments = (call.name, call.arguments) if call is not None else ("answer", step.action.content)
        out.append((name, arguments, step.observation.content if step.observation is not None else None))
    return out


def _seen(trajectory: Trajectory) -> tuple[Any, ...]:
    return (trajectory.app, trajectory.status, trajectory.thread_id, trajectory.task, _calls(trajectory))


@pytest.mark.parametrize(("how", "offload"), [("invoke", "thread"), ("invoke", "process"), ("ainvoke", "thread"), ("ainvoke", "process")])
def test_a_recorded_sub_agent_resumed_with_its_outer_run_holds_its_reviewed_turn(tmp_path: Path, how: str, offload: str) -> None:
    store = tmp_path / "store"
    _record(store, how, offload)
    runs = _stored(store)
    inner_turn = [("find", {"key": "acct"}, "found acct"), ("refund", {"order": "A-7"}, "refunded A-7")]
    outer_turn = [("find", {"key": "cust"}, "found cust"), ("billing", {"request_text": "refund A-7"}, "inner done: refunded A-7")]
    assert sorted(map(_seen, runs), key=str) == sorted(
        [
            ("outer", "interrupted", "T1", "refund A-7 please", [outer_turn[0], (*outer_turn[1][:2], None)]),
            ("inner", "interrupted", "T1", "refund A-7", [inner_turn[0], (*inner_turn[1][:2], None)]),
            ("outer", "completed", "T1", "refund A-7 please", [*outer_turn, ("answer", "outer done: inner done: refunded A-7", None)]),
            # the turn it resumed (its task is not the request the tool worded anew, which LangGraph ignored)
            ("inner", "completed", "T1", "refund A-7", [*inner_turn, ("answer", "inner done: refunded A-7", None)]),
        ],
        key=str,
    )
    [resumed_inner] = [t for t in runs if t.app == "inner" and t.status == "completed"]
    assert [s.decision_index for s in resumed_inner.steps] == [0, 0, 1]
    assert resumed_inner.steps[1].action.tool_call.id == next(  # the call that paused, with its id
        s.action.tool_call.id for t in runs if t.app == "inner" and t.status == "interrupted" for s in t.steps if s.observation is None
    )


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_recorded_sub_agent_a_resumed_tool_runs_afresh_is_no_resumed_run(tmp_path: Path, offload: str) -> None:
    """The tool paused itself, then ran the inner agent afresh on the resume: the inner run is from new input (its
    task the request it was given, its model's own turn its first step), not a resumed one."""
    store = tmp_path / "store"
    _record(store, "invoke", offload, resume_inner=False)
    [inner] = [t for t in _stored(store) if t.app == "inner"]
    assert _seen(inner) == (
        "inner",
        "completed",
        "T1",
        "refund A-7",
        [
            ("find", {"key": "acct"}, "found acct"),
            ("refund", {"order": "A-7"}, "refunded A-7"),
            ("answer", "inner done: refunded A-7", None),
        ],
    )


def test_each_paused_call_of_both_agents_is_taught_once(tmp_path: Path) -> None:
    """The inner paused run is resumed by the inner run nested in the outer's resumed run, not by the outer's resumed
    run (the next run of the thread not nested in it: was, so the call beside the inner ``interrupt()`` was taught from
    both inner runs)."""
    store = tmp_path / "store"
    _record(store, "invoke", "thread")
    runs = _stored(store)
    names = {t.id: f"{t.app}:{t.status}" for t in runs}
    left = paused_steps_left_out(runs).filter(pl.col("held_later"))
    assert sorted((names[t], i) for t, i in left.select("trajectory_id", "step_index").rows()) == [
        ("inner:interrupted", 0),
        ("inner:interrupted", 1),
        ("outer:interrupted", 0),
        ("outer:interrupted", 1),
    ]
    taught: dict[tuple[str, str], list[str]] = {}
    for trajectory in runs:
        for transition in expert_transitions(runs)[trajectory.id]:
            call = trajectory.steps[transition.step_index].action.tool_call
            if call is not None:
                taught.setdefault((call.name, str(call.arguments)), []).append(names[trajectory.id])
    assert all(len(where) == 1 for where in taught.values()), taught


def test_a_recorded_sub_agent_paused_twice_holds_each_reviewed_call_once(tmp_path: Path) -> None:
    """The inner agent asks for two refunds in turn, each paused: the outer run is resumed twice (the first resume
    pauses again inside the inner agent). Each inner run starts with the call approved in it, as the same graph
    unwrapped does (tests/capture/test_nested_resumed_runs.py)."""

    def inner_policy(messages: list[Any], tools: Any) -> AIMessage:
        done = sum(1 for m in messages if m.type == "tool")
        if done < 2:
            return AIMessage("", tool_calls=[tool_call("refund", order=("A-7", "B-8")[done])])
        return AIMessage(f"inner done: {messages[-1].content}")

    store = tmp_path / "store"
    inner = record_experience(
        create_agent(ScriptedChatModel(policy=inner_policy, model_name="inner-m"), [refund]), app="inner", store=store
    )

    @tool
    def billing(request_text: str) -> str:
        """Ask the billing agent."""
        return inner.invoke({"messages": [("user", request_text)]})["messages"][-1].content

    def outer_policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(f"outer done: {messages[-1].content}")
        return AIMessage("", tool_calls=[tool_call("billing", request_text="refund A-7 and B-8")])

    graph = create_agent(ScriptedChatModel(policy=outer_policy, model_name="outer-m"), [billing], checkpointer=InMemorySaver())
    outer = record_experience(graph, app="outer", store=store)
    try:
        outer.invoke({"messages": [("user", "refund A-7 and B-8")]}, THREAD)
        outer.invoke(Command(resume=True), THREAD)
        assert outer.invoke(Command(resume=True), THREAD)["messages"][-1].content == "outer done: inner done: refunded B-8"
        assert inner.flush(30) and outer.flush(30)
    finally:
        inner.recorder.close()
        outer.recorder.close()
    inner_runs = [t for t in _stored(store) if t.app == "inner"]
    assert [(t.status, t.thread_id, t.task, _calls(t)) for t in inner_runs] == [
        ("interrupted", "T1", "refund A-7 and B-8", [("refund", {"order": "A-7"}, None)]),
        ("interrupted", "T1", "refund A-7 and B-8", [("refund", {"order": "A-7"}, "refunded A-7"), ("refund", {"order": "B-8"}, None)]),
        (
            "completed",
            "T1",
            "refund A-7 and B-8",
            [("refund", {"order": "B-8"}, "refunded B-8"), ("answer", "inner done: refunded B-8", None)],
        ),
    ]
