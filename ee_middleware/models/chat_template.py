"""Rendering chat messages with a model's own chat template, the same way everywhere.

The trainer renders training rows, the local generator renders prompts, and the local server will
render requests with these functions, so that the prompt a model sees when it serves is the one it
was trained on, byte for byte.

Some templates (SmolLM2's among them) ignore ``tools`` and ``tool_calls``. :func:`probe_template`
finds out once per tokenizer; then the tool schemas go into the system message and each tool call
becomes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text (the Hermes/Qwen shape
that :mod:`ee_middleware.models.parsing` reads), so the model still sees and learns the calls.

The tokenizer is any object with a transformers-style ``apply_chat_template``; nothing here
imports transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ee_middleware.errors import ChatTemplateError
from ee_middleware.messages import content_to_text, decode_tool_call

_PROBE_TOOL = "ee_probe_tool_7f3a"
_PROBE_CALL = "ee_probe_call_9c1d"
TOOLS_PREAMBLE = "You may call these tools:\n"
TOOLS_SUFFIX = 'Call a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
COMPACT_TOOLS_PREAMBLE = "You may call these tools (name and arguments):\n"


@dataclass(frozen=True)
class TemplateSupport:
    """Whether the chat template renders the ``tools`` argument and assistant ``tool_calls`` itself."""

    tools: bool
    tool_calls: bool

    def describe(self) -> dict[str, str]:
        return {
            "tools": "chat template" if self.tools else "system message (template ignores tools)",
            "tool_calls": "chat template" if self.tool_calls else "<tool_call> text (template ignores tool_calls)",
        }


def probe_template(tokenizer: Any) -> TemplateSupport:
    """Render a tiny conversation to see whether the template shows tools and tool calls."""
    tool = {"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe", "parameters": {"type": "object"}}}
    call = {"id": "p1", "type": "function", "function": {"name": _PROBE_CALL, "arguments": {}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot take tools at all supports neither
        return TemplateSupport(tools=False, tool_calls=False)
    return TemplateSupport(tools=_PROBE_TOOL in text, tool_calls=_PROBE_CALL in text)


def template_messages(messages: Sequence[dict[str, Any]], support: TemplateSupport) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content, tool-call arguments as objects.

    Content parts (``[{"type": "text", "text": ...}]``) become their text and any other content that
    is not a string (a tool result kept as an object) its JSON, never a Python ``repr``.
    """
    out = []
    for message in messages:
        message = dict(message)
        if not isinstance(message.get("content"), str):
            message["content"] = content_to_text(message.get("content"))
        calls = [decode_tool_call(call) for call in message.get("tool_calls") or []]
        if calls and support.tool_calls:
            message["tool_calls"] = calls
        elif calls:
            message.pop("tool_calls", None)
            text = "".join(tool_call_text(call) for call in calls)
            message["content"] = f"{message['content']}\n{text}" if message["content"] else text
        elif "tool_calls" in message:
            message.pop("tool_calls")
        out.append(message)
    return out


def with_tools_in_system(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], *, compact: bool = False
) -> list[dict[str, Any]]:
    """The messages with the tool schemas written into the system message (added if there is none).

    ``compact`` lists each tool on one line (name and typed arguments) instead of its JSON schema:
    the fallback for states too long for full schemas (see :mod:`ee_middleware.models.truncation`).
    """
    if compact:
        listing = compact_tool_listing(tools) + "\n" + TOOLS_SUFFIX
    else:
        listing = TOOLS_PREAMBLE + "".join(json.dumps(tool, ensure_ascii=False) + "\n" for tool in tools) + TOOLS_SUFFIX
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{listing}" if first.get("content") else listing
        return [first, *messages[1:]]
    return [{"role": "system", "content": listing}, *messages]


def compact_tool_listing(tools: Sequence[Mapping[str, Any]]) -> str:
    """One line per tool, ``name(arg: type, optional?: type)``, under a preamble."""
    lines = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
        parameters = function.get("parameters") if isinstance(function.get("parameters"), Mapping) else {}
        properties = parameters.get("properties") if isinstance(parameters.get("properties"), Mapping) else {}
        required = set(parameters.get("required") or ())
        arguments = [f"{arg}{'' if arg in required else '?'}: {_type_name(spec)}" for arg, spec in properties.items()]
        lines.append(f"{function.get('name', '?')}({', '.join(arguments)})")
    return COMPACT_TOOLS_PREAMBLE + "\n".join(lines)


def _type_name(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return "any"
    kind = spec.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array" and isinstance(spec.get("items"), Mapping):
        return f"array[{_type_name(spec['items'])}]"
    if isinstance(spec.get("enum"), list):
        return "|".join(repr(v) for v in spec["enum"][:6])
    return str(kind) if kind else "any"


def tool_call_text(call: Any) -> str:
    """One tool call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text."""
    function = call.get("function", {}) if isinstance(call, dict) else {}
    payload = {"name": function.get("name"), "arguments": function.get("arguments", {})}
    return f"<tool_call>{json.dumps(payload, ensure_ascii=False)}</tool_call>"


def _prepared(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None, support: TemplateSupport
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    prepared = template_messages(messages, support)
    tool_list = list(tools) if tools else None
    if tool_list and not support.tools:
        return with_tools_in_system(prepared, tool_list), None
    return prepared, tool_list


def render_prompt(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None, support: TemplateSupport
) -> str:
    """The prompt text for the model's next assistant turn (generation prompt included)."""
    prepared, tool_list = _prepared(messages, tools, support)
    try:
        return tokenizer.apply_chat_template(prepared, tools=tool_list, add_generation_prompt=True, tokenize=False)
    except Exception as exc:
        raise ChatTemplateError(f"The chat template cannot render these messages: {type(exc).__name__}: {exc}") from exc


def render_pair(
    tokenizer: Any,
    prompt: Sequence[dict[str, Any]],
    completion: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    support: TemplateSupport,
) -> tuple[str, str, bool]:
    """``(prompt_text, completion_text, used_fallback)`` for a training row.

    ``prompt_text`` is what :func:`render_prompt` gives for ``prompt``; the completion text is what
    rendering prompt + completion adds after it (so it ends with the template's end-of-turn
    marker). Templates that rewrite earlier turns break that prefix property; then the completion
    is its content plus the end-of-sequence token, and ``used_fallback`` is true.
    """
    prepared_prompt, tool_list = _prepared(prompt, tools, support)
    prepared_completion = template_messages(completion, support)
    try:
        prompt_text = tokenizer.apply_chat_template(prepared_prompt, tools=tool_list, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(prepared_prompt + prepared_completion, tools=tool_list, tokenize=False)
    except Exception as exc:
        raise ChatTemplateError(f"The chat template cannot render these messages: {type(exc).__name__}: {exc}") from exc
    if full.startswith(prompt_text) and len(full) > len(prompt_text):
        return prompt_text, full[len(prompt_text) :], False
    return prompt_text, (prepared_completion[0].get("content") or "") + (tokenizer.eos_token or ""), True
