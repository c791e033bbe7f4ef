"""Spans an SDK exported cut to its span limits (OTLP ``droppedAttributesCount`` / ``droppedEventsCount``).

Instrumentations that flatten every message into indexed attributes (OpenInference's ``llm.input_messages.N.*``,
OpenLLMetry's ``gen_ai.prompt.N.*``) pass the SDKs' default limit of 128 attributes per span at about 60 messages; the
Python SDK then evicts the oldest attributes (the system prompt and the task), other SDKs drop the newest (the last
messages and the reply), and the exporter counts what went in the span's ``dropped*Count``. Such a history is known to
be incomplete: ingest says so, naming the span and the setting to raise, and does not store it as if it were whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import GENAI_FILE, _request, _span, _write

TRACE = "9" * 32


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
    spans = [dict(span) for span in GENAI_FILE]
    spans[3]["droppedEventsCount"] = 7
    report = ingest_files([_write(tmp_path / "events.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert (report.problems, report.ingested) == (1, []), report.errors
    (problem,) = report.errors
    assert "its model span 'chat gpt-x' (a000000000000004)" in problem
    assert "7 event(s) dropped (OTLP droppedEventsCount)" in problem and "OTEL_SPAN_EVENT_COUNT_LIMIT" in problem
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" not in problem, "only the limit that cut the span is named"


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
