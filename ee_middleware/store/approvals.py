"""Approval decisions with an explicit history: overturning a decision is never silent.

Approving a rejected trajectory, or rejecting an approved one, needs ``force``; the new decision
then records the one it overturned (``ApprovalEvent.overrides``), so the history
(:meth:`~ee_middleware.store.protocol.ExperienceStore.approvals`, ``ee traces show``) shows both.
Works on any :class:`~ee_middleware.store.protocol.ExperienceStore`. A store that offers ``decisions_locked()``
(a context manager held across processes, as the local store's) has it held from reading the current decisions
to recording the new ones: without it, two people deciding on one trajectory at the same moment both saw it
pending, and the later decision overturned the earlier one without recording that it did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ee_middleware.errors import ApprovalConflictError
from ee_middleware.records import Approval, ApprovalEvent, ApprovalStatus

if TYPE_CHECKING:
    from ee_middleware.store.protocol import ExperienceStore


def decide(
    store: ExperienceStore,
    ids: Sequence[str],
    status: ApprovalStatus,
    *,
    by: str,
    reason: str | None = None,
    force: bool = False,
) -> list[ApprovalEvent]:
    """Record ``status`` for the trajectories ``ids`` (unique prefixes accepted) and return the events.

    Raises :class:`~ee_middleware.errors.ApprovalConflictError`, recording nothing, when a
    trajectory already has the opposite decision and ``force`` is false.
    """
    locked = getattr(store, "decisions_locked", None)
    with locked() if locked is not None else contextlib.nullcontext():
        return _decide(store, ids, status, by=by, reason=reason, force=force)


def _decide(
    store: ExperienceStore, ids: Sequence[str], status: ApprovalStatus, *, by: str, reason: str | None, force: bool
) -> list[ApprovalEvent]:
    frame = store.trajectories().select("id", "approval", "approval_by", "approval_at", "approval_reason")
    current = {row["id"]: row for row in frame.to_dicts()}
    resolved = list(dict.fromkeys(i if i in current else store.resolve_id(i) for i in ids))
    overturned = {i: current[i] for i in resolved if current[i]["approval"] not in ("pending", status)}
    if overturned and not force:
        listed = "; ".join(f"{i[:12]} was {_describe(row)}" for i, row in overturned.items())
        raise ApprovalConflictError(
            f"Not {status}: {len(overturned)} trajectory(ies) have the opposite decision ({listed}). "
            "Re-run with --force (force=True) to overturn it; both decisions stay in the history (ee traces show)."
        )
    events = [
        ApprovalEvent(
            trajectory_id=i,
            status=status,
            by=by,
            reason=reason,
            overrides=_approval(overturned[i]) if i in overturned else None,
        )
        for i in resolved
    ]
    store.set_approval(events)
    return events


def _approval(row: dict[str, object]) -> Approval:
    return Approval.model_validate(
        {"status": row["approval"], "by": row["approval_by"], "at": row["approval_at"], "reason": row["approval_reason"]}
    )


def _describe(row: dict[str, object]) -> str:
    text = f"{row['approval']}"
    if row["approval_by"]:
        text += f" by {row['approval_by']}"
    if row["approval_at"] is not None:
        text += f" at {row['approval_at']:%Y-%m-%d %H:%M}"
    if row["approval_reason"]:
        text += f" ({row['approval_reason']})"
    return text
