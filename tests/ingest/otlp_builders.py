"""Builders of OTLP JSON requests for the ingest tests (hex ids, attributes as AnyValues)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRACE = "5b8efff798038103d269b633813fc60c"


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value if isinstance(value, str) else json.dumps(value)}}


def _span(
    span_id: str,
    name: str,
    attrs: dict[str, Any],
    parent: str | None = None,
    start: int = 1,
    end: int = 2,
    trace: str = TRACE,
    **extra: Any,
) -> dict[str, Any]:
    span = {
        "traceId": trace,
        "spanId": span_id,
        "name": name,
        "startTimeUnixNano": str(1_700_000_000_000_000_000 + start * 1_000_000),
        "endTimeUnixNano": str(1_700_000_000_000_000_000 + end * 1_000_000),
        "attributes": [_attr(k, v) for k, v in attrs.items()],
        **extra,
    }
    if parent:
        span["parentSpanId"] = parent
    return span


def _request(spans: list[dict[str, Any]], service: str = "billing-agent") -> dict[str, Any]:
    return {
        "resourceSpans": [
            {"resource": {"attributes": [_attr("service.name", service)]}, "scopeSpans": [{"scope": {"name": "x"}, "spans": spans}]}
        ]
    }


def _write(path: Path, *requests: dict[str, Any]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in requests) + "\n")
    return path


GENAI_FILE = [
    _span(
        "a000000000000001",
        "invoke_agent billing",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "billing", "gen_ai.conversation.id": "c-1"},
        start=0,
        end=10,
    ),
    _span(
        "a000000000000002",
        "chat gpt-x",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-x",
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "You are billing support."}]),
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Refund invoice 7"}]}]),
            "gen_ai.output.messages": json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "tool_call", "id": "c1", "name": "refund", "arguments": {"invoice": 7}}],
                        "finish_reason": "tool_call",
                    }
                ]
            ),
            "gen_ai.tool.definitions": json.dumps(
                [
                    {
                        "type": "function",
                        "name": "refund",
                        "description": "Refund an invoice.",
                        "parameters": {"type": "object", "properties": {"invoice": {"type": "integer"}}},
                    }
                ]
            ),
        },
        parent="a000000000000001",
        start=1,
        end=2,
    ),
    _span(
        "a000000000000003",
        "execute_tool refund",
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "refund",
            "gen_ai.tool.call.id": "c1",
            "gen_ai.tool.call.arguments": '{"invoice": 7}',
            "gen_ai.tool.call.result": "refunded 7",
        },
        parent="a000000000000001",
        start=3,
        end=5,
    ),
    _span(
        "a000000000000004",
        "chat gpt-x",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-x",
            "gen_ai.input.messages": json.dumps(
                [
                    {"role": "user", "parts": [{"type": "text", "content": "Refund invoice 7"}]},
                    {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "refund", "arguments": {"invoice": 7}}]},
                    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "refunded 7"}]},
                ]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "Done: invoice 7 refunded."}], "finish_reason": "stop"}]
            ),
        },
        parent="a000000000000001",
        start=6,
        end=7,
    ),
]
