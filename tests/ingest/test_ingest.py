"""Ingest OTLP JSON span files (the Collector file exporter's format) into trajectories."""

from __future__ import annotations

import base64
import copy
import json

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.otlp_json import read_otlp_json, spans_to_otlp_json
from tests.conftest import USER_TASK
from tests.ingest.otlp_builders import GENAI_FILE, _request, _span, _write


def test_our_own_spans_round_trip_through_an_otlp_file(react_graph, store, store_path, tracer_provider, span_exporter, tmp_path):
    agent = record_experience(react_graph, app="shop", store=store_path, tracer_provider=tracer_provider)
    agent.invoke(USER_TASK, {"configurable": {"thread_id": "th"}})
    agent.flush()
    live = next(store.iter_trajectories())
    file = _write(tmp_path / "traces.jsonl", spans_to_otlp_json(list(span_exporter.get_finished_spans())))
    other = LocalExperienceStore(tmp_path / "ingested")
    report = ingest_files([file], other)
    assert (report.errors, report.runs, len(report.ingested)) == ([], 1, 1)
    ingested = next(other.iter_trajectories())
    assert ingested.source == "otlp-ingest"
    assert ingested.model_dump(exclude={"source"}) == live.model_dump(exclude={"source"})


def test_genai_spans_from_another_instrumentation(tmp_path, store):
    report = ingest_files([_write(tmp_path / "t.jsonl", _request(GENAI_FILE))], store)
    assert report.errors == [] and len(report.ingested) == 1
    t = next(store.iter_trajectories())
    assert (t.app, t.model, t.thread_id, t.task, t.final_answer) == (
        "billing",
        "gpt-x",
        "c-1",
        "Refund invoice 7",
        "Done: invoice 7 refunded.",
    )
    assert t.steps[0].state[0] == {"role": "system", "content": "You are billing support."}
    assert t.steps[0].action.tool_call.arguments == {"invoice": 7}
    assert t.steps[0].observation.content == "refunded 7" and t.steps[0].latency_ms == 2.0
    assert t.tools[0]["function"]["name"] == "refund"
    again = ingest_files([tmp_path / "t.jsonl"], store)
    assert again.ingested == [] and len(again.already_stored) == 1, "ingesting twice adds nothing"


def test_genai_media_parts_are_stored_as_placeholders_not_their_bytes(tmp_path, store):
    """A GenAI ``blob`` part (an image the user sent, inline) and a tool that answered with content blocks
    (text and an image): the stored run says what was there, never the base64. Before, the blob was
    dropped without a trace and the tool's image was stored as its JSON, base64 and all."""
    photo = base64.b64encode(bytes(range(256)) * 400).decode("ascii")  # 102,400 bytes
    user = {
        "role": "user",
        "parts": [
            {"type": "text", "content": "Refund invoice 7"},
            {"type": "blob", "modality": "image", "mime_type": "image/jpeg", "content": photo},
        ],
    }
    receipt = [{"type": "text", "text": "refunded 7"}, {"type": "image", "base64": photo, "mime_type": "image/png"}]
    spans = copy.deepcopy(GENAI_FILE)
    for span in spans:
        for attr in span["attributes"]:
            if attr["key"] == "gen_ai.input.messages":
                messages = json.loads(attr["value"]["stringValue"])
                messages[0] = user
                for message in messages[1:]:
                    for part in message["parts"]:
                        if part["type"] == "tool_call_response":
                            part["response"] = receipt
                attr["value"]["stringValue"] = json.dumps(messages)
    report = ingest_files([_write(tmp_path / "t.jsonl", _request(spans))], store)
    assert report.errors == [] and len(report.ingested) == 1
    t = next(store.iter_trajectories())
    task = "Refund invoice 7\n[image: image/jpeg, 100.0 KB]"
    assert t.task == task
    assert [[m for m in s.state if m["role"] == "user"] for s in t.steps] == [[{"role": "user", "content": task}]] * 2
    assert t.steps[0].observation.content == "refunded 7\n[image: image/png, 100.0 KB]" == t.steps[1].state[-1]["content"]
    assert photo[:200] not in t.model_dump_json()


