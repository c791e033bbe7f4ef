"""A sub-agent wrapped with its own ``record_experience`` and invoked in a tool without a config of its own runs on the
configuration LangChain hands down to the tool (the outer run's thread, its ``ee_environment``), as its graph does; its
recorder now reads that configuration too. Before, such runs were stored with no thread and no environment (120 of 120
concurrent runs, both offload modes), while the same graph unwrapped was on the outer run's thread. Real ``create_agent``
graphs, a real checkpointer, real asyncio cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_child_left")

OUTER = {"configurable": {"thread_id": "T-42", "ee_environment": {"scenario": 17}}}


def _asks(tool_name: str, answer: str, **arguments: Any) -> Any:
    """A policy that calls ``tool_name`` once, then answers with ``answer`` and the tool's result."""

    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(f"{answer}: {messages[-1].content}")
        return AIMessage("", tool_calls=[tool_call(tool_name, **arguments)])

    return policy


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-{key}"


def _inner_graph(**compile_kwargs: Any) -> Any:
    return create_agent(ScriptedChatModel(policy=_asks("lookup", "inner says", key="k1"), model_name="inner-m"), [lookup], **compile_kwargs)


def _stored(store: Path) -> dict[str | None, list[Trajectory]]:
    opened = LocalExperienceStore(store)
    try:
        out: dict[str | None, list[Trajectory]] = {}
        for t in sorted(opened.iter_trajectories(), key=lambda t: t.started_at):
            out.setdefault(t.app, []).append(t)
        return out
    finally:
        opened.close()


def _outer_with(ask: Any) -> Any:
    return create_agent(ScriptedChatModel(policy=_asks(ask.name, "outer says", key="k1"), model_name="outer-m"), [ask])


async def _consume(inner: Any, how: str, question: str, config: Any = None) -> str:
    """Run ``inner`` the way ``how`` says, in async code; its answer."""
    graph_input = {"messages": [("user", question)]}
    if how == "ainvoke":
        return (await inner.ainvoke(graph_input, config))["messages"][-1].content
    if how == "astream":
        chunks = [chunk async for chunk in inner.astream(graph_input, config, stream_mode="values")]
        return chunks[-1]["messages"][-1].content
    events = [e async for e in inner.astream_events(graph_input, config, version="v2")]
    assert events[-1]["event"] == "on_chain_end"  # the graph's own, last
    return events[-1]["data"]["output"]["messages"][-1].content


def _sync_consume(inner: Any, how: str, question: str, config: Any = None) -> str:
    graph_input = {"messages": [("user", question)]}
    if how == "invoke":
        return inner.invoke(graph_input, config)["messages"][-1].content
    return list(inner.stream(graph_input, config, stream_mode="values"))[-1]["messages"][-1].content


@pytest.mark.parametrize(
    ("how", "offload", "outer_recorded"),
    [
        ("invoke", "thread", True),
        ("invoke", "process", True),
        ("stream", "thread", True),
        ("ainvoke", "thread", True),
        ("ainvoke", "process", False),
        ("astream", "thread", True),
        ("astream_events", "thread", False),
    ],
)
def test_a_recorded_sub_agent_in_a_tool_is_on_the_outer_runs_thread(tmp_path: Path, how: str, offload: str, outer_recorded: bool) -> None:
    """The tool passes no config: the inner run is stored on thread ``T-42`` with the outer run's environment, under a
    recorded outer agent or a plain one, in either offload mode, however the inner agent is run."""
    store = tmp_path / "store"
    inner = record_experience(_inner_graph(), app="inner", store=store, offload=offload)
    if how in ("invoke", "stream"):

        @tool
        def ask(key: str) -> str:
            """Ask the inner agent."""
            return _sync_consume(inner, how, f"inner task {key}")

    else:

        @tool
        async def ask(key: str) -> str:
            """Ask the inner agent."""
            return await _consume(inner, how, f"inner task {key}")

    outer = _outer_with(ask)
    if outer_recorded:
        outer = record_experience(outer, app="outer", store=store, offload=offload)
    out = (
        asyncio.run(outer.ainvoke({"messages": [("user", "outer task")]}, OUTER))
        if how not in ("invoke", "stream")
        else outer.invoke({"messages": [("user", "outer task")]}, OUTER)
    )
    assert out["messages"][-1].content == "outer says: inner says: value-k1"
    if outer_recorded:
        outer.recorder.close()
    inner.recorder.close()
    runs = _stored(store)
    [inner_run] = runs["inner"]
    assert (inner_run.status, inner_run.task, inner_run.final_answer) == ("completed", "inner task k1", "inner says: value-k1")
    assert (inner_run.thread_id, inner_run.environment) == ("T-42", {"scenario": 17})
    if outer_recorded:
        assert [(t.thread_id, t.environment) for t in runs["outer"]] == [("T-42", {"scenario": 17})]


