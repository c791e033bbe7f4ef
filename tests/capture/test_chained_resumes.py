"""A resumed run that pauses again before any model call (a tool asking a human several questions with ``interrupt()``
in a row, a resumed stream closed early) keeps its turn's task and the conversation it paused in, as a resumed run that
calls no model and completes does (was: stored with no task and no messages). Real LangGraph graphs on ``InMemorySaver``,
the real OTel SDK, the real local store; each in thread mode and with capture in a child process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

from ee_middleware import record_experience
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_graph_input_tasks import recorded as _recorded
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")


@tool
def ask_human(question: str) -> str:
    """Ask a human three questions in a row."""
    first = interrupt(question)
    second = interrupt("and the second?")
    third = interrupt("and the third?")
    return f"human said {first}/{second}/{third}"


def _asking_graph() -> Any:
    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(content="The human likes red/green/blue.")
        if messages[-1].content == "hi":
            return AIMessage(content="Hello!")
        return AIMessage(content="", tool_calls=[tool_call("ask_human", question="color?")])

    model = ScriptedChatModel(policy=policy).bind_tools([ask_human])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([ask_human]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def _roles(messages: list[dict[str, Any]]) -> list[str]:
    return [m["role"] for m in messages]


@OFFLOADS
def test_a_resume_that_pauses_again_keeps_its_turns_task_and_messages(offload, store_path):
    agent = record_experience(_asking_graph(), app="survey", store=store_path, offload=offload)
    config = {"configurable": {"thread_id": "th-1"}}
    agent.invoke({"messages": [("user", "hi")]}, config)  # an earlier turn: the task is the resumed turn's, not this
    agent.invoke({"messages": [("user", "ask the human a color")]}, config)
    got = [agent.invoke(Command(resume=color), config) for color in ("red", "green")]  # each pauses at the next interrupt()
    done = agent.invoke(Command(resume="blue"), config)
    assert [m.type for m in got[-1]["messages"]] == ["human", "ai", "human", "ai"]
    assert done["messages"][-1].content == "The human likes red/green/blue."
    first, paused, *again, resumed = _recorded(agent, store_path)
    assert (first.status, paused.status, resumed.status) == ("completed", "interrupted", "completed")
    call = paused.steps[-1].action.tool_call
    for t in again:  # what the caller got back: the thread's conversation, ending on the call awaiting the human
        assert (t.status, t.thread_id, t.task, t.model, t.steps, t.final_answer) == (
            "interrupted",
            "th-1",
            "ask the human a color",
            None,
            [],
            None,
        )
        assert _roles(t.messages) == ["user", "assistant", "user", "assistant"]
        assert [c["id"] for c in t.messages[-1]["tool_calls"]] == [call.id]
    assert len(again) == 2
    # the completed resume teaches the call as it ran, once
    assert resumed.task == "ask the human a color"
    assert [(s.action.kind, s.observation and s.observation.content) for s in resumed.steps] == [
        ("tool_call", "human said red/green/blue"),
        ("answer", None),
    ]


def _refund_agent() -> Any:
    @tool
    def refund(order_id: str) -> str:
        """Refund an order."""
        return f"refunded {order_id}"

    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return f"order {order_id} ok"

    script = [
        AIMessage(content="", tool_calls=[tool_call("refund", order_id="A1")]),
        AIMessage(content="", tool_calls=[tool_call("lookup", order_id="A1")]),
        AIMessage(content="Refunded."),
    ]
    return create_agent(
        ScriptedChatModel(script=script),
        [refund, lookup],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"refund": True})],
        checkpointer=InMemorySaver(),
    )


@OFFLOADS
def test_a_resumed_stream_closed_before_any_model_call_keeps_its_turn(offload, store_path):
    """The caller approves the refund, then closes the stream once the tool ran: the run is cut off before the model is
    asked again. It keeps the turn's task and the conversation it continued, with the approved call's result."""
    agent = record_experience(_refund_agent(), app="shop", store=store_path, offload=offload)
    config = {"configurable": {"thread_id": "rb-1"}}

    async def main() -> Any:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, config)
        stream = agent.astream(Command(resume={"decisions": [{"type": "approve"}]}), config, stream_mode="updates")
        async for chunk in stream:
            if "tools" in chunk:
                break
        await stream.aclose()
        return await agent.ainvoke(None, config)

    assert asyncio.run(main())["messages"][-1].content == "Refunded."
    paused, cut, resumed = _recorded(agent, store_path)
    call = paused.steps[-1].action.tool_call
    assert (cut.status, cut.error, cut.task, cut.thread_id) == ("interrupted", "cancelled: GeneratorExit", "refund A1", "rb-1")
    assert _roles(cut.messages) == ["user", "assistant", "tool"]
    assert (cut.messages[-1]["tool_call_id"], cut.messages[-1]["content"]) == (call.id, "refunded A1")
    assert (resumed.status, resumed.task, resumed.final_answer) == ("completed", "refund A1", "Refunded.")