def test_openllmetry_indexed_attributes(tmp_path, store):
    spans = [
        _span(
            "b000000000000001", "support.workflow", {"traceloop.span.kind": "workflow", "traceloop.entity.name": "support"}, start=0, end=10
        ),
        _span(
            "b000000000000002",
            "openai.chat",
            {
                "llm.request.type": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "Weather in Oslo?",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.tool_calls.0.id": "call_9",
                "gen_ai.completion.0.tool_calls.0.name": "get_weather",
                "gen_ai.completion.0.tool_calls.0.arguments": '{"city": "Oslo"}',
                "llm.request.functions.0.name": "get_weather",
                "llm.request.functions.0.description": "Weather by city",
                "llm.request.functions.0.parameters": '{"type": "object", "properties": {"city": {"type": "string"}}}',
            },
            parent="b000000000000001",
            start=1,
            end=2,
        ),
        _span(
            "b000000000000003",
            "get_weather.tool",
            {
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": "get_weather",
                "traceloop.entity.input": '{"inputs": {"city": "Oslo"}}',
                "traceloop.entity.output": "-3C, snow",
            },
            parent="b000000000000001",
            start=3,
            end=4,
        ),
        _span(
            "b000000000000004",
            "openai.chat",
            {
                "llm.request.type": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "Weather in Oslo?",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "It is -3C with snow in Oslo.",
            },
            parent="b000000000000001",
            start=5,
            end=6,
        ),
    ]
    report = ingest_files([_write(tmp_path / "t.json", _request(spans, service="weather-bot"))], store)
    assert report.errors == []
    t = next(store.iter_trajectories())
    assert (t.app, t.model, t.final_answer) == ("support", "gpt-4o-mini", "It is -3C with snow in Oslo.")
    call, answer = t.steps
    assert answer.action.kind == "answer"
    assert (call.action.tool_call.name, call.action.tool_call.arguments, call.observation.content) == (
        "get_weather",
        {"city": "Oslo"},
        "-3C, snow",
    )
    assert t.tools[0]["function"]["parameters"]["properties"]["city"]["type"] == "string"


def test_openinference_spans_with_base64_ids(tmp_path, store):
    def b64(hex_id: str) -> str:
        return base64.b64encode(bytes.fromhex(hex_id)).decode()

    trace = b64("0123456789abcdef0123456789abcdef")
    spans = [
        _span(b64("c000000000000001"), "Agent", {"openinference.span.kind": "AGENT"}, start=0, end=9, trace=trace),
        _span(
            b64("c000000000000002"),
            "ChatOpenAI",
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "qwen-7b",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "List files",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.tool_calls.0.tool_call.id": "t1",
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "ls",
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
                "llm.tools.0.tool.json_schema": json.dumps(
                    {"type": "function", "function": {"name": "ls", "parameters": {"type": "object", "properties": {}}}}
                ),
            },
            parent=b64("c000000000000001"),
            start=1,
            end=2,
            trace=trace,
        ),
        _span(
            b64("c000000000000003"),
            "ls",
            {"openinference.span.kind": "TOOL", "tool.name": "ls", "input.value": "{}", "output.value": "a.txt b.txt"},
            parent=b64("c000000000000001"),
            start=3,
            end=4,
            trace=trace,
        ),
    ]
    report = ingest_files([_write(tmp_path / "t.json", _request(spans))], store, app="files-bot")
    assert report.errors == []
    t = next(store.iter_trajectories())
    assert (t.app, t.model, t.trace_id) == ("billing-agent", "qwen-7b", "0123456789abcdef0123456789abcdef")
    assert t.steps[0].observation.content == "a.txt b.txt" and t.tools[0]["function"]["name"] == "ls"


