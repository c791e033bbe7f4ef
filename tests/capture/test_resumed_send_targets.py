"""A resumed run cut off before the graph returned (a stream closed early, a cancelled task) whose first node is not
given the thread's state keeps its turn's task and the conversation it continued. A node a ``Send`` runs is given the
``Send``'s payload: ``create_agent``'s tools after ``interrupt()`` in a tool get the tool calls, a custom fan-out its own
dict (even one with a ``messages`` key of its own). Before, such a run was stored with no task and only its tool's
message. The recorder reads the thread's state from the checkpointer then, and only then: runs that end, runs that are
not resumes, and resumes whose first node was given the state read nothing. Real LangGraph graphs on ``InMemorySaver``,
the real OTel SDK, the real local store; in thread mode and with capture in a child process."""

from __future__ import annotations

import asyncio
import operator
import time
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, Send, interrupt

from ee_middleware import record_experience
from ee_middleware.capture import recorder as recorder_module
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_graph_input_tasks import recorded
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")
CONFIG = {"configurable": {"thread_id": "rb-1"}}


def _roles(messages: list[dict[str, Any]]) -> list[str]:
    return [m["role"] for m in messages]


def _refund_agent(checkpointer: Any = None, *, slow: bool = False) -> Any:
    """``create_agent`` whose tool asks a human with ``interrupt()``: the resumed run's first node is ``tools``, which a
    ``Send`` runs on the tool call. ``slow``: the tool then works for a minute (a cancellation cuts it off)."""

    @tool
    async def refund(order_id: str) -> str:
        """Refund an order after a human says yes."""
        answer = interrupt(f"refund {order_id}?")
        if slow:
            await asyncio.sleep(60)
        return f"refunded {order_id} ({answer})"

    script = [AIMessage(content="", tool_calls=[tool_call("refund", order_id="A1")]), AIMessage(content="Refunded.")]
    return create_agent(ScriptedChatModel(script=script), [refund], checkpointer=checkpointer or InMemorySaver())


async def _resume_closed_after(agent: Any, node: str) -> None:
    """Pause the thread on the refund, resume it, and close the resumed stream once ``node`` has run."""
    await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
    stream = agent.astream(Command(resume="yes"), CONFIG, stream_mode="updates")
    async for chunk in stream:
        if node in chunk:
            break
    await stream.aclose()


@OFFLOADS
def test_a_resumed_stream_closed_after_a_tool_that_called_interrupt_keeps_its_turn(offload, store_path):
    agent = record_experience(_refund_agent(), app="shop", store=store_path, offload=offload)

    async def main() -> Any:
        await _resume_closed_after(agent, "tools")
        return await agent.ainvoke(None, CONFIG)

    assert asyncio.run(main())["messages"][-1].content == "Refunded."
    paused, cut, resumed = recorded(agent, store_path)
    call = paused.steps[-1].action.tool_call
    assert (cut.status, cut.error, cut.task, cut.thread_id) == ("interrupted", "cancelled: GeneratorExit", "refund A1", "rb-1")
    assert _roles(cut.messages) == ["user", "assistant", "tool"]
    assert [c["id"] for c in cut.messages[1]["tool_calls"]] == [call.id]
    assert (cut.messages[-1]["tool_call_id"], cut.messages[-1]["content"]) == (call.id, "refunded A1 (yes)")
    assert (cut.final_answer, resumed.status, resumed.task) == (None, "completed", "refund A1")


def test_a_resumed_sync_stream_closed_after_a_tool_that_called_interrupt_keeps_its_turn(store_path):
    @tool
    def refund(order_id: str) -> str:
        """Refund an order after a human says yes."""
        return f"refunded {order_id} ({interrupt(f'refund {order_id}?')})"

    script = [AIMessage(content="", tool_calls=[tool_call("refund", order_id="A1")]), AIMessage(content="Refunded.")]
    graph = create_agent(ScriptedChatModel(script=script), [refund], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="shop", store=store_path)
    agent.invoke({"messages": [("user", "refund A1")]}, CONFIG)
    stream = agent.stream(Command(resume="yes"), CONFIG, stream_mode="updates")
    for chunk in stream:
        if "tools" in chunk:
            break
    stream.close()
    _, cut = recorded(agent, store_path)
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: GeneratorExit", "refund A1")
    assert _roles(cut.messages) == ["user", "assistant", "tool"]


@OFFLOADS
def test_a_resumed_run_cancelled_inside_a_tool_that_called_interrupt_keeps_its_turn(offload, store_path):
    """The resumed tool still works when the caller's time-out cancels the run: the tool call has no observation, and the
    run keeps the conversation it continued (the thread's state is read inside the cancelled task)."""
    agent = record_experience(_refund_agent(slow=True), app="shop", store=store_path, offload=offload)

    async def main() -> None:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(agent.ainvoke(Command(resume="yes"), CONFIG), 0.5)

    asyncio.run(main())
    paused, cut = recorded(agent, store_path)
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: CancelledError", "refund A1")
    assert _roles(cut.messages) == ["user", "assistant"]
    assert cut.messages[-1]["tool_calls"][0]["id"] == paused.steps[-1].action.tool_call.id


