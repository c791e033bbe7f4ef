"""A run whose task or stream is dropped unfinished and then garbage-collected is stored as ``interrupted``
(``cancelled: GeneratorExit``), as one closed by hand is. A sync app that runs its agent on an event loop thread it stops
at shutdown leaves the pending ``ainvoke`` task on a closed loop; the task, its coroutine and the run are one reference
cycle, and the collector cleared the run's weak reference (dropping it from the runs in flight) before it closed the
coroutine, whose ``close()`` then found no run to end: the run was lost without a word. Real ``create_agent`` graphs,
real asyncio, the real garbage collector and OTel SDK, in thread mode and in the capture process, a real local store."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.capture.clock import CLOCK
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.usefixtures("no_child_left"),
    # an exception capture's code let out inside the collector fails the test; LangGraph's own coroutines, closed by the
    # collector on a loop that is gone, say so (the app's, not capture's)
    pytest.mark.filterwarnings(
        "error::pytest.PytestUnraisableExceptionWarning",
        "ignore:Exception ignored in. <coroutine object:pytest.PytestUnraisableExceptionWarning",
        "ignore:coroutine .* was never awaited",
    ),
]


def _agent(tools: list[Any], store: Path, offload: str) -> Any:
    script = [AIMessage(content="", tool_calls=[tool_call("lookup", order_id="A-1")]), AIMessage(content="A-1 has shipped.")]
    return record_experience(create_agent(ScriptedChatModel(script=script), tools), app="support", store=store, offload=offload)


def _only(store: Path, thread_id: str) -> Trajectory:
    opened = LocalExperienceStore(store)
    [trajectory_id] = opened.trajectories().filter(pl.col("thread_id") == thread_id)["id"].to_list()
    return opened.get(trajectory_id)


def _assert_cut_off_and_not_in_flight(agent: Any, store: Path, thread_id: str) -> None:
    assert agent.recorder.flush()
    assert agent.recorder.finisher._active_runs == 0  # no longer counted in flight (the finisher's deferral)
    assert CLOCK._in_flight == 0
    agent.recorder.close()
    run = _only(store, thread_id)
    assert (run.status, run.error) == ("interrupted", "cancelled: GeneratorExit")
    assert [(s.action.tool_call.name, s.observation) for s in run.steps] == [("lookup", None)]  # type: ignore[union-attr]


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_pending_task_collected_after_its_loop_closed_is_stored_as_interrupted(tmp_path: Path, offload: str) -> None:
    store, started = tmp_path / "experience", threading.Event()

    @tool
    async def lookup(order_id: str) -> str:
        """Look an order up (slowly)."""
        started.set()
        await asyncio.sleep(30)
        return "never seen"

    agent = _agent([lookup], store, offload)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever)
    loop_thread.start()
    inputs, config = {"messages": [("user", "Where is A-1?")]}, {"configurable": {"thread_id": "shutdown"}}
    future = asyncio.run_coroutine_threadsafe(agent.ainvoke(inputs, config), loop)
    assert started.wait(30)
    loop.call_soon_threadsafe(loop.stop)  # the app shuts down: its loop stops with the request's task pending
    loop_thread.join(30)
    loop.close()
    del future, loop
    gc.collect()
    _assert_cut_off_and_not_in_flight(agent, store, "shutdown")


def test_a_sync_stream_left_in_a_reference_cycle_is_stored_as_interrupted_when_collected(tmp_path: Path) -> None:
    store = tmp_path / "experience"

    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return f"order {order_id}: shipped"

    agent = _agent([lookup], store, "thread")
    chunks = agent.stream({"messages": [("user", "Where is A-1?")]}, {"configurable": {"thread_id": "left"}}, stream_mode="updates")
    next(chunks)  # the model's tool call; the consumer goes away before the tool runs
    holder: dict[str, Any] = {"chunks": chunks}
    holder["self"] = holder  # the stream is reachable from cyclic garbage only: the collector, not a refcount, frees it
    del chunks, holder
    gc.collect()
    _assert_cut_off_and_not_in_flight(agent, store, "left")
