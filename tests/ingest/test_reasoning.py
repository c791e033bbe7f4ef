"""``ee traces ingest`` keeps a reasoning model's reasoning with each action it led to (``Action.reasoning``): the real
OpenTelemetry SDK writes OpenTelemetry's OpenAI v2 chat spans whose output messages carry a ``reasoning`` part (as
vLLM's reasoning parsers return it), and each step of that reply, its parallel calls included, carries the reasoning."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ee_middleware.capture import semconv as sc
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from ee_middleware.messages import content_to_text, openai_to_genai
from tests.ingest.test_conversations import MODEL, PEARS, SYSTEM, _call, _ingest, _request_file, _tool
from tests.ingest.test_instrumentations import TURN_1

THOUGHT = "Check both fruits at once."
REPLIES = [
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": THOUGHT,
        "tool_calls": [_call("call_1", "check_stock", {"fruit": "pears"}), _call("call_2", "check_stock", {"fruit": "apples"})],
    },
    {"role": "assistant", "content": "No pears, 12 apples."},  # a reply without reasoning
]


def test_ingested_steps_carry_the_reasoning_of_their_reply(tmp_path, store):
    assert openai_to_genai(REPLIES[:1])[0]["parts"][0] == {"type": "reasoning", "content": THOUGHT}  # as the spans carry it
    path, _ = _request_file(tmp_path, ("Pears and apples?", REPLIES))
    report, (t,) = _ingest(store, path)
    assert report.problems == 0, report.errors
    assert [(s.decision_index, s.action.kind, s.action.reasoning) for s in t.steps] == [
        (0, "tool_call", THOUGHT),
        (0, "tool_call", THOUGHT),
        (1, "answer", None),
    ]
    assert [m.get("reasoning_content") for m in t.messages if m["role"] == "assistant"] == [THOUGHT, None]


# --- the fields each server returns reasoning in, as LiteLLM's raw request spans record them -----------------------

THINKING = "No pears listed yet: check the stock, then order."
SUMMARY_ONLY = [
    {"type": "reasoning.summary", "summary": THINKING, "format": "openai-responses-v1", "index": 0},
    {"type": "reasoning.encrypted", "data": "gAAAAABo", "format": "openai-responses-v1", "index": 1},
]
SERVERS = {
    # gpt-oss on vLLM >= 0.11 (--reasoning-parser openai_gptoss): ``reasoning``; the app sends it back the same way
    "vllm-gpt-oss": ("hosted_vllm", {"reasoning": THINKING}, {"reasoning": THINKING}),
    # gpt-oss on Ollama's OpenAI-compatible endpoint: ``reasoning``; the app keeps it as ``thinking``, the field of
    # Ollama's /api/chat messages and of the gpt-oss chat template
    "ollama-gpt-oss": ("openai", {"reasoning": THINKING}, {"thinking": THINKING}),
    # OpenRouter: ``reasoning`` and ``reasoning_details``; the app sends the details back, as OpenRouter asks
    "openrouter": (
        "openrouter",
        {"reasoning": THINKING, "reasoning_details": [{"type": "reasoning.text", "text": THINKING, "format": "unknown", "index": 0}]},
        {"reasoning_details": [{"type": "reasoning.text", "text": THINKING, "format": "unknown", "index": 0}]},
    ),
    # OpenRouter for a model that returns a summary and its encrypted reasoning, no text
    "openrouter-summary": ("openrouter", {"reasoning": None, "reasoning_details": SUMMARY_ONLY}, {"reasoning_details": SUMMARY_ONLY}),
}


def _litellm_request_file(tmp_path: Any, provider: str, returned: dict[str, Any], sent_back: dict[str, Any]) -> Any:
    """The real OpenTelemetry SDK writing what LiteLLM's ``otel`` callback writes with a span of the app's active (its
    default): a ``raw_gen_ai_request`` span per call, the provider's request and response as ``llm.{provider}.*`` Python
    repr text, under the app's span that holds the calls' LiteLLM attributes. The model's replies carry reasoning in
    ``returned``'s fields; the app sends each reply back in the history with ``sent_back``'s."""
    exporter = InMemorySpanExporter()
    provider_ = TracerProvider()
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider_.get_tracer("shop")
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TURN_1}]
    with tracer.start_as_current_span("shop turn", kind=SpanKind.SERVER) as turn:
        for n, reply in enumerate(PEARS):
            thought = returned if reply.get("tool_calls") else {}
            message = {"content": reply["content"] or None, "role": "assistant", **thought, "tool_calls": reply.get("tool_calls")}
            with tracer.start_as_current_span("raw_gen_ai_request") as raw:
                raw.set_attributes(
                    {
                        f"llm.{provider}.messages": repr(history),
                        f"llm.{provider}.model": MODEL,
                        f"llm.{provider}.choices": repr(
                            [{"finish_reason": "tool_calls" if reply.get("tool_calls") else "stop", "index": 0, "message": message}]
                        ),
                    }
                )
            turn.set_attributes({"litellm.call_id": f"call-{n}", sc.OPERATION_NAME: "chat", sc.REQUEST_MODEL: MODEL})
            kept = {key: value for key, value in sent_back.items() if thought}
            history.append({"role": "assistant", "content": reply["content"] or None, **kept, "tool_calls": reply.get("tool_calls")})
            for call in reply.get("tool_calls") or []:
                arguments = json.loads(call["function"]["arguments"])
                history.append({"role": "tool", "tool_call_id": call["id"], "content": _tool(call["function"]["name"], arguments)})
    finished = list(exporter.get_finished_spans())
    provider_.shutdown()
    path = tmp_path / f"{provider}.jsonl"
    path.write_text(json.dumps(spans_to_otlp_json(finished)) + "\n")
    return path


@pytest.mark.parametrize("server", list(SERVERS))
def test_reasoning_in_the_field_each_server_returns_it_is_the_steps_reasoning(tmp_path, store, server):
    """gpt-oss on vLLM or Ollama and OpenRouter give a reply's reasoning as ``reasoning`` / ``thinking`` /
    ``reasoning_details``, not ``reasoning_content``: each step the reply made carries it (``Action.reasoning``), each
    assistant message in the trajectory and in every later state has it as ``reasoning_content``, and no text holds it.
    Was: ``thinking`` and ``reasoning_details`` were dropped (steps without reasoning, states without the reasoning the
    model was sent back); ``reasoning`` was already read (the vLLM case guards it)."""
    provider, returned, sent_back = SERVERS[server]
    report, (t,) = _ingest(store, _litellm_request_file(tmp_path, provider, returned, sent_back))
    assert report.problems == 0, report.errors
    assert [(s.action.kind, s.action.reasoning) for s in t.steps] == [("tool_call", THINKING), ("tool_call", THINKING), ("answer", None)]
    assistants = [m for m in t.messages if m["role"] == "assistant"]
    assert [m.get("reasoning_content") for m in assistants] == [THINKING, THINKING, None]
    last_state = [m for m in t.steps[-1].state if m["role"] == "assistant"]
    assert [m.get("reasoning_content") for m in last_state] == [THINKING, THINKING], "the history the model was sent back"
    texts = [content_to_text(m.get("content")) for s in t.steps for m in s.state] + [content_to_text(m.get("content")) for m in t.messages]
    assert not any(THINKING in text or "reasoning." in text for text in texts)


def test_a_pydantic_ai_thinking_part_is_the_steps_reasoning(tmp_path, store):
    """Pydantic AI writes a reply's reasoning as a GenAI ``thinking`` part (``{"type": "thinking", "content": ...}``),
    where the conventions say ``reasoning``: it was dropped."""
    replies = [dict(r) for r in REPLIES]
    path, _ = _request_file(tmp_path, ("Pears and apples?", replies))
    spans, renamed = json.loads(path.read_text()), 0
    for rs in spans["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for attr in span["attributes"]:
                    if attr["key"] == sc.OUTPUT_MESSAGES and '"type":"reasoning"' in attr["value"]["stringValue"]:
                        attr["value"]["stringValue"] = attr["value"]["stringValue"].replace('"type":"reasoning"', '"type":"thinking"')
                        renamed += 1
    path.write_text(json.dumps(spans) + "\n")
    assert renamed == 1
    report, (t,) = _ingest(store, path)
    assert report.problems == 0, report.errors
    assert [(s.decision_index, s.action.reasoning) for s in t.steps] == [(0, THOUGHT), (0, THOUGHT), (1, None)]
