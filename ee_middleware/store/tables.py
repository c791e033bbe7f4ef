"""Parquet table schemas of the store and conversion between records and rows.

Scalar fields get their own columns so that they can be filtered without decoding anything;
nested data (messages, tool schemas, states, arguments) is stored as JSON text columns, which keeps
the schema stable whatever shapes the messages take.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import polars as pl
from pydantic_core import to_json

from ee_middleware.messages import dumps
from ee_middleware.records import (
    Action,
    Approval,
    ApprovalEvent,
    Observation,
    ProposerInfo,
    ReplayRecord,
    Rollout,
    Step,
    SyntheticSource,
    ToolCall,
    Trajectory,
)
from ee_middleware.store.int64 import check_replay_record, check_rollout, check_trajectory
from ee_middleware.store.rows import Decoded as Decoded
from ee_middleware.store.rows import _loads as _loads
from ee_middleware.store.rows import keep_step as keep_step
from ee_middleware.store.rows import step_from_row as step_from_row
from ee_middleware.store.rows import trajectory_from_rows as trajectory_from_rows
from ee_middleware.store.spool import json_may_differ

UTC_TIME = pl.Datetime("us", "UTC")

TRAJECTORY_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "schema_version": pl.String(),
    "app": pl.String(),
    "app_version": pl.String(),
    "thread_id": pl.String(),
    "task": pl.String(),
    "model": pl.String(),
    "status": pl.String(),
    "error": pl.String(),
    "final_answer": pl.String(),
    "started_at": UTC_TIME,
    "ended_at": UTC_TIME,
    "num_steps": pl.Int64(),
    "source": pl.String(),
    "trace_id": pl.String(),
    "recorded_approval": pl.String(),
    "recorded_approval_by": pl.String(),
    "recorded_approval_at": UTC_TIME,
    "recorded_approval_reason": pl.String(),
    "tools_json": pl.String(),
    "messages_json": pl.String(),
    "environment_json": pl.String(),
}

STEP_SCHEMA: dict[str, pl.DataType] = {
    "trajectory_id": pl.String(),
    "index": pl.Int64(),
    "decision_index": pl.Int64(),
    "state_json": pl.String(),
    "action_kind": pl.String(),
    "tool_call_id": pl.String(),
    "tool_name": pl.String(),
    "arguments_json": pl.String(),
    "content": pl.String(),
    "observation": pl.String(),
    "observation_is_error": pl.Boolean(),
    "observation_truncated_chars": pl.Int64(),
    "latency_ms": pl.Float64(),
    "model_latency_ms": pl.Float64(),
    "reasoning": pl.String(),
    "offered_tools_json": pl.String(),
    "tool_call_malformed": pl.Boolean(),
}
"""``reasoning`` (schema 1.4): the reasoning the model wrote before the action (``Action.reasoning``); null for a model
that wrote none and in older parts. ``offered_tools_json`` (schema 1.4): the names of the tools offered at the step
(``Step.tools``, a JSON list); null where they were all of the trajectory's (``tools_json``) and in older parts.
``tool_call_malformed`` (schema 1.6): whether capture knew the model wrote the call malformed (``ToolCall.malformed``);
null where the arguments say it (see :mod:`~ee_middleware.replay.malformed`) and in older parts."""

APPROVAL_SCHEMA: dict[str, pl.DataType] = {
    "trajectory_id": pl.String(),
    "status": pl.String(),
    "by": pl.String(),
    "at": UTC_TIME,
    "reason": pl.String(),
    "overrides_status": pl.String(),
    "overrides_by": pl.String(),
    "overrides_at": UTC_TIME,
    "overrides_reason": pl.String(),
}
"""One row per decision; ``overrides_*`` is the opposite decision it overturned (null otherwise)."""


ROLLOUT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "schema_version": pl.String(),
    "replay_id": pl.String(),
    "trajectory_id": pl.String(),
    "step_index": pl.Int64(),
    "branch_index": pl.Int64(),
    "tool_call_id": pl.String(),
    "tool_name": pl.String(),
    "arguments_json": pl.String(),
    "proposer_policy": pl.String(),
    "proposer_model": pl.String(),
    "proposer_json": pl.String(),
    "observation": pl.String(),
    "observation_truncated_chars": pl.Int64(),
    "is_error": pl.Boolean(),
    "synthetic": pl.Boolean(),
    "sandbox": pl.String(),
    "duration_ms": pl.Float64(),
    "created_at": UTC_TIME,
    "unrestored_json": pl.String(),
    "synthetic_model": pl.String(),
    "synthetic_source_json": pl.String(),
    "sandbox_failure": pl.String(),
}
"""``synthetic_*`` (schema 1.2): the experience model that wrote a synthetic observation; null in older parts,
whose rollouts carry it in ``proposer_json`` (read back into ``Rollout.synthetic_source``).
``sandbox_failure`` (schema 1.3): ``timeout``, ``crash`` or ``memory`` when the observation is the sandbox's own
failure, not the tool's answer (``Observation.sandbox_failure``); null for a real answer and in older parts."""

