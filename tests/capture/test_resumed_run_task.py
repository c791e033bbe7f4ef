"""A resumed run's task is its turn's question, as the paused run's is (sweep C, finding 6: a node that asked a human
to clarify with ``interrupt()`` and added the answer as a user message made that answer the resumed run's task)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.testing import ScriptedChatModel, tool_call


def test_a_clarification_added_on_resume_is_not_the_task(tmp_path: Path) -> None:
    model = ScriptedChatModel(script=[AIMessage(content="It is sunny in Paris."), AIMessage(content="It is raining in Oslo.")])

    def clarify(state: MessagesState) -> dict[str, Any]:
        city = interrupt("Which city do you mean?")
        return {"messages": [HumanMessage(f"Clarification: {city}")]}

    graph = StateGraph(MessagesState)
    graph.add_node("clarify", clarify)
    graph.add_node("call", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_edge(START, "clarify")
    graph.add_edge("clarify", "call")
    graph.add_edge("call", END)
    agent = record_experience(graph.compile(checkpointer=InMemorySaver()), app="weather", store=tmp_path / "s")
    thread = {"configurable": {"thread_id": "t1"}}
    for question, city in (("What's the weather there?", "Paris"), ("And in the other place?", "Oslo")):  # two turns
        agent.invoke({"messages": [("user", question)]}, thread)
        agent.invoke(Command(resume=city), thread)
    assert agent.flush()
    runs = sorted(LocalExperienceStore(tmp_path / "s").iter_trajectories(), key=lambda t: t.started_at)
    assert [(t.status, t.task) for t in runs] == [
        ("interrupted", "What's the weather there?"),
        ("completed", "What's the weather there?"),
        ("interrupted", "And in the other place?"),
        ("completed", "And in the other place?"),
    ]


@pytest.mark.parametrize("call", ["sync", "async"])
@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_resumed_run_whose_reviewed_tool_raises_keeps_its_task_and_conversation(tmp_path: Path, call: str, offload: str) -> None:
    """The reviewed call raises as the run resumes, before any model call: the run's record kept no task and only the
    error's tool message (its call nowhere); it keeps the conversation it continued, as a resumed run stopped early
    does (an async/review sweep)."""

    @tool
    def pay(amount: int) -> str:
        """Pay an amount (a human approves it first)."""
        interrupt({"pay": amount})
        raise ValueError("insufficient funds")

    model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("pay", amount=10)]), AIMessage(content="Paid.")])
    graph = create_agent(model, [pay], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="pay", store=tmp_path / "s", offload=offload)
    thread = {"configurable": {"thread_id": "t1"}}

    async def both() -> None:
        await agent.ainvoke({"messages": [("user", "Pay ten dollars")]}, thread)
        await agent.ainvoke(Command(resume=True), thread)

    with pytest.raises(ValueError, match="insufficient funds"):
        if call == "async":
            asyncio.run(both())
        else:
            agent.invoke({"messages": [("user", "Pay ten dollars")]}, thread)
            agent.invoke(Command(resume=True), thread)
    assert agent.flush()
    paused, failed = sorted(LocalExperienceStore(tmp_path / "s").iter_trajectories(), key=lambda t: t.started_at)
    assert (paused.status, paused.task) == ("interrupted", "Pay ten dollars")
    assert (failed.status, failed.task) == ("error", "Pay ten dollars")
    assert [m["role"] for m in failed.messages] == ["user", "assistant", "tool"]
    assert "pay" in str(failed.messages[1]["tool_calls"]), "the call the error answers"
    assert "insufficient funds" in str(failed.messages[2]["content"]) and "insufficient funds" in str(failed.error)
