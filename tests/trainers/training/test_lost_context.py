"""What counts as losing more than older turns: every way a row's state or target is cut but dropping whole older turns,
in the share ``ee train`` warns about and in ``ee datasets show``'s line."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("transformers")

from ee_middleware.cli.datasets_cmds import budget_line
from ee_middleware.models.truncation import Fit
from ee_middleware.trainers.training import ContextBudgetWarning, TrainConfig
from ee_middleware.trainers.training.api import _warn_if_context_lost
from ee_middleware.trainers.training.render import RenderStats


def _fit(**changes: object) -> Fit:
    return Fit([], None, "", 100, 400, **changes)  # type: ignore[arg-type]


def _stats() -> RenderStats:
    stats = RenderStats(rows=6, examples=6)
    stats.record_cut("older-only", _fit(dropped_messages=4), 0)
    stats.record_cut("older-and-compact", _fit(dropped_messages=4, compact_tools=True), 0)
    stats.record_cut("task-shortened", _fit(shortened_messages=1, omitted_chars=24_716), 0)
    stats.record_cut("target-cut", _fit(), 0, completion_cut_chars=300)
    stats.record_cut("left-cut", _fit(dropped_messages=2, compact_tools=True), 12)
    return stats


def test_a_shortened_message_or_a_cut_target_is_more_than_older_turns() -> None:
    stats = _stats()
    assert stats.older_turns_only == 1 and stats.middle_dropped == 3
    assert stats.lost_more_than_older_turns == 4 and stats.lost_essentials_share == pytest.approx(4 / 6)


def test_rows_whose_task_is_shortened_are_warned_about_at_train(tmp_path: object) -> None:
    stats = RenderStats(rows=6, examples=6)
    for i in range(6):  # a 25,000-character task in each row, cut in its middle: nothing else lost
        stats.record_cut(f"r{i}", _fit(shortened_messages=1, omitted_chars=24_716), 0)
    config = TrainConfig.model_construct(max_length=256, max_lost_context_share=0.1)
    with pytest.warns(
        ContextBudgetWarning,
        match=r"100% of the 6 IL rows trained on lose more than older turns at max_length=256: .*6 have a tool "
        r"result or user message shortened in its middle",
    ):
        _warn_if_context_lost("il", stats, config)
    only_older = RenderStats(rows=6, examples=6)
    for i in range(6):
        only_older.record_cut(f"r{i}", _fit(dropped_messages=3), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_context_lost("il", only_older, config)  # dropping older turns is the policy working: no warning


def test_datasets_show_says_older_turns_only_of_the_rows_that_lost_nothing_else() -> None:
    stats = _stats()
    budget = {
        "max_length": 256,
        "rows": 6,
        "over_budget": 5,
        "over_budget_share": 5 / 6,
        "older_turns_dropped_only": stats.older_turns_only,
        "lost_more_than_older_turns": stats.lost_more_than_older_turns,
        "lost_more_than_older_turns_share": stats.lost_essentials_share,
        "compact_tools": stats.compact_tools,
        "messages_shortened": stats.shortened,
        "completion_cut": stats.completion_cut,
        "cut_from_left": stats.left_cut,
        "dropped_completion_too_long": 0,
    }
    line = budget_line(budget)
    assert "5 of 6 rows over budget (83%); 1 lose older turns only; 4 lose more (67% of the rows kept)" in line, line
    assert "1 have a tool result or user message shortened in its middle, 1 keep only the head of their target" in line, line
