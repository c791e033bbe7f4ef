"""Turning chat rows into token ids and labels with the base model's own chat template.

The text comes from :func:`ee_middleware.models.chat_template.render_pair`, the rendering the local
generator and the servers share (so a model is served the prompts it was trained on). Labels are
``-100`` on every prompt token: the loss is on completion tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ee_middleware.errors import ChatTemplateError
from ee_middleware.models.chat_template import TemplateSupport, render_pair
from ee_middleware.trainers.training.data import ChatRow
from ee_middleware.trainers.training.errors import TrainDataError


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


def render_texts(tokenizer: Any, row: ChatRow, support: TemplateSupport) -> tuple[str, str, bool]:
    """``(prompt_text, completion_text, used_fallback)`` for one row (see ``render_pair``)."""
    try:
        return render_pair(tokenizer, row.prompt, row.completion, row.tools or None, support)
    except ChatTemplateError as exc:
        cause = exc.__cause__ or exc
        raise TrainDataError(
            f"The base model's chat template cannot render row {row.id!r} ({row.kind}): {type(cause).__name__}: {cause}. "
            "The dataset may have been built for another model's message shapes; rebuild it, or pick a base model "
            "whose template accepts these roles."
        ) from exc


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
