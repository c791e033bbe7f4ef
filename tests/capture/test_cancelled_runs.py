"""A run stopped from outside (its asyncio task cancelled by a client disconnect, a time-out or a server shutting down;
its stream closed before the end) is ``interrupted`` with the reason as its ``error``, and a tool call it cut off has no
observation: the model never saw a result. Before, the call's observation was ``CancelledError: <the canceller's
message>`` flagged as a tool error, which IWM then taught as the tool's answer, and a closed stream left a ``paused/``
note as if the run waited for a human review. Real ``create_agent`` graphs, real asyncio cancellation, the real OTel SDK
(in thread mode and in the capture process), a real local store, datasets built by ``ee datasets build``'s own code."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.capture.paused import PAUSED_FOLDER
from ee_middleware.cli.app import app
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_child_left")


def _agent(tools: list[Any], store: Path, offload: str = "thread") -> Any:
    """A support agent whose model looks the order up, then answers with what the tool said."""
    script = [AIMessage(content="", tool_calls=[tool_call("lookup", order_id="A-1")]), AIMessage(content="A-1 has shipped.")]
    return record_experience(create_agent(ScriptedChatModel(script=script), tools), app="support", store=store, offload=offload)


def _finished_run(store: Path, offload: str) -> None:
    """A run that ends on the model's answer (beside the cancelled one, so datasets have a row to build)."""

    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return f"order {order_id}: shipped"

    agent = _agent([lookup], store, offload)
    agent.invoke({"messages": [("user", "Where is A-1?")]}, {"configurable": {"thread_id": "done"}})
    agent.recorder.close()


def _only(store: Path, thread_id: str) -> Trajectory:
    opened = LocalExperienceStore(store)
    [trajectory_id] = opened.trajectories().filter(pl.col("thread_id") == thread_id)["id"].to_list()
    return opened.get(trajectory_id)


def _paused_notes(store: Path) -> list[str]:
    folder = store / PAUSED_FOLDER
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(
    ("offload", "kind"), [("thread", "async tool"), ("process", "async tool"), ("thread", "sync tool in a worker thread")]
)
def test_a_tool_call_cancelled_with_its_request_has_no_observation_and_the_run_says_why(tmp_path: Path, offload: str, kind: str) -> None:
    store = tmp_path / "experience"
    _finished_run(store, offload)
    started, release = threading.Event(), threading.Event()

    if kind == "async tool":

        @tool
        async def lookup(order_id: str) -> str:
            """Look an order up (slowly)."""
            started.set()
            await asyncio.sleep(30)
            return "never seen"

    else:  # LangGraph runs it in a thread; cancelling the task leaves it running and no end callback comes in time

        @tool
        def lookup(order_id: str) -> str:
            """Look an order up (slowly)."""
            started.set()
            release.wait(30)
            return "never seen"

    agent = _agent([lookup], store, offload)

    async def request() -> None:  # what Starlette does when the client goes away: the request's task is cancelled
        task = asyncio.create_task(agent.ainvoke({"messages": [("user", "Where is A-1?")]}, {"configurable": {"thread_id": "req"}}))
        await asyncio.to_thread(started.wait, 30)
        task.cancel("client disconnected")
        with contextlib.suppress(asyncio.CancelledError):
            await task
        release.set()  # the sync tool's thread ends now (asyncio.run waits for it), after the run was recorded as cancelled

    try:
        asyncio.run(request())
    finally:
        release.set()
    agent.recorder.close()

    cancelled = _only(store, "req")
    assert (cancelled.status, cancelled.error) == ("interrupted", "cancelled: CancelledError")
    [step] = cancelled.steps
    assert (step.action.tool_call.name, step.observation) == ("lookup", None)  # type: ignore[union-attr]
    assert _paused_notes(store) == []  # nobody reviews a cancelled request
    shown = CliRunner().invoke(app, ["traces", "show", cancelled.id, "--store", str(store)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "why: cancelled: CancelledError" in shown.output

    # approved, the cancelled call teaches no world model (no IWM row) and no imitation (its turn was cut off)
    opened = LocalExperienceStore(store)
    opened.approve(opened.trajectories()["id"].to_list(), by="reviewer", reason="looks right")
    out = tmp_path / "datasets"
    build_datasets(DatasetConfig.load(store=store, out=out, kinds="il,iwm"))
    iwm = pl.read_parquet(out / "iwm.parquet")
    assert iwm["trajectory_id"].to_list() == [_only(store, "done").id]
    assert not any("Cancelled" in completion for completion in iwm["completion"])
    assert set(pl.read_parquet(out / "il.parquet")["trajectory_id"]) == {_only(store, "done").id}


def test_a_stream_closed_early_is_cancelled_and_leaves_no_paused_note(tmp_path: Path) -> None:
    """A web handler closes the stream when its client goes away (``aclosing`` and ``break``): the run stops there."""
    store = tmp_path / "experience"

    @tool
    async def lookup(order_id: str) -> str:
        """Look an order up (slowly)."""
        await asyncio.sleep(30)
        return "never seen"

    agent = _agent([lookup], store)

    async def request() -> None:
        inputs, config = {"messages": [("user", "Where is A-1?")]}, {"configurable": {"thread_id": "streamed"}}
        async with contextlib.aclosing(agent.astream(inputs, config, stream_mode="updates")) as chunks:
            async for _ in chunks:
                break  # the model's tool call came; the client is gone

    asyncio.run(request())
    agent.recorder.close()
    closed = _only(store, "streamed")
    assert (closed.status, closed.error) == ("interrupted", "cancelled: GeneratorExit")
    assert [(s.action.tool_call.name, s.observation) for s in closed.steps] == [("lookup", None)]  # type: ignore[union-attr]
    assert _paused_notes(store) == []
