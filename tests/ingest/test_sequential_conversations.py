"""Conversations run one after the other in one trace, sharing their first messages.

A request's span (or a batch job's) over model spans only (a model client's instrumentation, no agent span) that runs
the same task twice one after the other, or starts a conversation over after it failed, holds calls whose histories
start alike: the second conversation's first call is given exactly the first conversation's first history. That call
was read as the first call asking again (as a guardrail re-asks after throwing a reply away), so both conversations
were one trajectory: the first one's steps, then the second one's from the start, each state and decision index wrong.
What tells them apart: the first call had been gone on with (a later call's history holds its reply), or its reply
acted (a tool ran its call), or it started its conversation and answered in text (a task done in one call), before
the same history was sent again; a call asked again is one whose reply nothing used. The spans are the real
OpenTelemetry SDK's, with the model calls in the attributes of three instrumentations: OpenTelemetry's OpenAI v2 (GenAI JSON), OpenLLMetry's OpenAI instrumentation (``gen_ai.prompt.N.*`` /
``gen_ai.completion.N.*``, ``llm.request.functions.N.*``) and OpenInference's (``llm.input_messages.N.message.*``,
``llm.tools.N.tool.json_schema``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import run_trajectory_id
from tests.ingest.test_conversations import MODEL, PEARS, PEARS_STEPS, SYSTEM, _call, _chat, _exported, _ingest, _tool, _tool_span
from tests.ingest.test_instrumentations import TURN_1, _steps

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "check_stock",
            "description": "How many of a fruit are in stock.",
            "parameters": {"type": "object", "properties": {"fruit": {"type": "string"}}, "required": ["fruit"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "order",
            "description": "Order a quantity of a fruit.",
            "parameters": {
                "type": "object",
                "properties": {"fruit": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["fruit", "quantity"],
            },
        },
    },
]


def _openllmetry(history: list[dict[str, Any]], reply: dict[str, Any] | None) -> dict[str, Any]:
    """What OpenLLMetry's OpenAI instrumentation (``opentelemetry-instrumentation-openai``, legacy attributes) writes on
    its ``openai.chat`` span: ``_set_prompts``, ``_set_completions`` and ``set_tools_attributes``."""
    attrs: dict[str, Any] = {"llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": MODEL}
    for i, message in enumerate([{"role": "system", "content": SYSTEM}, *history]):
        prefix = f"gen_ai.prompt.{i}"
        attrs[f"{prefix}.role"] = message["role"]
        if message.get("content"):
            attrs[f"{prefix}.content"] = message["content"]
        if message.get("tool_call_id"):
            attrs[f"{prefix}.tool_call_id"] = message["tool_call_id"]
        for j, call in enumerate(message.get("tool_calls") or []):
            attrs[f"{prefix}.tool_calls.{j}.id"] = call["id"]
            attrs[f"{prefix}.tool_calls.{j}.name"] = call["function"]["name"]
            attrs[f"{prefix}.tool_calls.{j}.arguments"] = call["function"]["arguments"]
    for i, tool in enumerate(TOOLS):
        attrs[f"llm.request.functions.{i}.name"] = tool["function"]["name"]
        attrs[f"llm.request.functions.{i}.description"] = tool["function"]["description"]
        attrs[f"llm.request.functions.{i}.parameters"] = json.dumps(tool["function"]["parameters"])
    if reply is not None:
        attrs["gen_ai.response.model"] = MODEL
        attrs["gen_ai.completion.0.finish_reason"] = "tool_calls" if reply.get("tool_calls") else "stop"
        attrs["gen_ai.completion.0.role"] = "assistant"
        if reply.get("content"):
            attrs["gen_ai.completion.0.content"] = reply["content"]
        for j, call in enumerate(reply.get("tool_calls") or []):
            attrs[f"gen_ai.completion.0.tool_calls.{j}.id"] = call["id"]
            attrs[f"gen_ai.completion.0.tool_calls.{j}.name"] = call["function"]["name"]
            attrs[f"gen_ai.completion.0.tool_calls.{j}.arguments"] = call["function"]["arguments"]
    return attrs


def _openinference_message(prefix: str, message: dict[str, Any]) -> dict[str, Any]:
    attrs = {f"{prefix}.message.role": message["role"]}
    if message.get("content"):
        attrs[f"{prefix}.message.content"] = message["content"]
    if message.get("tool_call_id"):
        attrs[f"{prefix}.message.tool_call_id"] = message["tool_call_id"]
    for j, call in enumerate(message.get("tool_calls") or []):
        attrs[f"{prefix}.message.tool_calls.{j}.tool_call.id"] = call["id"]
        attrs[f"{prefix}.message.tool_calls.{j}.tool_call.function.name"] = call["function"]["name"]
        attrs[f"{prefix}.message.tool_calls.{j}.tool_call.function.arguments"] = call["function"]["arguments"]
    return attrs


def _openinference(history: list[dict[str, Any]], reply: dict[str, Any] | None) -> dict[str, Any]:
    """What OpenInference's OpenAI instrumentation writes on its LLM span (``llm.input_messages``,
    ``llm.output_messages``, ``llm.tools``)."""
    attrs: dict[str, Any] = {"openinference.span.kind": "LLM", "llm.model_name": MODEL, "llm.provider": "openai", "llm.system": "openai"}
    for i, message in enumerate([{"role": "system", "content": SYSTEM}, *history]):
        attrs.update(_openinference_message(f"llm.input_messages.{i}", message))
    for i, tool in enumerate(TOOLS):
        attrs[f"llm.tools.{i}.tool.json_schema"] = json.dumps(tool)
    if reply is not None:
        attrs.update(_openinference_message("llm.output_messages.0", reply))
    return attrs


def _openai_v2(history: list[dict[str, Any]], reply: dict[str, Any] | None) -> dict[str, Any]:
    attrs = _chat(history, reply or {"role": "assistant", "content": ""})
    if reply is None:
        del attrs[sc.OUTPUT_MESSAGES]
    return attrs


DIALECTS: dict[str, Callable[[list[dict[str, Any]], dict[str, Any] | None], dict[str, Any]]] = {
    "openai-v2": _openai_v2,
    "openllmetry": _openllmetry,
    "openinference": _openinference,
}
FAILED = "failed"  # a scripted reply: the model call raises (the span ends with an error status, no reply)
TOOL_FAILS = "tool fails"  # after the reply: its tool raises, and the app gives the conversation up


def _conversation(tracer: Any, dialect: str, replies: list[Any], *, window: int | None = None, trace_tools: bool = True) -> None:
    """One tool loop of the app for :data:`TURN_1`: a model span per call in ``dialect``'s attributes, an
    ``execute_tool`` span per tool call (when the app traces its tools). A conversation given up stops where its
    script says so."""
    history: list[dict[str, Any]] = [{"role": "user", "content": TURN_1}]
    for reply in replies:
        if reply == FAILED:
            with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
                span.set_attributes(DIALECTS[dialect](history[-window:] if window else history, None))
                span.set_status(Status(StatusCode.ERROR, "APIConnectionError: Connection error."))
            return
        if reply == TOOL_FAILS:
            return
        with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
            span.set_attributes(DIALECTS[dialect](history[-window:] if window else history, reply))
        history.append(reply)
        for call in reply.get("tool_calls") or []:
            name, arguments = call["function"]["name"], json.loads(call["function"]["arguments"])
            fails = replies[replies.index(reply) + 1 :][:1] == [TOOL_FAILS]
            result = "error: the stock service is down" if fails else _tool(name, arguments)
            if trace_tools:
                with tracer.start_as_current_span(f"execute_tool {name}") as span:
                    span.set_attributes(_tool_span(call, result))
                    if fails:
                        span.set_status(Status(StatusCode.ERROR, result))
            history.append({"role": "tool", "tool_call_id": call["id"], "content": result})


def _request_file(tmp_path: Path, dialect: str, *scripts: list[Any], **options: Any) -> tuple[Path, list[Any]]:
    """The real OpenTelemetry SDK: a batch job's span over the conversations it runs one after the other."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop-batch")
    with tracer.start_as_current_span("nightly batch", kind=SpanKind.SERVER) as span:
        span.set_attribute(sc.CONVERSATION_ID, "batch-1")
        for script in scripts:
            _conversation(tracer, dialect, script, **options)
    path, finished = _exported(exporter, provider, tmp_path / f"{dialect}.jsonl")
    return path, finished


