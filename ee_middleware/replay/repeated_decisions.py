"""Which steps a build teaches from another trajectory: a decision two recorded runs both hold.

A graph wrapped with ``record_experience`` and used as a node of another recorded graph is a subgraph: its steps are the
outer run's too, and both recorders store them (the same state and the same model call, its tool call's id included,
in two trajectories of one trace). Every builder teaches such a decision once, from the trajectory that started first
(the outer run, which holds the node's steps and its own), and leaves the other copy out with the rollouts branched
from it: the dataset builds (IL, IWM, SR), the experience model's rows, its replay buffer and ``ee experience eval``.
One rule, in the light core, read by all of them (as :mod:`~ee_middleware.replay.paused_turns` is)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import polars as pl

from ee_middleware.records import Trajectory

DECISION_COLUMNS = ("state_json", "action_kind", "tool_call_id", "tool_name", "arguments_json", "content")
"""The step columns that make a decision (the state it was made in and the action, its tool call's id included)."""

REPEATS_SCHEMA = {"trajectory_id": pl.String, "index": pl.Int64}
"""The frame of :func:`repeated_decisions`."""


def decision_key() -> pl.Expr:
    """A step's decision (:data:`DECISION_COLUMNS`) as one hash, ``decision_key``."""
    return pl.struct(*DECISION_COLUMNS).hash().alias("decision_key")


def shared_trace_trajectories(trajectories: pl.DataFrame) -> pl.Series:
    """The ids of ``trajectories`` (``id``, ``trace_id``) that share their trace with another of them: those that may hold
    one decision twice; none where no ``trace_id`` is kept."""
    if "trace_id" not in trajectories.columns:
        return pl.Series("id", [], dtype=pl.String)
    traced = trajectories.filter(pl.col("trace_id").is_not_null())
    return traced.filter(pl.len().over("trace_id") > 1)["id"]


def repeated_decisions(trajectories: pl.DataFrame, steps: pl.DataFrame) -> pl.DataFrame:
    """``trajectory_id`` and ``index`` of the ``steps`` (with a ``decision_key``, :func:`decision_key`) whose decision an
    earlier trajectory of the same trace (``trajectories``: ``id``, ``trace_id``, ``started_at``) holds too; the
    decision is kept in the trajectory that started first, ties by id (see the module docstring)."""
    traced = trajectories.select(pl.col("id").alias("trajectory_id"), "trace_id", "started_at").filter(pl.col("trace_id").is_not_null())
    keyed = steps.select("trajectory_id", "index", "decision_key").join(traced, on="trajectory_id", how="inner")
    if keyed.is_empty():
        return pl.DataFrame(schema=REPEATS_SCHEMA)
    keyed = keyed.sort("started_at", "trajectory_id", "index", nulls_last=True)
    keeper = pl.col("trajectory_id").first().over("trace_id", "decision_key")
    return keyed.filter(pl.col("trajectory_id") != keeper).select("trajectory_id", pl.col("index").cast(pl.Int64))


def repeated_steps(trajectories: Iterable[Trajectory]) -> set[tuple[str, int]]:
    """:func:`repeated_decisions` of ``trajectories`` (records, as the experience model's builders read them), as
    ``(trajectory_id, step index)`` pairs."""
    trajectories = list(trajectories)
    runs = pl.DataFrame(
        {
            "id": [t.id for t in trajectories],
            "trace_id": [t.trace_id for t in trajectories],
            "started_at": [t.started_at for t in trajectories],
        },
        schema={"id": pl.String, "trace_id": pl.String, "started_at": pl.Datetime("us", "UTC")},
    )
    shared = set(shared_trace_trajectories(runs).to_list())
    if not shared:
        return set()
    rows: dict[str, list[object]] = {"trajectory_id": [], "index": [], **{c: [] for c in DECISION_COLUMNS}}
    for trajectory in trajectories:
        if trajectory.id not in shared:
            continue
        for step in trajectory.steps:
            call = step.action.tool_call
            values = (
                json.dumps(step.state, sort_keys=True, default=str),
                step.action.kind,
                call.id if call else None,
                call.name if call else None,
                json.dumps(call.arguments, sort_keys=True, default=str) if call else None,
                step.action.content,
            )
            rows["trajectory_id"].append(trajectory.id)
            rows["index"].append(step.index)
            for column, value in zip(DECISION_COLUMNS, values, strict=True):
                rows[column].append(value)
    steps = pl.DataFrame(rows, schema={"trajectory_id": pl.String, "index": pl.Int64, **{c: pl.String for c in DECISION_COLUMNS}})
    return set(repeated_decisions(runs, steps.with_columns(decision_key())).iter_rows())