REPLAY_SCHEMA: dict[str, pl.DataType] = {
    "replay_id": pl.String(),
    "schema_version": pl.String(),
    "trajectory_id": pl.String(),
    "status": pl.String(),
    "reason": pl.String(),
    "policy": pl.String(),
    "sandbox": pl.String(),
    "k": pl.Int64(),
    "seed": pl.Int64(),
    "states": pl.Int64(),
    "branches": pl.Int64(),
    "errors": pl.Int64(),
    "rejected": pl.Int64(),
    "refused": pl.Int64(),
    "fidelity_mismatches": pl.Int64(),
    "details_json": pl.String(),
    "unrestorable": pl.Int64(),
    "duration_s": pl.Float64(),
    "finished_at": UTC_TIME,
}


TABLES: dict[str, dict[str, pl.DataType]] = {
    "trajectories": TRAJECTORY_SCHEMA,
    "steps": STEP_SCHEMA,
    "approvals": APPROVAL_SCHEMA,
    "rollouts": ROLLOUT_SCHEMA,
    "replays": REPLAY_SCHEMA,
}
"""The store's tables and their schemas."""


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` with its zone, UTC where it names none (the store keeps times in UTC); ``None`` as it is."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def json_text(value: Any) -> str:
    """``dumps(value)`` for a value decoded from JSON (dicts, lists, strings, numbers, booleans, ``None``), byte for byte,
    written by pydantic's encoder where that is provably the same (about a third of the CPU).

    Both write the same keys in the same order with the same separators and escapes, UTF-8 unescaped; they spell some
    floats differently (see :func:`~ee_middleware.store.spool.json_may_differ`), and ``dumps`` writes ``NaN`` and
    infinities as strings: text with any of those (even inside a string), or a value pydantic cannot encode, is written by
    ``dumps``. Objects that are not JSON values are not for this function: ``dumps`` writes them its own way."""
    try:
        data = to_json(value)
    except Exception:  # noqa: BLE001 - a lone surrogate, say: dumps cleans it
        return dumps(value)
    if json_may_differ(data) or b"NaN" in data or b"Infinity" in data:
        return dumps(value)
    return data.decode("utf-8")


def trajectory_row(t: Trajectory, encode: Callable[[Any], Any] = dumps) -> dict[str, Any]:
    """``t`` as a row (without its steps); ``encode`` writes its JSON columns (:func:`json_text` for a decoded record).
    Raises :class:`~ee_middleware.errors.RecordError` when one of its steps has an integer the steps table cannot hold (one
    an older version stored: writes refuse it, see :mod:`~ee_middleware.store.int64`), so that a read skips that record
    alone, naming it, and compaction moves its segment to quarantine/."""
    check_trajectory(t)
    return {
        "id": t.id,
        "schema_version": t.schema_version,
        "app": t.app,
        "app_version": t.app_version,
        "thread_id": t.thread_id,
        "task": t.task,
        "model": t.model,
        "status": t.status,
        "error": t.error,
        "final_answer": t.final_answer,
        "started_at": as_utc(t.started_at),
        "ended_at": as_utc(t.ended_at),
        "num_steps": t.num_steps,
        "source": t.source,
        "trace_id": t.trace_id,
        "recorded_approval": t.approval.status,
        "recorded_approval_by": t.approval.by,
        "recorded_approval_at": as_utc(t.approval.at),
        "recorded_approval_reason": t.approval.reason,
        "tools_json": encode(t.tools),
        "messages_json": encode(t.messages),
        "environment_json": None if t.environment is None else encode(t.environment),
    }


def step_row(s: Step, encode: Callable[[Any], Any] = dumps) -> dict[str, Any]:
    """``s`` as a row; ``encode`` writes its JSON columns (:func:`json_text` for a decoded record; :class:`Decoded` keeps
    the values, for :func:`step_from_row`)."""
    call = s.action.tool_call
    obs = s.observation
    return {
        "trajectory_id": s.trajectory_id,
        "index": s.index,
        "decision_index": s.decision_index,
        "state_json": encode(s.state),
        "action_kind": s.action.kind,
        "tool_call_id": call.id if call else None,
        "tool_name": call.name if call else None,
        "arguments_json": encode(call.arguments) if call else None,
        "content": s.action.content,
        "observation": obs.content if obs else None,
        "observation_is_error": obs.is_error if obs else None,
        "observation_truncated_chars": obs.truncated_chars if obs else None,
        "latency_ms": s.latency_ms,
        "model_latency_ms": s.model_latency_ms,
        "reasoning": s.action.reasoning,
        "offered_tools_json": None if s.tools is None else encode(s.tools),
        "tool_call_malformed": call.malformed if call else None,
    }


def approval_row(e: ApprovalEvent) -> dict[str, Any]:
    old = e.overrides
    return {
        "trajectory_id": e.trajectory_id,
        "status": e.status,
        "by": e.by,
        "at": as_utc(e.at),
        "reason": e.reason,
        "overrides_status": old.status if old else None,
        "overrides_by": old.by if old else None,
        "overrides_at": as_utc(old.at) if old else None,
        "overrides_reason": old.reason if old else None,
    }


def approval_from_row(row: dict[str, Any]) -> ApprovalEvent:
    overrides = None
    if row.get("overrides_status") is not None:
        overrides = Approval(status=row["overrides_status"], by=row["overrides_by"], at=row["overrides_at"], reason=row["overrides_reason"])
    return ApprovalEvent(
        trajectory_id=row["trajectory_id"],
        status=row["status"],
        by=row["by"] or "",
        at=row["at"],
        reason=row["reason"],
        overrides=overrides,
    )


def rollout_row(r: Rollout) -> dict[str, Any]:
    """``r`` as a row; :class:`~ee_middleware.errors.RecordError` for an integer its columns cannot hold (as
    :func:`trajectory_row`)."""
    check_rollout(r)
    call = r.action.tool_call
    return {
        "id": r.id,
        "schema_version": r.schema_version,
        "replay_id": r.replay_id,
        "trajectory_id": r.trajectory_id,
        "step_index": r.step_index,
        "branch_index": r.branch_index,
        "tool_call_id": call.id if call else None,
        "tool_name": call.name if call else None,
        "arguments_json": dumps(call.arguments) if call else None,
        "proposer_policy": r.proposer.policy,
        "proposer_model": r.proposer.model,
        "proposer_json": dumps(r.proposer.model_dump(mode="json")),
        "observation": r.observation.content,
        "observation_truncated_chars": r.observation.truncated_chars,
        "is_error": r.is_error,
        "synthetic": r.synthetic,
        "sandbox": r.sandbox,
        "duration_ms": r.duration_ms,
        "created_at": as_utc(r.created_at),
        "unrestored_json": dumps(r.unrestored) if r.unrestored else None,
        "synthetic_model": r.synthetic_source.model if r.synthetic_source else None,
        "synthetic_source_json": dumps(r.synthetic_source.model_dump(mode="json")) if r.synthetic_source else None,
        "sandbox_failure": r.observation.sandbox_failure,
    }


def rollout_from_row(row: dict[str, Any]) -> Rollout:
    call = None
    if row["tool_name"] is not None:
        call = ToolCall(id=row["tool_call_id"] or "", name=row["tool_name"], arguments=json.loads(row["arguments_json"] or "{}"))
    return Rollout(
        schema_version=row["schema_version"],
        id=row["id"],
        replay_id=row["replay_id"],
        trajectory_id=row["trajectory_id"],
        step_index=row["step_index"],
        branch_index=row["branch_index"],
        action=Action(kind="tool_call", tool_call=call) if call else Action(kind="answer"),
        proposer=ProposerInfo.model_validate(json.loads(row["proposer_json"])),
        observation=Observation(
            content=row["observation"] or "",
            is_error=bool(row["is_error"]),
            truncated_chars=row["observation_truncated_chars"] or 0,
            sandbox_failure=row.get("sandbox_failure"),
        ),
        is_error=bool(row["is_error"]),
        synthetic=bool(row["synthetic"]),
        sandbox=row["sandbox"],
        duration_ms=row["duration_ms"],
        created_at=row["created_at"],
        unrestored=json.loads(row.get("unrestored_json") or "[]"),
        synthetic_source=SyntheticSource.model_validate_json(row["synthetic_source_json"]) if row.get("synthetic_source_json") else None,
    )


def replay_row(r: ReplayRecord) -> dict[str, Any]:
    """``r`` as a row; :class:`~ee_middleware.errors.RecordError` for a count or seed its columns cannot hold (as
    :func:`trajectory_row`)."""
    check_replay_record(r)
    return {
        "replay_id": r.replay_id,
        "schema_version": r.schema_version,
        "trajectory_id": r.trajectory_id,
        "status": r.status,
        "reason": r.reason,
        "policy": r.policy,
        "sandbox": r.sandbox,
        "k": r.k,
        "seed": r.seed,
        "states": r.states,
        "branches": r.branches,
        "errors": r.errors,
        "rejected": r.rejected,
        "refused": r.refused,
        "fidelity_mismatches": r.fidelity_mismatches,
        "details_json": dumps(r.details),
        "unrestorable": r.unrestorable,
        "duration_s": r.duration_s,
        "finished_at": as_utc(r.finished_at),
    }


def frame(rows: list[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A frame with exactly ``schema``'s columns (an empty frame keeps the schema)."""
    return pl.DataFrame(rows, schema=schema)
