"""A resumed run's task is its turn's question, as the paused run's is (sweep C, finding 6: a node that asked a human
to clarify with ``interrupt()`` and added the answer as a user message made that answer the resumed run's task)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.testing import ScriptedChatModel


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
