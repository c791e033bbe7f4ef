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


def test_an_agent_in_a_tool_paused_on_interrupt_keeps_the_outer_thread(tmp_path: Path) -> None:
    """The inner agent's tool asks for approval (``interrupt()``); the outer run is resumed with
    ``Command(resume=True)``. The paused inner run (its refund call awaiting review) was stored with no thread although
    it inherited the tool's configuration (thread ``p1``); every run is on ``p1`` now."""

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
    store = tmp_path / "store"
    agent = record_experience(outer, app="billing", store=store)
    config = {"configurable": {"thread_id": "p1"}}
    agent.invoke({"messages": [("user", "customer wants a refund")]}, config)
    out = agent.invoke(Command(resume=True), config)
    assert out["messages"][-1].content == "outer done: inner done: refunded A-7"
    agent.recorder.close()
    runs = _by_model(_stored(store))
    paused = [t for t in runs["inner-m"] if t.status == "interrupted"]
    assert len(paused) == 1 and [s.action.tool_call.name for s in paused[0].steps if s.action.tool_call] == ["refund"]
    assert {t.thread_id for ts in runs.values() for t in ts} == {"p1"}
