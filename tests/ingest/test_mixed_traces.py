"""Traces users send that mix what the fixtures hold one at a time.

Two instrumentations on one model call: a framework's (OpenInference's LangChain instrumentation: an LLM span per
call) over the model client's (OpenTelemetry's OpenAI v2 instrumentation: a ``chat`` span per request, under the
LLM span as it runs inside it). Both describe the same call with its messages. Built from the real fixtures: each
OpenAI v2 ``chat`` span of the shop's turn (``openai_v2_langgraph.jsonl``) placed under the OpenInference LLM span of
the same call in ``openinference_langgraph.jsonl`` (same scripted conversation), as one process tracing both writes
it. Before, every decision was stored twice (six steps for three).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ee_middleware.ingest import ingest_files
from tests.ingest.test_instrumentations import FIXTURES, _steps


def _spans(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def _requests(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def _client_spans_under_framework_spans(framework: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
    request = copy.deepcopy(framework)
    llms = sorted((s for s in _spans(request) if s["name"] == "ScriptedChatModel"), key=lambda s: int(s["startTimeUnixNano"]))
    chats = sorted((copy.deepcopy(s) for s in _spans(client) if s["name"].startswith("chat ")), key=lambda s: int(s["startTimeUnixNano"]))
    assert len(llms) == len(chats)
    for llm, chat in zip(llms, chats, strict=True):
        chat.update(traceId=llm["traceId"], parentSpanId=llm["spanId"])
        chat.update(startTimeUnixNano=str(int(llm["startTimeUnixNano"]) + 1000), endTimeUnixNano=str(int(llm["endTimeUnixNano"]) - 1000))
    request["resourceSpans"][0]["scopeSpans"].append({"scope": {"name": "opentelemetry.instrumentation.openai_v2"}, "spans": chats})
    return request


def test_a_model_call_traced_by_two_instrumentations_is_one_decision(tmp_path, store):
    mixed = [
        _client_spans_under_framework_spans(f, c)
        for f, c in zip(_requests("openinference_langgraph.jsonl"), _requests("openai_v2_langgraph.jsonl"), strict=True)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in mixed) + "\n")
    report = ingest_files([path], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    alone = type(store)(tmp_path / "alone")
    ingest_files([FIXTURES / "openinference_langgraph.jsonl"], alone)
    by_start = lambda s: sorted(s.iter_trajectories(), key=lambda t: t.started_at)  # noqa: E731
    for got, expected in zip(by_start(store), by_start(alone), strict=True):
        assert _steps(got) == _steps(expected)
        assert [s.decision_index for s in got.steps] == [s.decision_index for s in expected.steps]
        assert [s.state for s in got.steps] == [s.state for s in expected.steps]
        assert (got.tools, got.final_answer, got.status) == (expected.tools, expected.final_answer, "completed")
