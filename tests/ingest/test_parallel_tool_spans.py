"""Parallel calls of one tool whose tool spans name no call id (OpenInference's spans for the OpenAI Agents SDK, whose
``FunctionSpanData`` has none; traceloop-sdk's ``@tool``; Logfire's ``Function:`` spans): each call gets the span run
with its own arguments. Before, each took the first span of its tool's name in start order, so the call whose tool ran
second got the first span's error and latency, and the other the first's success (an error stored as a success)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import _request, _span, _write

ERROR = "An error occurred while running the tool. Please try again. Error: upstream weather API"


def _calls(prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {f"{prefix}.role": "assistant"}
    for i, (call_id, city) in enumerate([("c_paris", "Paris"), ("c_tokyo", "Tokyo")]):
        out[f"{prefix}.tool_calls.{i}.tool_call.id"] = call_id
        out[f"{prefix}.tool_calls.{i}.tool_call.function.name"] = "get_weather"
        out[f"{prefix}.tool_calls.{i}.tool_call.function.arguments"] = json.dumps({"city": city})
    return out


def _tool(span_id: str, city: str, start: int, end: int, **extra: Any) -> dict[str, Any]:
    attrs = {"openinference.span.kind": "TOOL", "tool.name": "get_weather", "input.value": json.dumps({"city": city})}
    attrs.update(extra.pop("attrs", {}))
    return _span(span_id, "get_weather", attrs, parent="b000000000000001", start=start, end=end, **extra)


def _file(path: Path, *, last_call_ends_the_run: bool = False) -> Path:
    """One reply calls get_weather for Paris and Tokyo; Tokyo's span starts first and fails, Paris's succeeds."""
    ask = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o",
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "Weather in Paris and Tokyo?",
        **_calls("llm.output_messages.0.message"),
    }
    spans = [
        _span("b000000000000001", "Agent workflow", {"openinference.span.kind": "AGENT"}, start=0, end=100),
        _span("b000000000000002", "response", ask, parent="b000000000000001", start=1, end=5),
        _tool(
            "b000000000000003",
            "Tokyo",
            6,
            7,
            status={"code": 2, "message": "TimeoutError: upstream weather API"},
            events=[
                {
                    "name": "exception",
                    "timeUnixNano": "1700000000006000000",
                    "attributes": [
                        {"key": "exception.type", "value": {"stringValue": "TimeoutError"}},
                        {"key": "exception.message", "value": {"stringValue": "upstream weather API"}},
                    ],
                }
            ],
        ),
        _tool("b000000000000004", "Paris", 8, 30, attrs={"output.value": "Sun, 25°C"}),
    ]
    if not last_call_ends_the_run:
        answer = {
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o",
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.content": "Weather in Paris and Tokyo?",
            **_calls("llm.input_messages.1.message"),
            "llm.input_messages.2.message.role": "tool",
            "llm.input_messages.2.message.tool_call_id": "c_paris",
            "llm.input_messages.2.message.content": "Sun, 25°C",
            "llm.input_messages.3.message.role": "tool",
            "llm.input_messages.3.message.tool_call_id": "c_tokyo",
            "llm.input_messages.3.message.content": ERROR,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "Paris is sunny; Tokyo's weather is unavailable.",
        }
        spans.append(_span("b000000000000005", "response", answer, parent="b000000000000001", start=31, end=40))
    return _write(path, _request(spans))


def _by_city(store: LocalExperienceStore) -> dict[str, Any]:
    [t] = list(store.iter_trajectories())
    return {s.action.tool_call.arguments["city"]: s for s in t.steps if s.action.tool_call is not None}


def test_parallel_calls_of_one_tool_get_the_span_run_with_their_arguments(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_file(tmp_path / "spans.json")], store)
    assert len(report.ingested) == 1 and not report.errors
    steps = _by_city(store)
    paris, tokyo = steps["Paris"], steps["Tokyo"]
    assert (paris.observation.content, paris.observation.is_error, paris.latency_ms) == ("Sun, 25°C", False, 22.0)
    assert (tokyo.observation.content, tokyo.observation.is_error, tokyo.latency_ms) == (ERROR, True, 1.0)


def test_the_last_calls_observations_come_from_their_own_spans(tmp_path: Path) -> None:
    """The run ends on those calls (no later model call holds their results): each observation is its own span's."""
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_file(tmp_path / "spans.json", last_call_ends_the_run=True)], store)
    assert len(report.ingested) == 1 and not report.errors
    steps = _by_city(store)
    assert (steps["Paris"].observation.content, steps["Paris"].observation.is_error) == ("Sun, 25°C", False)
    assert (steps["Tokyo"].observation.content, steps["Tokyo"].observation.is_error) == ("TimeoutError: upstream weather API", True)
