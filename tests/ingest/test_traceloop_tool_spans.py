"""traceloop-sdk's ``@tool`` / ``@workflow`` decorators (OpenLLMetry without LangChain) write a tool span's input as
``json.dumps({"args": [...], "kwargs": {...}})`` and its output as ``json.dumps(result)`` (``_handle_span_input`` /
``_handle_span_output`` in ``traceloop/sdk/decorators/base.py``). Before, a tool's text result was stored JSON-encoded
(``'"Sunny, 21\\u00b0C"'``) where the observation came from its span, and the arguments stayed wrapped, so that no
argument comparison (parallel calls of one tool, an edited reviewed call) could match them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.normalize import normalize
from ee_middleware.capture.spandata import SpanData
from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import _request, _span, _write

PARAMS = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
FAILED = {"code": 2, "message": "RecursionError: max iterations"}


def _chat(span_id: str, cities: list[str], start: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "llm.request.type": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.prompt.0.role": "user",
        "gen_ai.prompt.0.content": "Weather in " + " and ".join(cities) + "?",
        "llm.request.functions.0.name": "get_weather",
        "llm.request.functions.0.parameters": PARAMS,
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.finish_reason": "tool_calls",
    }
    for i, city in enumerate(cities):
        attrs[f"gen_ai.completion.0.tool_calls.{i}.id"] = f"call_{city.lower()}"
        attrs[f"gen_ai.completion.0.tool_calls.{i}.name"] = "get_weather"
        attrs[f"gen_ai.completion.0.tool_calls.{i}.arguments"] = json.dumps({"city": city})
    return _span(span_id, "openai.chat", attrs, parent="d000000000000001", start=start, end=start + 4)


def _tool(span_id: str, args: list[Any], kwargs: dict[str, Any], result: Any, start: int, end: int, **extra: Any) -> dict[str, Any]:
    attrs = {
        "traceloop.span.kind": "tool",
        "traceloop.entity.name": "get_weather",
        "traceloop.entity.input": json.dumps({"args": args, "kwargs": kwargs}),
    }
    if result is not None:
        attrs["traceloop.entity.output"] = json.dumps(result)
    return _span(span_id, "get_weather.tool", attrs, parent="d000000000000001", start=start, end=end, **extra)


def _ingest(tmp_path: Path, *spans: dict[str, Any]) -> Any:
    """A workflow that failed after its tools ran: the last calls' observations come from the tool spans."""
    workflow = _span(
        "d000000000000001",
        "weather.workflow",
        {"traceloop.span.kind": "workflow", "traceloop.entity.name": "weather"},
        start=0,
        end=100,
        status=FAILED,
    )
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_write(tmp_path / "spans.json", _request([workflow, *spans]))], store)
    assert len(report.ingested) == 1 and not report.errors
    [t] = list(store.iter_trajectories())
    return t


def test_a_tools_text_result_is_stored_as_the_text_it_returned(tmp_path: Path) -> None:
    t = _ingest(tmp_path, _chat("d000000000000002", ["Paris"], 1), _tool("d000000000000003", [], {"city": "Paris"}, "Sunny, 21°C", 6, 8))
    [step] = t.steps
    assert (step.observation.content, step.observation.is_error, t.status) == ("Sunny, 21°C", False, "error")


def test_parallel_decorated_calls_of_one_tool_are_told_apart_by_their_keyword_arguments(tmp_path: Path) -> None:
    """The tool spans name no call id: Tokyo's ran first and failed, Paris's returned a dict (kept as its JSON)."""
    exception = {
        "name": "exception",
        "timeUnixNano": "1700000000006000000",
        "attributes": [
            {"key": "exception.type", "value": {"stringValue": "TimeoutError"}},
            {"key": "exception.message", "value": {"stringValue": "upstream weather API"}},
        ],
    }
    t = _ingest(
        tmp_path,
        _chat("d000000000000002", ["Paris", "Tokyo"], 1),
        _tool("d000000000000003", [], {"city": "Tokyo"}, None, 6, 7, status={"code": 2, "message": "TimeoutError"}, events=[exception]),
        _tool("d000000000000004", [], {"city": "Paris"}, {"sky": "sunny", "celsius": 21}, 8, 30),
    )
    by_city = {s.action.tool_call.arguments["city"]: s for s in t.steps}
    paris, tokyo = by_city["Paris"], by_city["Tokyo"]
    assert (json.loads(paris.observation.content), paris.observation.is_error, paris.latency_ms) == (
        {"sky": "sunny", "celsius": 21},
        False,
        22.0,
    )
    assert (tokyo.observation.content, tokyo.observation.is_error, tokyo.latency_ms) == ("TimeoutError: upstream weather API", True, 1.0)


def _normalized(attrs: dict[str, Any]) -> dict[str, Any]:
    span = SpanData(trace_id="t", span_id="s", parent_span_id=None, name="get_weather.tool", start_ns=1, end_ns=2, attributes=attrs)
    return dict(normalize(span).attributes)


def test_the_decorators_input_gives_the_keyword_arguments_and_names_no_positional_ones() -> None:
    tool = {"traceloop.span.kind": "tool", "traceloop.entity.name": "get_weather"}
    keywords = _normalized({**tool, "traceloop.entity.input": json.dumps({"args": [], "kwargs": {"city": "Paris"}})})
    assert json.loads(keywords[sc.TOOL_CALL_ARGUMENTS]) == {"city": "Paris"}
    # get_weather("Paris"): the span does not say which parameter "Paris" is; no arguments rather than wrong ones
    positional = _normalized({**tool, "traceloop.entity.input": json.dumps({"args": ["Paris"], "kwargs": {}})})
    assert sc.TOOL_CALL_ARGUMENTS not in positional
    # traceloop's LangChain instrumentation wraps a tool's input otherwise: read as before
    langchain = _normalized({**tool, "traceloop.entity.input": json.dumps({"inputs": {"city": "Oslo"}, "tags": [], "kwargs": {}})})
    assert json.loads(langchain[sc.TOOL_CALL_ARGUMENTS]) == {"city": "Oslo"}
    # an output that is no JSON text (another writer) is kept as written; OpenInference's output.value is never decoded
    assert _normalized({**tool, "traceloop.entity.output": "-3C, snow"})[sc.TOOL_CALL_RESULT] == "-3C, snow"
    plain = {"openinference.span.kind": "TOOL", "tool.name": "echo", "output.value": '"quoted"'}
    assert _normalized(plain)[sc.TOOL_CALL_RESULT] == '"quoted"'
