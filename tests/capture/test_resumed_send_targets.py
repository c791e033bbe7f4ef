"""A resumed run cut off before the graph returned (a stream closed early, a cancelled task) whose first node is not
given the thread's state keeps its turn's task and the conversation it continued. A node a ``Send`` runs is given the
``Send``'s payload: ``create_agent``'s tools after ``interrupt()`` in a tool get the tool calls, a custom fan-out its own
dict (even one with a ``messages`` key of its own). Before, such a run was stored with no task and only its tool's
message. The recorder reads the thread's state from the checkpointer then, and only then: runs that end, runs that are
not resumes, and resumes whose first node was given the state read nothing. The read runs beside the caller (a thread,
or a task of its own on the caller's loop): a closed stream or a cancellation returns at once, an anyio cancel scope's
repeated cancellation cannot reach the read, and the run is stored when it answers or at its bound. Real LangGraph
graphs on ``InMemorySaver`` (subclasses that wait, fail or hang as a database may: stand-ins), the real OTel SDK, the
real local store; in thread mode and with capture in a child process."""

from __future__ import annotations

import asyncio
import gc
import operator
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import anyio
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


def _refund_agent(checkpointer: Any = None, *, slow: bool = False, on_resume: Callable[[], None] | None = None) -> Any:
    """``create_agent`` whose tool asks a human with ``interrupt()``: the resumed run's first node is ``tools``, which a
    ``Send`` runs on the tool call. ``slow``: the tool then works for a minute (a cancellation cuts it off).
    ``on_resume``: called in the resumed tool (after the graph read its checkpoint to resume)."""

    @tool
    async def refund(order_id: str) -> str:
        """Refund an order after a human says yes."""
        answer = interrupt(f"refund {order_id}?")
        if on_resume is not None:
            on_resume()
        if slow:
            await asyncio.sleep(60)
        return f"refunded {order_id} ({answer})"

    script = [AIMessage(content="", tool_calls=[tool_call("refund", order_id="A1")]), AIMessage(content="Refunded.")]
    return create_agent(ScriptedChatModel(script=script), [refund], checkpointer=checkpointer or InMemorySaver())


def _sync_refund_agent(checkpointer: Any) -> Any:
    """:func:`_refund_agent` with a sync tool, for ``invoke``/``stream``."""

    @tool
    def refund(order_id: str) -> str:
        """Refund an order after a human says yes."""
        return f"refunded {order_id} ({interrupt(f'refund {order_id}?')})"

    script = [AIMessage(content="", tool_calls=[tool_call("refund", order_id="A1")]), AIMessage(content="Refunded.")]
    return create_agent(ScriptedChatModel(script=script), [refund], checkpointer=checkpointer)


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


