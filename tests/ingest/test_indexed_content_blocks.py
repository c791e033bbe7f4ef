"""OpenLLMetry's indexed attributes holding content blocks: its Anthropic instrumentation, and list content.

OpenLLMetry's Anthropic instrumentation (``opentelemetry-instrumentation-anthropic``, legacy attributes) writes an
``anthropic.chat`` span with ``llm.request.type = "completion"`` and no ``gen_ai.operation.name``; each message as
``gen_ai.prompt.{i}.role`` / ``.content``, where content that is not all text is the JSON of Anthropic's blocks
(``tool_use`` in an assistant's, ``tool_result`` in the user's message after it); the reply as
``gen_ai.completion.{i}.*`` with ``tool_calls.{j}.id|name|arguments`` (a ``thinking`` block as a completion of its own
with role ``thinking``, in versions that write it); tools as ``llm.request.functions.{i}.name|description`` with
``input_schema`` (``parameters`` in some versions). Newer versions also write an assistant's ``tool_use`` blocks as
``gen_ai.prompt.{i}.tool_calls.{j}.*``. Its OpenAI instrumentation writes list content (text parts, images) as their
JSON too. Before, no Anthropic span was read at all ("no span names a GenAI operation"), and OpenAI list content was
the task's and every state's text as raw JSON.

The spans are the real OpenTelemetry SDK's, their attributes as the instrumentations' ``_aset_input_attributes`` /
``_set_span_completions`` (Anthropic) and ``_set_prompts`` (OpenAI) write them.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ee_middleware.capture import semconv as sc
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from tests.ingest.test_conversations import PEARS_STEPS, _ingest
from tests.ingest.test_instrumentations import TURN_1, _steps

SYSTEM = "You run a fruit shop. Use the tools."
MODEL = "claude-sonnet-4-5"
THOUGHT = "The user wants pears: check the stock before ordering."
TOOLS = [
    {
        "name": "check_stock",
        "description": "How many of a fruit are in stock.",
        "input_schema": {"type": "object", "properties": {"fruit": {"type": "string"}}, "required": ["fruit"]},
    },
    {
        "name": "order",
        "description": "Order a quantity of a fruit.",
        "input_schema": {
            "type": "object",
            "properties": {"fruit": {"type": "string"}, "quantity": {"type": "integer"}},
            "required": ["fruit", "quantity"],
        },
    },
]
REPLIES = [  # Anthropic's Messages API content blocks
    [
        {"type": "thinking", "thinking": THOUGHT, "signature": "RXVn"},
        {"type": "text", "text": "Let me check the stock."},
        {"type": "tool_use", "id": "toolu_01", "name": "check_stock", "input": {"fruit": "pears"}},
    ],
    [{"type": "tool_use", "id": "toolu_02", "name": "order", "input": {"fruit": "pears", "quantity": 5}}],
    [{"type": "text", "text": "We had no pears, so I ordered 5."}],
]
RESULTS = {"toolu_01": "0 pears in stock", "toolu_02": "ordered 5 pears"}


def _dump_content(content: Any) -> str:
    """The instrumentation's ``_dump_content``: text blocks joined, any other list as its JSON."""
    if isinstance(content, str):
        return content
    if all(block.get("type") == "text" for block in content):
        return "".join(block["text"] for block in content)
    return json.dumps(content)