def _chats(finished: list[Any]) -> list[Any]:
    return sorted((s for s in finished if s.name.startswith("chat ")), key=lambda s: s.start_time)


@pytest.mark.parametrize("trace_tools", [True, False], ids=["tools-traced", "model-spans-only"])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_the_same_task_run_twice_one_after_the_other_is_two_trajectories(tmp_path, store, dialect, trace_tools):
    """A batch job running the same task twice (same system prompt, same question, the same replies and call ids):
    before, one trajectory of six decisions, the second run's first call read as the first call asking again."""
    path, finished = _request_file(tmp_path, dialect, PEARS, PEARS, trace_tools=trace_tools)
    report, trajectories = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    first, second = trajectories
    for t in trajectories:
        assert (_steps(t), [s.decision_index for s in t.steps]) == (PEARS_STEPS, [0, 1, 2])
        assert (t.task, t.status, t.thread_id, t.model) == (TURN_1, "completed", "batch-1", MODEL)
        offered = [] if dialect == "openai-v2" else ["check_stock", "order"]  # OpenAI v2 records no tool schemas
        assert [s["function"]["name"] for s in t.tools] == offered
    chats = _chats(finished)
    trace = format(chats[0].context.trace_id, "032x")
    batch = next(s for s in finished if s.name == "nightly batch")
    assert first.id == run_trajectory_id(trace, format(batch.context.span_id, "016x"))
    assert second.id == run_trajectory_id(trace, format(chats[3].context.span_id, "016x")), "named after its first call"


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_conversation_started_over_after_a_failed_call_is_a_trajectory_of_its_own(tmp_path, store, dialect):
    """The second model call fails (a connection error) and the job starts the conversation over: the first attempt
    (its check_stock step) and the second (the whole run) are two trajectories. Before, one: the second attempt's
    first call was read as the first attempt's first call asking again."""
    attempt = [PEARS[0], FAILED]
    path, _ = _request_file(tmp_path, dialect, attempt, PEARS)
    report, (first, second) = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert _steps(first) == PEARS_STEPS[:1]
    assert (_steps(second), [s.decision_index for s in second.steps]) == (PEARS_STEPS, [0, 1, 2])


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_conversation_started_over_after_its_tool_failed_is_a_trajectory_of_its_own(tmp_path, store, dialect):
    """The first reply's tool call ran and failed, and the job gave that attempt up and started over: the first call
    is still its conversation's last, but its reply acted (a tool span ran its call), so the same history sent again
    is a new conversation, not the call asking again."""
    path, _ = _request_file(tmp_path, dialect, [PEARS[0], TOOL_FAILS], PEARS)
    report, (first, second) = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert _steps(first) == [("check_stock", {"fruit": "pears"}, "error: the stock service is down", True)]
    assert _steps(second) == PEARS_STEPS


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_the_same_task_run_twice_by_an_app_that_sends_its_last_messages_is_two_trajectories(tmp_path, store, dialect):
    """The app sends the model only its last three messages (tied by tool call ids, not by history): two runs one after
    the other are two trajectories, and one run alone stays one. (Ids unique per reply, as OpenAI's are; ids numbered
    per reply: see the test below.)"""
    pears = [
        {**PEARS[0], "tool_calls": [_call("call_stock_pears", "check_stock", {"fruit": "pears"})]},
        {**PEARS[1], "tool_calls": [_call("call_order_pears", "order", {"fruit": "pears", "quantity": 5})]},
        PEARS[2],
    ]
    path, _ = _request_file(tmp_path, dialect, pears, pears, window=3)
    report, trajectories = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert [_steps(t) for t in trajectories] == [PEARS_STEPS, PEARS_STEPS]
    alone = type(store)(tmp_path / "alone")
    path, _ = _request_file(tmp_path, dialect, pears, window=3)
    report, (only,) = _ingest(alone, path)
    assert (report.problems, _steps(only)) == (0, PEARS_STEPS), report.errors


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_call_asked_again_stays_in_its_conversation(tmp_path, store, dialect):
    """Guards beside the split: a model call that failed and was retried with the same history, and a reply the app
    threw away (a check rejected it; no tool ran it) and asked again for with the same history, stay one
    trajectory, the thrown-away reply no step."""
    rejected = {"role": "assistant", "content": "", "tool_calls": [_call("call_0", "order", {"fruit": "pears", "quantity": 500})]}
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")
    history = [{"role": "user", "content": TURN_1}]
    with tracer.start_as_current_span("POST /shop", kind=SpanKind.SERVER):
        with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
            span.set_attributes(DIALECTS[dialect](history, None))
            span.set_status(Status(StatusCode.ERROR, "RateLimitError"))
        with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
            span.set_attributes(DIALECTS[dialect](history, rejected))
        _conversation(tracer, dialect, PEARS)
    path, _ = _exported(exporter, provider, tmp_path / "asked_again.jsonl")
    report, (only,) = _ingest(store, path)
    assert (report.problems, report.runs) == (0, 1), report.errors
    assert _steps(only) == PEARS_STEPS