class _FailingAfterTheCut(InMemorySaver):
    """Stand-in for a database that fails or hangs after the run: once ``mode`` is set, its reads (sync and async) raise,
    or never answer (a sync one waits for ``release``, at most 5 s, so that its thread ends with the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode: str | None = None
        self.reads = 0
        self.entered, self.left, self.release = threading.Event(), threading.Event(), threading.Event()

    def get_tuple(self, config: Any) -> Any:
        if self.mode is not None:
            self.reads += 1
            self.entered.set()
            try:
                if self.mode == "raise":
                    raise ConnectionError("the database went away")
                self.release.wait(5)
            finally:
                self.left.set()
        return super().get_tuple(config)

    async def aget_tuple(self, config: Any) -> Any:
        if self.mode is not None:
            self.reads += 1
            self.entered.set()
            try:
                if self.mode == "raise":
                    raise ConnectionError("the database went away")
                await asyncio.Event().wait()
            finally:
                self.left.set()
        return InMemorySaver.get_tuple(self, config)


def test_a_checkpointer_that_cannot_be_read_never_fails_or_delays_the_closed_stream_stand_in(store_path, monkeypatch):
    """Stand-in for a database that fails or hangs after the run (see ``_FailingAfterTheCut``): the resumed stream's
    ``aclose()`` reads the thread's state (once), neither raises nor waits for the read, and the run is recorded
    without the conversation it continued, at ``STOPPED_STATE_TIMEOUT_S`` at the latest (before, ``aclose()`` waited
    for it)."""
    monkeypatch.setattr(recorder_module, "STOPPED_STATE_TIMEOUT_S", 0.3)
    for mode in ("raise", "hang"):
        saver = _FailingAfterTheCut()
        agent = record_experience(_refund_agent(saver), app="shop", store=store_path / mode)

        async def main(agent: Any, saver: _FailingAfterTheCut) -> None:
            await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
            stream = agent.astream(Command(resume="yes"), CONFIG, stream_mode="updates")
            async for chunk in stream:
                if "tools" in chunk:
                    break
            saver.mode = mode  # noqa: B023 - read before the next loop
            await stream.aclose()
            assert saver.entered.is_set()
            if mode == "hang":  # noqa: B023
                assert not saver.left.is_set()  # aclose() did not wait for it
            while not saver.left.is_set():  # the hung read is given up at the bound
                await asyncio.sleep(0.01)

        asyncio.run(main(agent, saver))
        _, cut = recorded(agent, store_path / mode)
        assert saver.reads == 1
        assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: GeneratorExit", None)


def test_a_sync_checkpointer_that_cannot_be_read_never_fails_or_delays_the_closed_stream_stand_in(store_path, monkeypatch):
    """The same for a sync stream (before, ``close()`` raised nothing but waited as long as the read took): a hung read
    is given up at ``STOPPED_STATE_TIMEOUT_S``, and a flush waits for that, not for the checkpointer."""
    monkeypatch.setattr(recorder_module, "STOPPED_STATE_TIMEOUT_S", 0.3)
    for mode in ("raise", "hang"):
        saver = _FailingAfterTheCut()
        agent = record_experience(_sync_refund_agent(saver), app="shop", store=store_path / mode)
        agent.invoke({"messages": [("user", "refund A1")]}, CONFIG)
        stream = agent.stream(Command(resume="yes"), CONFIG, stream_mode="updates")
        for chunk in stream:
            if "tools" in chunk:
                break
        saver.mode = mode
        stream.close()
        assert saver.entered.wait(5)
        if mode == "hang":
            assert not saver.left.is_set()  # close() did not wait for it
        try:
            _, cut = recorded(agent, store_path / mode)  # its flush: at the bound, not when the checkpointer answers
            assert not saver.left.is_set() if mode == "hang" else saver.left.is_set()
        finally:
            saver.release.set()  # (the hung read's thread ends)
        assert saver.reads == 1
        assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: GeneratorExit", None)


class _SlowSaver(InMemorySaver):
    """Stand-in for a database that answers slowly once ``slow`` is set (after the cut): ``get_tuple`` blocks its thread
    and ``aget_tuple`` awaits (``asyncio.sleep``) until ``release`` is set, or for ``delay_s`` where that is given (a
    round trip). ``entered``/``left`` tell when a read began and ended; each wait is bounded (5 s), so code that waits
    for the read cannot hang the test."""

    def __init__(self, delay_s: float | None = None) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.slow = False
        self.reads = 0
        self.entered, self.left, self.release = threading.Event(), threading.Event(), threading.Event()

    def get_tuple(self, config: Any) -> Any:
        if self.slow:
            self.reads += 1
            self.entered.set()
            try:
                if self.delay_s is not None:
                    time.sleep(self.delay_s)
                else:
                    self.release.wait(5)
            finally:
                self.left.set()
        return super().get_tuple(config)

    async def aget_tuple(self, config: Any) -> Any:
        if self.slow:
            self.reads += 1
            self.entered.set()
            try:
                if self.delay_s is not None:
                    await asyncio.sleep(self.delay_s)
                else:
                    deadline = time.monotonic() + 5
                    while not self.release.is_set() and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
            finally:
                self.left.set()
        return InMemorySaver.get_tuple(self, config)


def test_a_sync_stream_closed_returns_before_a_slow_checkpointer_answers_and_keeps_its_turn(store_path):
    """``close()`` of a resumed sync stream does not wait for the thread's state (before, it waited as long as the
    checkpointer took: a hung one, for ever); the run is recorded with its turn once the read answers, and a flush waits
    for it."""
    saver = _SlowSaver()
    agent = record_experience(_sync_refund_agent(saver), app="shop", store=store_path)
    agent.invoke({"messages": [("user", "refund A1")]}, CONFIG)
    stream = agent.stream(Command(resume="yes"), CONFIG, stream_mode="updates")
    for chunk in stream:
        if "tools" in chunk:
            break
    saver.slow = True
    stream.close()
    assert saver.entered.wait(5)  # the read began...
    assert not saver.left.is_set()  # ...and close() returned while it waits
    saver.release.set()
    _, cut = recorded(agent, store_path)
    assert saver.reads == 1
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: GeneratorExit", "refund A1")
    assert _roles(cut.messages) == ["user", "assistant", "tool"]


def _cut_in_the_tool(saver: _SlowSaver, cut: Callable[[], None]) -> Callable[[], None]:
    """``on_resume`` for :func:`_refund_agent`: the checkpointer is slow from now on, and the run is cut (``cut``, on
    the loop) once its tool has started, however long the resume took to get there."""

    def on_resume() -> None:
        saver.slow = True
        asyncio.get_running_loop().call_soon(cut)

    return on_resume


def test_a_resumed_run_cancelled_by_its_own_time_out_returns_before_a_slow_checkpointer_answers(store_path):
    """A time-out (``asyncio.timeout``, ``wait_for``) returns without waiting for the read of the thread's state
    beyond ``STOPPED_STATE_WAIT_S`` (before, up to 2 s later); the run keeps its turn once the read answers."""
    saver = _SlowSaver()
    time_outs: list[asyncio.Timeout] = []
    on_resume = _cut_in_the_tool(saver, lambda: time_outs[0].reschedule(asyncio.get_running_loop().time()))
    agent = record_experience(_refund_agent(saver, slow=True, on_resume=on_resume), app="shop", store=store_path)

    async def main() -> None:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as time_out:
                time_outs.append(time_out)
                await agent.ainvoke(Command(resume="yes"), CONFIG)
        assert saver.entered.is_set()  # the read began before the caller went on...
        assert not saver.left.is_set()  # ...which did not wait for it
        saver.release.set()
        while not saver.left.is_set():
            await asyncio.sleep(0.01)

    asyncio.run(main())
    _, cut = recorded(agent, store_path)
    assert saver.reads == 1
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: CancelledError", "refund A1")
    assert _roles(cut.messages) == ["user", "assistant"]


@OFFLOADS
@pytest.mark.parametrize("scope", ["move_on_after", "CancelScope.cancel"])
def test_a_resumed_run_cancelled_by_an_anyio_cancel_scope_keeps_its_turn_with_a_checkpointer_that_awaits(scope, offload, store_path):
    """An anyio cancel scope (Starlette/FastAPI cancelling a request whose client went away, ``anyio.move_on_after``)
    cancels its task again at every await: a read of the thread's state made in that task was cancelled too, and the
    run stored with no task, with any checkpointer whose reads really await (a database). The caller's loop ends right
    after (``asyncio.run`` returns): the read still answers."""
    saver = _SlowSaver(delay_s=0.05)
    scopes: list[anyio.CancelScope] = []

    def cut() -> None:  # once the tool started: the deadline passed (move_on_after), or cancel()
        if scope == "move_on_after":
            scopes[0].deadline = asyncio.get_running_loop().time()  # (anyio.current_time() needs a task: this is a callback)
        else:
            scopes[0].cancel()

    resumed = _refund_agent(saver, slow=True, on_resume=_cut_in_the_tool(saver, cut))
    agent = record_experience(resumed, app="shop", store=store_path, offload=offload)

    async def main() -> None:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
        with anyio.move_on_after(60) if scope == "move_on_after" else anyio.CancelScope() as cancel_scope:
            scopes.append(cancel_scope)
            await agent.ainvoke(Command(resume="yes"), CONFIG)
        assert cancel_scope.cancelled_caught

    asyncio.run(main())
    paused, cut = recorded(agent, store_path)
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: CancelledError", "refund A1")
    assert saver.reads == 2  # the first cut off as asyncio.run ended (it cancels every task once), then read again
    assert _roles(cut.messages) == ["user", "assistant"]
    assert cut.messages[-1]["tool_calls"][0]["id"] == paused.steps[-1].action.tool_call.id


def test_a_run_ended_at_sigterm_reads_nothing_when_its_task_is_cancelled_after(store_path):
    """A resumed run still in its tool when the process ends at SIGTERM is written then (``_end_runs_in_flight``, what
    capture's handler calls; a server cancels the task after): its cancellation reads no state, which nothing would keep.
    (Its task is empty: the read is not made at SIGTERM, whose time is for writing, see ``_StateRead``.)"""
    asking = _refund_agent(slow=True)
    reads = _counting_state_reads(asking)
    agent = record_experience(asking, app="shop", store=store_path)

    async def main() -> None:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
        resumed = asyncio.ensure_future(agent.ainvoke(Command(resume="yes"), CONFIG))
        while not agent.recorder._in_flight:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # inside the tool
        assert agent.recorder._end_runs_in_flight("terminated: SIGTERM") == 1
        resumed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await resumed

    asyncio.run(main())
    _, cut = recorded(agent, store_path)
    assert reads == []
    assert (cut.status, cut.error) == ("interrupted", "terminated: SIGTERM")


def test_sigterm_ends_a_run_waiting_for_a_hung_checkpointer_at_once_as_its_caller_said_stand_in(store_path):
    """A run whose stream was closed and whose read of the thread's state hangs (stand-in for a database, see
    ``_FailingAfterTheCut``) is ended by SIGTERM's writer (``_end_runs_in_flight``, what capture's handler calls) at
    once, not after the read's bound, as its caller ended it (``cancelled: GeneratorExit``), without the state."""
    saver = _FailingAfterTheCut()
    agent = record_experience(_sync_refund_agent(saver), app="shop", store=store_path)
    agent.invoke({"messages": [("user", "refund A1")]}, CONFIG)
    stream = agent.stream(Command(resume="yes"), CONFIG, stream_mode="updates")
    for chunk in stream:
        if "tools" in chunk:
            break
    saver.mode = "hang"
    try:
        stream.close()
        assert saver.entered.wait(5)
        assert agent.recorder._end_runs_in_flight("terminated: SIGTERM") == 1
        assert not saver.left.is_set()  # ended without waiting for the read
    finally:
        saver.release.set()
    _, cut = recorded(agent, store_path)
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: GeneratorExit", None)