def test_a_recorded_sub_agent_cancelled_in_a_tool_keeps_the_outer_runs_thread(tmp_path: Path) -> None:
    """The outer request is cancelled while the inner agent's tool runs: the inner run is ``interrupted`` on the outer
    run's thread, with its environment."""
    started = asyncio.Event()

    @tool
    async def slow_lookup(key: str) -> str:
        """Look a key up (slowly: the request is cancelled meanwhile)."""
        started.set()
        await asyncio.sleep(30)
        return "never seen"

    store = tmp_path / "store"
    inner_graph = create_agent(ScriptedChatModel(policy=_asks("slow_lookup", "inner says", key="k1"), model_name="inner-m"), [slow_lookup])
    inner = record_experience(inner_graph, app="inner", store=store)

    @tool
    async def ask(key: str) -> str:
        """Ask the inner agent."""
        return (await inner.ainvoke({"messages": [("user", f"inner task {key}")]}))["messages"][-1].content

    outer = record_experience(_outer_with(ask), app="outer", store=store)

    async def request() -> None:
        task = asyncio.create_task(outer.ainvoke({"messages": [("user", "outer task")]}, OUTER))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(request())
    outer.recorder.close()
    inner.recorder.close()
    [inner_run] = _stored(store)["inner"]
    assert (inner_run.status, inner_run.error) == ("interrupted", "cancelled: CancelledError")
    assert (inner_run.thread_id, inner_run.environment) == ("T-42", {"scenario": 17})


@pytest.mark.parametrize(
    ("inner_config", "inner_settings", "expected"),
    [
        # a thread of its own: the graph leaves the inherited configurable out, and so does the recorder
        ({"configurable": {"thread_id": "own"}}, {}, ("own", None)),
        # its own environment, no thread: the outer run's thread, its own environment
        ({"configurable": {"ee_environment": {"scenario": 1}}}, {}, ("T-42", {"scenario": 1})),
        # the inner recorder's environment= wins over an inherited one
        (None, {"environment": {"db": "inner"}}, ("T-42", {"db": "inner"})),
        # a hook is given the config in effect (the inherited thread and environment)
        (
            None,
            {
                "environment": lambda graph_input, config: {
                    "from": config["configurable"]["ee_environment"],
                    "on": config["configurable"]["thread_id"],
                }
            },
            ("T-42", {"from": {"scenario": 17}, "on": "T-42"}),
        ),
    ],
    ids=["own-thread", "own-environment", "recorder-environment", "environment-hook"],
)
def test_the_sub_agents_own_config_and_settings_win_over_the_inherited_ones(
    tmp_path: Path, inner_config: Any, inner_settings: dict[str, Any], expected: tuple[Any, Any]
) -> None:
    store = tmp_path / "store"
    inner = record_experience(_inner_graph(), app="inner", store=store, **inner_settings)

    @tool
    def ask(key: str) -> str:
        """Ask the inner agent."""
        return _sync_consume(inner, "invoke", f"inner task {key}", inner_config)

    outer = record_experience(_outer_with(ask), app="outer", store=store)
    outer.invoke({"messages": [("user", "outer task")]}, OUTER)
    outer.recorder.close()
    inner.recorder.close()
    [inner_run] = _stored(store)["inner"]
    assert (inner_run.thread_id, inner_run.environment) == expected


def test_a_recorded_sub_agent_is_on_the_thread_its_graph_wrote_its_checkpoints_on(tmp_path: Path) -> None:
    """The outer agent has a checkpointer: the inner graph, run in its tool, writes its checkpoints on the outer run's
    thread (in the tool's namespace), and its recorder stores the run on that thread."""
    saver = InMemorySaver()
    store = tmp_path / "store"
    inner = record_experience(_inner_graph(), app="inner", store=store)

    @tool
    def ask(key: str) -> str:
        """Ask the inner agent."""
        return _sync_consume(inner, "invoke", f"inner task {key}")

    outer_graph = create_agent(
        ScriptedChatModel(policy=_asks("ask", "outer says", key="k1"), model_name="outer-m"), [ask], checkpointer=saver
    )
    outer = record_experience(outer_graph, app="outer", store=store)
    outer.invoke({"messages": [("user", "outer task")]}, OUTER)
    outer.recorder.close()
    inner.recorder.close()
    inner_checkpoints = {c.config["configurable"]["thread_id"] for c in saver.list(None) if c.config["configurable"]["checkpoint_ns"]}
    [inner_run] = _stored(store)["inner"]
    assert inner_checkpoints == {inner_run.thread_id} == {"T-42"}


def test_a_recorded_agent_run_at_top_level_is_unchanged(tmp_path: Path) -> None:
    """No configuration is handed down outside a runnable: a run with no config has no thread, as before."""
    store = tmp_path / "store"
    inner = record_experience(_inner_graph(), app="inner", store=store)
    inner.invoke({"messages": [("user", "inner task k1")]})
    inner.recorder.close()
    [run] = _stored(store)["inner"]
    assert (run.thread_id, run.environment) == (None, None)
