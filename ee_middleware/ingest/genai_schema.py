"""Typed models of the GenAI message attributes that trajectory assembly reads from model spans.

``gen_ai.input.messages`` / ``gen_ai.output.messages`` hold JSON lists of messages in the GenAI
semantic conventions' shape (``{"role", "parts": [{"type": "text" | "tool_call" |
"tool_call_response", ...}]}``) or, as some instrumentations write under the same names, in
OpenAI's chat shape (``content`` / ``tool_calls``). ``gen_ai.system_instructions`` is a list of
parts or a string; ``gen_ai.tool.definitions`` a list of tool objects. A span read from a file is
checked against these before it is assembled, so that ``"parts": "not-a-list"`` is an error that
names the span and the field instead of an empty message stored as if it were real.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.spandata import SpanData
from ee_middleware.ingest.otlp_schema import describe


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class TextPart(_Shape):
    type: Literal["text"]
    content: str


class ToolCallPart(_Shape):
    type: Literal["tool_call"]
    name: str
    id: str | None = None
    arguments: Any = None


class ToolCallResponsePart(_Shape):
    type: Literal["tool_call_response"]
    id: str | None = None
    response: Any = None


class OtherPart(_Shape):
    """Parts this project does not read (``reasoning``, ``blob``, ``uri``, ...) keep their type."""

    type: str


_READ_PARTS = {"text", "tool_call", "tool_call_response"}


def _part_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else None
    return f"tag:{kind}" if kind in _READ_PARTS else "tag:other"


Part = Annotated[
    Annotated[TextPart, Tag("tag:text")]
    | Annotated[ToolCallPart, Tag("tag:tool_call")]
    | Annotated[ToolCallResponsePart, Tag("tag:tool_call_response")]
    | Annotated[OtherPart, Tag("tag:other")],
    Discriminator(_part_kind),
]


class GenAIMessage(_Shape):
    role: str
    parts: list[Part]
    name: str | None = None
    finish_reason: str | None = None


class OpenAIFunction(_Shape):
    name: str
    arguments: Any = None


class OpenAIToolCall(_Shape):
    id: str | None = None
    type: str | None = None
    function: OpenAIFunction


class OpenAIMessage(_Shape):
    role: str
    content: str | list[Any] | None = None
    tool_calls: list[OpenAIToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


_MESSAGES = TypeAdapter(list[dict[str, Any]], config=ConfigDict(strict=True))
_SYSTEM = TypeAdapter(str | list[Part], config=ConfigDict(strict=True))
_TOOLS = TypeAdapter(list[dict[str, Any]], config=ConfigDict(strict=True))


def check_model_span(span: SpanData) -> str | None:
    """The first problem with a model span's GenAI attributes (one line naming the field), or None."""
    return (
        _check(span, sc.INPUT_MESSAGES, _check_messages)
        or _check(span, sc.OUTPUT_MESSAGES, _check_messages)
        or _check(span, sc.SYSTEM_INSTRUCTIONS, _SYSTEM.validate_python)
        or _check(span, sc.TOOL_DEFINITIONS, _TOOLS.validate_python)
    )


def _check_messages(value: Any) -> str | None:
    """Each message against the shape it claims: GenAI when it has ``parts``, else OpenAI's."""
    for i, message in enumerate(_MESSAGES.validate_python(value)):
        model = GenAIMessage if "parts" in message else OpenAIMessage
        try:
            model.model_validate(message)
        except ValidationError as exc:
            return f"[{i}].{describe(exc)}" if exc.errors()[0]["loc"] else f"[{i}]: {describe(exc)}"
    return None


def _check(span: SpanData, key: str, validate: Any) -> str | None:
    raw = span.attributes.get(key)
    if raw is None or raw == "":
        return None
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            where = f" at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
            return f"{key} is not valid JSON ({getattr(exc, 'msg', exc)}{where})"
    try:
        problem = validate(value)
    except ValidationError as exc:
        problem = describe(exc)
    if not isinstance(problem, str):
        return None
    return f"{key}{problem}" if problem.startswith("[") else f"{key}: {problem}"
