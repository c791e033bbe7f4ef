"""Trace shapes that :mod:`ee_middleware.capture.normalize` does not read, adapted before runs are grouped.

Only spans read from files meet these (live capture sees its own spans), so ingest adapts them here
and leaves what it does not change untouched:

* **Messages in span events** (the GenAI conventions' event form, semconv 1.27-1.36, as Azure AI
  Inference, Semantic Kernel and others write it on spans): ``gen_ai.{system,user,assistant,tool}.message``
  events are the model's input and ``gen_ai.choice`` events its output, each message as JSON in
  ``gen_ai.event.content`` (or, where an SDK flattens the body, in the event's ``content`` /
  ``tool_calls`` / ``id`` attributes). A body that names no role takes it from the event name; a tool
  message's ``id`` is its ``tool_call_id``. semconv 1.26's ``gen_ai.content.prompt`` /
  ``gen_ai.content.completion`` events carry the whole list in ``gen_ai.prompt`` / ``gen_ai.completion``.
  They become ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (OpenAI's chat shape, which the
  assembler reads under those names), unless the span already has them or another dialect's
  indexed attributes.
* **OpenInference content parts**: a message whose content is a list of parts is written as
  ``llm.{input,output}_messages.{i}.message.contents.{j}.message_content.type|text`` instead of
  ``message.content``; its text parts, joined in order, become the message's content.
* **pydantic-ai**: tool results in messages are ``tool_call_response`` parts with ``result`` where the
  conventions say ``response``; its version-2 tool spans put the call's arguments and result in
  ``tool_arguments`` / ``tool_response``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.normalize import operation_of
from ee_middleware.capture.spandata import SpanData
from ee_middleware.messages import dumps

_MESSAGE_EVENTS = {f"gen_ai.{role}.message": role for role in ("system", "user", "assistant", "tool")}
_CHOICE = "gen_ai.choice"
_EVENT_CONTENT = "gen_ai.event.content"
_FLAT_BODY = ("role", "content", "tool_calls", "id", "tool_call_id", "message", "index", "finish_reason")
_LEGACY = {"gen_ai.content.prompt": ("gen_ai.prompt", "user"), "gen_ai.content.completion": ("gen_ai.completion", "assistant")}
_CONTENT_PART_TEXT = re.compile(r"^(llm\.(?:input|output)_messages\.\d+\.message)\.contents\.(\d+)\.message_content\.text$")
_INDEXED = {
    sc.INPUT_MESSAGES: ("gen_ai.prompt.", "llm.input_messages."),
    sc.OUTPUT_MESSAGES: ("gen_ai.completion.", "llm.output_messages."),
}


def adapt(span: SpanData) -> SpanData:
    """``span`` with the shapes above rewritten into the GenAI attributes the assembler reads."""
    op = operation_of(span.attributes)
    if op in sc.MODEL_OPERATIONS:
        attrs = _with_event_messages(span)
        attrs = _with_tool_responses(attrs)
        attrs = _with_content_parts(attrs)
    elif op == sc.OP_EXECUTE_TOOL:
        attrs = _with_tool_span_keys(span.attributes)
    else:
        return span
    return span if attrs is span.attributes else replace(span, attributes=attrs)


def _with_event_messages(span: SpanData) -> Mapping[str, Any]:
    attrs = span.attributes
    if not span.events:
        return attrs
    found: dict[str, list[dict[str, Any]]] = {sc.INPUT_MESSAGES: [], sc.OUTPUT_MESSAGES: []}
    choices: list[tuple[int, dict[str, Any]]] = []
    for name, event in span.events:
        if name in _MESSAGE_EVENTS:
            found[sc.INPUT_MESSAGES].append(_message(_MESSAGE_EVENTS[name], _body(event)))
        elif name == _CHOICE:
            body = _body(event)
            index = body.get("index") if isinstance(body, Mapping) else None
            message = body.get("message", {}) if isinstance(body, Mapping) and "message" in body else body
            choices.append((index if isinstance(index, int) else len(choices), _message("assistant", message)))
        elif name in _LEGACY:
            key, role = _LEGACY[name]
            value = _decoded(event.get(key))
            items = value if isinstance(value, list) else [value] if value is not None else []
            target = sc.INPUT_MESSAGES if role == "user" else sc.OUTPUT_MESSAGES
            found[target].extend(_message(role, item) for item in items)
    found[sc.OUTPUT_MESSAGES].extend(message for _, message in sorted(choices, key=lambda c: c[0]))
    new = {key: messages for key, messages in found.items() if messages and not _has_messages(attrs, key)}
    if not new:
        return attrs
    return {**attrs, **{key: dumps(messages) for key, messages in new.items()}}


def _has_messages(attrs: Mapping[str, Any], key: str) -> bool:
    return attrs.get(key) not in (None, "") or any(k.startswith(_INDEXED[key]) for k in attrs)


def _body(event: Mapping[str, Any]) -> Any:
    if _EVENT_CONTENT in event:
        return _decoded(event[_EVENT_CONTENT])
    return {key: _decoded(event[key]) if key in ("tool_calls", "message") else event[key] for key in _FLAT_BODY if key in event}


def _decoded(value: Any) -> Any:
    """JSON text decoded; text that is not JSON is kept as it is (a message's plain text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def _message(role: str, body: Any) -> dict[str, Any]:
    """One message in OpenAI's chat shape (checked later like any other span's messages)."""
    if not isinstance(body, Mapping):
        return {"role": role, "content": body if isinstance(body, str) or body is None else dumps(body)}
    message = {**body, "role": body.get("role") or role}
    if message["role"] == "tool" and "tool_call_id" not in message and "id" in message:
        message["tool_call_id"] = message.pop("id")
    return message


def _with_tool_responses(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """pydantic-ai's ``tool_call_response`` parts carry ``result``; the conventions say ``response``."""
    changed = {}
    for key in (sc.INPUT_MESSAGES, sc.OUTPUT_MESSAGES):
        raw = attrs.get(key)
        if isinstance(raw, str) and ('"result"' not in raw or '"tool_call_response"' not in raw):
            continue
        messages = _decoded(raw)
        if not isinstance(messages, list):
            continue  # the span's own check reports it
        fixed = [_message_with_responses(m) for m in messages]
        if any(a is not b for a, b in zip(fixed, messages, strict=True)):
            changed[key] = dumps(fixed) if isinstance(raw, str) else fixed
    return {**attrs, **changed} if changed else attrs


def _message_with_responses(message: Any) -> Any:
    parts = message.get("parts") if isinstance(message, Mapping) else None
    if not isinstance(parts, list):
        return message
    fixed = [
        {**part, "response": part["result"]}
        if isinstance(part, Mapping) and part.get("type") == "tool_call_response" and "response" not in part and "result" in part
        else part
        for part in parts
    ]
    return {**message, "parts": fixed} if any(a is not b for a, b in zip(fixed, parts, strict=True)) else message


def _with_tool_span_keys(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """pydantic-ai's version-2 tool spans: ``tool_arguments`` / ``tool_response``."""
    changed = {
        target: attrs[source]
        for source, target in (("tool_arguments", sc.TOOL_CALL_ARGUMENTS), ("tool_response", sc.TOOL_CALL_RESULT))
        if source in attrs and target not in attrs
    }
    return {**attrs, **changed} if changed else attrs


def _with_content_parts(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """OpenInference's ``message.contents.{j}.message_content.text`` joined into ``message.content``."""
    texts: dict[str, list[tuple[int, str]]] = {}
    for key, value in attrs.items():
        match = _CONTENT_PART_TEXT.match(key) if ".contents." in key else None
        if match and isinstance(value, str) and f"{match.group(1)}.content" not in attrs:
            texts.setdefault(match.group(1), []).append((int(match.group(2)), value))
    if not texts:
        return attrs
    return {**attrs, **{f"{message}.content": "".join(text for _, text in sorted(parts)) for message, parts in texts.items()}}