def test_a_flush_finds_a_run_its_read_ends_on_another_thread_after_a_slow_thread_switch_stand_in(store_path, monkeypatch):
    """A run ended by its read on the reader thread is in the store when a flush waiting for that read returns, also
    where that thread is descheduled as it ends the run (stand-in: a 50 ms pause in ``_Run._end`` off the main thread,
    as on a loaded machine). Before, the flush saw the read settled and returned first, and ``close()`` then lost the
    run."""
    end = recorder_module._Run._end

    def slow_end(self: Any, *args: Any, **kwargs: Any) -> bool:
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.05)
        return end(self, *args, **kwargs)

    monkeypatch.setattr(recorder_module._Run, "_end", slow_end)
    saver = _SlowSaver()
    agent = record_experience(_sync_refund_agent(saver), app="shop", store=store_path)
    agent.invoke({"messages": [("user", "refund A1")]}, CONFIG)
    stream = agent.stream(Command(resume="yes"), CONFIG, stream_mode="updates")
    for chunk in stream:
        if "tools" in chunk:
            break
    saver.slow = True
    stream.close()
    assert saver.entered.wait(5)
    saver.release.set()
    trajectories = recorded(agent, store_path)  # its flush, then close()
    assert [(t.status, t.error, t.task) for t in trajectories[1:]] == [("interrupted", "cancelled: GeneratorExit", "refund A1")]


