"""The record fields the store keeps in ``Int64`` columns, and the one check that a record's values fit them.

Python's integers, and pydantic's ``int``, have no bound, but a table's ``Int64`` column holds
:data:`~ee_middleware._limits.INT64_MIN` to :data:`~ee_middleware._limits.INT64_MAX`: a step's ``index`` or
``truncated_chars`` of 2**64 (an ingested span's attribute, a caller's own record) cannot be stored, nor read back. So:

* writes refuse such a record up front (:func:`check_trajectories`, :func:`check_replay`): a
  :class:`~ee_middleware.errors.RecordError` naming the record, the field and the range, and nothing of its batch is
  written, as a batch is stored whole or not at all;
* a store an older version wrote one into is still read: the row builders of :mod:`~ee_middleware.store.tables` raise the
  same error for it, so reads skip that record alone and name it, and ``ee store compact`` and ``ee store repair`` move
  its spool segment to ``quarantine/``.

Only the integer fields are looked at (nothing is serialised again: the writes are on replay's path). Polars-free: replay
workers write through :mod:`~ee_middleware.store.replay_spool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ee_middleware._limits import INT64_MAX, INT64_MIN
from ee_middleware.errors import RecordError

if TYPE_CHECKING:
    from ee_middleware.records import ReplayRecord, Rollout, Trajectory

RANGE = f"the store's 64-bit integer range ({INT64_MIN} to {INT64_MAX})"

REPLAY_COUNTS = ("k", "seed", "states", "branches", "errors", "rejected", "refused", "fidelity_mismatches", "unrestorable")
"""A replay record's fields kept in ``Int64`` columns (the ``replays`` table)."""


def _outside(fields: tuple[tuple[str, int | None], ...]) -> str:
    """``FIELD VALUE is outside RANGE`` for the first of ``fields`` out of range (``None``: absent)."""
    name, value = next((n, v) for n, v in fields if v is not None and not INT64_MIN <= v <= INT64_MAX)
    return f"{name} {value} is outside {RANGE}"


def trajectory_problem(t: Trajectory) -> str | None:
    """``steps[N].FIELD VALUE is outside ...`` when one of ``t``'s steps has an integer the ``steps`` table cannot hold
    (its ``index``, ``decision_index`` or observation's ``truncated_chars``); ``None`` when all fit."""
    low, high = INT64_MIN, INT64_MAX
    for position, s in enumerate(t.steps):
        o = s.observation
        if low <= s.index <= high and low <= s.decision_index <= high and (o is None or low <= o.truncated_chars <= high):
            continue
        truncated = None if o is None else o.truncated_chars
        fields = (("index", s.index), ("decision_index", s.decision_index), ("observation.truncated_chars", truncated))
        return f"steps[{position}].{_outside(fields)}"
    return None


def rollout_problem(r: Rollout) -> str | None:
    """``FIELD VALUE is outside ...`` when ``r``'s ``step_index``, ``branch_index`` or observation's ``truncated_chars`` is
    outside the ``rollouts`` table's ``Int64`` columns; ``None`` when they fit."""
    low, high = INT64_MIN, INT64_MAX
    step, branch, truncated = r.step_index, r.branch_index, r.observation.truncated_chars
    if low <= step <= high and low <= branch <= high and low <= truncated <= high:
        return None
    return _outside((("step_index", step), ("branch_index", branch), ("observation.truncated_chars", truncated)))


def replay_record_problem(r: ReplayRecord) -> str | None:
    """``FIELD VALUE is outside ...`` when one of ``r``'s counts or its seed (:data:`REPLAY_COUNTS`) is outside the
    ``replays`` table's ``Int64`` columns; ``None`` when they fit."""
    values = (r.k, r.seed, r.states, r.branches, r.errors, r.rejected, r.refused, r.fidelity_mismatches, r.unrestorable)
    if min(values) >= INT64_MIN and max(values) <= INT64_MAX:
        return None
    return _outside(tuple(zip(REPLAY_COUNTS, values, strict=True)))


def check_trajectory(t: Trajectory) -> None:
    """Raise :class:`RecordError` (``trajectory 'ID': steps[N].FIELD VALUE is outside ...``) for :func:`trajectory_problem`."""
    if (problem := trajectory_problem(t)) is not None:
        raise RecordError(f"trajectory {t.id!r}: {problem}")


def check_rollout(r: Rollout) -> None:
    """Raise :class:`RecordError` (``rollout 'ID': FIELD VALUE is outside ...``) for :func:`rollout_problem`."""
    if (problem := rollout_problem(r)) is not None:
        raise RecordError(f"rollout {r.id!r}: {problem}")


def check_replay_record(r: ReplayRecord) -> None:
    """Raise :class:`RecordError` (``replay record of trajectory 'ID' (replay 'ID'): FIELD VALUE is outside ...``) for
    :func:`replay_record_problem`."""
    if (problem := replay_record_problem(r)) is not None:
        raise RecordError(f"replay record of trajectory {r.trajectory_id!r} (replay {r.replay_id!r}): {problem}")


def check_trajectories(batch: Sequence[Trajectory]) -> None:
    """Refuse a batch of trajectories to write when any has an integer the store cannot hold: a :class:`RecordError`
    naming each such record (its place in the batch, its id), the field and the range. Nothing of the batch is to be
    written then (a batch is stored whole or not at all, as :meth:`~ee_middleware.store.local.LocalExperienceStore.set_approval`
    refuses a batch naming unknown trajectories); the caller writes the others again without it."""
    refused = [
        f"record {position} of {len(batch)}, trajectory {t.id!r}: {problem}"
        for position, t in enumerate(batch, start=1)
        if (problem := trajectory_problem(t)) is not None
    ]
    if refused:
        which = "a record" if len(refused) == 1 else f"{len(refused)} of the {len(batch)} records"
        raise RecordError(
            f"Cannot store {which} of this batch: {'; '.join(refused[:5])}"
            + (f" (+{len(refused) - 5} more)" if len(refused) > 5 else "")
            + ". Nothing of this batch was written (what was stored before is intact): correct the value or leave the "
            "record out, and write the others again."
        )


def check_replay(record: ReplayRecord, rollouts: Sequence[Rollout]) -> None:
    """Refuse one trajectory's replay to write (its rollouts and its record, one batch) when one of them has an integer
    the store cannot hold: a :class:`RecordError` naming it, the field and the range; nothing of it is to be written."""
    problem = None
    for position, r in enumerate(rollouts, start=1):
        if (found := rollout_problem(r)) is not None:
            problem = f"rollout {r.id!r} (rollout {position} of {len(rollouts)}): {found}"
            break
    else:
        if (found := replay_record_problem(record)) is not None:
            problem = f"its replay record: {found}"
    if problem is not None:
        raise RecordError(
            f"Cannot store the replay of trajectory {record.trajectory_id!r} (replay {record.replay_id!r}): {problem}. Nothing "
            "of it was written (its rollouts and its record; what was stored before is intact): the policy, sandbox or code "
            "that made the value must keep it in that range."
        )
