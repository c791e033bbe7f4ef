"""IL: imitation examples, one per expert turn: the state -> the expert's tool call(s) (or answer)."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from ee_middleware.replay.malformed import malformed_arguments_json, unoffered_by_the_graph
from ee_middleware.replay.paused_turns import turn_key
from ee_middleware.trainers.datasets.rows import answer_message, calls_message, conform, example_id, expert_turns, json_list, offered_tools
from ee_middleware.trainers.datasets.source import DatasetSource, taught_steps

_MAYBE_MALFORMED = (pl.col("action_kind") == "tool_call") & pl.col("arguments_json").str.starts_with('{"_raw":')
"""The expert calls that may be malformed (their arguments' JSON begins with ``_raw``): the few :func:`malformed_steps`
looks at one by one."""


def malformed_steps(steps: pl.DataFrame, trajectories: pl.DataFrame) -> pl.Series:
    """Which of ``steps`` (a boolean per row) are expert calls the model wrote malformed, by the rule replay reads
    (:func:`~ee_middleware.replay.malformed.malformed_by_the_model`: the call's only argument is ``_raw``, as capture
    stores every entry of LangChain's ``invalid_tool_calls`` and arguments that were no JSON object, unless the tool's
    schema in ``trajectories``' ``tools_json`` declares a ``_raw`` parameter): replay never executes them, and IL never
    teaches them."""
    if "tool_call_malformed" not in steps.columns:  # (a frame built without it: no call was marked)
        steps = steps.with_columns(pl.lit(None, dtype=pl.Boolean).alias("tool_call_malformed"))
    maybe = steps.select(_MAYBE_MALFORMED.fill_null(False).alias("_maybe"))["_maybe"]
    if not maybe.any():
        return maybe
    rows = (
        steps.with_row_index("_row")
        .filter(maybe)
        .select("_row", "trajectory_id", "tool_name", "arguments_json", "tool_call_malformed")
        .join(trajectories.select("id", "tools_json"), left_on="trajectory_id", right_on="id", how="left", maintain_order="left")
    )
    malformed = {
        row
        for row, tools_json, name, arguments, marked in rows.select(
            "_row", "tools_json", "tool_name", "arguments_json", "tool_call_malformed"
        ).iter_rows()
        if malformed_arguments_json(tools_json, name, arguments, marked)
    }
    return pl.Series("malformed", [i in malformed for i in range(steps.height)], dtype=pl.Boolean)


def unoffered_steps(steps: pl.DataFrame, trajectories: pl.DataFrame) -> pl.Series:
    """Which of ``steps`` (a boolean per row) are expert calls of a tool the run was never offered that the graph answered
    with an error itself (a name the model made up), by the rule replay reads
    (:func:`~ee_middleware.replay.malformed.unoffered_by_the_graph`, given ``trajectories``' ``tools_json``): replay never
    executes them, and IL never teaches them."""
    if steps.is_empty() or "tool_name" not in steps.columns:
        return pl.Series("unoffered", [False] * steps.height, dtype=pl.Boolean)
    is_error = pl.col("observation_is_error") if "observation_is_error" in steps.columns else pl.lit(None, dtype=pl.Boolean)
    ran = pl.col("latency_ms").is_not_null() if "latency_ms" in steps.columns else pl.lit(False)
    rows = (
        steps.with_row_index("_row")
        .filter(pl.col("tool_name").is_not_null() & is_error.fill_null(False) & ~ran)  # (the rule's cheap parts first)
        .select("_row", "trajectory_id", "tool_name", is_error.alias("_error"))
        .join(trajectories.select("id", "tools_json"), left_on="trajectory_id", right_on="id", how="left", maintain_order="left")
    )
    tools: dict[str | None, list[Any]] = {}  # a trajectory's tools_json -> its schemas (decoded once each)
    unoffered = set()
    for row, tools_json, name, error in rows.select("_row", "tools_json", "tool_name", "_error").iter_rows():
        if tools_json not in tools:
            tools[tools_json] = _schemas(tools_json)
        if unoffered_by_the_graph(tools[tools_json], name, error):
            unoffered.add(row)
    return pl.Series("unoffered", [i in unoffered for i in range(steps.height)], dtype=pl.Boolean)


def _schemas(tools_json: str | None) -> list[Any]:
    """A trajectory's ``tools_json`` decoded (none where it is unreadable: it tells nothing)."""
    try:
        decoded = json.loads(tools_json) if tools_json else []
    except (ValueError, RecursionError):
        return []
    return [t for t in decoded if isinstance(t, dict)] if isinstance(decoded, list) else []


def unoffered_calls(source: DatasetSource) -> int:
    """How many expert steps :func:`build_il` leaves out as calls of tools never offered (:func:`unoffered_steps`; a
    malformed one is counted as malformed alone)."""
    steps = source.steps
    return int((unoffered_steps(steps, source.trajectories) & ~malformed_steps(steps, source.trajectories)).sum())


EMPTY_STATE = r"^\s*\[\s*\]\s*$"
"""A step's ``state_json`` that holds no message: the model was called with nothing."""


def unprompted_steps(steps: pl.DataFrame) -> pl.Series:
    """Which of ``steps`` (a boolean per row) were decided with no message at all in the model's input (an agent invoked
    with an empty conversation and no system prompt; a real model refuses such a request, a scripted one answers): an IL
    row of one has no prompt, which training refuses (``prompt has no messages``), so :func:`build_il` leaves it out."""
    if steps.is_empty() or "state_json" not in steps.columns:
        return pl.Series("unprompted", [False] * steps.height, dtype=pl.Boolean)
    return steps.select(pl.col("state_json").fill_null("[]").str.contains(EMPTY_STATE).alias("unprompted")).to_series()


def unprompted_turns(source: DatasetSource) -> int:
    """How many expert turns :func:`build_il` leaves out as decided with no message (:func:`unprompted_steps`; parallel
    calls of one turn count once), of those its other rules kept (a turn left out as awaiting review, malformed or
    unoffered is counted there alone)."""
    steps = _kept_steps(source)
    if steps.is_empty() or "state_json" not in steps.columns:
        return 0
    marked = steps.filter(unprompted_steps(steps))
    key = ["trajectory_id", "decision_index"] if "decision_index" in marked.columns else ["trajectory_id", "index"]
    return marked.select(key).unique().height


def malformed_calls(source: DatasetSource) -> int:
    """How many expert steps :func:`build_il` leaves out as calls the model wrote malformed (:func:`malformed_steps`)."""
    return int(malformed_steps(source.steps, source.trajectories).sum())


def _turn_text_on_every_call(steps: pl.DataFrame) -> pl.DataFrame:
    """``steps`` with the text the model wrote beside a turn's calls, and its reasoning, on each call of the turn: capture
    keeps them with the first call alone, which a turn loses where that call is not taught (malformed, a made-up tool)."""
    shared = [c for c in ("content", "reasoning") if c in steps.columns]
    if not shared or steps.is_empty():
        return steps
    turn = [pl.col("trajectory_id"), turn_key()]
    is_call = pl.col("action_kind") == "tool_call"
    return steps.with_columns(
        pl.when(is_call).then(pl.col(c).drop_nulls().first().over(turn)).otherwise(pl.col(c)).alias(c) for c in shared
    )


def _kept_steps(source: DatasetSource) -> pl.DataFrame:
    """The expert steps IL teaches but for the unprompted rule: the taught ones (none awaiting review), with their turn's
    text on every call, less the malformed calls and the calls of tools never offered."""
    steps = _turn_text_on_every_call(taught_steps(source)[0])
    steps = steps.filter(~malformed_steps(steps, source.trajectories))
    return steps.filter(~unoffered_steps(steps, source.trajectories))


def build_il(source: DatasetSource) -> pl.DataFrame:
    """One row per expert turn of the approved trajectories (vectorised; no Python loop per row): the state ->
    the expert's tool call, or its answer. Parallel tool calls (one model response, recorded as steps sharing a
    ``decision_index`` and their state) are one row whose target makes all of them, in order: the turn the
    expert made. The row's ``step_index`` is its first step's. A reasoning model's reasoning before the turn
    (``Action.reasoning``) is the target's ``reasoning_content``, for the chat template to render as it does when
    serving (Qwen3's inside ``<think>``); a target without reasoning has no such key. A row's ``tools`` are those
    offered at its turn (``Step.tools``: a middleware's per-call selection, a tool added at a later turn), else the
    trajectory's.

    A step whose call the model wrote malformed (recorded with its text under ``_raw``: every entry of LangChain's
    ``invalid_tool_calls``, which the graph refused, and arguments that were no JSON object) is left out: imitating it
    would teach the malformed call (see :func:`malformed_steps`; replay leaves the same calls unexecuted). So is a turn
    awaiting a human review (see :func:`~ee_middleware.trainers.datasets.source.taught_steps`): the reviewer may have
    rejected or changed its calls; the resumed run's trajectory teaches them as decided. So is a call of a tool the run
    was never offered that the graph answered with an error itself (a name the model made up: :func:`unoffered_steps`).
    So is a turn decided with no message in the model's input (:func:`unprompted_steps`): its row would have no prompt."""
    is_call = pl.col("action_kind") == "tool_call"
    steps = _kept_steps(source)
    steps = steps.filter(~unprompted_steps(steps))
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
