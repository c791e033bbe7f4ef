"""Ingest reads what a LangGraph graph was asked and returned from another instrumentation's graph span, as capture
writes it on its root: OpenInference's ``input.value`` / ``output.value``, OpenLLMetry's ``traceloop.entity.input`` /
``traceloop.entity.output``. So the task is the user's question (not a ``Send`` branch's), the final answer what the
graph returned (a node that rewrote the reply, ``create_agent``'s structured response), and a run that ended on tool
messages (``ToolStrategy``) is ``completed`` with its last call observed.

OpenInference and OpenLLMetry cannot be installed next to the project here, so their spans are stand-ins built by hand
in their shapes (attribute names and value encodings copied from what openinference-instrumentation-langchain 0.1.80
and opentelemetry-instrumentation-langchain 0.62.4 write for these graphs); each is checked against what
``record_experience`` stores for the same (real) graph.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage, message_to_dict
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Send
from pydantic import BaseModel

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.spandata import SpanData
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.dialects import graph_run_attributes
from ee_middleware.messages import content_to_text
from ee_middleware.records import Trajectory
from ee_middleware.testing import ScriptedChatModel
from tests.ingest.otlp_builders import _request, _span, _write


@tool
def search(topic: str) -> str:
    """Search a topic."""
    return f"facts about {topic}"


class Restock(BaseModel):
    item: str
    ordered: int


def _call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


# ---- what each instrumentation writes (one graph run: its root, node spans, model and tool spans) -------------------


class _Trace:
    """The spans of one graph run in OpenInference's or OpenLLMetry's shape, in the order they start."""

    def __init__(self, dialect: str, thread: str) -> None:
        self.dialect, self.thread = dialect, thread
        self.spans: list[dict[str, Any]] = []
        self.clock = 0
        self.ids = 0

    def _id(self) -> str:
        self.ids += 1
        return f"{self.ids:016x}"

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def _meta(self, node: str | None, ns: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"thread_id": self.thread}
        if node is not None:
            meta |= {"langgraph_node": node, "langgraph_checkpoint_ns": ns}
        if self.dialect == "openinference":
            return {"session.id": self.thread, "metadata": json.dumps(meta)}
        return {f"traceloop.association.properties.{k}": v for k, v in meta.items()}

    def graph(self, graph_input: Any, output: dict[str, Any], parent: str | None = None, node: tuple[str, str] | None = None) -> str:
        """The graph's span (OpenLLMetry: its ``invoke_agent`` span and the workflow span under it); returns the id
        the node spans go under. ``output``'s messages are LangChain messages."""
        meta = self._meta(*(node or (None, None)))
        start = self._tick()
        if self.dialect == "openinference":
            root = self._id()
            state = {
                k: [message_to_dict(m) if isinstance(m, BaseMessage) else list(m) for m in v] if k == "messages" else v
                for k, v in output.items()
            }
            attrs = {
                "input.value": json.dumps(graph_input),
                "input.mime_type": "application/json",
                "output.value": json.dumps(state),
                "output.mime_type": "application/json",
                **meta,
                "openinference.span.kind": "CHAIN",
            }
            self.spans.append(_span(root, "LangGraph", attrs, parent, start, 10_000 - start))
            return root
        agent, workflow = self._id(), self._id()
        state = {k: [dumpd(m) if isinstance(m, BaseMessage) else list(m) for m in v] if k == "messages" else v for k, v in output.items()}
        inputs = {"inputs": graph_input, "tags": [], "metadata": {"thread_id": self.thread}, "kwargs": {"name": "LangGraph"}}
        self.spans.append(
            _span(
                agent,
                "invoke_agent LangGraph",
                {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "LangGraph", "gen_ai.conversation.id": self.thread},
                parent,
                start,
                10_000 - start,
            )
        )
        attrs = {
            "traceloop.workflow.name": "LangGraph",
            **meta,
            "traceloop.span.kind": "workflow",
            "traceloop.entity.name": "LangGraph",
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "LangGraph",
            "traceloop.entity.input": json.dumps(inputs),
            "traceloop.entity.output": json.dumps({"outputs": state, "kwargs": {"tags": []}}),
        }
        self.spans.append(_span(workflow, "LangGraph.workflow", attrs, agent, start, 10_000 - start))
        return workflow

    def node(self, parent: str, node: str, ns: str) -> str:
        span_id = self._id()
        if self.dialect == "openinference":
            attrs = {**self._meta(node, ns), "openinference.span.kind": "CHAIN"}
            self.spans.append(_span(span_id, node, attrs, parent, self._tick(), 9_000))
        else:
            attrs = {
                **self._meta(node, ns),
                "traceloop.span.kind": "task",
                "traceloop.entity.name": node,
                "gen_ai.operation.name": "execute_task",
            }
            self.spans.append(_span(span_id, f"execute_task {node}", attrs, parent, self._tick(), 9_000))
        return span_id

    def model(self, parent: str, node: str, ns: str, given: Sequence[BaseMessage], reply: AIMessage) -> None:
        start = self._tick()
        end = self._tick()
        if self.dialect == "openinference":
            attrs = {**_oi_messages("llm.input_messages", given), **_oi_messages("llm.output_messages", [reply])}
            attrs |= {"llm.model_name": "scripted-expert", **self._meta(node, ns), "openinference.span.kind": "LLM"}
            self.spans.append(_span(self._id(), "ScriptedChatModel", attrs, parent, start, end))
        else:
            attrs = {
                **self._meta(node, ns),
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "scripted-expert",
                "gen_ai.input.messages": json.dumps(_genai(given)),
                "gen_ai.output.messages": json.dumps([{**_genai([reply])[0], "finish_reason": ""}]),
            }
            self.spans.append(_span(self._id(), "ScriptedChatModel.chat", attrs, parent, start, end))

    def tool(self, parent: str, node: str, ns: str, args: dict[str, Any], result: ToolMessage) -> None:
        start = self._tick()
        end = self._tick()
        if self.dialect == "openinference":
            attrs = {
                "input.value": json.dumps(args),
                "input.mime_type": "application/json",
                "output.value": json.dumps(message_to_dict(result)),
                "output.mime_type": "application/json",
                "tool.name": result.name,
                **self._meta(node, ns),
                "openinference.span.kind": "TOOL",
            }
            self.spans.append(_span(self._id(), str(result.name), attrs, parent, start, end))
        else:
            given = json.dumps({"input_str": str(args), "inputs": args, "kwargs": {"name": None, "tool_call_id": result.tool_call_id}})
            returned = json.dumps({"output": dumpd(result), "kwargs": {"name": result.name}})
            attrs = {
                **self._meta(node, ns),
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": result.name,
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": result.name,
                "traceloop.entity.input": given,
                "gen_ai.tool.call.arguments": given,
                "traceloop.entity.output": returned,
                "gen_ai.tool.call.result": returned,
            }
            self.spans.append(_span(self._id(), f"execute_tool {result.name}", attrs, parent, start, end))

    def agent_loop(self, parent: str, messages: Sequence[BaseMessage], prefix: str = "", node: str | None = None) -> None:
        """A ``create_agent``'s model and tool calls, as its conversation ``messages`` holds them: each model reply under
        a ``model`` node, each tool message a tool ran (not one the model node wrote: ``ToolStrategy``'s) under ``tools``."""
        for i, message in enumerate(messages):
            if isinstance(message, AIMessage):
                ns = f"{prefix}model:{i}"
                self.model(self.node(parent, node or "model", ns), node or "model", ns, messages[:i], message)
            elif isinstance(message, ToolMessage) and message.name != "Restock":
                ns = f"{prefix}tools:{i}"
                call = next(c for m in messages[:i] if isinstance(m, AIMessage) for c in m.tool_calls if c["id"] == message.tool_call_id)
                self.tool(self.node(parent, node or "tools", ns), node or "tools", ns, call["args"], message)

    def file(self, path: Path) -> Path:
        return _write(path, _request(self.spans, service=f"{self.dialect}-app"))


