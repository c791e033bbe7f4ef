"""A run whose spans two ingests read (a rotated Collector file) is stored as one ingest of all its files stores it:
its thread where only its root span names it, and a failed call's observation as the model was given it. OTel GenAI
spans (the newer JSON message attributes) written as the Collector's file exporter writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import _request, _span, _write

SYSTEM = json.dumps([{"type": "text", "content": "You are a travel agent."}])
TOOLS = json.dumps(
    [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
)
USER = {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris and Tokyo?"}]}
CALLS = {
    "role": "assistant",
    "parts": [{"type": "tool_call", "id": f"call_{c[0]}", "name": "get_weather", "arguments": {"city": c}} for c in ("Paris", "Tokyo")],
    "finish_reason": "tool_call",
}
RESULTS = [
    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_P", "response": "18C sunny"}]},
    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_T", "response": "Error: upstream timeout"}]},  # ToolNode's text
]
ANSWER = {
    "role": "assistant",
    "parts": [{"type": "text", "content": "Paris is sunny; Tokyo's weather is not known."}],
    "finish_reason": "stop",
}


def _chat(span_id: str, given: list[Any], answer: dict[str, Any], start: int) -> dict[str, Any]:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.system_instructions": SYSTEM,
        "gen_ai.input.messages": json.dumps(given),
        "gen_ai.output.messages": json.dumps([answer]),
        "gen_ai.tool.definitions": TOOLS,
    }
    return _span(span_id, "chat gpt-4o", attrs, parent="c000000000000001", start=start, end=start + 9)


def _tool(span_id: str, city: str, start: int, *, failed: bool) -> dict[str, Any]:
    attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "gen_ai.tool.call.id": f"call_{city[0]}"}
    attrs["gen_ai.tool.call.arguments"] = json.dumps({"city": city})
    extra: dict[str, Any] = {}
    if failed:  # the tool raised: its span says so, and its text is the exception's; the model was given ToolNode's
        attrs["error.type"] = "TimeoutError"
        extra["status"] = {"code": 2, "message": "upstream timeout"}
    else:
        attrs["gen_ai.tool.call.result"] = "18C sunny"
    return _span(span_id, "execute_tool get_weather", attrs, parent="c000000000000001", start=start, end=start + 5, **extra)


ROOT = _span(
    "c000000000000001",
    "invoke_agent travel",
    {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "travel", "gen_ai.conversation.id": "thread-7"},
    start=0,
    end=100,
)
SPANS = [
    _chat("c000000000000002", [USER], CALLS, 1),
    _tool("c000000000000010", "Paris", 11, failed=False),
    _tool("c000000000000011", "Tokyo", 12, failed=True),
    _chat("c000000000000003", [USER, CALLS, *RESULTS], ANSWER, 22),
    ROOT,
]


def _stored(store: LocalExperienceStore) -> Any:
    (run,) = [t for t in store.iter_trajectories() if t.approval.status != "rejected"]
    return run


@pytest.mark.parametrize(
    ("cut", "what"),
    [(3, "the later call and the root in the second file"), (4, "the root alone in the second file")],
)
def test_a_run_read_in_two_ingests_is_stored_as_one_ingest_stores_it(tmp_path: Path, cut: int, what: str) -> None:
    """Sweep: read in two ingests, the failed call's observation was its tool span's text ("upstream timeout") where
    one ingest stores what the model was given ("Error: upstream timeout": IWM and SR train on it); and a thread named
    on the root span alone was lost (``thread_id`` None, never mended by reading the files again)."""
    whole = _write(tmp_path / "whole.json", _request(SPANS, service="travel-svc"))
    first = _write(tmp_path / "spans-1.json", _request(SPANS[:cut], service="travel-svc"))
    second = _write(tmp_path / "spans-2.json", _request(SPANS[cut:], service="travel-svc"))
    assert ingest_files([whole], LocalExperienceStore(tmp_path / "one", create=True)).problems == 0
    expected = _stored(LocalExperienceStore(tmp_path / "one"))
    store = LocalExperienceStore(tmp_path / "two", create=True)
    assert ingest_files([first], store).problems == 0
    assert ingest_files([second], store).problems == 0
    got = _stored(store)
    assert expected.thread_id == got.thread_id == "thread-7", what
    observations = [(s.observation.content, s.observation.is_error) if s.observation else None for s in got.steps]
    assert observations == [("18C sunny", False), ("Error: upstream timeout", True), None], what
    assert observations == [(s.observation.content, s.observation.is_error) if s.observation else None for s in expected.steps]
    assert (got.status, got.messages, got.final_answer) == (expected.status, expected.messages, expected.final_answer)


def _shared_id_spans() -> list[dict[str, Any]]:
    """Two parallel calls that share one call id (some servers and proxies send them so), each tool's result a text the
    model is given as it is."""
    calls = {**CALLS, "parts": [{**part, "id": "call_0"} for part in CALLS["parts"]]}
    results = [
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_0", "response": text}]} for text in ("18C sunny", "25C rain")
    ]
    tools = []
    for span_id, city, text, start in (("c000000000000010", "Paris", "18C sunny", 11), ("c000000000000011", "Tokyo", "25C rain", 12)):
        attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "gen_ai.tool.call.id": "call_0"}
        attrs |= {"gen_ai.tool.call.arguments": json.dumps({"city": city}), "gen_ai.tool.call.result": text}
        tools.append(_span(span_id, "execute_tool get_weather", attrs, parent="c000000000000001", start=start, end=start + 5))
    return [_chat("c000000000000002", [USER], calls, 1), *tools, _chat("c000000000000003", [USER, calls, *results], ANSWER, 22), ROOT]


def test_calls_sharing_one_id_keep_their_own_results_when_read_in_two_ingests(tmp_path: Path) -> None:
    """Review: the first version of the fix above gave both calls the first tool message of the id ("18C sunny")."""
    spans = _shared_id_spans()
    ingest_files([_write(tmp_path / "whole.json", _request(spans))], LocalExperienceStore(tmp_path / "one", create=True))
    expected = _stored(LocalExperienceStore(tmp_path / "one"))
    store = LocalExperienceStore(tmp_path / "two", create=True)
    ingest_files([_write(tmp_path / "a.json", _request(spans[:3]))], store)
    ingest_files([_write(tmp_path / "b.json", _request(spans[3:]))], store)
    observations = [s.observation.content if s.observation else None for s in _stored(store).steps]
    assert observations == [s.observation.content if s.observation else None for s in expected.steps] == ["18C sunny", "25C rain", None]


def test_a_tool_message_capture_cut_is_never_taken_as_whole_by_a_merge(tmp_path: Path) -> None:
    """Review: the later call's tool message was cut by capture (``ee.tool_call.truncated_chars``): the merged run took
    its text and kept the tool span's count (0), a cut observation marked whole. The tool span's whole text is kept."""
    results = [RESULTS[0], {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_T", "response": "Error: upstream ti"}]}]
    later = _chat("c000000000000003", [USER, CALLS, *results], ANSWER, 22)
    later["attributes"].append(
        {"key": "ee.tool_call.truncated_chars", "value": {"arrayValue": {"values": [{"intValue": "3"}, {"intValue": "7"}]}}}
    )
    spans = [*SPANS[:3], later, ROOT]
    store = LocalExperienceStore(tmp_path / "two", create=True)
    ingest_files([_write(tmp_path / "a.json", _request(spans[:3]))], store)
    ingest_files([_write(tmp_path / "b.json", _request(spans[3:]))], store)
    tokyo = _stored(store).steps[1].observation
    assert (tokyo.content, tokyo.is_error, tokyo.truncated_chars) == ("upstream timeout", True, 0)