def _anthropic_attributes(messages: list[dict[str, Any]], reply: list[dict[str, Any]], version: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.system": "Anthropic",
        "llm.request.type": "completion",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": SYSTEM,
    }
    for i, message in enumerate(messages, start=1):
        attrs[f"gen_ai.prompt.{i}.content"] = _dump_content(message["content"])
        attrs[f"gen_ai.prompt.{i}.role"] = message["role"]
        uses = [b for b in message["content"] if b["type"] == "tool_use"] if isinstance(message["content"], list) else []
        for j, block in enumerate(uses if version == "latest" else []):
            attrs[f"gen_ai.prompt.{i}.tool_calls.{j}.id"] = block["id"]
            attrs[f"gen_ai.prompt.{i}.tool_calls.{j}.name"] = block["name"]
            attrs[f"gen_ai.prompt.{i}.tool_calls.{j}.arguments"] = json.dumps(block["input"])
    for i, tool in enumerate(TOOLS):
        schema_key = "input_schema" if version == "latest" else "parameters"
        attrs[f"llm.request.functions.{i}.name"] = tool["name"]
        attrs[f"llm.request.functions.{i}.description"] = tool["description"]
        attrs[f"llm.request.functions.{i}.{schema_key}"] = json.dumps(tool["input_schema"])
    index, calls, text = 0, 0, ""
    prefix = f"gen_ai.completion.{index}"
    attrs[f"{prefix}.finish_reason"] = "tool_use" if any(b["type"] == "tool_use" for b in reply) else "end_turn"
    attrs[f"{prefix}.role"] = "assistant"
    for block in reply:
        if block["type"] == "text":
            text += block["text"]
        elif block["type"] == "thinking" and version == "latest":  # a completion of its own, role "thinking"
            attrs[f"{prefix}.role"] = "thinking"
            attrs[f"{prefix}.content"] = block["thinking"]
            index += 1
            prefix = f"gen_ai.completion.{index}"
            attrs[f"{prefix}.role"] = "assistant"
        elif block["type"] == "tool_use":
            attrs[f"{prefix}.tool_calls.{calls}.id"] = block["id"]
            attrs[f"{prefix}.tool_calls.{calls}.name"] = block["name"]
            attrs[f"{prefix}.tool_calls.{calls}.arguments"] = json.dumps(block["input"])
            calls += 1
    attrs[f"{prefix}.content"] = text
    return attrs


