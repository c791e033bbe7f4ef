"""The chat-client protocol: messages and tool schemas in, assistant messages with tool calls out.

Every part that asks a model something goes through a :class:`ChatClient`: replay policies
(K alternatives), self-reflection teachers (rationales), and later the local model server and the
evaluation harnesses. Two built-ins implement it: an OpenAI-compatible HTTP client
(:mod:`ee_middleware.models.openai_compat`) and a local transformers generator
(:mod:`ee_middleware.models.local`). This module imports nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ee_middleware.errors import ConfigError
from ee_middleware.messages import message_reasoning, split_reasoning

if TYPE_CHECKING:
    from ee_middleware.models.parsing import ParamOrder, ParsedCall

Message = dict[str, Any]
ToolSchema = dict[str, Any]

_MAX_RAW_CHARS = 500

CUT_WHILE_REASONING = "the answer was cut off at max_tokens while still reasoning"
"""The start of what :meth:`Choice.cut_while_reasoning` says (``...: raise max_tokens (now N)``)."""


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``temperature`` 0 is greedy decoding; ``seed`` makes sampling repeatable where the backend allows."""

    temperature: float = 1.0
    top_p: float | None = None
    max_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Choice:
    """One sampled answer: the assistant message as the backend produced it.

    ``message`` is the chat message (OpenAI shape; whatever the server sent, which may be malformed);
    ``raw`` is the answer as text (clipped for structured messages), for records and debugging;
    ``problem`` is set when the backend gave no message at all (e.g. a response without choices);
    ``structured`` is false for a model that only writes text (its tool calls are parsed from it);
    ``model`` is the model the server says answered (the response's ``model``: behind a router's alias, the adapter's
    own name), None where the backend does not say.
    """

    message: Any
    raw: str
    problem: str | None = None
    finish_reason: str | None = None
    structured: bool = True
    model: str | None = None

    @property
    def text(self) -> str:
        """What the model said: its content without the reasoning it wrote inline, and its :attr:`refusal` where it
        refused ('' when it has neither; see :func:`message_text`). The reasoning is :attr:`reasoning`."""
        return message_text(self.message)

    @property
    def reasoning(self) -> str | None:
        """The answer's reasoning: what the server returned apart from the content (``reasoning_content``,
        ``reasoning``, ``thinking``, ...), else the reasoning written inline at the start of the content
        (``<think>...</think>``, a model served without a reasoning parser); None when it has none."""
        if not isinstance(self.message, Mapping):
            return None
        return message_reasoning(self.message) or split_reasoning(_content_text(self.message))[0]

    @property
    def refusal(self) -> str | None:
        """What the model said when it refused (OpenAI's ``message.refusal``, or ``refusal`` content parts); None otherwise."""
        return message_refusal(self.message)

    def tool_calls(self, *, param_order: ParamOrder | None = None) -> list[ParsedCall]:
        """The tool calls of this answer (structured ``tool_calls``, else parsed from the text), or problems.

        A problem in an answer that stopped at ``max_tokens`` (``finish_reason`` ``"length"``) says so first; an answer
        cut off while still reasoning is the one problem :meth:`cut_while_reasoning` says.
        """
        from ee_middleware.models.parsing import ParseProblem, from_openai_message, parse_tool_calls

        if self.problem is not None:
            return [ParseProblem(self.problem, self.raw)]
        cut = self.cut_while_reasoning()
        if cut is not None:
            return [ParseProblem(cut, self.raw)]
        if not self.structured:  # its reasoning included: the parser drops it, and says when the answer is only reasoning
            results = parse_tool_calls(message_text(self.message, reasoning=True), param_order=param_order)
        else:
            results = from_openai_message(self.message, param_order=param_order)
        if self.finish_reason != "length":
            return results
        cut = "the answer was cut off at max_tokens (finish_reason 'length'; give it more max_tokens)"
        return [ParseProblem(f"{cut}: {item.problem}", item.raw) if isinstance(item, ParseProblem) else item for item in results]

    def cut_while_reasoning(self, max_tokens: int | None = None) -> str | None:
        """Why this answer says nothing, when it is that the model was cut off at ``max_tokens`` while still reasoning:
        ``finish_reason`` ``"length"``, no tool call, no :attr:`text`, only :attr:`reasoning` (inline ``<think>`` never
        closed, or the server's ``reasoning_content``); None for any other answer.

        The message (``"the answer was cut off at max_tokens while still reasoning: raise max_tokens (now N)"``, N being
        ``max_tokens``, the limit it was asked with, when given) is what every reader of :attr:`text` reports for such an
        answer (the eval loop, the tau user simulator, the experience model, the curriculum judge), rather than an empty
        answer: the fix is more tokens, not another model or server."""
        if self.problem is not None or self.finish_reason != "length" or not isinstance(self.message, Mapping):
            return None
        if self.message.get("tool_calls") or self.text.strip() or not (self.reasoning or "").strip():
            return None
        now = f" (now {max_tokens})" if max_tokens is not None else ""
        return f"{CUT_WHILE_REASONING}: raise max_tokens{now}"

    @classmethod
    def from_text(cls, text: str, *, finish_reason: str | None = None) -> Choice:
        """A choice for a model that answers with plain text (a local generator)."""
        return cls({"role": "assistant", "content": text}, raw=text, finish_reason=finish_reason, structured=False)

    @classmethod
    def from_message(cls, message: Any, *, finish_reason: str | None = None) -> Choice:
        """A choice for a structured chat message (an OpenAI-compatible server)."""
        return cls(message, raw=clip(json.dumps(message, ensure_ascii=False, default=repr)), finish_reason=finish_reason)


