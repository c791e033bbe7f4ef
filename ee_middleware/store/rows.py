"""Records rebuilt from the store's table rows, without polars: what a replay worker needs to build the trajectories
it is sent as rows (:class:`TrajectoryRows`), and what the store's readers use for every trajectory and step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from ee_middleware.records import Action, Approval, Observation, Step, ToolCall, Trajectory


class Decoded:
    """A JSON column's value kept decoded: what :func:`_loads` would build from the column's text.

    A trajectory read from the spool whose JSON values survive the text round trip unchanged (see
    :mod:`~ee_middleware.store.spool_cache`) is rebuilt from its rows with these in its JSON columns, by the same
    :func:`trajectory_from_rows` as any other, without writing and parsing its states again."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _loads(text: str | Decoded) -> Any:
    """``json.loads(text)``, decoded by pydantic's parser where it can (about a third less CPU on the large ``state_json``
    and ``tools_json`` of a trajectory). It builds the same values (big ints, floats, NaN and infinities, repeated keys: the
    last wins); what it refuses (an escaped lone surrogate, nesting deeper than 200) is decoded, or refused, by ``json``.
    A :class:`Decoded` value is returned as it is."""
    if type(text) is Decoded:
        return text.value
    try:
        return from_json(text)
    except ValueError:
        return json.loads(text)


_KEPT = "_step"
"""Key of a step row that carries its decoded step itself (:func:`keep_step`)."""


def keep_step(row: dict[str, Any], s: Step) -> dict[str, Any]:
    """``row`` (``step_row(s, Decoded)``) carrying ``s`` itself for :func:`step_from_row` to return, where what it would
    build from the row is ``s`` again in every respect, which validating ``s``'s own values again would only copy: every
    field of ``s`` and of its action, call and observation was set (the row path sets them all), and its action's kind
    says whether it has a call (the row path drops a call of an answer); but an action's ``reasoning`` was set exactly
    when it is not ``None`` (as in a record read from JSON: the row path sets it only then), and so were the step's
    ``tools`` and its call's ``malformed``. Else ``row`` as it is."""
    action, call, observation = s.action, s.action.tool_call, s.observation
    if (
        type(s) is Step
        and s.model_fields_set == (_STEP_FIELDS if s.tools is not None else _STEP_FIELDS_WITHOUT_TOOLS)
        and type(action) is Action
        and action.model_fields_set == (_ACTION_FIELDS if action.reasoning is not None else _ACTION_FIELDS_WITHOUT_REASONING)
        and (action.kind == "tool_call") == (call is not None)
        and (
            call is None
            or (
                type(call) is ToolCall
                and call.model_fields_set == (_CALL_FIELDS if call.malformed is not None else _CALL_FIELDS_WITHOUT_MARK)
            )
        )
        and (observation is None or (type(observation) is Observation and observation.model_fields_set == _OBSERVATION_FIELDS))
    ):
        row[_KEPT] = s
    return row


_STEP_FIELDS = frozenset(Step.model_fields)
_STEP_FIELDS_WITHOUT_TOOLS = _STEP_FIELDS - {"tools"}
_ACTION_FIELDS = frozenset(Action.model_fields)
_ACTION_FIELDS_WITHOUT_REASONING = _ACTION_FIELDS - {"reasoning"}
_CALL_FIELDS = frozenset(ToolCall.model_fields)
_CALL_FIELDS_WITHOUT_MARK = _CALL_FIELDS - {"malformed"}
_OBSERVATION_FIELDS = frozenset(Observation.model_fields) - {"sandbox_failure"}
"""The observation fields the row path sets: a step's ``sandbox_failure`` is never stored (only rollouts carry one)."""


def step_from_row(row: dict[str, Any]) -> Step:
    kept = row.get(_KEPT)
    if kept is not None:
        return kept
    call = None
    if row["action_kind"] == "tool_call":
        marked = row.get("tool_call_malformed")  # null: the arguments say it (and rows older than schema 1.6)
        # set only where there is a mark, as in a record read from JSON (fields set included)
        mark: dict[str, Any] = {} if marked is None else {"malformed": marked}
        call = ToolCall(id=row["tool_call_id"] or "", name=row["tool_name"], arguments=_loads(row["arguments_json"] or "{}"), **mark)
    observation = None
    if row["observation"] is not None:
        observation = Observation(
            content=row["observation"],
            is_error=bool(row["observation_is_error"]),
            truncated_chars=row["observation_truncated_chars"] or 0,
        )
    offered = row.get("offered_tools_json")  # null: all of the trajectory's tools (and rows older than schema 1.4)
    # set only where there are some, as in a record read from JSON (fields set included)
    extra: dict[str, Any] = {} if offered is None else {"tools": _loads(offered)}
    return Step(
        trajectory_id=row["trajectory_id"],
        index=row["index"],
        decision_index=row["decision_index"],
        state=_loads(row["state_json"]),
        action=_action(row["action_kind"], call, row["content"], row.get("reasoning")),
        observation=observation,
        latency_ms=row["latency_ms"],
        model_latency_ms=row["model_latency_ms"],
        **extra,
    )


def _action(kind: str, call: ToolCall | None, content: str | None, reasoning: str | None) -> Action:
    """The step's action; ``reasoning`` is set only when there is some (null in rows older than schema 1.4), so that
    the action is the one its record read from JSON would be, fields set included."""
    if reasoning is None:
        return Action(kind=kind, tool_call=call, content=content)  # type: ignore[arg-type]
    return Action(kind=kind, tool_call=call, content=content, reasoning=reasoning)  # type: ignore[arg-type]


def trajectory_from_rows(row: dict[str, Any], steps: list[dict[str, Any]]) -> Trajectory:
    """Rebuild a :class:`Trajectory`; ``row`` may carry the current ``approval*`` columns."""
    approval = Approval(
        status=row.get("approval") or row["recorded_approval"],
        by=row.get("approval_by", row["recorded_approval_by"]),
        at=row.get("approval_at", row["recorded_approval_at"]),
        reason=row.get("approval_reason", row["recorded_approval_reason"]),
    )
    return Trajectory(
        schema_version=row["schema_version"],
        id=row["id"],
        app=row["app"],
        app_version=row["app_version"],
        thread_id=row["thread_id"],
        task=row["task"],
        tools=_loads(row["tools_json"] or "[]"),
        model=row["model"],
        messages=_loads(row["messages_json"] or "[]"),
        final_answer=row["final_answer"],
        status=row["status"],
        error=row["error"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        environment=_loads(row["environment_json"]) if row["environment_json"] else None,
        approval=approval,
        source=row["source"],
        trace_id=row["trace_id"],
        steps=[step_from_row(s) for s in sorted(steps, key=lambda s: s["index"])],
    )


@dataclass(frozen=True, slots=True)
class TrajectoryRows:
    """A trajectory as the store read it, its row and its steps' rows, built into a :class:`Trajectory` where it is used.

    Sending this to a replay worker costs a fraction of sending the built trajectory (plain values pickle several times
    faster than pydantic models), and the worker builds it in about the time it would take to unpickle the built one,
    so a job that hands trajectories out no longer builds every one of them itself."""

    row: dict[str, Any]
    steps: list[dict[str, Any]]

    @property
    def id(self) -> str:
        return self.row["id"]

    def build(self) -> Trajectory:
        """The trajectory, exactly as the store's ``iter_trajectories`` builds it."""
        return trajectory_from_rows(self.row, self.steps)