class Review(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    verdicts: Annotated[list[str], operator.add]


def _review_graph() -> Any:
    """A writer whose draft a ``Send`` hands to a reviewer node with a payload of its own, holding only the draft under
    a ``messages`` key (not the thread's conversation); the reviewer asks a human with ``interrupt()``."""
    model = ScriptedChatModel(script=[AIMessage(content="Draft: refunds take 5 days."), AIMessage(content="Final: refunds take 5 days.")])

    def write(state: Review) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def to_review(state: Review) -> Any:
        return [Send("review", {"messages": [state["messages"][-1]], "verdicts": []})] if not state["verdicts"] else END

    def review(payload: dict[str, Any]) -> dict[str, Any]:
        return {"verdicts": [interrupt(f"approve {payload['messages'][-1].content!r}?")]}

    builder = StateGraph(Review)
    builder.add_node("write", write)
    builder.add_node("review", review)
    builder.add_edge(START, "write")
    builder.add_conditional_edges("write", to_review, ["review", END])
    builder.add_edge("review", "write")
    return builder.compile(checkpointer=InMemorySaver())


@OFFLOADS
def test_a_resumed_stream_closed_after_a_send_target_with_a_payload_of_its_own_keeps_its_turn(offload, store_path):
    agent = record_experience(_review_graph(), app="docs", store=store_path, offload=offload)

    async def main() -> None:
        await agent.ainvoke({"messages": [("user", "write the refund policy")], "verdicts": []}, CONFIG)
        stream = agent.astream(Command(resume="approved"), CONFIG, stream_mode="updates")
        async for chunk in stream:
            if "review" in chunk:
                break
        await stream.aclose()

    asyncio.run(main())
    paused, cut = recorded(agent, store_path)
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: GeneratorExit", "write the refund policy")
    # the conversation it continued, as the paused run that stopped in that state has it (not the payload's draft alone)
    assert _roles(cut.messages) == ["user", "assistant"]
    assert (cut.messages, cut.final_answer) == (paused.messages, paused.final_answer)


def _counting_state_reads(graph: Any) -> list[Any]:
    """The configs ``graph.get_state``/``aget_state`` are called with from now on (the graph still reads its state)."""
    reads: list[Any] = []
    get_state, aget_state = graph.get_state, graph.aget_state

    def counted(config: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(config)
        return get_state(config, *args, **kwargs)

    async def acounted(config: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(config)
        return await aget_state(config, *args, **kwargs)

    graph.get_state, graph.aget_state = counted, acounted
    return reads


def test_only_a_resume_cut_off_before_a_node_given_the_state_reads_the_threads_state(store_path):
    """Runs that end, a new turn's stream closed early, and a resume whose first node was given the state
    (``HumanInTheLoopMiddleware``) read nothing from the checkpointer; the resume whose first node is a ``Send``'s
    target reads it once."""
    script = [
        AIMessage(content="", tool_calls=[tool_call("lookup", order_id="A1")]),
        AIMessage(content="A1 is fine."),
        AIMessage(content="", tool_calls=[tool_call("lookup", order_id="B2")]),
        AIMessage(content="B2 is fine."),
    ]

    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return f"order {order_id} ok"

    reviewed = create_agent(
        ScriptedChatModel(script=script),
        [lookup],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"lookup": True})],
        checkpointer=InMemorySaver(),
    )
    asking = _refund_agent()
    reviewed_reads, asking_reads = _counting_state_reads(reviewed), _counting_state_reads(asking)
    hitl = record_experience(reviewed, app="shop", store=store_path)
    ask = record_experience(asking, app="shop", store=store_path)

    async def main() -> None:
        stream = hitl.astream({"messages": [("user", "is A1 fine?")]}, {"configurable": {"thread_id": "new"}}, stream_mode="updates")
        async for _ in stream:
            break  # a new turn closed early: nothing to read (its input holds its conversation)
        await stream.aclose()
        config = {"configurable": {"thread_id": "hitl"}}
        await hitl.ainvoke({"messages": [("user", "is A1 fine?")]}, config)
        stream = hitl.astream(Command(resume={"decisions": [{"type": "approve"}]}), config, stream_mode="updates")
        async for chunk in stream:
            if "tools" in chunk:
                break
        await stream.aclose()
        await hitl.ainvoke(None, config)  # a resume that ends
        assert reviewed_reads == []
        await _resume_closed_after(ask, "tools")
        assert len(asking_reads) == 1
        assert asking_reads[0]["configurable"]["thread_id"] == "rb-1"

    asyncio.run(main())
    hitl.recorder.close()
    ask.recorder.close()


def test_a_checkpointer_that_cannot_be_read_never_fails_the_closed_stream_stand_in(store_path, monkeypatch):
    """Stand-in for a database that fails or hangs after the run (an ``InMemorySaver`` whose reads then raise, or never
    answer): closing the resumed stream neither raises nor waits longer than ``STOPPED_STATE_TIMEOUT_S``, and the run
    is still recorded (without the conversation it continued)."""
    monkeypatch.setattr(recorder_module, "STOPPED_STATE_TIMEOUT_S", 0.3)

    class FailingAfterTheCut(InMemorySaver):
        mode: str | None = None

        async def aget_tuple(self, config: Any) -> Any:
            if self.mode == "raise":
                raise ConnectionError("the database went away")
            if self.mode == "hang":
                await asyncio.Event().wait()
            return await super().aget_tuple(config)

    for mode in ("raise", "hang"):
        saver = FailingAfterTheCut()
        agent = record_experience(_refund_agent(saver), app="shop", store=store_path / mode)

        async def main(agent: Any, saver: FailingAfterTheCut) -> float:
            await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
            stream = agent.astream(Command(resume="yes"), CONFIG, stream_mode="updates")
            async for chunk in stream:
                if "tools" in chunk:
                    break
            saver.mode = mode  # noqa: B023 - read before the next loop
            started = time.monotonic()
            await stream.aclose()
            return time.monotonic() - started

        assert asyncio.run(main(agent, saver)) < 2.0
        _, cut = recorded(agent, store_path / mode)
        assert (cut.status, cut.error) == ("interrupted", "cancelled: GeneratorExit")