def _anthropic_file(
    tmp_path: Path,
    version: str,
    results: dict[str, str] = RESULTS,
    failed: frozenset[str] = frozenset(),
    earlier: tuple[dict[str, Any], ...] = (),
    caller: str | None = None,
) -> Path:
    """An app's tool loop with the Anthropic SDK (``messages.create``, a tool_result message after each tool_use),
    traced by OpenLLMetry's Anthropic instrumentation under the app's request span. ``failed``: the calls whose
    tool_result the app marks ``is_error`` (their tool failed); ``earlier``: the thread's messages before this turn;
    ``caller``: a W3C ``traceparent`` the calls continue instead (a caller's span in another service: no request span
    here, the model spans are the trace's top spans)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.anthropic")
    messages: list[dict[str, Any]] = [*earlier, {"role": "user", "content": TURN_1}]
    parent = TraceContextTextMapPropagator().extract({"traceparent": caller}) if caller else None
    with ExitStack() as stack:
        if caller is None:
            request = stack.enter_context(tracer.start_as_current_span("POST /shop", kind=SpanKind.SERVER))
            request.set_attribute(sc.CONVERSATION_ID, "shop-thread-1")
        for reply in REPLIES:
            with tracer.start_as_current_span("anthropic.chat", kind=SpanKind.CLIENT, context=parent) as span:
                span.set_attributes(_anthropic_attributes(messages, reply, version))
            messages.append({"role": "assistant", "content": reply})
            if uses := [b for b in reply if b["type"] == "tool_use"]:
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": b["id"],
                                "content": results[b["id"]],
                                **({"is_error": True} if b["id"] in failed else {}),
                            }
                            for b in uses
                        ],
                    }
                )
    finished = list(exporter.get_finished_spans())
    provider.shutdown()
    path = tmp_path / f"anthropic_{version}.jsonl"
    path.write_text(json.dumps(spans_to_otlp_json(finished)) + "\n")
    return path


@pytest.mark.parametrize("version", ["legacy", "latest"])
def test_openllmetry_anthropic_spans_make_the_steps(tmp_path, store, version):
    report, trajectories = _ingest(store, _anthropic_file(tmp_path, version))
    assert (report.problems, report.runs) == (0, 1), report.errors
    (t,) = trajectories
    assert _steps(t) == PEARS_STEPS
    assert (t.task, t.final_answer, t.model, t.thread_id) == (TURN_1, "We had no pears, so I ordered 5.", MODEL, "shop-thread-1")
    assert [s.decision_index for s in t.steps] == [0, 1, 2]
    assert t.tools == [
        {"type": "function", "function": {"name": x["name"], "description": x["description"], "parameters": x["input_schema"]}}
        for x in TOOLS
    ]
    reasoning = THOUGHT if version == "latest" else None  # the legacy attributes leave the thinking block out of the reply
    assert [s.action.reasoning for s in t.steps] == [reasoning, None, None]
    # the last decision's state: the history as the model was given it (the thinking block it was sent back included)
    assert [(m["role"], m["content"], m.get("tool_call_id"), m.get("reasoning_content")) for m in t.steps[2].state] == [
        ("system", SYSTEM, None, None),
        ("user", TURN_1, None, None),
        ("assistant", "Let me check the stock.", None, THOUGHT),
        ("tool", "0 pears in stock", "toolu_01", None),
        ("assistant", "", None, None),
        ("tool", "ordered 5 pears", "toolu_02", None),
    ]
    assert [[c["id"] for c in m.get("tool_calls") or []] for m in t.steps[2].state if m["role"] == "assistant"] == [
        ["toolu_01"],
        ["toolu_02"],
    ]


@pytest.mark.parametrize("caller", [None, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], ids=["request-span", "remote-caller"])
@pytest.mark.parametrize("version", ["legacy", "latest"])
def test_a_tool_result_marked_is_error_is_an_error_observation(tmp_path, store, version, caller):
    """The app tells the model its stock check failed (a ``tool_result`` with ``is_error: true``, as Anthropic's API
    takes it) and no tool span says so (the model client's instrumentation alone): the step's observation is an error.
    Before, it read as a success, so the failed call was taught as a good one. The result's text and the states are
    as the model saw them (the flag is no part of a message). Where the model spans are the trace's top spans (their
    parent a caller's in another service), the run is still read as another instrumentation's: its task is this turn's
    question, not the thread's first."""
    results = {**RESULTS, "toolu_01": "Stock service timed out."}
    earlier = ({"role": "user", "content": "Do we have apples?"}, {"role": "assistant", "content": "We have 12 apples."})
    path = _anthropic_file(tmp_path, version, results, failed=frozenset({"toolu_01"}), earlier=earlier, caller=caller)
    report, (t,) = _ingest(store, path)
    assert (report.problems, t.status) == (0, "completed"), report.errors
    assert _steps(t) == [
        ("check_stock", {"fruit": "pears"}, "Stock service timed out.", True),
        ("order", {"fruit": "pears", "quantity": 5}, "ordered 5 pears", False),
        PEARS_STEPS[2],
    ]
    assert [m for m in t.steps[2].state if m["role"] == "tool"] == [
        {"role": "tool", "tool_call_id": "toolu_01", "content": "Stock service timed out."},
        {"role": "tool", "tool_call_id": "toolu_02", "content": "ordered 5 pears"},
    ]
    assert t.task == TURN_1


def test_openllmetry_openai_list_content_is_read_as_its_text(tmp_path, store):
    """OpenLLMetry's OpenAI instrumentation writes a message's list content as its JSON (``_set_prompts``): an app that
    sends content parts (text, an image) had the JSON as its task and in every state."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    user = [{"type": "text", "text": TURN_1}, image]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai")
    with tracer.start_as_current_span("openai.chat", kind=SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": json.dumps(user),
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "No pears in the picture.",
                "gen_ai.completion.0.finish_reason": "stop",
            }
        )
    finished = list(exporter.get_finished_spans())
    provider.shutdown()
    path = tmp_path / "openai.jsonl"
    path.write_text(json.dumps(spans_to_otlp_json(finished)) + "\n")
    report, (t,) = _ingest(store, path)
    assert report.problems == 0, report.errors
    [state_user] = t.steps[0].state
    assert state_user["content"] == t.task == f"{TURN_1}\n[image: image/png, 8 bytes]"  # the image as capture says it