def test_a_flush_in_async_code_right_after_a_cancelled_resume_keeps_its_turn_with_a_checkpointer_that_awaits(store_path):
    """``agent.flush()`` on the event loop right after a resumed run was cancelled (a FastAPI lifespan's flush, a
    ``close()``), with a checkpointer whose reads await (a database's round trip, stand-in: 50 ms): the run is stored
    with its turn. Before, the caller went on after one yield, and that flush stored the run without it."""
    saver = _SlowSaver(delay_s=0.05)
    tasks: list[asyncio.Task[Any]] = []
    agent = record_experience(
        _refund_agent(saver, slow=True, on_resume=_cut_in_the_tool(saver, lambda: tasks[0].cancel())), app="shop", store=store_path
    )

    async def main() -> None:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
        tasks.append(asyncio.ensure_future(agent.ainvoke(Command(resume="yes"), CONFIG)))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert agent.flush()

    asyncio.run(main())
    _, cut = recorded(agent, store_path)
    assert saver.reads == 1
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: CancelledError", "refund A1")
    assert _roles(cut.messages) == ["user", "assistant"]


@pytest.mark.parametrize("ending", ["run_until_complete then close", "asyncio.run with the run in the background"])
def test_a_loop_that_ends_with_the_read_pending_leaves_no_pending_task_and_no_wait(ending, store_path, caplog):
    """A loop that ends while the read of a cut run's state is pending (a slow checkpointer, stand-in): ``loop.close()``
    after ``run_until_complete``, or ``asyncio.run`` ending while the resumed run is a background task. The next flush
    stores the run at once, without the state (the loop cannot answer), and asyncio logs no "Task was destroyed but it
    is pending!". Before, that flush waited the read's whole bound (2 s) and the warning was logged."""
    saver = _SlowSaver()
    tasks: list[asyncio.Task[Any]] = []
    agent = record_experience(
        _refund_agent(saver, slow=True, on_resume=_cut_in_the_tool(saver, lambda: tasks[0].cancel())), app="shop", store=store_path
    )

    async def cut_by_a_cancel() -> None:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
        tasks.append(asyncio.ensure_future(agent.ainvoke(Command(resume="yes"), CONFIG)))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]

    async def left_running() -> None:
        await agent.ainvoke({"messages": [("user", "refund A1")]}, CONFIG)
        resumed = asyncio.ensure_future(agent.ainvoke(Command(resume="yes"), CONFIG))
        tasks.append(asyncio.ensure_future(asyncio.sleep(60)))  # what the tool cancels here: the run is left to asyncio.run
        while not saver.slow:
            await asyncio.sleep(0.01)
        tasks[0].cancel()
        assert not resumed.done()

    caplog.set_level("ERROR", logger="asyncio")
    try:
        if ending == "run_until_complete then close":
            loop = asyncio.new_event_loop()
            loop.run_until_complete(cut_by_a_cancel())
            loop.close()
        else:
            asyncio.run(left_running())
        assert saver.entered.is_set() and not saver.left.is_set()  # the loop ended with the read pending
        started = time.monotonic()
        trajectories = recorded(agent, store_path)
        took = time.monotonic() - started
        gc.collect()
    finally:
        saver.release.set()
    assert took < 1.0, f"the flush waited {took:.2f}s for a loop that had ended"
    assert [t.task for t in trajectories[1:]] == [None]
    assert trajectories[-1].status == "interrupted"
    assert "Task was destroyed" not in caplog.text