@runtime_checkable
class ChatClient(Protocol):
    """Asks a chat model for ``n`` answers to ``messages`` with ``tools`` offered.

    ``model`` names the model for lineage records. ``describe`` returns the settings that shape
    answers (never secrets). ``complete`` raises :class:`~ee_middleware.errors.ModelError`
    subclasses when the model cannot answer at all; a garbled answer is returned, not raised.

    Writing your own (a ``package.module:factory`` or an ``ee_middleware.models`` entry point)? Check it with
    :func:`ee_middleware.testing.client_conformance.check_chat_client`, which asks it as replay, teachers, the eval
    harness and the experience sandbox do and names any promise it breaks.
    """

    model: str

    def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSchema] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def message_refusal(message: Any) -> str | None:
    """The refusal in a chat ``message``: OpenAI's ``refusal`` field (sent with ``content`` null) and any
    ``{"type": "refusal", "refusal": ...}`` content parts, joined; None when the model did not refuse."""
    if not isinstance(message, Mapping):
        return None
    content = message.get("content")
    parts = [p for p in content if isinstance(p, Mapping) and p.get("type") == "refusal"] if isinstance(content, list) else []
    found = [r for r in [message.get("refusal"), *(p.get("refusal") for p in parts)] if isinstance(r, str) and r.strip()]
    return "\n".join(dict.fromkeys(found)) or None


def parts_text(parts: list[Any]) -> str:
    """The text of a message's content parts, joined (refusal parts are not its text: see :func:`message_refusal`)."""
    return "".join(str(part.get("text", "")) for part in parts if isinstance(part, Mapping) and part.get("type") != "refusal")


def message_text(message: Any, *, reasoning: bool = False) -> str:
    """A chat ``message``'s text: its content (text parts joined), then its refusal unless the content holds it already.

    A model that refuses answers with ``content`` null and ``refusal`` set (OpenAI, gateways, guided decoding):
    the refusal is what it said, so evaluations and replay report it instead of an empty answer.

    Reasoning a model served without a reasoning parser writes inline at the start of its content (a leading
    ``<think>...</think>``, one never closed, or text up to a ``</think>`` the chat template opened: see
    :func:`~ee_middleware.messages.split_reasoning`) is not what it said, so it is left out, as capture leaves it out of
    recorded text; ``reasoning=True`` keeps the content as the model wrote it (for a parser that handles reasoning)."""
    if not isinstance(message, Mapping):
        return ""
    text = _content_text(message)
    if not reasoning:
        text = split_reasoning(text)[1]
    refusal = message_refusal(message)
    if refusal is None or refusal in text:
        return text
    return f"{text}\n{refusal}" if text.strip() and not text.endswith((" ", "\n")) else text + refusal


def _content_text(message: Mapping[str, Any]) -> str:
    """The text of a message's content, as written (text parts joined; refusal parts are read by :func:`message_refusal`)."""
    content = message.get("content")
    if isinstance(content, list):
        content = parts_text(content)
    return content if isinstance(content, str) else ""


def clip(text: str, limit: int = _MAX_RAW_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_middle(text: str, limit: int) -> str:
    """``text`` when it has at most ``limit`` characters, else its first and last ``limit // 2`` with `` ... `` between
    them: an error's end often says what to fix, and a server's long answer quoted in the middle is what goes."""
    half = limit // 2
    return text if len(text) <= limit else f"{text[:half]} ... {text[len(text) - half :]}"
