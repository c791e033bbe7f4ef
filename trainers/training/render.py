"""Turning chat rows into token ids and labels with the base model's own chat template.

``prompt_text`` is the prompt rendered with ``add_generation_prompt=True``; the completion text is
what rendering prompt + completion adds after it (so it ends with the template's end-of-turn
marker). Labels are ``-100`` on every prompt token: the loss is on completion tokens only.

Some templates (SmolLM2's among them) ignore ``tools`` and ``tool_calls``. A probe finds out once
per tokenizer; then the tool schemas go into the system message and each tool call becomes
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text (the Hermes/Qwen shape that
``ee_middleware.replay.policies.parsing`` reads), so the model still learns the calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.messages import decode_tool_call
from ee_middleware.trainers.training.data import ChatRow
from ee_middleware.trainers.training.errors import TrainDataError

_PROBE_TOOL = "ee_probe_tool_7f3a"
_PROBE_CALL = "ee_probe_call_9c1d"
TOOLS_PREAMBLE = "You may call these tools:\n"
TOOLS_SUFFIX = 'Call a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'


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


@dataclass(frozen=True)
class Example:
    """One tokenized example: ``labels`` are ``-100`` on prompt tokens."""

    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


@dataclass
class RenderStats:
    """How many rows were kept whole, had their prompt cut, or were dropped (and why)."""

    rows: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_empty: int = 0
    fallback_completion: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    dropped_ids: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "dropped_ids"}
        data["dropped_ids"] = self.dropped_ids[:20]
        return data


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


def template_messages(messages: list[dict[str, Any]], support: TemplateSupport) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content, tool-call arguments as objects."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("content") is None:
            message["content"] = ""
        calls = [decode_tool_call(call) for call in message.get("tool_calls") or []]
        if calls and support.tool_calls:
            message["tool_calls"] = calls
        elif calls:
            message.pop("tool_calls", None)
            text = "".join(_call_text(call) for call in calls)
            message["content"] = f"{message['content']}\n{text}" if message["content"] else text
        elif "tool_calls" in message:
            message.pop("tool_calls")
        out.append(message)
    return out


def with_tools_in_system(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with the tool schemas written into the system message (added if there is none)."""
    listing = TOOLS_PREAMBLE + "".join(json.dumps(tool, ensure_ascii=False) + "\n" for tool in tools) + TOOLS_SUFFIX
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{listing}" if first.get("content") else listing
        return [first, *messages[1:]]
    return [{"role": "system", "content": listing}, *messages]


def render_texts(tokenizer: Any, row: ChatRow, support: TemplateSupport) -> tuple[str, str, bool]:
    """``(prompt_text, completion_text, used_fallback)`` for one row."""
    prompt = template_messages(row.prompt, support)
    completion = template_messages(row.completion, support)
    tools: list[dict[str, Any]] | None = row.tools or None
    if tools and not support.tools:
        prompt, tools = with_tools_in_system(prompt, tools), None
    try:
        prompt_text = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(prompt + completion, tools=tools, tokenize=False)
    except Exception as exc:
        raise TrainDataError(
            f"The base model's chat template cannot render row {row.id!r} ({row.kind}): {type(exc).__name__}: {exc}. "
            "The dataset may have been built for another model's message shapes; rebuild it, or pick a base model "
            "whose template accepts these roles."
        ) from exc
    if full.startswith(prompt_text) and len(full) > len(prompt_text):
        return prompt_text, full[len(prompt_text) :], False
    # Templates that rewrite earlier turns (e.g. dropping reasoning) break the prefix property.
    return prompt_text, (completion[0].get("content") or "") + (tokenizer.eos_token or ""), True


def tokenize_rows(tokenizer: Any, rows: list[ChatRow], max_length: int, support: TemplateSupport) -> tuple[list[Example], RenderStats]:
    """Tokenize rows; prompts that do not fit are cut from the left, rows whose completion alone is too long are dropped."""
    stats = RenderStats(rows=len(rows))
    examples = []
    for row in rows:
        prompt_text, completion_text, fallback = render_texts(tokenizer, row, support)
        stats.fallback_completion += fallback
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        if not completion_ids:
            stats.dropped_empty += 1
            stats.dropped_ids.append(row.id)
            continue
        if len(completion_ids) >= max_length:
            stats.dropped_too_long += 1
            stats.dropped_ids.append(row.id)
            continue
        if len(prompt_ids) + len(completion_ids) > max_length:
            prompt_ids = prompt_ids[len(prompt_ids) + len(completion_ids) - max_length :]
            stats.truncated += 1
        example = Example(row.id, list(prompt_ids) + list(completion_ids), [-100] * len(prompt_ids) + list(completion_ids))
        examples.append(example)
        stats.tokens += len(example.input_ids)
        stats.loss_tokens += len(completion_ids)
    stats.examples = len(examples)
    return examples, stats


def _call_text(call: Any) -> str:
    function = call.get("function", {}) if isinstance(call, dict) else {}
    payload = {"name": function.get("name"), "arguments": function.get("arguments", {})}
    return f"<tool_call>{json.dumps(payload, ensure_ascii=False)}</tool_call>"