ANSWER = {"role": "assistant", "content": "We have no pears."}  # a task done in one call: the model answers in text


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_task_answered_in_one_call_run_twice_is_two_trajectories(tmp_path, store, dialect):
    """A batch job runs a task the model answers in text at once, twice, then a third time when it goes to the tools:
    three trajectories. Before, one: the second call (the same history again) was read as the first asking again, so the
    first answer was thrown away as a rejected reply, and so was the second; only the third run was stored."""
    path, finished = _request_file(tmp_path, dialect, [ANSWER], [ANSWER], PEARS)
    report, trajectories = _ingest(store, path)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 3, 3), report.errors
    assert [_steps(t) for t in trajectories] == [[("answer", "We have no pears.")], [("answer", "We have no pears.")], PEARS_STEPS]
    assert [(t.task, t.status) for t in trajectories] == [(TURN_1, "completed")] * 3
    chats = _chats(finished)
    trace = format(chats[0].context.trace_id, "032x")
    assert [t.id for t in trajectories[1:]] == [run_trajectory_id(trace, format(c.context.span_id, "016x")) for c in chats[1:3]]


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_text_answer_asked_again_with_a_correction_or_at_the_end_of_a_run_stays_in_its_conversation(tmp_path, store, dialect):
    """Guards beside the split above: an answer in text the app rejects and asks again for with a correction appended
    (not the same history; then the task is run again, with tools), and a run's last call asked again with the same
    history after its answer was rejected (its history goes on with the call before) stay in their conversations, the
    rejected answer no step."""

    def chat(tracer: Any, history: list[dict[str, Any]], reply: dict[str, Any]) -> None:
        with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
            span.set_attributes(DIALECTS[dialect](history, reply))

    def corrected(tracer: Any) -> None:
        history = [{"role": "user", "content": TURN_1}]
        chat(tracer, history, {"role": "assistant", "content": "No."})
        chat(tracer, [*history, {"role": "user", "content": "Answer in a full sentence."}], ANSWER)
        _conversation(tracer, dialect, PEARS)

    def asked_again_at_the_end(tracer: Any) -> None:
        history = [{"role": "user", "content": TURN_1}]
        for reply in PEARS[:2]:
            chat(tracer, history, reply)
            (call,) = reply["tool_calls"]
            result = _tool(call["function"]["name"], json.loads(call["function"]["arguments"]))
            with tracer.start_as_current_span(f"execute_tool {call['function']['name']}") as span:
                span.set_attributes(_tool_span(call, result))
            history += [reply, {"role": "tool", "tool_call_id": call["id"], "content": result}]
        chat(tracer, history, {"role": "assistant", "content": "No."})
        chat(tracer, history, PEARS[2])

    for name, run, steps in (
        ("corrected", corrected, [[("answer", "We have no pears.")], PEARS_STEPS]),
        ("end", asked_again_at_the_end, [PEARS_STEPS]),
    ):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("shop").start_as_current_span("POST /shop", kind=SpanKind.SERVER):
            run(provider.get_tracer("shop"))
        path, _ = _exported(exporter, provider, tmp_path / f"{name}.jsonl")
        report, trajectories = _ingest(type(store)(tmp_path / name), path)
        assert (report.problems, [_steps(t) for t in trajectories]) == (0, steps), (name, report.errors)