def test_sigterm_never_waits_for_a_read_whose_lock_the_interrupted_thread_holds_stand_in(store_path):
    """SIGTERM's handler may run on the thread that holds the lock of a read of the thread's state (an async read
    settles on the loop's thread, usually the main one), and then waits for its writer. The writer
    (``_end_runs_in_flight``, then a flush, what capture's handler calls) ends that run at once, as its caller said,
    and does not wait for the lock (stand-in: the test's thread holds it). Before, the writer waited on it for ever."""
    saver = _FailingAfterTheCut()
    agent = record_experience(_sync_refund_agent(saver), app="shop", store=store_path)
    agent.invoke({"messages": [("user", "refund A1")]}, CONFIG)
    stream = agent.stream(Command(resume="yes"), CONFIG, stream_mode="updates")
    for chunk in stream:
        if "tools" in chunk:
            break
    saver.mode = "hang"
    ended: list[int] = []

    def writer() -> None:
        ended.append(agent.recorder._end_runs_in_flight("terminated: SIGTERM"))
        agent.recorder.flush(timeout=5)

    try:
        stream.close()
        assert saver.entered.wait(5)
        (read,) = agent.recorder._reading.values()
        with read._lock:  # as the interrupted thread would
            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            thread.join(1)
            assert not thread.is_alive(), "SIGTERM's writer waited for the read's lock"
        assert ended == [1]
    finally:
        saver.release.set()
    _, cut = recorded(agent, store_path)
    assert (cut.status, cut.error, cut.task) == ("interrupted", "cancelled: GeneratorExit", None)
