"""Trace shapes of instrumentations beyond the LangGraph fixtures: each run keeps its observations.

* pydantic-ai (real spans, ``fixtures/make_pydantic_ai_fixture.py``) writes tool results in the
  model's input as ``tool_call_response`` parts with ``result`` (the GenAI conventions say
  ``response``), and in its version-2 format the tool spans carry ``tool_arguments`` /
  ``tool_response``. Before ingest read them, every observation was stored as ``"null"``.
* The event form of the GenAI conventions (semconv 1.27-1.36 as span events, as Azure AI Inference
  and Semantic Kernel write them: ``gen_ai.{system,user,assistant,tool}.message`` and
  ``gen_ai.choice`` with the message as JSON in ``gen_ai.event.content``; semconv 1.26's
  ``gen_ai.content.prompt`` / ``gen_ai.content.completion``) puts the messages in span events. Before,
  such a run was stored as a trajectory with no steps, no task and no answer, and no problem said so.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.load import dumpd
from langchain_core.messages import ToolMessage, messages_to_dict

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.normalize import normalize
from ee_middleware.capture.spandata import SpanData
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.dialects import adapt
from tests.ingest.otlp_builders import GENAI_FILE, _request, _span, _write
from tests.ingest.test_instrumentations import _steps

FIXTURES = Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "pydantic_ai.meta.json").read_text())


@pytest.mark.parametrize("version", [2, 5])
def test_pydantic_ai_tool_results_are_the_observations(store, version):
    report = ingest_files([FIXTURES / f"pydantic_ai_v{version}.jsonl"], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (t,) = store.iter_trajectories()
    assert (t.app, t.task, t.final_answer) == ("shop", META["task"], META["answer"])
    assert _steps(t) == [
        ("check_stock", {"fruit": "pears"}, "0 pears in stock", False),
        ("order", {"fruit": "pears", "quantity": 5}, "ordered 5 pears", False),
        ("answer", META["answer"]),
    ]


@pytest.mark.parametrize("version", [2, 5])
def test_pydantic_ai_tool_span_gives_the_observation_no_later_model_call_shows(tmp_path, store, version):
    """The run cut after the order tool ran (its last model span dropped): the order's observation is
    the tool span's own result (``tool_response`` in pydantic-ai's version 2)."""
    request = json.loads((FIXTURES / f"pydantic_ai_v{version}.jsonl").read_text())
    spans = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    chats = [
        s for s in spans if any(a["key"] == "gen_ai.operation.name" and a["value"] == {"stringValue": "chat"} for a in s["attributes"])
    ]
    last_chat = max(chats, key=lambda s: int(s["startTimeUnixNano"]))
    spans.remove(last_chat)
    report = ingest_files([_write(tmp_path / "cut.jsonl", request)], store)
    assert report.problems == 0, report.errors
    (t,) = store.iter_trajectories()
    assert _steps(t) == [
        ("check_stock", {"fruit": "pears"}, "0 pears in stock", False),
        ("order", {"fruit": "pears", "quantity": 5}, "ordered 5 pears", False),
    ]


def _event(name: str, attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "timeUnixNano": "1700000000001000000",
        "attributes": [{"key": k, "value": {"stringValue": v if isinstance(v, str) else json.dumps(v)}} for k, v in attributes.items()],
    }


def _content(name: str, message: dict[str, Any]) -> dict[str, Any]:
    """A message event as Azure AI Inference's tracing writes it (the message as JSON in gen_ai.event.content)."""
    return _event(name, {"gen_ai.system": "az.ai.inference", "gen_ai.event.content": message})


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
SYSTEM = _content("gen_ai.system.message", {"role": "system", "content": "You are a weather bot."})
USER = _content("gen_ai.user.message", {"role": "user", "content": "Weather in Paris?"})


def _event_form_run() -> list[dict[str, Any]]:
    model = {"gen_ai.operation.name": "chat", "gen_ai.system": "az.ai.inference", "gen_ai.request.model": "gpt-4o"}
    return [
        _span(
            "d000000000000001", "invoke_agent weather", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "weather"}, end=10
        ),
        _span(
            "d000000000000002",
            "chat gpt-4o",
            model,
            parent="d000000000000001",
            start=1,
            end=2,
            events=[
                SYSTEM,
                USER,
                _content("gen_ai.choice", {"message": {"content": None, "tool_calls": [CALL]}, "finish_reason": "tool_calls", "index": 0}),
            ],
        ),
        _span(
            "d000000000000003",
            "execute_tool get_weather",
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "gen_ai.tool.call.id": "call_1"},
            parent="d000000000000001",
            start=3,
            end=4,
        ),
        _span(
            "d000000000000004",
            "chat gpt-4o",
            model,
            parent="d000000000000001",
            start=5,
            end=6,
            events=[
                SYSTEM,
                USER,
                _content("gen_ai.assistant.message", {"role": "assistant", "tool_calls": [CALL]}),
                _content("gen_ai.tool.message", {"role": "tool", "tool_call_id": "call_1", "content": "21C and sunny"}),
                _content("gen_ai.choice", {"message": {"content": "It is 21C and sunny in Paris."}, "finish_reason": "stop", "index": 0}),
            ],
        ),
    ]