def _oi_messages(prefix: str, messages: Sequence[BaseMessage]) -> dict[str, Any]:
    roles = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}
    attrs: dict[str, Any] = {}
    for i, m in enumerate(messages):
        key = f"{prefix}.{i}.message"
        attrs[f"{key}.role"] = roles[m.type]
        if content_to_text(m.content):
            attrs[f"{key}.content"] = content_to_text(m.content)
        for j, call in enumerate(getattr(m, "tool_calls", None) or []):
            attrs[f"{key}.tool_calls.{j}.tool_call.id"] = call["id"]
            attrs[f"{key}.tool_calls.{j}.tool_call.function.name"] = call["name"]
            attrs[f"{key}.tool_calls.{j}.tool_call.function.arguments"] = json.dumps(call["args"])
        if isinstance(m, ToolMessage):
            attrs[f"{key}.tool_call_id"] = m.tool_call_id
            attrs[f"{key}.name"] = m.name
    return attrs


def _genai(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, ToolMessage):
            out.append({"role": "tool", "parts": [{"type": "tool_call_response", "id": m.tool_call_id, "response": m.content}]})
            continue
        parts: list[dict[str, Any]] = [{"type": "text", "content": m.content}] if content_to_text(m.content) else []
        parts += [{"type": "tool_call", "id": c["id"], "name": c["name"], "arguments": c["args"]} for c in getattr(m, "tool_calls", [])]
        out.append({"role": {"human": "user", "ai": "assistant"}.get(m.type, m.type), "parts": parts})
    return out


