"""``ee traces ingest`` records the tools offered at each decision (``Step.tools``) from each chat span's tool
definitions (``gen_ai.tool.definitions``), where an app offers its model other tools from one call to the next: the
real OpenTelemetry SDK writes OpenAI v2 chat spans, the first offered only ``check_stock``, the second only ``order``.
A span that carries no definitions says nothing of its tools: its step offers all of the run's (``None``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ee_middleware.capture import semconv as sc
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from tests.ingest.test_conversations import PEARS, _chat, _ingest, _tool, _tool_span

CHECK = {"type": "function", "name": "check_stock", "description": "Stock of a fruit.", "parameters": {"type": "object"}}
ORDER = {"type": "function", "name": "order", "description": "Order a fruit.", "parameters": {"type": "object"}}
OFFERED: list[list[dict[str, Any]] | None] = [[CHECK], [ORDER], None]  # the last span records no tool definitions


def spans_file(tmp_path: Path, replies: list[dict[str, Any]] = PEARS, offered: list[list[dict[str, Any]] | None] = OFFERED) -> Path:
    """An OTLP JSON file of one request whose model spans were offered ``offered`` (``None``: no tool definitions on the
    span) and replied ``replies``, each call run by an ``execute_tool`` span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")
    history: list[dict[str, Any]] = [{"role": "user", "content": "Pears?"}]
    with tracer.start_as_current_span("POST /shop", kind=SpanKind.SERVER):
        for reply, tools in zip(replies, offered, strict=True):
            with tracer.start_as_current_span("chat shop", kind=SpanKind.CLIENT) as span:
                attributes = _chat(history, reply)
                if tools is not None:
                    attributes[sc.TOOL_DEFINITIONS] = json.dumps(tools)
                span.set_attributes(attributes)
            history.append(reply)
            for call in reply.get("tool_calls") or []:
                name, arguments = call["function"]["name"], call["function"]["arguments"]
                with tracer.start_as_current_span(f"execute_tool {name}") as span:
                    result = _tool(name, json.loads(arguments))
                    span.set_attributes(_tool_span(call, result))
                history.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    finished = list(exporter.get_finished_spans())
    provider.shutdown()
    path = tmp_path / "request.jsonl"
    path.write_text(json.dumps(spans_to_otlp_json(finished)) + "\n")
    return path


def test_ingested_steps_offer_the_tools_their_span_defines(tmp_path, store):
    report, (t,) = _ingest(store, spans_file(tmp_path))
    assert report.problems == 0, report.errors
    assert [t["function"]["name"] for t in t.tools] == ["check_stock", "order"]  # the run's
    assert [s.tools for s in t.steps] == [["check_stock"], ["order"], None]
    assert [[x["function"]["name"] for x in t.step_tools(s)] for s in t.steps] == [["check_stock"], ["order"], ["check_stock", "order"]]
