"""An ingested trace whose model made a malformed tool call shows the call in later states as the model wrote it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ee_middleware import LocalExperienceStore
from ee_middleware.ingest import ingest_files
from tests.ingest.otlp_builders import _request, _span, _write


def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


TRACE = _b64("0123456789abcdef0123456789abcdef")
AGENT = _b64("c000000000000001")
TOOL = json.dumps(
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
)


def _llm(span_id: str, start: int, inputs: list[dict[str, str]], output: dict[str, str]) -> dict:
    attributes = {"openinference.span.kind": "LLM", "llm.model_name": "qwen-7b", "llm.tools.0.tool.json_schema": TOOL}
    for i, message in enumerate(inputs):
        attributes.update({f"llm.input_messages.{i}.message.{key}": value for key, value in message.items()})
    attributes.update({f"llm.output_messages.0.message.{key}": value for key, value in output.items()})
    return _span(_b64(span_id), "ChatOpenAI", attributes, parent=AGENT, start=start, end=start + 1, trace=TRACE)


@pytest.mark.parametrize("written", ["city=Paris", '"hello"', "[1, 2]", '{"city": "Paris"'])
def test_an_openinference_malformed_call_shows_in_later_states_as_written(tmp_path: Path, written: str) -> None:
    """OpenInference records the model's argument text; ingest stored it in the next states as {"_raw": ...} (text the
    model never wrote, unlike the live history), since 98a7fc3 also for text that is no object."""
    call = {
        "role": "assistant",
        "tool_calls.0.tool_call.id": "t1",
        "tool_calls.0.tool_call.function.name": "weather",
        "tool_calls.0.tool_call.function.arguments": written,
    }
    user = {"role": "user", "content": "Weather in Paris?"}
    result = {"role": "tool", "tool_call_id": "t1", "content": "error: bad arguments"}
    spans = [
        _span(AGENT, "Agent", {"openinference.span.kind": "AGENT"}, start=0, end=9, trace=TRACE),
        _llm("c000000000000002", 1, [user], call),
        _span(
            _b64("c000000000000003"),
            "weather",
            {"openinference.span.kind": "TOOL", "tool.name": "weather", "input.value": written, "output.value": "error: bad arguments"},
            parent=AGENT,
            start=3,
            end=4,
            trace=TRACE,
        ),
        _llm("c000000000000004", 5, [user, call, result], {"role": "assistant", "content": "Sorry."}),
    ]
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_write(tmp_path / "t.json", _request(spans))], store)
    assert report.errors == []
    [trajectory] = list(store.iter_trajectories())
    shown = [call["function"]["arguments"] for step in trajectory.steps for m in step.state for call in m.get("tool_calls") or []]
    assert shown and set(shown) == {written}
