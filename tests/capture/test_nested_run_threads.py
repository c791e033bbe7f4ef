"""The thread of a graph run inside a tool (an agent as a tool) whose tool call never ended: cancelled with the run, or
paused on ``interrupt()`` in the inner agent's tool. The tool then has no span to tell its checkpoint namespace, and
the inner run was stored without a thread although it inherited the tool's configuration (a completed one got the
outer run's). Now the inner spans' namespaces tell it: below a task of the recorded graph, on the outer run's thread;
in a root namespace of their own (a configuration of its own), or below a tool of an inner run that was invoked so, on
none. Real ``create_agent`` graphs, real asyncio cancellation and ``interrupt()``, the real OTel SDK."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.ingest.test_nested_agents import _dumps, _ingested_twice

pytestmark = pytest.mark.usefixtures("no_child_left")


def _asks(tool_name: str, answer: str, **arguments: Any) -> Any:
    """A policy that calls ``tool_name`` once, then answers with ``answer`` and the tool's result."""

    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(f"{answer}: {messages[-1].content}")
        return AIMessage("", tool_calls=[tool_call(tool_name, **arguments)])

    return policy


def _stored(store: Path) -> list[Trajectory]:
    opened = LocalExperienceStore(store)
    try:
        return sorted(opened.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        opened.close()


def _by_model(trajectories: list[Trajectory]) -> dict[str | None, list[Trajectory]]:
    out: dict[str | None, list[Trajectory]] = {}
    for t in trajectories:
        out.setdefault(t.model, []).append(t)
    return out


def _cancel_while_inner_tool_runs(agent: Any, thread: str) -> None:
    """Invoke ``agent`` on ``thread`` and cancel the request once the innermost tool runs, as a client going away does."""

    async def request() -> None:
        started = asyncio.Event()
        _STARTED.append(started)
        task = asyncio.create_task(agent.ainvoke({"messages": [("user", "outer task")]}, {"configurable": {"thread_id": thread}}))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(request())
    agent.recorder.close()


_STARTED: list[asyncio.Event] = []
"""The event of the request running now: the innermost tool sets it once it runs (the inner run is in flight)."""


@tool
async def slow_lookup(key: str) -> str:
    """Look a key up (slowly: the request is cancelled meanwhile)."""
    _STARTED[-1].set()
    await asyncio.sleep(30)
    return "never seen"


def _inner_agent() -> Any:
    return create_agent(ScriptedChatModel(policy=_asks("slow_lookup", "inner says", key="k1"), model_name="inner-m"), [slow_lookup])


@pytest.mark.parametrize("inner_config", ["inherits_config", "own_thread"])
def test_an_agent_in_a_tool_cancelled_with_the_run_keeps_the_thread_it_ran_on(tmp_path: Path, inner_config: str) -> None:
    """The outer request is cancelled while the inner agent's tool runs: both runs are ``interrupted`` (cancelled), the
    inner one on the outer run's thread where it was invoked with the tool's configuration (before: none), and on none
    where it was invoked with a thread of its own (never the outer's)."""
    inner = _inner_agent()

    @tool
    async def ask_inner(key: str, config: RunnableConfig) -> str:
        """Ask the inner agent."""
        given = config if inner_config == "inherits_config" else {"configurable": {"thread_id": "inner-own"}}
        out = await inner.ainvoke({"messages": [("user", f"inner task {key}")]}, given)
        return out["messages"][-1].content

    outer = create_agent(ScriptedChatModel(policy=_asks("ask_inner", "outer says", key="k1"), model_name="outer-m"), [ask_inner])
    store = tmp_path / "store"
    _cancel_while_inner_tool_runs(record_experience(outer, app="nest", store=store), "t1")
    runs = _by_model(_stored(store))
    [outer_run], [inner_run] = runs["outer-m"], runs["inner-m"]
    assert (outer_run.status, outer_run.error, outer_run.thread_id) == ("interrupted", "cancelled: CancelledError", "t1")
    assert (inner_run.status, inner_run.error, inner_run.task) == ("interrupted", "cancelled: CancelledError", "inner task k1")
    assert [(s.action.tool_call.name, s.observation) for s in inner_run.steps if s.action.tool_call] == [("slow_lookup", None)]
    assert inner_run.thread_id == ("t1" if inner_config == "inherits_config" else None)


def test_an_agent_below_a_tool_of_an_agent_on_its_own_thread_never_gets_the_outer_thread(tmp_path: Path) -> None:
    """Two levels: the outer tool invokes a middle agent with a thread of its own, whose tool invokes the inner agent
    with its configuration (the middle's thread, which the spans do not name). Cancelled while the inner tool runs, or
    completed (the middle's tool span then names its namespace, a root one like the recorded graph's tasks): the inner
    run is on neither the outer run's thread nor any. Before, the completed one got the outer run's thread."""
    inner = _inner_agent()

    @tool
    async def ask_inner(key: str, config: RunnableConfig) -> str:
        """Ask the inner agent."""
        out = await inner.ainvoke({"messages": [("user", f"inner task {key}")]}, config)
        return out["messages"][-1].content

    middle = create_agent(ScriptedChatModel(policy=_asks("ask_inner", "middle says", key="k1"), model_name="middle-m"), [ask_inner])

    @tool
    async def ask_middle(key: str) -> str:
        """Ask the middle agent, on a thread of its own."""
        out = await middle.ainvoke({"messages": [("user", f"middle task {key}")]}, {"configurable": {"thread_id": "middle-own"}})
        return out["messages"][-1].content

    outer = create_agent(ScriptedChatModel(policy=_asks("ask_middle", "outer says", key="k1"), model_name="outer-m"), [ask_middle])
    store = tmp_path / "cancelled"
    _cancel_while_inner_tool_runs(record_experience(outer, app="nest", store=store), "t1")
    runs = _by_model(_stored(store))
    assert [t.thread_id for t in runs["outer-m"]] == ["t1"]
    assert [(t.status, t.thread_id) for t in runs["middle-m"] + runs["inner-m"]] == [("interrupted", None), ("interrupted", None)]


def test_an_agent_below_a_finished_tool_of_an_agent_on_its_own_thread_is_not_on_the_outer_thread(tmp_path: Path) -> None:
    """The completed variant of the test above: every tool span names its namespace. The inner run's tool belongs to the
    middle run, which ran on a thread of its own: the inner run is on none (before: the outer run's)."""

    @tool
    async def quick_lookup(key: str) -> str:
        """Look a key up."""
        return f"value-{key}"

    inner = create_agent(ScriptedChatModel(policy=_asks("quick_lookup", "inner says", key="k1"), model_name="inner-m"), [quick_lookup])

    @tool
    async def ask_inner(key: str, config: RunnableConfig) -> str:
        """Ask the inner agent."""
        out = await inner.ainvoke({"messages": [("user", f"inner task {key}")]}, config)
        return out["messages"][-1].content

    middle = create_agent(ScriptedChatModel(policy=_asks("ask_inner", "middle says", key="k1"), model_name="middle-m"), [ask_inner])

    @tool
    async def ask_middle(key: str, config: RunnableConfig) -> str:
        """Ask the middle agent, on a thread of its own."""
        out = await middle.ainvoke({"messages": [("user", f"middle task {key}")]}, {"configurable": {"thread_id": "middle-own"}})
        return out["messages"][-1].content

    outer = create_agent(ScriptedChatModel(policy=_asks("ask_middle", "outer says", key="k1"), model_name="outer-m"), [ask_middle])
    store = tmp_path / "store"
    agent = record_experience(outer, app="nest", store=store)
    out = asyncio.run(agent.ainvoke({"messages": [("user", "outer task")]}, {"configurable": {"thread_id": "t1"}}))
    assert out["messages"][-1].content == "outer says: middle says: inner says: value-k1"
    agent.recorder.close()
    runs = _by_model(_stored(store))
    assert [(t.status, t.thread_id) for m in ("outer-m", "middle-m", "inner-m") for t in runs[m]] == [
        ("completed", "t1"),
        ("completed", None),
        ("completed", None),
    ]


def _refund_desk(store: Path, tracer_provider: Any = None) -> dict[str | None, list[Trajectory]]:
    """An outer agent (with a checkpointer) whose tool runs a billing agent with the tool's configuration; the billing
    agent's refund tool asks for approval (``interrupt()``), and the outer run is resumed with ``Command(resume=True)``
    on thread ``p1``. The stored runs by model."""

    @tool
    def refund(order: str) -> str:
        """Refund an order (needs approval)."""
        return f"refunded {order}" if interrupt({"refund": order}) else "refused"

    inner = create_agent(ScriptedChatModel(policy=_asks("refund", "inner done", order="A-7"), model_name="inner-m"), [refund])

    @tool
    def billing_agent(request: str, config: RunnableConfig) -> str:
        """Ask the billing agent."""
        return inner.invoke({"messages": [("user", request)]}, config)["messages"][-1].content

    model = ScriptedChatModel(policy=_asks("billing_agent", "outer done", request="refund A-7 please"), model_name="outer-m")
    outer = create_agent(model, [billing_agent], checkpointer=InMemorySaver())
    agent = record_experience(outer, app="billing", store=store, tracer_provider=tracer_provider)
    config = {"configurable": {"thread_id": "p1"}}
    agent.invoke({"messages": [("user", "customer wants a refund")]}, config)
    out = agent.invoke(Command(resume=True), config)
    assert out["messages"][-1].content == "outer done: inner done: refunded A-7"
    agent.recorder.close()
    return _by_model(_stored(store))


def _calls(trajectory: Trajectory) -> list[tuple[str, Any, str | None]]:
    return [
        (s.action.tool_call.name, s.action.tool_call.arguments, s.observation.content if s.observation else None)
        if s.action.tool_call
        else ("answer", None, s.action.content)
        for s in trajectory.steps
    ]


def test_an_agent_in_a_tool_paused_on_interrupt_keeps_the_outer_thread(tmp_path: Path) -> None:
    """The paused inner run (its refund call awaiting review) was stored with no thread although it inherited the tool's
    configuration (thread ``p1``); every run is on ``p1`` now."""
    runs = _refund_desk(tmp_path / "store")
    paused = [t for t in runs["inner-m"] if t.status == "interrupted"]
    assert len(paused) == 1 and _calls(paused[0]) == [("refund", {"order": "A-7"}, None)]
    assert {t.thread_id for ts in runs.values() for t in ts} == {"p1"}


def test_the_call_approved_inside_a_sub_agent_is_a_step_of_its_resumed_run(
    tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    """README: "a reviewed call is learned from the resumed trajectory, as decided". The resumed inner run's input is new
    (the tool runs again), but LangGraph resumes it from its checkpoint: the approved refund call it ran before its
    model's answer is its first step, with the refund's result, as for a top-level agent. Before, it was a step of
    neither run (the paused one ends on it unobserved; the resumed one held only the answer). Ingesting the same spans
    stores the same."""
    live = tmp_path / "live"
    runs = _refund_desk(live, tracer_provider)
    [resumed] = [t for t in runs["inner-m"] if t.status == "completed"]
    assert (resumed.task, resumed.thread_id) == ("refund A-7 please", "p1")
    assert _calls(resumed) == [("refund", {"order": "A-7"}, "refunded A-7"), ("answer", None, "inner done: refunded A-7")]
    [resumed_outer] = [t for t in runs["outer-m"] if t.status == "completed"]
    assert _calls(resumed_outer)[0] == ("billing_agent", {"request": "refund A-7 please"}, "inner done: refunded A-7")

    ingested, first, _ = _ingested_twice(tmp_path, list(span_exporter.get_finished_spans()))
    assert (first.errors, len(first.ingested)) == ([], 4)
    assert _dumps(ingested) == _dumps(live)


def test_an_agent_a_resumed_tool_starts_afresh_keeps_its_own_steps(tmp_path: Path) -> None:
    """The guard: the outer tool asks for approval itself, then runs the inner agent; on resume the inner agent starts
    afresh (nothing of it paused). Resumed with the outer run, it has no reviewed turn: its task and steps are its own."""

    @tool
    def quick_lookup(key: str) -> str:
        """Look a key up."""
        return f"value-{key}"

    inner = create_agent(ScriptedChatModel(policy=_asks("quick_lookup", "inner says", key="k1"), model_name="inner-m"), [quick_lookup])

    @tool
    def approved_lookup(request: str, config: RunnableConfig) -> str:
        """Ask for approval, then ask the inner agent."""
        if not interrupt({"ask": request}):
            return "refused"
        return inner.invoke({"messages": [("user", request)]}, config)["messages"][-1].content

    model = ScriptedChatModel(policy=_asks("approved_lookup", "outer done", request="look k1 up"), model_name="outer-m")
    agent = record_experience(create_agent(model, [approved_lookup], checkpointer=InMemorySaver()), app="desk", store=tmp_path / "store")
    config = {"configurable": {"thread_id": "q1"}}
    agent.invoke({"messages": [("user", "please look k1 up")]}, config)
    assert agent.invoke(Command(resume=True), config)["messages"][-1].content == "outer done: inner says: value-k1"
    agent.recorder.close()
    [only] = _by_model(_stored(tmp_path / "store"))["inner-m"]
    assert (only.task, only.thread_id, only.status) == ("look k1 up", "q1", "completed")
    assert _calls(only) == [("quick_lookup", {"key": "k1"}, "value-k1"), ("answer", None, "inner says: value-k1")]