def test_messages_in_genai_span_events_make_the_steps(tmp_path, store):
    report = ingest_files([_write(tmp_path / "events.jsonl", _request(_event_form_run()))], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (t,) = store.iter_trajectories()
    assert (t.task, t.final_answer) == ("Weather in Paris?", "It is 21C and sunny in Paris.")
    assert _steps(t) == [("get_weather", {"city": "Paris"}, "21C and sunny", False), ("answer", "It is 21C and sunny in Paris.")]
    assert t.steps[0].state[0] == {"role": "system", "content": "You are a weather bot."}


def test_semconv_event_bodies_without_roles_take_the_role_from_the_event_name(tmp_path, store):
    """The semconv 1.28-1.36 bodies name no role (``{"content": ...}``; a tool message's ``id``)."""
    spans = _event_form_run()
    spans[3]["events"] = [
        _content("gen_ai.user.message", {"content": "Weather in Paris?"}),
        _content("gen_ai.assistant.message", {"tool_calls": [CALL]}),
        _content("gen_ai.tool.message", {"id": "call_1", "content": "21C and sunny"}),
        _content("gen_ai.choice", {"message": {"content": "Sunny."}, "finish_reason": "stop", "index": 0}),
    ]
    report = ingest_files([_write(tmp_path / "events.jsonl", _request(spans))], store)
    assert report.problems == 0, report.errors
    (t,) = store.iter_trajectories()
    assert _steps(t) == [("get_weather", {"city": "Paris"}, "21C and sunny", False), ("answer", "Sunny.")]


def test_semconv_1_26_prompt_and_completion_events_make_the_steps(tmp_path, store):
    span = _span(
        "e000000000000001",
        "chat gpt-4o",
        {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"},
        events=[
            _event("gen_ai.content.prompt", {"gen_ai.prompt": [{"role": "user", "content": "Say hi"}]}),
            _event("gen_ai.content.completion", {"gen_ai.completion": [{"role": "assistant", "content": "Hi!"}]}),
        ],
    )
    report = ingest_files([_write(tmp_path / "legacy.jsonl", _request([span]))], store)
    assert report.problems == 0, report.errors
    (t,) = store.iter_trajectories()
    assert (t.task, t.final_answer, _steps(t)) == ("Say hi", "Hi!", [("answer", "Hi!")])


def test_model_spans_without_any_messages_are_a_problem_not_an_empty_trajectory(tmp_path, store):
    spans = copy.deepcopy(_event_form_run())
    for span in spans:
        span.pop("events", None)  # content capture off: the spans carry no messages at all
    report = ingest_files([_write(tmp_path / "no-content.jsonl", _request(spans))], store)
    assert (report.problems, report.ingested) == (1, [])
    assert "carry no messages" in report.errors[0] and "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in report.errors[0]


def test_openinference_messages_with_content_parts_keep_their_text(tmp_path, store):
    """OpenInference writes a message whose content is a list of parts (OpenAI's content arrays,
    Anthropic's blocks) as ``message.contents.{j}.message_content.type|text``, not ``message.content``.
    Before, those messages were read as empty: no task, no answer, no steps, and no problem."""
    llm = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o",
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "Be brief.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.contents.0.message_content.type": "text",
        "llm.input_messages.1.message.contents.0.message_content.text": "What is 2+2? ",
        "llm.input_messages.1.message.contents.1.message_content.type": "image",
        "llm.input_messages.1.message.contents.1.message_content.image.image.url": "https://example.com/sum.png",
        "llm.input_messages.1.message.contents.2.message_content.type": "text",
        "llm.input_messages.1.message.contents.2.message_content.text": "Answer in digits.",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.contents.0.message_content.type": "text",
        "llm.output_messages.0.message.contents.0.message_content.text": "4",
    }
    spans = [
        _span("f000000000000001", "agent", {"openinference.span.kind": "AGENT", "input.value": "What is 2+2?"}, end=5),
        _span("f000000000000002", "ChatOpenAI", llm, parent="f000000000000001", start=1, end=2),
    ]
    report = ingest_files([_write(tmp_path / "oi.jsonl", _request(spans))], store)
    assert report.problems == 0, report.errors
    (t,) = store.iter_trajectories()
    # the image part is said as every dialect's image is (it was dropped before)
    task = "What is 2+2? [image: https://example.com/sum.png]\nAnswer in digits."
    assert (t.task, t.final_answer, _steps(t)) == (task, "4", [("answer", "4")])


def test_a_tool_message_with_an_image_is_read_as_its_placeholder_in_every_dialect():
    """A tool that answered with an image block, as OpenInference (``messages_to_dict``) and Langfuse (``dumpd``)
    write LangChain's ToolMessage: the result is the text the model saw, the image as its placeholder. Before,
    it was the content's JSON, base64 and all."""
    chart = base64.b64encode(bytes(range(256)) * 40).decode("ascii")  # 10,240 bytes
    reply = ToolMessage(content=["the chart:", {"type": "image", "base64": chart, "mime_type": "image/png"}], tool_call_id="c1")
    openinference = {"openinference.span.kind": "TOOL", "tool.name": "plot", "output.value": json.dumps(messages_to_dict([reply])[0])}
    langfuse = {"langfuse.observation.type": "tool", "langfuse.observation.output": json.dumps(reply.model_dump())}
    langfuse_serialized = {"langfuse.observation.type": "tool", "langfuse.observation.output": json.dumps(dumpd(reply))}  # {"lc": 1, ...}
    for attrs in (openinference, langfuse, langfuse_serialized):
        span = normalize(adapt(SpanData("t" * 32, "0" * 16, None, "plot", 0, 1, attrs)))
        assert span.attributes[sc.TOOL_CALL_RESULT] == "the chart:\n[image: image/png, 10.0 KB]"
        assert span.attributes[sc.TOOL_CALL_ID] == "c1"


def _any_value(value: Any) -> dict[str, Any]:
    """A JSON value as an OTLP AnyValue (objects as kvlistValue, lists as arrayValue)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"kvlistValue": {"values": [{"key": k, "value": _any_value(v)} for k, v in value.items()]}}


@pytest.mark.parametrize("form", ["kvlist", "json-strings"])
def test_genai_attributes_as_otlp_arrays_hand_built(tmp_path, store, form):
    """Hand-built (the Python and JS SDKs write JSON text; a Collector's transform processor, or an SDK that allows
    structured attributes, writes these): the messages, system instructions and tools as an ``arrayValue`` of
    ``kvlistValue`` objects (read before), or of JSON strings, one per item (before: "[0]: input should be a valid
    dictionary", the run skipped)."""
    keys = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.tool.definitions")
    spans = copy.deepcopy(GENAI_FILE)
    for span in spans:
        for attr in span["attributes"]:
            if attr["key"] in keys:
                items = json.loads(attr["value"]["stringValue"])
                strings = {"arrayValue": {"values": [{"stringValue": json.dumps(i)} for i in items]}}
                attr["value"] = _any_value(items) if form == "kvlist" else strings
    report = ingest_files([_write(tmp_path / "arrays.jsonl", _request(spans))], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (t,) = store.iter_trajectories()
    assert [(s.action.kind, s.observation.content if s.observation else None) for s in t.steps] == [
        ("tool_call", "refunded 7"),
        ("answer", None),
    ]
    assert t.steps[0].action.tool_call.arguments == {"invoice": 7}
    assert t.steps[0].state[0] == {"role": "system", "content": "You are billing support."}
    assert [tool["function"]["name"] for tool in t.tools] == ["refund"]


def test_python_repr_text_is_read_as_the_data_it_writes_never_run():
    """LiteLLM writes request and response fields as ``str()`` of the value: a list of dicts, or of pydantic models (an
    app that appends the SDK's reply message as it is). Both are read as data; anything else (a call with positional
    arguments, a name, an expression) is no literal, and nothing in the text runs."""
    from pydantic import BaseModel

    from ee_middleware.ingest.dialects import python_literal

    class Function(BaseModel):
        arguments: str
        name: str

    class ChatCompletionMessageToolCall(BaseModel):
        function: Function
        id: str
        type: str = "function"

    class Message(BaseModel):
        content: str | None = None
        role: str = "assistant"
        tool_calls: list[ChatCompletionMessageToolCall] | None = None

    call = ChatCompletionMessageToolCall(function=Function(arguments='{"fruit": "pears"}', name="check_stock"), id="call_1")
    history = [{"role": "user", "content": "Pears? é"}, Message(tool_calls=[call])]
    assert python_literal(str(history)) == [
        {"role": "user", "content": "Pears? é"},
        {
            "content": None,
            "role": "assistant",
            "tool_calls": [{"function": {"arguments": '{"fruit": "pears"}', "name": "check_stock"}, "id": "call_1", "type": "function"}],
        },
    ]
    assert python_literal('[{"a": null, "b": true}]') == [{"a": None, "b": True}]
    assert python_literal("(1, -2.5, {'x'})") == [1, -2.5, ["x"]]
    for text in ("__import__('os').system('false')", "[open('/etc/passwd')]", "{**x}", "f(**x)", "[1 + 1]", "[...]", "", None):
        assert python_literal(text) is None, text


def test_openinference_genai_tool_text_that_parses_as_json_is_stored_as_the_model_saw_it(store):
    """OpenInference with ``OPENINFERENCE_ENABLE_GENAI_SEMCONV=true`` writes a tool result whose text parses as JSON as
    the parsed value in ``gen_ai.input.messages`` (real spans, ``fixtures/make_sweep_fixtures.py``): it was stored
    re-encoded (``{"id":"H-1","price":97}``, ``[1.5,2.0,100000.0]``, ``42``, the indented hotel list without its
    spacing). The same span's ``llm.input_messages.{i}.message.content`` holds the text the model saw."""
    text = json.loads((FIXTURES / "openinference_genai_json_tool_text.meta.json").read_text())["tool_text"]
    report = ingest_files([FIXTURES / "openinference_genai_json_tool_text.jsonl"], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (t,) = store.iter_trajectories()
    calls = [s for s in t.steps if s.action.kind == "tool_call"]
    assert {s.action.tool_call.arguments["key"]: s.observation.content for s in calls} == text
    assert {m["tool_call_id"]: m["content"] for m in t.messages if m["role"] == "tool"} == {f"call_{k}": v for k, v in text.items()}
    assert t.final_answer == "fertig"


def test_langsmith_exception_is_stored_as_its_type_and_message_without_the_traceback(store):
    """LangSmith's OpenTelemetry export writes an exception's ``repr`` and its whole Python traceback (local paths,
    source lines) as ``exception.message``, with ``exception.type`` ``Exception`` (real spans of a tool that raises,
    ``fixtures/langsmith_tool_error.meta.json``): the failed call's observation and the run's error were
    ``Exception: RuntimeError('...')Traceback (most recent call last): File "/tmp/..."``."""
    meta = json.loads((FIXTURES / "langsmith_tool_error.meta.json").read_text())
    report = ingest_files([FIXTURES / "langsmith_tool_error.jsonl"], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (t,) = store.iter_trajectories()
    assert (t.thread_id, t.status, t.error) == (meta["thread"], "error", meta["error"])
    assert _steps(t) == [("charge_card", {"amount": 999.5}, meta["error"], True)]


def test_openllmetry_genai_messages_with_a_tool_results_text_blocks_store_their_text(store):
    """OpenLLMetry 0.62 (its GenAI messages) writes a tool message whose content is text blocks as the blocks' JSON, with
    ``ü`` escaped (real spans, ``fixtures/openllmetry_0_62_text_blocks.meta.json``): the observation and the tool message
    were that JSON text. They are the blocks' text, as capture and the other instrumentations' spans give it."""
    meta = json.loads((FIXTURES / "openllmetry_0_62_text_blocks.meta.json").read_text())
    report = ingest_files([FIXTURES / "openllmetry_0_62_text_blocks.jsonl"], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (t,) = store.iter_trajectories()
    assert (t.thread_id, t.task, t.final_answer) == (meta["thread"], meta["task"], meta["answer"])
    assert _steps(t)[0] == ("two_parts", {"q": "zürich"}, meta["observation"], False)
    [tool_message] = [m for m in t.messages if m["role"] == "tool"]
    assert tool_message["content"] == meta["observation"]


def test_langsmith_run_ending_on_a_return_direct_tool_keeps_its_tool_message_and_answer(store):
    """A ``return_direct=True`` tool ends the run on its tool message, no model call after it (real spans,
    ``fixtures/langsmith_return_direct.meta.json``): LangSmith's graph span holds what the graph returned as JSON in
    ``gen_ai.completion`` (LangChain's dumped messages), which was not read, so the messages ended on the call and the
    run had no final answer; OpenInference's and OpenLLMetry's graph spans gave them."""
    meta = json.loads((FIXTURES / "langsmith_return_direct.meta.json").read_text())
    report = ingest_files([FIXTURES / "langsmith_return_direct.jsonl"], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (t,) = store.iter_trajectories()
    assert (t.thread_id, t.status, t.task, t.final_answer) == (meta["thread"], "completed", meta["task"], meta["answer"])
    assert _steps(t) == [("final_lookup", {"code": "XYZ9"}, meta["answer"], False)]
    assert (t.messages[-1]["role"], t.messages[-1]["content"]) == ("tool", meta["answer"])
