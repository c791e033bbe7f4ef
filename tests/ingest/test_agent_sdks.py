"""Trace files of agent SDKs that trace themselves: each agent run is one trajectory with all its steps.

The fixtures are real: ``fixtures/make_agent_sdk_fixtures.py`` ran the shop's two turns on one thread
under AWS Strands Agents 1.62 (an OpenAI-compatible model served by a local HTTP server) with its
default telemetry, with ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``, and with that plus
``gen_ai_span_attributes_only``. Before ingest read Strands' shapes, its default files stored every
step as an answer whose text was the JSON of Converse content blocks (``[{"toolUse": ...}]``: no tool
call, no observation, the task ``[{"text": ...}]``), and its latest-conventions files (messages in
``gen_ai.client.inference.operation.details`` events) were refused: "model spans carry no messages".

``fixtures/make_vercel_ai_fixture.mjs`` ran them with the Vercel AI SDK 6 (``generateText`` with tools,
``experimental_telemetry`` on, the thread id in its metadata) in Node, encoded by OpenTelemetry JS's
OTLP JSON serializer. Before ingest read its ``ai.*`` spans, such a file was refused as spans of an
instrumentation ingest does not understand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from tests.ingest.test_instrumentations import FIRST_RUN_STEPS, TURN_1, TURN_2, _steps

FIXTURES = Path(__file__).parent / "fixtures"
STRANDS = {
    "strands": "strands_shop.jsonl",
    "strands-latest": "strands_latest_shop.jsonl",
    "strands-attributes": "strands_attributes_shop.jsonl",
}
SDKS = {**STRANDS, "vercel-ai": "vercel_ai_shop.jsonl"}
MODEL_SPANS = ("chat", "ai.generateText.doGenerate")
ERROR_TEXT = "the supplier takes at most 10 apples per order, not 50"


def _ingest(store: Any, path: Path) -> tuple[Any, list[Any]]:
    report = ingest_files([path], store)
    return report, sorted(store.iter_trajectories(), key=lambda t: t.started_at)


@pytest.mark.parametrize("telemetry", SDKS)
def test_agent_sdk_runs_are_trajectories_with_their_tool_calls_and_observations(store, telemetry):
    meta = json.loads((FIXTURES / SDKS[telemetry]).with_suffix(".meta.json").read_text())
    report, (first, second) = _ingest(store, FIXTURES / SDKS[telemetry])
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (first.task, second.task) == (TURN_1, TURN_2)
    assert _steps(first) == FIRST_RUN_STEPS
    check, order, answer = _steps(second)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and order[3] is True and ERROR_TEXT in order[2]
    assert answer == ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order).")
    for t in (first, second):
        assert (t.status, t.thread_id, t.model) == ("completed", meta["thread"], "scripted-shop-model")
        assert t.steps[0].state[0] == {"role": "system", "content": meta["system"]}
        # Strands writes no tool definitions on its model spans; the AI SDK does (ai.prompt.tools)
        assert [tool["function"]["name"] for tool in t.tools] == ([] if telemetry in STRANDS else ["check_stock", "order"])
    assert [m["role"] for m in second.steps[0].state] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    assert second.steps[0].decision_index == second.steps[1].decision_index == 0, "two calls of one reply share a decision"


@pytest.mark.parametrize("telemetry", SDKS)
def test_agent_sdk_tool_spans_give_the_observations_no_later_model_call_shows(tmp_path, store, telemetry):
    """The second run cut before its last model call: the results are read from the tool spans (Strands'
    events, or the result's Converse blocks in ``gen_ai.tool.call.result``; the AI SDK's
    ``ai.toolCall.result``), the failed order flagged from the span's status."""
    request = json.loads((FIXTURES / SDKS[telemetry]).read_text().splitlines()[1])
    spans = [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    chats = [s for s in spans if s["name"] in MODEL_SPANS]
    last_chat = max(chats, key=lambda s: int(s["startTimeUnixNano"]))
    for rs in request["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = [s for s in ss["spans"] if s is not last_chat]
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(request) + "\n")
    report, (trajectory,) = _ingest(store, path)
    assert report.problems == 0, report.errors
    check, order = _steps(trajectory)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and order[3] is True and ERROR_TEXT in order[2]