# ---- the graphs, recorded by capture ----------------------------------------------------------------------------


def _captured(graph: Any, graph_input: Any, thread: str, path: Path) -> tuple[Any, Trajectory]:
    agent = record_experience(graph, app="captured", store=path)
    output = agent.invoke(graph_input, {"configurable": {"thread_id": thread}})
    assert agent.flush()
    store = LocalExperienceStore(path)
    try:
        [trajectory] = list(store.iter_trajectories())
    finally:
        store.close()
    return output, trajectory


def _ingested(file: Path, path: Path) -> Trajectory:
    store = LocalExperienceStore(path)
    try:
        report = ingest_files([file], store)
        assert report.errors == [] and len(report.ingested) == 1, report
        [trajectory] = list(store.iter_trajectories())
    finally:
        store.close()
    return trajectory


def _what_it_teaches(t: Trajectory, *, any_order: bool = False) -> tuple[Any, ...]:
    steps = [
        (
            s.action.kind,
            s.action.tool_call.name if s.action.tool_call else None,
            s.action.tool_call.arguments if s.action.tool_call else s.action.content,
            s.observation.content if s.observation else None,
            s.observation.is_error if s.observation else None,
        )
        for s in t.steps
    ]
    return (t.task, t.final_answer, t.status, sorted(steps, key=repr) if any_order else steps)


