"""IL: imitation examples, one per expert turn: the state -> the expert's tool call(s) (or answer)."""

from __future__ import annotations

import polars as pl

from ee_middleware.trainers.datasets.rows import answer_message, calls_message, conform, example_id, expert_turns, json_list, offered_tools
from ee_middleware.trainers.datasets.source import DatasetSource, taught_steps

MALFORMED_CALL = pl.col("arguments_json").str.starts_with('{"_raw":')
"""An expert call whose arguments were not JSON (kept as their text under ``_raw``: a model's malformed call)."""


def malformed_calls(source: DatasetSource) -> int:
    """How many expert steps :func:`build_il` leaves out because their call's arguments were not JSON."""
    return source.steps.filter((pl.col("action_kind") == "tool_call") & MALFORMED_CALL).height


def build_il(source: DatasetSource) -> pl.DataFrame:
    """One row per expert turn of the approved trajectories (vectorised; no Python loop per row): the state ->
    the expert's tool call, or its answer. Parallel tool calls (one model response, recorded as steps sharing a
    ``decision_index`` and their state) are one row whose target makes all of them, in order: the turn the
    expert made. The row's ``step_index`` is its first step's. A reasoning model's reasoning before the turn
    (``Action.reasoning``) is the target's ``reasoning_content``, for the chat template to render as it does when
    serving (Qwen3's inside ``<think>``); a target without reasoning has no such key. A row's ``tools`` are those
    offered at its turn (``Step.tools``: a middleware's per-call selection, a tool added at a later turn), else the
    trajectory's.

    A step whose call's arguments were not JSON (the model wrote a malformed call, recorded with its text under
    ``_raw``) is left out: imitating it would teach the malformed call (see :func:`malformed_calls`). So is a turn
    awaiting a human review (see :func:`~ee_middleware.trainers.datasets.source.taught_steps`): the reviewer may have
    rejected or changed its calls; the resumed run's trajectory teaches them as decided."""
    is_call = pl.col("action_kind") == "tool_call"
    steps = taught_steps(source)[0].filter(~(is_call & MALFORMED_CALL).fill_null(False))
    steps = steps.join(source.trajectories, left_on="trajectory_id", right_on="id", how="inner", maintain_order="left")
    steps = offered_tools(expert_turns(steps), "tools_json")  # the tools offered at the turn (Step.tools), not the run's
    # the reasoning the expert wrote before its turn (its parallel calls share it); stores older than schema 1.4 have none
    reasoning = pl.col("reasoning") if "reasoning" in steps.columns and steps["reasoning"].null_count() < steps.height else None
    completion = pl.when(is_call).then(calls_message(pl.col("_calls"), pl.col("content"), reasoning))
    completion = completion.otherwise(answer_message(pl.col("content"), reasoning))
    frame = steps.select(
        example_id(pl.lit("il"), pl.col("trajectory_id"), pl.col("index")).alias("id"),
        pl.lit("il").alias("kind"),
        pl.col("state_json").alias("prompt"),
        json_list(completion).alias("completion"),
        pl.col("tools_json").fill_null("[]").alias("tools"),
        pl.col("trajectory_id"),
        pl.col("index").alias("step_index"),
        pl.lit("expert").alias("proposer"),
        pl.lit(source.source_hash).alias("source_hash"),
    )
    return conform(frame)
