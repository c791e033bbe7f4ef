"""Distributed traces: a run whose spans' parent lives in another service.

An agent service calling a separate LLM gateway (LiteLLM's proxy, which continues the caller's trace from its
``traceparent`` header), or a run under a frontend's request: the gateway's model spans point at a parent span that
is in the caller's process, never in the gateway's export. W3C context propagation marks such a parent as remote,
and the OTLP encoders of the OpenTelemetry SDKs write it in each span's ``flags`` (bit 8: whether it is known, bit 9:
remote; 256 local, 768 remote). Such a run is complete: its parent is not a root span still to be exported, unless
its last model call asked for tools (the caller goes on with another call, which later files hold). A parent
written as local (or not written, as older exporters do) is still one the process had not exported yet: the run never
ended, as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.spandata import from_readable_span
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from ee_middleware.messages import dumps, openai_to_genai
from tests.ingest.test_agent_sdks import LITELLM
from tests.ingest.test_instrumentations import FIRST_RUN_STEPS, FIXTURES, _steps

REMOTE, LOCAL = 768, 256


def _requests(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def _spans(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def _gateway_file(tmp_path: Path, flags: int | None, *, drop_last_call: bool = False) -> Path:
    """The real LiteLLM file (one ``litellm_request`` span per call) as the gateway's own export: without the app's
    ``shop turn`` spans (the caller's, in the other service), each call's parent written as ``flags`` says."""
    lines = []
    for request in _requests(LITELLM["request-span"]):
        calls = sorted((s for s in _spans(request) if s["name"] == "litellm_request"), key=lambda s: int(s["startTimeUnixNano"]))
        gone = {calls[-1]["spanId"]} if drop_last_call else set()
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                kept = [
                    s for s in ss["spans"] if s["name"] != "shop turn" and s["spanId"] not in gone and s.get("parentSpanId") not in gone
                ]
                for span in kept:
                    if span["name"] == "litellm_request":
                        span.pop("flags", None)
                        if flags is not None:
                            span["flags"] = flags
                ss["spans"] = kept
        lines.append(json.dumps(request))
    path = tmp_path / "gateway.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingest(store: Any, *paths: Path) -> tuple[Any, list[Any]]:
    report = ingest_files(list(paths), store)
    return report, sorted(store.iter_trajectories(), key=lambda t: t.started_at)


def test_a_gateways_model_calls_under_a_remote_parent_are_a_complete_run(tmp_path, store):
    """Before, each run was stored as interrupted ('its root span ... is not among the spans read'), so it was left
    out of every approved data set."""
    report, (first, second) = _ingest(store, _gateway_file(tmp_path, REMOTE))
    assert (report.problems, report.runs, len(report.ingested), report.unfinished) == (0, 2, 2, []), report.errors
    assert (first.status, first.error, second.status) == ("completed", None, "completed")
    assert _steps(first) == FIRST_RUN_STEPS and [s[0] for s in _steps(second)] == ["check_stock", "order", "answer"]


def test_a_remote_parents_run_is_stored_once_when_the_callers_spans_come_later(tmp_path, store):
    """The early-ingest guarantee holds: the gateway's run is named after the parent it lacks, as the whole run is once
    the caller's spans are read (the caller exports to the same collector, later): nothing is stored twice."""
    report, gateway = _ingest(store, _gateway_file(tmp_path, REMOTE))
    assert len(report.ingested) == 2
    again = ingest_files([FIXTURES / LITELLM["request-span"]], store)
    assert (len(again.ingested), sorted(again.already_stored)) == (0, sorted(t.id for t in gateway)), again.errors


@pytest.mark.parametrize("flags", [LOCAL, None], ids=["local", "not-written"])
def test_a_parent_that_is_not_written_as_remote_is_still_a_run_that_never_ended(tmp_path, store, flags):
    """A local parent missing is a span the process had not exported yet (the run was still going, or died); without
    flags nothing tells it from a remote one, so it is kept as before."""
    report, (first, second) = _ingest(store, _gateway_file(tmp_path, flags))
    assert (first.status, second.status) == ("interrupted", "interrupted") and len(report.unfinished) == 2
    assert "not among the spans read" in first.error
    if flags is None:
        assert "remote" in first.error, "the note says what would tell a caller's span apart"


def test_a_remote_parents_run_whose_last_call_asked_for_tools_is_not_complete(tmp_path, store):
    """The gateway saw the calls so far: the caller runs the tools the last reply asked for and calls again, in spans
    later files hold. Stored as interrupted, saying so (its steps kept)."""
    report, (first, second) = _ingest(store, _gateway_file(tmp_path, REMOTE, drop_last_call=True))
    assert (first.status, second.status) == ("interrupted", "interrupted"), report.errors
    assert "remote" in first.error and "asked for tools" in first.error
    assert [s[0] for s in _steps(first)] == ["check_stock", "order"]


def test_the_sdk_records_a_parent_continued_from_a_traceparent_header_as_remote(tmp_path, store):
    """The real OpenTelemetry SDK, a gateway continuing its caller's trace from the W3C ``traceparent`` header (two
    requests of one agent run, each under the caller's span for that request): the parent is remote in the span data
    and in the OTLP file written from it, and the gateway's run is complete."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("gateway")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    history: list[dict[str, Any]] = [{"role": "user", "content": "Do we have pears?"}]
    replies = [
        {"role": "assistant", "content": "", "tool_calls": [_call("call_1", "check_stock", {"fruit": "pears"})]},
        {"role": "assistant", "content": "No pears."},
    ]
    for n, reply in enumerate(replies, start=1):
        caller = TraceContextTextMapPropagator().extract({"traceparent": f"00-{trace}-00f067aa0ba902b{n}-01"})
        with tracer.start_as_current_span("chat scripted-model", context=caller) as span:
            span.set_attributes(
                {
                    sc.OPERATION_NAME: "chat",
                    sc.REQUEST_MODEL: "scripted-model",
                    sc.INPUT_MESSAGES: dumps(openai_to_genai(history)),
                    sc.OUTPUT_MESSAGES: dumps(openai_to_genai([reply])),
                }
            )
        history += [reply, {"role": "tool", "tool_call_id": "call_1", "content": "0 pears"}]
    finished = list(exporter.get_finished_spans())
    assert [from_readable_span(s).parent_remote for s in finished] == [True, True]
    request = spans_to_otlp_json(finished)
    assert [s["flags"] for s in _spans(request)] == [REMOTE, REMOTE]
    path = tmp_path / "gateway.jsonl"
    path.write_text(json.dumps(request) + "\n")
    report, (run,) = _ingest(store, path)
    assert (report.problems, run.status, [s[0] for s in _steps(run)]) == (0, "completed", ["check_stock", "answer"]), report.errors


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