DIALECTS = ["openinference", "openllmetry"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_tool_strategy_run_is_completed_with_its_structured_response_from_hand_built_spans(tmp_path, dialect):
    """``create_agent(response_format=ToolStrategy(...))`` ends on the tool message its model node wrote for the structured
    call. Before, ingest saw that call unanswered (the tool message is only in the graph's output) and stored the run
    ``interrupted`` with no answer, its structured call a step without observation; capture stores it ``completed``."""
    model = ScriptedChatModel(
        script=[
            AIMessage(content="", tool_calls=[_call("search", "c-1", topic="pear")]),
            AIMessage(content="", tool_calls=[_call("Restock", "c-2", item="pear", ordered=5)]),
        ],
        model_name="scripted-expert",
    )
    graph = create_agent(model, [search], response_format=ToolStrategy(Restock))
    output, captured = _captured(graph, {"messages": [("user", "restock pears")]}, "struct", tmp_path / "capture")

    trace = _Trace(dialect, "struct")
    state = {"messages": output["messages"], "structured_response": output["structured_response"].model_dump()}
    root = trace.graph({"messages": [["user", "restock pears"]]}, state)
    trace.agent_loop(root, output["messages"])
    ingested = _ingested(trace.file(tmp_path / "trace.jsonl"), tmp_path / "ingest")

    assert captured.final_answer == '{"item":"pear","ordered":5}' and captured.status == "completed"
    assert _what_it_teaches(ingested) == _what_it_teaches(captured)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_answer_is_what_the_graph_returned_when_a_node_rewrote_the_reply_from_hand_built_spans(tmp_path, dialect):
    """A node after the model rewrites its reply: the run's answer is the rewritten text the graph returned (as capture
    records it), not the model's draft (what ingest stored before)."""
    model = ScriptedChatModel(script=[AIMessage(content="draft about kiwi")], model_name="scripted-expert")
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda s: {"messages": [model.invoke(s["messages"])]})
    builder.add_node("polish", lambda s: {"messages": [AIMessage(content="POLISHED: " + s["messages"][-1].content)]})
    builder.add_edge(START, "agent")
    builder.add_edge("agent", "polish")
    builder.add_edge("polish", END)
    output, captured = _captured(builder.compile(), {"messages": [("user", "write about kiwi")]}, "polish", tmp_path / "capture")

    trace = _Trace(dialect, "polish")
    root = trace.graph({"messages": [["user", "write about kiwi"]]}, {"messages": output["messages"]})
    trace.agent_loop(root, output["messages"][:2], node="agent")
    trace.node(root, "polish", "polish:1")
    ingested = _ingested(trace.file(tmp_path / "trace.jsonl"), tmp_path / "ingest")

    assert captured.final_answer == "POLISHED: draft about kiwi"
    assert _what_it_teaches(ingested) == _what_it_teaches(captured)


def _research(messages: list[BaseMessage], tools: Any) -> AIMessage:
    topic = next(m.content for m in messages if m.type == "human").split()[-1]
    if messages[-1].type == "tool":
        return AIMessage(content=f"summary of {topic}: {messages[-1].content}")
    return AIMessage(content="", tool_calls=[_call("search", f"c-{topic}", topic=topic)])


class _Fanned(TypedDict):
    messages: Annotated[list, operator.add]
    results: Annotated[list, operator.add]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_send_fan_out_has_the_users_task_and_the_joined_answer_from_hand_built_spans(tmp_path, dialect):
    """A planner ``Send``s each topic to a node that runs an agent, and a node joins their summaries. The run's task is
    the user's question and its answer the joined text, as capture records them; before, ingest took both from a branch
    (the first model call's question, the last model call's reply)."""
    worker = create_agent(ScriptedChatModel(policy=_research, model_name="scripted-expert"), [search])
    topics = ["apples", "pears"]
    builder = StateGraph(_Fanned)
    builder.add_node(
        "work", lambda s: {"results": [worker.invoke({"messages": [("user", f"research {s['topic']}")]})["messages"][-1].content]}
    )
    builder.add_node("join", lambda s: {"messages": [AIMessage(content=" | ".join(sorted(s["results"])))]})
    builder.add_conditional_edges(START, lambda s: [Send("work", {"topic": t}) for t in topics], ["work"])
    builder.add_edge("work", "join")
    builder.add_edge("join", END)
    graph_input = {"messages": [("user", "research fruit by send")], "results": []}
    output, captured = _captured(builder.compile(), graph_input, "send", tmp_path / "capture")

    trace = _Trace(dialect, "send")
    root = trace.graph({"messages": [["user", "research fruit by send"]], "results": []}, dict(output))
    for n, topic in enumerate(topics):
        ns = f"work:{n}"
        work = trace.node(root, "work", ns)
        conversation = [HumanMessage(content=f"research {topic}")]
        conversation.append(_research(conversation, None))
        conversation.append(ToolMessage(content=f"facts about {topic}", tool_call_id=f"c-{topic}", name="search"))
        conversation.append(_research(conversation, None))
        branch = {"messages": conversation}
        inner = trace.graph({"messages": [["user", f"research {topic}"]]}, branch, parent=work, node=("work", ns))
        trace.agent_loop(inner, conversation, prefix=f"{ns}|")
    trace.node(root, "join", "join:1")
    ingested = _ingested(trace.file(tmp_path / "trace.jsonl"), tmp_path / "ingest")

    assert captured.task == "research fruit by send"
    assert captured.final_answer == "summary of apples: facts about apples | summary of pears: facts about pears"
    assert _what_it_teaches(ingested, any_order=True) == _what_it_teaches(captured, any_order=True)


