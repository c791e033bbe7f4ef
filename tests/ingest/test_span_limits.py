"""Spans an SDK exported cut to its span limits (OTLP ``droppedAttributesCount`` / ``droppedEventsCount``).

Instrumentations that flatten every message into indexed attributes (OpenInference's ``llm.input_messages.N.*``,
OpenLLMetry's ``gen_ai.prompt.N.*``) pass the SDKs' default limit of 128 attributes per span at about 60 messages; the
Python SDK then evicts the oldest attributes (the system prompt and the task), other SDKs drop the newest (the last
messages and the reply), and the exporter counts what went in the span's ``dropped*Count``. Such a history is known to
be incomplete: ingest says so, naming the span and the setting to raise, and does not store it as if it were whole.
Events ingest never reads (OpenLLMetry's one per streamed chunk) are no loss: only what it reads from a span counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import GENAI_FILE, _request, _span, _write
from tests.ingest.test_dialects import _event_form_run

TRACE = "9" * 32
OPENLLMETRY = Path(__file__).parent / "fixtures" / "openllmetry_langgraph.jsonl"


def _long_openinference_run(dropped: int) -> list[dict[str, Any]]:
    """An OpenInference agent run whose one LLM span holds 62 messages as indexed attributes, the first four of them
    (the system prompt and the task) evicted by the Python SDK's limit, ``dropped`` counting them."""
    messages = [("system", "You are the billing agent. Never refund more than 100 EUR."), ("user", "Refund invoice 7 please")]
    for i in range(30):
        messages += [("assistant", f"checking step {i}"), ("user", f"more info {i}")]
    attrs: dict[str, Any] = {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o"}
    for i, (role, content) in enumerate(messages):
        attrs[f"llm.input_messages.{i}.message.role"] = role
        attrs[f"llm.input_messages.{i}.message.content"] = content
    attrs["llm.output_messages.0.message.role"] = "assistant"
    attrs["llm.output_messages.0.message.content"] = "Refunded 50 EUR."
    evicted = list(attrs)[1:5] if dropped else []
    kept = {k: v for k, v in attrs.items() if k not in evicted}
    agent = _span("9000000000000001", "billing", {"openinference.span.kind": "AGENT"}, start=0, end=50, trace=TRACE)
    extra = {"droppedAttributesCount": dropped} if dropped else {}
    llm = _span("9000000000000002", "ChatOpenAI", kept, parent="9000000000000001", start=1, end=5, trace=TRACE, **extra)
    return [agent, llm]


def test_a_model_span_cut_by_the_attribute_limit_is_reported_and_its_run_not_stored(tmp_path: Path) -> None:
    """Defect: the span's droppedAttributesCount was ignored: ingest exited 0 with no problem and no note and stored a
    trajectory whose state starts at the user's 'Refund invoice 7 please', without the system prompt ('Never refund more
    than 100 EUR'), as if that were the context the model saw. Now the run is skipped with one problem naming the span
    and the SDK settings to raise."""
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_write(tmp_path / "cut.jsonl", _request(_long_openinference_run(dropped=4)))], store)
    assert (report.problems, report.ingested) == (1, []), report.errors
    (problem,) = report.errors
    assert f"Trace {TRACE}: run 'billing' is incomplete: its model span 'ChatOpenAI' (9000000000000002)" in problem
    assert "4 attribute(s) dropped (OTLP droppedAttributesCount)" in problem
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT (or OTEL_ATTRIBUTE_COUNT_LIMIT)" in problem
    assert "run skipped rather than stored with a history known to be incomplete" in problem
    assert list(store.iter_trajectories()) == []


def test_the_same_run_exported_whole_is_stored(tmp_path: Path) -> None:
    """The run the SDK did not cut (droppedAttributesCount absent, or 0 as exporters write it) is stored as before."""
    spans = _long_openinference_run(dropped=0)
    spans[1]["droppedAttributesCount"] = 0
    spans[1]["droppedEventsCount"] = "0"  # a count written as a string, as some encoders write every integer
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_write(tmp_path / "whole.jsonl", _request(spans))], store)
    assert (report.problems, len(report.ingested), report.notes) == (0, 1, []), report.errors
    (got,) = store.iter_trajectories()
    assert got.steps[0].state[0]["content"] == "You are the billing agent. Never refund more than 100 EUR."