@pytest.mark.parametrize("window", [3, 1])
@pytest.mark.parametrize("trace_tools", [True, False], ids=["tools-traced", "model-spans-only"])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_call_ids_numbered_per_reply_under_a_sliding_window_pair_each_call_with_its_own_result(
    tmp_path, store, dialect, trace_tools, window
):
    """A server that numbers tool calls per reply (every reply's call is ``call_1``) and an app that sends the model only
    its last messages: the order call's result is the tool message after that call ("ordered 5 pears"), not the first
    message of its id anywhere (the stock check's "0 pears in stock", which the order step was given before). With the
    last three messages the order call is in the next history before its result; with the last one alone the next
    history is that result. Two such runs one after the other are two trajectories, each paired the same way."""
    path, _ = _request_file(tmp_path, dialect, PEARS, window=window, trace_tools=trace_tools)
    report, (only,) = _ingest(store, path)
    assert (report.problems, _steps(only), [s.decision_index for s in only.steps]) == (0, PEARS_STEPS, [0, 1, 2]), report.errors
    twice = type(store)(tmp_path / "twice")
    path, _ = _request_file(tmp_path, dialect, PEARS, PEARS, window=window, trace_tools=trace_tools)
    report, trajectories = _ingest(twice, path)
    assert (report.problems, [_steps(t) for t in trajectories]) == (0, [PEARS_STEPS, PEARS_STEPS]), report.errors


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_call_id_an_earlier_turn_used_is_paired_with_this_turns_result(tmp_path, store, dialect):
    """A thread's second turn, sent with the model's last three messages: the window still holds the first turn's
    ``call_1`` result ("12 apples in stock") when this turn's reply makes its own ``call_1``. Its result is the message
    after it ("0 pears in stock"); before, the first message of the id, the earlier turn's, was its observation."""
    earlier = [
        {"role": "user", "content": "Do we have apples?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "check_stock", {"fruit": "apples"})]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 apples in stock"},
        {"role": "assistant", "content": "We have 12 apples."},
    ]
    replies = [PEARS[0], {"role": "assistant", "content": "We have no pears."}]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")
    history = [*earlier, {"role": "user", "content": TURN_1}]
    with tracer.start_as_current_span("POST /shop", kind=SpanKind.SERVER):
        for reply in replies:
            with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
                span.set_attributes(DIALECTS[dialect](history[-3:], reply))
            history.append(reply)
            for call in reply.get("tool_calls") or []:
                history.append({"role": "tool", "tool_call_id": call["id"], "content": _tool("check_stock", {"fruit": "pears"})})
    path, _ = _exported(exporter, provider, tmp_path / "second_turn.jsonl")
    report, (only,) = _ingest(store, path)
    assert report.problems == 0, report.errors
    assert _steps(only) == [PEARS_STEPS[0], ("answer", "We have no pears.")]