# ---- what is read, and what is left alone -----------------------------------------------------------------------


def _graph_span(attrs: dict[str, Any]) -> SpanData:
    return SpanData(trace_id="t", span_id="s", parent_span_id=None, name="LangGraph", start_ns=0, end_ns=1, attributes=attrs)


def _openinference(graph_input: Any, output: Any) -> SpanData:
    return _graph_span(
        {
            "input.value": json.dumps(graph_input),
            "input.mime_type": "application/json",
            "output.value": json.dumps(output),
            "output.mime_type": "application/json",
            "openinference.span.kind": "CHAIN",
        }
    )


REPLY = message_to_dict(AIMessage(content="It rains."))
ASKED = message_to_dict(HumanMessage(content="Weather in Oslo?"))


def test_an_input_field_named_as_the_question_is_the_task_as_capture_reads_it():
    attrs = graph_run_attributes(_openinference({"question": "Weather in Oslo?", "max_results": 3}, {"messages": [ASKED, REPLY]}))
    assert (attrs["ee.task"], attrs["ee.final_answer"]) == ("Weather in Oslo?", "It rains.")


def test_a_resumed_run_takes_no_task_from_its_command_input():
    """``Command(resume=...)`` as OpenInference writes it: its ``resume`` text is a reviewer's answer, not the question."""
    command = {"graph": None, "update": None, "resume": "approve the refund for order seven", "goto": []}
    attrs = graph_run_attributes(_openinference(command, {"messages": [ASKED, REPLY]}))
    assert "ee.task" not in attrs and attrs["ee.final_answer"] == "It rains."


def test_a_run_paused_by_interrupt_has_no_answer_though_some_of_its_calls_ran():
    calls = AIMessage(content="", tool_calls=[_call("a", "c1"), _call("b", "c2")])
    ran = ToolMessage(content="done a", tool_call_id="c1", name="a")
    output = {"messages": [ASKED, message_to_dict(calls), message_to_dict(ran)], "__interrupt__": [{"value": "approve b?"}]}
    attrs = graph_run_attributes(_openinference({"messages": [["user", "Weather in Oslo?"]]}, output))
    assert "ee.final_answer" not in attrs and json.loads(attrs["gen_ai.output.messages"])[0]["role"] == "tool"


@pytest.mark.parametrize(
    "output",
    [
        "It rains.",  # a Functional API entrypoint's text: no state
        {"answer": "It rains."},  # no messages
        {"messages": [{"type": "ai", "data": {"content": "x", "tool_calls": "not a list"}}]},  # shaped like messages, not them
        {"messages": [["robot", "hello"]]},  # a pair whose role LangChain does not know
    ],
)
def test_a_value_that_is_no_graph_state_is_left_alone(output):
    assert "ee.final_answer" not in graph_run_attributes(_openinference({"x": 1}, output))


def test_values_that_are_not_json_are_left_alone():
    span = _graph_span({"input.value": "Weather in Oslo?", "output.value": "It rains.", "openinference.span.kind": "CHAIN"})
    assert graph_run_attributes(span) == {}
