"""A recorded agent is a LangChain ``Runnable`` that stands in for its graph everywhere: composed
with ``|``, wrapped by ``with_retry``/``with_fallbacks``/``bind``/``with_config``/``with_listeners``,
streamed through ``stream_events``, or used as a node of a bigger graph; every run is recorded
exactly once. Real LangGraph graphs, the real OTel SDK, the real local store; thread and process
capture."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command

from ee_middleware import RecordedGraph, record_experience
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_agent_shapes import OFFLOADS, _recorded, refund
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_child_left")


@tool
def lookup(order_id: str) -> str:
    """Look an order up."""
    return f"order {order_id}: shipped"


def _policy(messages: Any, tools: Any) -> AIMessage:
    user = next(m for m in reversed(messages) if m.type == "human").content
    if messages[-1].type == "tool":
        return AIMessage(content=f"{user}: {messages[-1].content}")
    return AIMessage(content="", tool_calls=[tool_call("lookup", order_id=user)])


def _agent() -> Any:
    """create_agent: the model looks the order up, then answers with the tool's result."""
    return create_agent(ScriptedChatModel(policy=_policy), [lookup], name="support")


def _ask(order: str) -> dict[str, Any]:
    return {"messages": [("user", order)]}


def _answers(trajectories: list[Any]) -> list[Any]:
    return [(t.status, t.final_answer, len(t.steps)) for t in trajectories]


def test_a_recorded_agent_is_a_runnable_that_describes_itself_as_its_graph(store_path):
    graph = _agent()
    agent = record_experience(graph, app="shop", store=store_path)
    assert isinstance(agent, Runnable) and isinstance(agent, RecordedGraph)
    assert (agent.name, agent.get_name()) == (graph.name, graph.get_name()) == ("support", "support")
    assert agent.get_input_jsonschema() == graph.get_input_jsonschema()
    assert agent.get_output_jsonschema() == graph.get_output_jsonschema()
    assert agent.input_schema.model_json_schema() == graph.input_schema.model_json_schema()
    assert agent.get_config_jsonschema() == graph.get_config_jsonschema()
    assert agent.config_specs == graph.config_specs
    assert (agent.InputType, agent.OutputType) == (graph.InputType, graph.OutputType)
    assert sorted(agent.get_graph().nodes) == sorted(graph.get_graph().nodes)
    assert agent.builder is graph.builder  # everything else still passes through
    agent.recorder.close()


@OFFLOADS
async def test_composed_with_pipe_every_run_is_recorded_once(offload, store_path):
    """``agent | f`` and ``f | agent`` (were: TypeError), invoked, streamed (a sequence streams
    through the agent's ``transform``) and run asynchronously: what the unwrapped graph gives."""
    graph = _agent()
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    answer = RunnableLambda(lambda state: state["messages"][-1].content)
    asked = RunnableLambda(_ask)
    assert (agent | answer).invoke(_ask("A-1")) == (graph | answer).invoke(_ask("A-1")) == "A-1: order A-1: shipped"
    streamed = list((asked | agent).stream("A-2"))  # the graph's updates, as (asked | graph) streams them
    assert [list(c) for c in streamed] == [list(c) for c in (asked | graph).stream("A-0")] == [["model"], ["tools"], ["model"]]
    assert streamed[-1]["model"]["messages"][-1].content == "A-2: order A-2: shipped"
    assert await (agent | answer).ainvoke(_ask("A-3")) == "A-3: order A-3: shipped"
    assert [c async for c in (asked | agent).astream("A-4")][-1]["model"]["messages"][-1].content == "A-4: order A-4: shipped"
    assert (asked | agent | answer).batch(["A-5", "A-6"]) == ["A-5: order A-5: shipped", "A-6: order A-6: shipped"]
    recorded = _recorded(agent, store_path)
    assert sorted(_answers(recorded)) == [("completed", f"A-{i}: order A-{i}: shipped", 2) for i in range(1, 7)]


@OFFLOADS
def test_with_retry_records_each_attempt_as_its_own_run(offload, store_path):
    """A retried run is recorded attempt by attempt: the failed attempt as an ``error`` trajectory
    with its error, the one that succeeded as ``completed``; both carry the run's thread id (was:
    with_retry ran the unwrapped graph and nothing was recorded)."""
    calls = [0]

    def flaky(messages: Any, tools: Any) -> AIMessage:
        calls[0] += 1
        if calls[0] == 1:
            raise ConnectionError("model endpoint reset the connection")
        return _policy(messages, tools)

    agent = record_experience(create_agent(ScriptedChatModel(policy=flaky), [lookup]), app="shop", store=store_path, offload=offload)
    retried = agent.with_retry(stop_after_attempt=3, wait_exponential_jitter=False, retry_if_exception_type=(ConnectionError,))
    out = retried.invoke(_ask("B-1"), {"configurable": {"thread_id": "t-1"}})
    assert out["messages"][-1].content == "B-1: order B-1: shipped"
    failed, succeeded = _recorded(agent, store_path)
    assert (failed.status, failed.thread_id, failed.final_answer) == ("error", "t-1", None)
    assert "model endpoint reset the connection" in failed.error
    assert (succeeded.status, succeeded.thread_id, succeeded.final_answer) == ("completed", "t-1", "B-1: order B-1: shipped")


