"""Parallel branches that paused for review together, resumed together: every reviewed call is taught.

Two ``create_agent`` sub-agents run as parallel nodes of one graph; each calls a tool that pauses on ``interrupt()``.
One ``Command(resume={...})`` resumes both. The resumed run first carries out both reviewed calls, then each
sub-agent's model answers. Each sub-agent gives its own model calls only its own conversation, so the second branch's
reviewed call is in no history of the run's first model call: it was left out (no step, no dataset row teaching it,
no warning), and only the first branch's was kept (a sweep of async and review flows). Real graphs, real local store;
also read back from capture's own spans by ``ee traces ingest``'s assembler."""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

from ee_middleware import record_experience
from ee_middleware.capture.assembler import AssemblyOptions, assemble
from ee_middleware.capture.spandata import from_readable_span
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_graph_input_tasks import recorded


@tool
def publish(topic: str) -> str:
    """Publish a post on a topic (a human approves it first)."""
    approved = interrupt({"publish": topic})
    return f"published {topic}" if approved else f"not published {topic}"


def _writer(topic: str) -> Any:
    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(content=f"{topic}: {messages[-1].content}")
        return AIMessage(content="", tool_calls=[tool_call("publish", topic=topic)])

    return create_agent(ScriptedChatModel(model_name=f"{topic}-writer", policy=policy), [publish], name=topic)


def _parallel_writers() -> Any:
    builder = StateGraph(MessagesState)
    for topic in ("alpha", "beta"):
        builder.add_node(topic, _writer(topic))
        builder.add_edge(START, topic)
        builder.add_edge(topic, END)
    return builder.compile(checkpointer=InMemorySaver())


def _reviewed_calls(steps: list[Any]) -> list[tuple[str, dict[str, Any], str | None]]:
    return [
        (s.action.tool_call.name, s.action.tool_call.arguments, s.observation and s.observation.content)
        for s in steps
        if s.action.tool_call is not None
    ]


def test_every_branchs_reviewed_call_is_a_step_of_the_resumed_run(store_path: Any, tracer_provider: Any, span_exporter: Any) -> None:
    agent = record_experience(_parallel_writers(), app="posts", store=store_path, tracer_provider=tracer_provider)
    config = {"configurable": {"thread_id": "posts-1"}}
    paused_out = agent.invoke({"messages": [("user", "Write and publish both posts")]}, config)
    pauses = {p.value["publish"]: p.id for p in paused_out["__interrupt__"]}
    agent.invoke(Command(resume={pauses["alpha"]: True, pauses["beta"]: False}), config)
    paused, resumed = recorded(agent, store_path)

    assert paused.status == "interrupted"
    assert sorted(c[1]["topic"] for c in _reviewed_calls(paused.steps)) == ["alpha", "beta"]
    assert resumed.status == "completed"
    calls = _reviewed_calls(resumed.steps)
    assert sorted(calls, key=str) == [
        ("publish", {"topic": "alpha"}, "published alpha"),
        ("publish", {"topic": "beta"}, "not published beta"),
    ], calls
    answers = sorted(s.action.content for s in resumed.steps if s.action.kind == "answer")
    assert answers == ["alpha: published alpha", "beta: not published beta"]
    for step in resumed.steps:  # each decided in its own branch's conversation
        if step.action.tool_call is not None:
            topic = step.action.tool_call.arguments["topic"]
            assert step.state[-1]["role"] == "user" and all(
                topic in str(m.get("tool_calls") or "") or m["role"] == "user" for m in step.state
            )

    # the same spans read back (as ee traces ingest reads capture's own spans) give the same steps
    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    roots = sorted((s for s in spans if s.name.startswith("invoke_agent")), key=lambda s: s.start_ns)
    run = [s for s in spans if s.trace_id == roots[-1].trace_id]
    assert sorted(_reviewed_calls(assemble(run, AssemblyOptions(app="posts")).steps), key=str) == sorted(calls, key=str)