def test_message_events_dropped_by_the_event_limit_are_reported(tmp_path: Path) -> None:
    """The GenAI conventions' event form holds one event per message: a span over the event limit (128) lost some."""
    spans = _event_form_run()
    spans[3]["droppedEventsCount"] = 7
    report = ingest_files([_write(tmp_path / "events.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert (report.problems, report.ingested) == (1, []), report.errors
    (problem,) = report.errors
    assert "its model span 'chat gpt-4o' (d000000000000004)" in problem
    assert "7 event(s) dropped (OTLP droppedEventsCount)" in problem and "OTEL_SPAN_EVENT_COUNT_LIMIT" in problem
    assert "the messages read from its events (one per message) may lack some" in problem
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" not in problem and "attributes" not in problem, "only the limit that cut the span is named"


def test_a_model_span_whose_message_events_were_all_dropped_is_reported(tmp_path: Path) -> None:
    """Nothing is left to show the event form (every message event dropped): the span has no messages at all, so what
    was dropped is what ingest would have read."""
    spans = _event_form_run()
    spans[3]["events"] = [{"name": "gen_ai.content.completion.chunk", "timeUnixNano": "1700000000005000000"}] * 3
    spans[3]["droppedEventsCount"] = 5
    report = ingest_files([_write(tmp_path / "events.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert (report.problems, report.ingested) == (1, []), report.errors
    assert "5 event(s) dropped (OTLP droppedEventsCount)" in report.errors[0] and "OTEL_SPAN_EVENT_COUNT_LIMIT" in report.errors[0]


def _streamed(chunks: int, dropped: int) -> list[str]:
    """The real OpenLLMetry LangGraph fixture with each model span's reply streamed as OpenLLMetry's OpenAI
    instrumentation (``opentelemetry-instrumentation-openai``, not installed here: its events are written as it writes
    them) records it: one ``gen_ai.content.completion.chunk`` event per chunk, of which the SDK's event limit kept
    ``chunks`` and dropped ``dropped``; the messages stay the span's attributes."""
    out = []
    for line in OPENLLMETRY.read_text().splitlines():
        request = json.loads(line)
        for resource in request["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:
                    if span["name"].endswith(".chat"):
                        at = span["startTimeUnixNano"]
                        span["events"] = [{"name": "gen_ai.content.completion.chunk", "timeUnixNano": at} for _ in range(chunks)]
                        span["droppedEventsCount"] = dropped
        out.append(json.dumps(request))
    return out


def test_streamed_chunk_events_dropped_by_the_event_limit_lose_nothing_ingest_reads(tmp_path: Path) -> None:
    """Defect (56d49b6): a streamed reply of more than 128 chunks is exported with droppedEventsCount > 0, and every
    such OpenLLMetry run was skipped (exit 1) with a problem blaming evicted attributes and telling the user to raise
    OTEL_SPAN_EVENT_COUNT_LIMIT past the longest reply, though ingest reads OpenLLMetry's messages from attributes and
    never reads the chunk events. Now the runs are stored as when nothing was dropped, with no problem and no note."""
    whole = LocalExperienceStore(tmp_path / "whole")
    ingest_files([OPENLLMETRY], whole)
    path = tmp_path / "streamed.jsonl"
    path.write_text("\n".join(_streamed(chunks=128, dropped=95)) + "\n")
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([path], store)
    assert (report.problems, report.notes) == (0, []), report.errors
    expected = sorted((t.id, t.num_steps, t.final_answer) for t in whole.iter_trajectories())
    assert len(expected) == 2 and sorted((t.id, t.num_steps, t.final_answer) for t in store.iter_trajectories()) == expected


def test_a_span_cut_in_attributes_and_unread_events_names_the_attribute_limit_only(tmp_path: Path) -> None:
    """The setting named is the one for what ingest lost: the attributes, not the chunk events it never reads."""
    spans = _long_openinference_run(dropped=4)
    spans[1]["events"] = [{"name": "gen_ai.content.completion.chunk", "timeUnixNano": spans[1]["startTimeUnixNano"]}] * 128
    spans[1]["droppedEventsCount"] = 40
    report = ingest_files([_write(tmp_path / "cut.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert (report.problems, report.ingested) == (1, []), report.errors
    (problem,) = report.errors
    assert "4 attribute(s) dropped (OTLP droppedAttributesCount)" in problem and "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" in problem
    assert "event" not in problem


@pytest.mark.parametrize("field", ["droppedAttributesCount", "droppedEventsCount"])
def test_a_null_count_is_read_as_none_dropped(tmp_path: Path, field: str) -> None:
    """Defect (56d49b6): ``"droppedEventsCount": null`` (an absent count, as converters write it) was a shape problem
    that rejected the span and skipped its run; protobuf's JSON mapping reads null as the default, 0."""
    spans = [dict(span) for span in GENAI_FILE]
    for span in spans:
        span[field] = None
    spans[0]["events"] = [{"name": "exception", "attributes": [], "droppedAttributesCount": None}]
    report = ingest_files([_write(tmp_path / "null.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert (report.problems, len(report.ingested), report.notes) == (0, 1, []), report.errors


def test_a_tool_span_cut_by_its_limits_is_reported(tmp_path: Path) -> None:
    """A tool span's result or exception event (the observation and whether it was an error) may be what went."""
    spans = [dict(span) for span in GENAI_FILE]
    spans[2]["events"] = [{"name": "exception", "attributes": [], "droppedAttributesCount": 2}]
    report = ingest_files([_write(tmp_path / "tool.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert (report.problems, report.ingested) == (1, []), report.errors
    (problem,) = report.errors
    assert "its tool span 'execute_tool refund' (a000000000000003)" in problem
    assert "2 event attribute(s) dropped" in problem and "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT" in problem


def test_another_span_cut_by_its_limits_is_a_note_and_the_run_is_stored(tmp_path: Path) -> None:
    """The agent's span holds no decision: the run is stored, and a note says what may be missing and what to raise."""
    spans = [dict(span) for span in GENAI_FILE]
    spans[0]["droppedAttributesCount"] = 3
    report = ingest_files([_write(tmp_path / "agent.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (note,) = report.notes
    assert "its span 'invoke_agent billing' (a000000000000001) was exported with 3 attribute(s) dropped" in note
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" in note


@pytest.mark.parametrize("count", [-1, "many", 1.5, True])
def test_a_count_that_is_no_count_is_a_shape_problem(tmp_path: Path, count: Any) -> None:
    """A damaged count is a problem of its span, named as the other shape problems are."""
    spans = [dict(span) for span in GENAI_FILE]
    spans[1]["droppedAttributesCount"] = count
    report = ingest_files([_write(tmp_path / "bad.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert report.problems == 2 and report.ingested == [], report.errors  # the span, then its run skipped without it
    assert "spans[1] ('chat gpt-x'): droppedAttributesCount: " in report.errors[0]