@OFFLOADS
async def test_bound_configured_fallback_and_listened_agents_record_their_runs(offload, store_path):
    """with_config keeps a recorded agent; bind, with_fallbacks and with_listeners wrap it (were:
    each returned or ran the unwrapped graph, unrecorded)."""
    agent = record_experience(_agent(), app="shop", store=store_path, offload=offload)
    configured = agent.with_config(configurable={"thread_id": "cfg"}, tags=["vip"])
    assert isinstance(configured, RecordedGraph) and configured.recorder is agent.recorder
    configured.invoke(_ask("C-1"))
    agent.bind(stream_mode="values").invoke(_ask("C-2"))
    failing = record_experience(_broken_graph(), app="shop", store=store_path / "broken", offload=offload)
    assert failing.with_fallbacks([agent]).invoke(_ask("C-3"))["messages"][-1].content == "C-3: order C-3: shipped"
    seen: list[str] = []
    listened = agent.with_listeners(on_end=lambda run: seen.append(run.name))
    listened.invoke(_ask("C-4"))
    await listened.ainvoke(_ask("C-5"))
    assert seen == ["support", "support"]
    recorded = _recorded(agent, store_path)
    assert _answers(recorded) == [("completed", f"C-{i}: order C-{i}: shipped", 2) for i in range(1, 6)]
    assert recorded[0].thread_id == "cfg"
    [broken] = _recorded(failing, store_path / "broken")
    assert (broken.status, broken.task) == ("error", "C-3")


def _broken_graph() -> Any:
    def down(state: MessagesState) -> dict[str, Any]:
        raise LookupError("primary agent is down")

    builder = StateGraph(MessagesState)
    builder.add_node("down", down)
    builder.add_edge(START, "down")
    return builder.compile()


def _parent(agent: Any) -> Any:
    """A router graph with the recorded agent as one of its nodes."""

    def triage(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(content="routing to support")]}

    builder = StateGraph(MessagesState)
    builder.add_node("triage", triage)
    builder.add_node("support", agent)
    builder.add_edge(START, "triage")
    builder.add_edge("triage", "support")
    builder.add_edge("support", END)
    return builder.compile()


@OFFLOADS
async def test_as_a_node_of_a_bigger_graph_the_inner_run_is_recorded_once(offload, store_path):
    """``StateGraph.add_node("support", agent)`` (was: 'Expected a Runnable, callable or dict').
    The inner agent records its own run once per parent run; a parent that is recorded too records
    its own run once, with the inner model calls once each (the inner graph is part of its run)."""
    graph = _agent()
    agent = record_experience(graph, app="support", store=store_path / "inner", offload=offload)
    parent = _parent(agent)
    assert sorted(parent.get_graph(xray=True).nodes) == sorted(_parent(graph).get_graph(xray=True).nodes)  # a subgraph, as the graph
    assert "support:tools" in parent.get_graph(xray=True).nodes
    out = parent.invoke(_ask("D-1"), {"configurable": {"thread_id": "p-1"}})
    assert out["messages"][-1].content == "D-1: order D-1: shipped"
    [chunk async for chunk in parent.astream(_ask("D-2"), stream_mode="updates")]
    recorded_parent = record_experience(parent, app="router", store=store_path / "outer", offload=offload)
    recorded_parent.invoke(_ask("D-3"))
    inner = _recorded(agent, store_path / "inner")
    assert _answers(inner) == [("completed", f"D-{i}: order D-{i}: shipped", 2) for i in range(1, 4)]
    assert inner[0].thread_id == "p-1"
    [outer] = _recorded(recorded_parent, store_path / "outer")
    assert _answers([outer]) == [("completed", "D-3: order D-3: shipped", 2)]
    assert [s.action.tool_call.name for s in outer.steps if s.action.tool_call] == ["lookup"]


@OFFLOADS
@pytest.mark.filterwarnings("ignore:The v3 streaming protocol:langchain_core._api.beta_decorator.LangChainBetaWarning")
async def test_stream_events_v3_is_recorded(offload, store_path):
    """``stream_events(version="v3")`` and ``astream_events(version="v3")`` (LangGraph's run stream,
    driven by the caller) run the recorded stream (were: the unwrapped graph's)."""
    agent = record_experience(_agent(), app="shop", store=store_path, offload=offload)
    run = agent.stream_events(_ask("E-1"), version="v3")
    assert run.output["messages"][-1].content == "E-1: order E-1: shipped"
    arun = await agent.astream_events(_ask("E-2"), version="v3")
    assert (await arun.output())["messages"][-1].content == "E-2: order E-2: shipped"
    assert _answers(_recorded(agent, store_path)) == [("completed", f"E-{i}: order E-{i}: shipped", 2) for i in (1, 2)]


@OFFLOADS
def test_a_recorded_subagent_paused_for_review_is_a_subgraph_of_its_parent(offload, store_path):
    """A human review inside the recorded agent pauses the parent (which keeps the checkpoint): the
    paused run shows the agent's state as a subgraph, and resuming it records a second run."""
    inner = create_agent(
        ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")])]),
        [refund],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"refund": True})],
    )
    agent = record_experience(inner, app="support", store=store_path, offload=offload)
    builder = StateGraph(MessagesState)
    builder.add_node("support", agent)
    builder.add_edge(START, "support")
    parent = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "h-1"}}
    assert "__interrupt__" in parent.invoke(_ask("refund A-1"), config)
    [task] = parent.get_state(config, subgraphs=True).tasks
    assert task.state.next == ("HumanInTheLoopMiddleware.after_model",)
    done = parent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    assert done["messages"][-1].content == "Refund for A-1 issued."
    paused, resumed = _recorded(agent, store_path)
    assert (paused.status, resumed.status, resumed.thread_id, resumed.final_answer) == (
        "interrupted",
        "completed",
        "h-1",
        "Refund for A-1 issued.",
    )
