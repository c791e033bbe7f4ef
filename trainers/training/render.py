"""Turning chat rows into token ids and labels with the base model's own chat template.

The text comes from :func:`ee_middleware.models.chat_template.render_pair`, the rendering the local
generator and the servers share (so a model is served the prompts it was trained on). Labels are
``-100`` on every prompt token: the loss is on completion tokens only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.errors import ChatTemplateError
from ee_middleware.models.chat_template import (
    FALLBACK_CALLS_AS_TEXT,
    FALLBACK_CONTENT,
    FALLBACK_CONVERSATION,
    RenderedPair,
    TemplateSupport,
    render_pair,
)
from ee_middleware.models.truncation import Fit, tokenize_pair
from ee_middleware.trainers.training.data import ChatRow
from ee_middleware.trainers.training.errors import TrainDataError
from ee_middleware.trainers.training.tokens import CachedTokenizer, _added_tokens, _splitter


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
    longest_dropped_completion: int = 0
    """Tokens of the longest completion dropped for reaching ``max_length`` (0: none)."""
    dropped_empty: int = 0
    dropped_control_tokens: int = 0
    """Rows holding one of the tokenizer's control tokens (``<|im_end|>``, ``<|eot_id|>``, ...) inside a message's text,
    tool call or tool schema (a tool's result quoting a chat template, a web page): tokenized as a server tokenizes a
    rendered prompt, the token is a real one there, so the row would teach a turn that ends, or another that starts,
    inside an observation or a call."""
    control_token_examples: list[str] = field(default_factory=list)
    """The control tokens found, each once (at most 5), for the warning."""
    fallback_completion: int = 0
    """Rows whose completion is the target's text plus end-of-sequence: the template renders the earlier turns
    otherwise once a reply follows (Mistral v3 moves the system message)."""
    conversation_completion: int = 0
    """Rows rendered as the whole conversation, the prompt ending at the assistant's header: the template's generation
    prompt is not how it starts the turn (QwQ's ends ``<think>\\n``), so the served prompt has more after the header."""
    calls_as_text: int = 0
    """Rows whose tool calls the template's rendering lost: they are trained as ``<tool_call>`` text."""
    tokens: int = 0
    loss_tokens: int = 0
    dropped_ids: list[str] = field(default_factory=list)
    middle_dropped: int = 0
    """Rows that lost older turns (system message, tools, task and latest turns kept)."""
    compact_tools: int = 0
    """Rows whose tool schemas were listed compactly to fit."""
    left_cut: int = 0
    """Rows cut from the left even so: they lost the system message, the tools or the task."""
    shortened: int = 0
    """Rows with a tool result or user message cut in its middle to fit (a marker says how much went)."""
    completion_cut: int = 0
    """IWM rows whose target (an observation) kept its head only, as the builder cuts, rather than being dropped."""
    cuts: list[dict[str, Any]] = field(default_factory=list)
    """Per fitted row: id, tokens before and after, messages dropped, compact tools, messages shortened and characters
    they lost, tokens cut from the left, characters cut from the completion."""

    def record_cut(
        self, row_id: str, fit: Fit | None, left_cut: int, *, completion_cut_chars: int = 0, prompt_tokens: int = 0, whole_tokens: int = 0
    ) -> None:
        """Count a row that did not fit whole: its prompt fitted (``fit``), its completion cut, or both; ``whole_tokens``:
        its prompt and completion before any cut (the ``max_length`` it needs)."""
        self.truncated += 1
        self.left_cut += left_cut > 0
        self.completion_cut += completion_cut_chars > 0
        if fit is not None:
            self.middle_dropped += fit.dropped_messages > 0
            self.compact_tools += fit.compact_tools
            self.shortened += fit.shortened_messages > 0
            described = fit.describe()
        else:
            described = Fit([], None, "", prompt_tokens, prompt_tokens).describe()
        # "tokens": the prompt as trained, after the cut from the left (it was the fitted prompt's, before that cut)
        described["tokens"] -= left_cut
        self.cuts.append(
            {
                "id": row_id,
                **described,
                "left_cut_tokens": left_cut,
                "completion_cut_chars": completion_cut_chars,
                "whole_tokens": whole_tokens,
            }
        )

    @property
    def lost_essentials_share(self) -> float:
        """Share of kept rows that lost more than older turns: compact tool listings, a tool result or user message
        shortened in its middle, a target cut to its head, or a cut from the left."""
        return self.lost_more_than_older_turns / self.examples if self.examples else 0.0

    @property
    def lost_more_than_older_turns(self) -> int:
        """Kept rows that lost more than older turns (see :attr:`lost_essentials_share`)."""
        return sum(1 for cut in self.cuts if _lost_more_than_older_turns(cut))

    @property
    def older_turns_only(self) -> int:
        """Kept rows that lost older turns and nothing else (system message, full tool schemas, every message and the
        whole completion kept)."""
        return sum(1 for cut in self.cuts if cut["dropped_messages"] and not _lost_more_than_older_turns(cut))

    def fallback_note(self, kind: str) -> str | None:
        """What the rendering fallbacks did to ``kind``'s rows, for a warning; ``None`` when no row needed one."""
        parts = []
        if self.conversation_completion:
            parts.append(
                f"{self.conversation_completion} are rendered as the whole conversation, their loss on the assistant's turn "
                "after its header (its text, tool calls and end of turn): the template's generation prompt is not how it "
                "starts that turn (QwQ's adds '<think>\\n'), so the served prompt goes on past where these prompts end"
            )
        if self.fallback_completion:
            parts.append(
                f"{self.fallback_completion} have the target's text plus the end-of-sequence token as completion: the "
                "template renders the earlier turns otherwise once a reply follows (Mistral v3 moves the system message)"
            )
        if self.calls_as_text:
            parts.append(
                f"{self.calls_as_text} lost their tool calls in the template's rendering and train them as "
                "<tool_call>{...}</tool_call> text instead, which a server parsing the template's own call format may not read"
            )
        if not parts:
            return None
        return (
            f"Of the {self.rows} {kind.upper()} rows, " + "; ".join(parts) + f". datasets.{kind}.render in the adapter's "
            "manifest counts them. To train on exactly the prompts a server renders, give the tokenizer a chat template that "
            "renders the earlier turns and the assistant's header as its generation prompt does (tokenizer.chat_template = "
            "...; tokenizer.save_pretrained(DIR) writes chat_template.jinja)."
        )

    def describe(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("dropped_ids", "cuts")}
        data["dropped_ids"] = self.dropped_ids[:20]
        return data


def _lost_more_than_older_turns(cut: dict[str, Any]) -> bool:
    """Whether a row's cut (:attr:`RenderStats.cuts`) lost more than older turns."""
    return bool(cut["compact_tools"] or cut["shortened_messages"] or cut["completion_cut_chars"] or cut["left_cut_tokens"])


def render_texts(tokenizer: Any, row: ChatRow, support: TemplateSupport) -> RenderedPair:
    """``(prompt_text, completion_text, fallback)`` for one row (see ``render_pair``)."""
    try:
        return render_pair(tokenizer, row.prompt, row.completion, row.tools or None, support)
    except ChatTemplateError as exc:
        raise _render_error(row, exc) from exc


def _render_error(row: ChatRow, exc: ChatTemplateError) -> TrainDataError:
    """The template's refusal (its message names the roles, the template's own error and the fix) for ``row``."""
    return TrainDataError(f"The base model's chat template cannot render row {row.id!r} ({row.kind}). {exc}")


def tokenize_rows(
    tokenizer: Any,
    rows: list[ChatRow],
    max_length: int,
    support: TemplateSupport,
    *,
    progress: str | None = None,
    on_row: Callable[[int], None] | None = None,
) -> tuple[list[Example], RenderStats]:
    """Tokenize rows with :func:`ee_middleware.models.truncation.tokenize_pair`: a prompt that does not
    fit beside its completion is fitted by the one truncation policy (system message, tools, task,
    latest turns and the completion kept; oldest turns dropped; compact tool listings; an oversized tool result
    or user message shortened in its middle; a left cut only as the last resort); an IWM target too long to leave
    the prompt room keeps its head (``tokenize_pair``'s ``cut_completion``); other rows whose completion alone is too
    long are dropped. ``stats.cuts`` says what each fitted row lost. ``progress``: a label for a progress bar on stderr
    (rendering and fitting a long BFCL row takes a few ms on a CPU core, each text piece tokenized once: see
    :mod:`~ee_middleware.trainers.training.tokens`; about 0.1 s before: minutes before the first step of a large build),
    ``None`` for none. ``on_row(done)``: called after each row, ``done`` the rows tokenized so far (a caller's own bar)."""
    stats = RenderStats(rows=len(rows))
    examples = []
    # fitting a long state tokenizes texts that share most of their pieces a dozen times: each piece once (same ids)
    tokenizer = tokenizer if isinstance(tokenizer, CachedTokenizer) else CachedTokenizer(tokenizer)
    control = control_tokens(tokenizer)
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc=progress, unit="row")
    try:
        for done, row in enumerate(rows, 1):
            if bar is not None:
                bar.update()
            if control is None or not _holds_control_token(row, control, stats):
                _tokenize_row(tokenizer, row, max_length, support, stats, examples)
            if on_row is not None:
                on_row(done)
    finally:
        if bar is not None:
            bar.close()
    stats.examples = len(examples)
    return examples, stats


def control_tokens(tokenizer: Any) -> re.Pattern[str] | None:
    """A pattern finding the tokenizer's control tokens (its special tokens: beginning and end of sequence, turn markers
    such as ``<|im_start|>``, ``<|eot_id|>``) in a text; ``None`` for a tokenizer without any."""
    found = {str(token) for token in getattr(tokenizer, "all_special_tokens", None) or ()}
    found |= {text for text, token in (_added_tokens(tokenizer) or {}).items() if getattr(token, "special", False)}
    found = {token for token in found if token.strip()}
    return _splitter(sorted(found)) if found else None


def _holds_control_token(row: ChatRow, control: re.Pattern[str], stats: RenderStats) -> bool:
    """Whether ``row``'s messages, calls or tool schemas hold a control token in their text (counted, and its id kept
    among the dropped, in ``stats``)."""
    text = json.dumps([row.prompt, row.completion, row.tools], ensure_ascii=False)
    found = control.search(text)
    if found is None:
        return False
    stats.dropped_control_tokens += 1
    stats.dropped_ids.append(row.id)
    if found[0] not in stats.control_token_examples and len(stats.control_token_examples) < 5:
        stats.control_token_examples.append(found[0])
    return True


def _tokenize_row(
    tokenizer: Any, row: ChatRow, max_length: int, support: TemplateSupport, stats: RenderStats, examples: list[Example]
) -> None:
    """:func:`tokenize_rows` for one row: its example appended to ``examples``, or the reason it was dropped counted."""
    try:
        pair = tokenize_pair(
            tokenizer,
            row.prompt,
            row.completion,
            row.tools or None,
            support,
            max_length,
            cut_completion=row.kind == "iwm",
            completion_is_head=row.completion_is_head,
        )
    except ChatTemplateError as exc:
        raise _render_error(row, exc) from exc
    stats.fallback_completion += FALLBACK_CONTENT in pair.fallback
    stats.conversation_completion += FALLBACK_CONVERSATION in pair.fallback
    stats.calls_as_text += FALLBACK_CALLS_AS_TEXT in pair.fallback
    learned = len(pair.completion_ids) - pair.unlearned_tail
    if learned <= 0 or len(pair.completion_ids) >= max_length:
        stats.dropped_empty += learned <= 0
        stats.dropped_too_long += learned > 0
        if learned > 0:
            stats.longest_dropped_completion = max(stats.longest_dropped_completion, len(pair.completion_ids))
        stats.dropped_ids.append(row.id)
        return
    if pair.fit is not None or pair.completion_cut_chars:
        stats.record_cut(
            row.id,
            pair.fit,
            pair.left_cut,
            completion_cut_chars=pair.completion_cut_chars,
            prompt_tokens=len(pair.prompt_ids),
            whole_tokens=pair.whole_tokens,
        )
    # a target cut from a longer text: its end of turn (and the last text token) carry no loss (unlearned_tail)
    labels = [-100] * len(pair.prompt_ids) + pair.completion_ids[:learned] + [-100] * pair.unlearned_tail
    example = Example(row.id, pair.ids, labels)
    examples.append(example)
    stats.tokens += len(example.input_ids)
    stats.loss_tokens += learned