def test_malformed_spans_get_one_error_each_and_good_runs_are_still_ingested(tmp_path, store):
    bad_ids = _span("xyz", "chat broken", {"gen_ai.operation.name": "chat"})
    bad_json = [
        _span("d000000000000001", "invoke_agent x", {"gen_ai.operation.name": "invoke_agent"}, trace="d" * 32, start=0, end=5),
        _span(
            "d000000000000002",
            "chat m",
            {"gen_ai.operation.name": "chat", "gen_ai.input.messages": "[{not json"},
            parent="d000000000000001",
            trace="d" * 32,
        ),
    ]
    tool_only = [_span("e000000000000001", "execute_tool t", {"gen_ai.operation.name": "execute_tool"}, trace="e" * 32)]
    backwards = _span("f000000000000001", "chat late", {"gen_ai.operation.name": "chat"}, trace="f" * 32, start=5, end=1)
    file = tmp_path / "mixed.jsonl"
    file.write_text(
        json.dumps(_request([*GENAI_FILE, bad_ids, backwards]))
        + "\n{this line is not json\n"
        + json.dumps(_request(bad_json + tool_only))
        + "\n"
        + json.dumps({"hello": "world"})
        + "\n"
    )
    report = ingest_files([file], store)
    assert len(report.ingested) == 1, report.errors
    errors = "\n".join(report.errors)
    assert "spanId (a string of 3 characters) is neither 16 hex digits nor base64" in errors and "'chat broken'" in errors
    assert "endTimeUnixNano" in errors
    assert "mixed.jsonl:2: not valid JSON" in errors
    assert "gen_ai.input.messages is not valid JSON" in errors
    assert "no agent run found" in errors
    assert "expected an OTLP export request" in errors
    assert len(report.errors) == 6


def test_unreadable_and_empty_files_are_reported(tmp_path, store):
    (tmp_path / "empty.json").write_text("")
    report = ingest_files([tmp_path / "missing.json", tmp_path / "empty.json"], store)
    assert len(report.errors) == 2 and "cannot read" in report.errors[0] and "empty" in report.errors[1]


def test_reader_accepts_a_pretty_printed_single_document(tmp_path):
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(_request(GENAI_FILE), indent=2))
    parsed = read_otlp_json(path)
    assert parsed.errors == [] and len(parsed.spans) == 4
    assert parsed.spans[0].resource == {"service.name": "billing-agent"}


def test_a_reviewed_turn_under_tools_chosen_per_call_round_trips_through_an_otlp_file(tracer_provider, span_exporter, tmp_path):
    """Our own spans of a human-reviewed run whose tools are chosen per model call (a wrap_model_call offering one tool
    per call, HumanInTheLoopMiddleware), exported and ingested elsewhere: the resumed run's reviewed order is stored as
    the recorder stored it, with the tools its paused decision was offered (read from the paused run ingested before
    it). Before, ingest knew nothing of the paused decision and left the reviewed order out of the resumed run."""
    from langgraph.types import Command

    from tests.capture.test_middleware_shapes import TASK, planned_model
    from tests.capture.test_step_tools import REVIEWS, _reviewed_graph

    live_path = tmp_path / "live"
    agent = record_experience(_reviewed_graph(planned_model()), app="shop", store=live_path, tracer_provider=tracer_provider)
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke(TASK, config)
    agent.invoke(Command(resume={"decisions": [REVIEWS["edit"]]}), config)
    agent.flush()
    live = LocalExperienceStore(live_path)
    expected = sorted(live.iter_trajectories(), key=lambda t: t.started_at)
    live.close()
    reviewed = expected[1].steps[0]  # the recorder's: the reviewed order, offered order_item alone (all the run's tools)
    assert reviewed.action.tool_call is not None and reviewed.action.tool_call.name == "order_item"
    assert [t["function"]["name"] for t in expected[1].step_tools(reviewed)] == ["order_item"]
    file = _write(tmp_path / "traces.jsonl", spans_to_otlp_json(list(span_exporter.get_finished_spans())))
    other = LocalExperienceStore(tmp_path / "ingested")
    report = ingest_files([file], other)
    assert (report.errors, len(report.ingested)) == ([], 2)
    ingested = sorted(other.iter_trajectories(), key=lambda t: t.started_at)
    assert [t.model_dump(exclude={"source"}) for t in ingested] == [t.model_dump(exclude={"source"}) for t in expected]
