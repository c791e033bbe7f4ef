"""An agent run inside a tool is stored with how it ended itself, and a graph a tool starts without waiting for it is
never mixed into the run (sweep X).

Before: the inner run took the tool call's outcome (a sub-agent that failed inside a tool that caught its error was
stored ``completed`` and auto-approvable; one that answered before the tool failed, or before the outer run was
cancelled, was stored ``error`` or ``interrupted``), and the calls of a graph a tool started as a background task and
did not await were stored as steps of the outer run, with the other conversation's states. Real ``create_agent``
graphs, the real OTel SDK, both offload modes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call

OFFLOADS = ["thread", pytest.param("process", marks=pytest.mark.heavy)]


@tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def _sub_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
    question = next(str(m.content) for m in messages if m.type == "human")
    if "explode" in question:
        raise RuntimeError(f"model exploded on {question}")
    if messages[-1].type == "human":
        return AIMessage("", tool_calls=[tool_call("lookup", key=question)])
    return AIMessage(f"sub: {messages[-1].content}")


SUB = create_agent(ScriptedChatModel(policy=_sub_policy, model_name="sub-model"), [lookup])
SPAWNED: list[asyncio.Task[Any]] = []
RELEASE: list[asyncio.Event] = []


@tool
async def ask_with_fallback(question: str) -> str:
    """Ask the sub-agent; on its failure answer a fallback."""
    try:
        return (await SUB.ainvoke({"messages": [("user", question)]}))["messages"][-1].content
    except RuntimeError:
        return "fallback"


@tool
async def ask_then_fail(question: str) -> str:
    """Ask the sub-agent, then fail."""
    await SUB.ainvoke({"messages": [("user", question)]})
    raise ValueError("the tool failed after the sub-agent answered")


@tool
async def ask_two(question: str) -> str:
    """Ask the sub-agent twice: the second time it waits until released (the outer run is cancelled meanwhile)."""
    first = (await SUB.ainvoke({"messages": [("user", question + " A")]}))["messages"][-1].content
    await RELEASE[0].wait()
    return first


@tool
async def start_in_background(question: str) -> str:
    """Start the sub-agent and return at once."""
    SPAWNED.append(asyncio.create_task(SUB.ainvoke({"messages": [("user", question)]})))
    return "started"


def _outer(tool_fn: Any, store: Path, offload: str) -> Any:
    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "human":
            return AIMessage("", tool_calls=[tool_call(tool_fn.name, question=f"inner {messages[-1].content}")])
        return AIMessage(f"outer: {messages[-1].content}")

    model = ScriptedChatModel(policy=policy, model_name="outer-model")
    return record_experience(create_agent(model, [tool_fn]), app="outer", store=store, offload=offload)


def _stored(store: Path) -> dict[str, Any]:
    opened = LocalExperienceStore(store)
    try:
        return {t.task: t for t in opened.iter_trajectories(status=None)}
    finally:
        opened.close()


@pytest.mark.parametrize("offload", OFFLOADS)
def test_a_sub_agent_that_failed_inside_a_tool_that_caught_it_is_stored_failed(tmp_path: Path, offload: str) -> None:
    agent = _outer(ask_with_fallback, tmp_path / "store", offload)
    out = asyncio.run(agent.ainvoke({"messages": [("user", "explode please")]}))
    assert agent.flush() and out["messages"][-1].content == "outer: fallback"
    stored = _stored(tmp_path / "store")
    assert (stored["explode please"].status, stored["explode please"].app) == ("completed", "outer")
    inner = [t for task, t in stored.items() if t.model == "sub-model"]
    assert [(t.status, t.error) for t in inner] == [("error", "RuntimeError: model exploded on inner explode please")]


@pytest.mark.parametrize("offload", OFFLOADS)
def test_a_sub_agent_that_answered_before_its_tool_failed_is_stored_completed(tmp_path: Path, offload: str) -> None:
    agent = _outer(ask_then_fail, tmp_path / "store", offload)
    with pytest.raises(ValueError, match="the tool failed after the sub-agent answered"):
        asyncio.run(agent.ainvoke({"messages": [("user", "what is x")]}))
    assert agent.flush()
    stored = _stored(tmp_path / "store")
    assert stored["what is x"].status == "error"
    assert (stored["inner what is x"].status, stored["inner what is x"].error) == ("completed", None)
    assert stored["inner what is x"].final_answer == "sub: value of inner what is x"


def test_a_sub_agent_that_answered_before_the_run_was_cancelled_is_stored_completed(tmp_path: Path) -> None:
    agent = _outer(ask_two, tmp_path / "store", "thread")

    async def cancelled() -> None:
        RELEASE[:] = [asyncio.Event()]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(agent.ainvoke({"messages": [("user", "what is y")]}), timeout=1.0)

    asyncio.run(cancelled())
    assert agent.flush()
    stored = _stored(tmp_path / "store")
    assert stored["what is y"].status == "interrupted"
    assert (stored["inner what is y A"].status, stored["inner what is y A"].final_answer) == (
        "completed",
        "sub: value of inner what is y A",
    )


@pytest.mark.parametrize("offload", OFFLOADS)
def test_a_graph_a_tool_starts_without_waiting_for_it_is_not_mixed_into_the_run(tmp_path: Path, offload: str, caplog: Any) -> None:
    agent = _outer(start_in_background, tmp_path / "store", offload)

    async def run() -> Any:
        SPAWNED.clear()
        out = await agent.ainvoke({"messages": [("user", "in the background")]})
        return out, await asyncio.gather(*SPAWNED)

    with caplog.at_level("WARNING", logger="ee_middleware.capture"):
        out, (background,) = asyncio.run(run())
        assert agent.flush()
    assert out["messages"][-1].content == "outer: started"
    assert background["messages"][-1].content == "sub: value of inner in the background"
    (outer,) = _stored(tmp_path / "store").values()
    calls = [(s.action.tool_call.name if s.action.tool_call else "answer") for s in outer.steps]
    assert calls == ["start_in_background", "answer"] and outer.status == "completed", "no step of the other conversation"
    assert outer.final_answer == "outer: started" and outer.model == "outer-model"
    if offload == "thread":  # (the capture process logs its own)
        assert "a tool started a graph run and returned without waiting for it" in caplog.text
