"""A run LangGraph drains (``RunControl.request_drain()``, what a server does on SIGTERM: the run stops at the next step
boundary, its checkpoint saved, and raises ``GraphDrained``) is stopped from outside, not failed: it is ``interrupted``
with ``drained: REASON`` as its ``error``, and its conversation is the thread's state the drain saved, with the results
of the calls that ran before it (they were missing: the run was stored as ``error``, its messages ending on the model's
call). The resumed run (``invoke(None, config)``) is recorded as any resumed run. Real ``create_agent`` graphs with an
in-memory checkpointer, real drains, thread mode and the capture process, a real local store."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

langgraph_runtime = pytest.importorskip("langgraph.runtime")
if not hasattr(langgraph_runtime, "RunControl"):  # (LangGraph before 1.2 cannot drain a run)
    pytest.skip("this LangGraph cannot drain a run (no langgraph.runtime.RunControl)", allow_module_level=True)

from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.errors import GraphDrained  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_child_left")


class SlowReadSaver(InMemorySaver):
    """An in-memory checkpointer whose reads by capture take a database's round trip (50 ms; 300 ms async)."""

    def get_tuple(self, config: Any) -> Any:
        if threading.current_thread().name == "ee-stopped-state-read":
            time.sleep(0.05)
        return super().get_tuple(config)

    async def aget_tuple(self, config: Any) -> Any:
        task = asyncio.current_task()
        if task is not None and "_aread_state" in repr(task.get_coro()):
            await asyncio.sleep(0.3)
        return super().get_tuple(config)


def _drained_agent(store: Path, offload: str, checkpointer: Any = None) -> tuple[Any, Any]:
    """A recorded agent whose first tool call asks for a drain while it runs (a SIGTERM handler would), and its control."""
    control = langgraph_runtime.RunControl()

    @tool
    def step(i: int) -> str:
        """Do step i."""
        if i == 0:
            control.request_drain("deploy")
        return f"did {i}"

    script = [
        AIMessage(content="", tool_calls=[tool_call("step", i=0)]),
        AIMessage(content="", tool_calls=[tool_call("step", i=1)]),
        AIMessage(content="Both steps are done."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [step], checkpointer=checkpointer or InMemorySaver())
    return record_experience(graph, app="steps", store=store, offload=offload), control


def _runs(store: Path) -> list[Trajectory]:
    opened = LocalExperienceStore(store)
    ids = opened.trajectories().sort("started_at")["id"].to_list()
    return [opened.get(i) for i in ids]


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream"])
def test_a_drained_run_is_interrupted_with_its_reason_and_keeps_the_results_of_its_calls(tmp_path: Path, offload: str, mode: str) -> None:
    store = tmp_path / "experience"
    agent, control = _drained_agent(store, offload)
    config = {"configurable": {"thread_id": "t-1"}}
    task = {"messages": [("user", "Do both steps.")]}
    with pytest.raises(GraphDrained):
        if mode == "invoke":
            agent.invoke(task, config, control=control)
        elif mode == "ainvoke":
            asyncio.run(agent.ainvoke(task, config, control=control))
        else:
            list(agent.stream(task, config, control=control))
    assert agent.get_state(config).next == ("model",)  # (resumable where the drain stopped it)
    resumed = agent.invoke(None, config)
    assert resumed["messages"][-1].content == "Both steps are done."
    agent.recorder.close()

    drained, finished = _runs(store)
    assert (drained.status, drained.error) == ("interrupted", "drained: deploy")
    assert [(s.action.tool_call.name, s.observation.content) for s in drained.steps] == [("step", "did 0")]
    # the conversation the drain saved, the tool's result included (it ended on the model's call before)
    assert [m["role"] for m in drained.messages] == ["user", "assistant", "tool"]
    assert drained.messages[-1]["content"] == "did 0"
    assert finished.status == "completed" and finished.final_answer == "Both steps are done."
    assert [(s.action.tool_call.name, s.observation.content) for s in finished.steps if s.action.tool_call] == [("step", "did 1")]
    assert [t.thread_id for t in (drained, finished)] == ["t-1", "t-1"]


def test_a_drained_run_without_a_checkpointer_is_interrupted_with_what_capture_saw(tmp_path: Path) -> None:
    """Without a checkpointer there is no thread state to read: still ``interrupted``, never ``error``."""
    control = langgraph_runtime.RunControl()

    @tool
    def step(i: int) -> str:
        """Do step i."""
        control.request_drain()
        return f"did {i}"

    script = [AIMessage(content="", tool_calls=[tool_call("step", i=0)]), AIMessage(content="done")]
    store = tmp_path / "experience"
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [step]), app="steps", store=store)
    with pytest.raises(GraphDrained):
        agent.invoke({"messages": [("user", "Do the step.")]}, control=control)
    agent.recorder.close()
    [drained] = _runs(store)
    assert (drained.status, drained.error) == ("interrupted", "drained: shutdown")
    assert [(s.action.tool_call.name, s.observation.content) for s in drained.steps] == [("step", "did 0")]


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_drained_run_resumed_at_once_keeps_the_state_the_drain_saved(tmp_path: Path, mode: str) -> None:
    """The caller resumes the moment the drain returns (a server's next worker takes the thread): the read of the
    drained run's state ran beside it and could see the resumed run's checkpoints, which then stood for nothing (the
    drained record lost its tool result again). The drained run's caller waits for that read (bounded)."""
    store = tmp_path / "experience"
    agent, control = _drained_agent(store, "thread", SlowReadSaver())
    config = {"configurable": {"thread_id": "t-1"}}
    task = {"messages": [("user", "Do both steps.")]}

    async def drained_then_resumed() -> None:
        with pytest.raises(GraphDrained):
            await agent.ainvoke(task, config, control=control)
        await agent.ainvoke(None, config)

    if mode == "invoke":
        with pytest.raises(GraphDrained):
            agent.invoke(task, config, control=control)
        agent.invoke(None, config)
    else:
        asyncio.run(drained_then_resumed())
    agent.recorder.close()
    drained, finished = _runs(store)
    assert [(m["role"], m["content"]) for m in drained.messages][-1] == ("tool", "did 0")
    assert (drained.status, finished.status) == ("interrupted", "completed")


def test_a_drained_run_forked_from_an_earlier_checkpoint_keeps_the_state_the_drain_saved(tmp_path: Path) -> None:
    """A run started at an explicit ``checkpoint_id`` (a fork, time travel) and drained: its state was read at that
    checkpoint, the one it started from, without the tool result that ran."""
    control = langgraph_runtime.RunControl()

    @tool
    def step(i: int) -> str:
        """Do step i."""
        control.request_drain("deploy")
        return f"did {i}"

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].content == "turn one":
            return AIMessage(content="First answer.")
        return AIMessage(content="", tool_calls=[tool_call("step", i=10)])

    graph = create_agent(ScriptedChatModel(policy=policy), [step], checkpointer=InMemorySaver())
    store = tmp_path / "experience"
    agent = record_experience(graph, app="steps", store=store)
    config = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [("user", "turn one")]}, config)
    checkpoint = graph.get_state(config).config["configurable"]["checkpoint_id"]
    with pytest.raises(GraphDrained):
        agent.invoke(
            {"messages": [("user", "turn two")]}, {"configurable": {"thread_id": "t", "checkpoint_id": checkpoint}}, control=control
        )
    agent.recorder.close()
    drained = _runs(store)[-1]
    assert drained.error == "drained: deploy"
    assert [(m["role"], m["content"]) for m in drained.messages][-3:] == [("user", "turn two"), ("assistant", ""), ("tool", "did 10")]
