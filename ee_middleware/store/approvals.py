"""Approval decisions with an explicit history: overturning a decision is never silent.

Approving a rejected trajectory, or rejecting an approved one, needs ``force``; the new decision
then records the one it overturned (``ApprovalEvent.overrides``), so the history
(:meth:`~ee_middleware.store.protocol.ExperienceStore.approvals`, ``ee traces show``) shows both.
Works on any :class:`~ee_middleware.store.protocol.ExperienceStore`. A store that offers ``decisions_locked()``
(a context manager held across processes, as the local store's) has it held from reading the current decisions
to recording the new ones: without it, two people deciding on one trajectory at the same moment both saw it
pending, and the later decision overturned the earlier one without recording that it did.

The current decision is the last one made (:func:`in_order_decided`). Decisions are ordered by their time, which
is the clock of the machine that made them, and clocks disagree: a reviewer whose clock is behind another's would
otherwise overturn a decision without it taking effect (a rejected trajectory kept training). So a decision that
overrides another comes after it whatever the clocks said, and :func:`decide` records each decision after the ones it
followed (its time is the later of its clock and a microsecond after the latest decision on that trajectory).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from ee_middleware.errors import ApprovalConflictError, TrajectoryNotFoundError
from ee_middleware.records import Approval, ApprovalEvent, ApprovalStatus, utcnow
from ee_middleware.store.protocol import APPROVAL_COLUMNS, id_list

if TYPE_CHECKING:
    from ee_middleware.store.protocol import ExperienceStore


def decide(
    store: ExperienceStore,
    ids: str | Sequence[str],
    status: ApprovalStatus,
    *,
    by: str,
    reason: str | Mapping[str, str] | None = None,
    force: bool = False,
) -> list[ApprovalEvent]:
    """Record ``status`` for the trajectories ``ids`` (unique prefixes accepted) and return the events; ``reason`` may
    give each trajectory its own, by its full id.

    ``by`` and ``reason`` are stored redacted by the store's rules (:func:`_reviewer_text`): a reviewer quoting a
    customer's card or address, or named by an e-mail address, leaves no plain value in the store (an e-mail reviewer
    is stored as its pseudonym, ``[REDACTED:email:1a2b3c4d]``, the same for every decision they make; a plain name such
    as ``alice`` is kept as it is).

    One id given as a string is that id (not a sequence of one-character prefixes). Raises :class:`ValueError`,
    recording nothing, for an empty or blank ``by`` (a decision says who made it), and
    :class:`~ee_middleware.errors.ApprovalConflictError`, recording nothing, when a trajectory already has the opposite
    decision and ``force`` is false.
    """
    ids = id_list(ids)
    if not isinstance(by, str) or not by.strip():
        raise ValueError(f"by={by!r}: say who decides (a name, stored with the decision), e.g. by='alice'")
    locked = getattr(store, "decisions_locked", None)
    with locked() if locked is not None else contextlib.nullcontext():
        return _decide(store, ids, status, by=by.strip(), reason=reason, force=force)


REPAIRER = "ee store repair"
"""Who the decisions ``ee store repair`` records are by (:mod:`~ee_middleware.store.repair_losses`): a trajectory that
lost steps is rejected by it, and one that may have lost a decision is set back to pending by it, which a later
decision must overturn with ``force``."""


def decide_as_repair(store: ExperienceStore, reasons: Mapping[str, str], status: ApprovalStatus) -> list[ApprovalEvent]:
    """Record ``status`` by :data:`REPAIRER` for the trajectories ``reasons`` names (full ids), each with its reason,
    overturning any decision (recorded as such). Not redacted: repair's reasons hold only ids, counts, times and paths."""
    locked = getattr(store, "decisions_locked", None)
    with locked() if locked is not None else contextlib.nullcontext():
        return _decide(store, list(reasons), status, by=REPAIRER, reason=reasons, force=True, redact=False)


def _decide(
    store: ExperienceStore,
    ids: Sequence[str],
    status: ApprovalStatus,
    *,
    by: str,
    reason: str | Mapping[str, str] | None,
    force: bool,
    redact: bool = True,
) -> list[ApprovalEvent]:
    resolved, current = _current_decisions(store, ids)
    unread = [i for i in resolved if i not in current]
    if unread:  # resolved, but not among the trajectories the store shows (a store whose trajectories() filters them)
        raise TrajectoryNotFoundError(
            f"No trajectory {', '.join(map(repr, unread))} among those the store shows (its trajectories()). List ids with: ee traces list"
        )
    lost = {i: current[i] for i in resolved if current[i]["approval"] == "pending" and current[i]["approval_by"] == REPAIRER}
    if lost and not force:
        listed = "; ".join(f"{i[:12]}: {row['approval_reason'] or 'pending by ' + REPAIRER}" for i, row in lost.items())
        raise ApprovalConflictError(
            f"Not {status}: {len(lost)} trajectory(ies) may have lost an earlier decision when `ee store repair` took a "
            f"damaged approvals part out ({listed}). Check each (ee traces show), then re-run with --force (force=True) "
            "to record this decision; the history keeps what is left."
        )
    overturned = {i: current[i] for i in resolved if current[i]["approval"] not in ("pending", status)}
    if overturned and not force:
        listed = "; ".join(f"{i[:12]} was {_describe(row)}" for i, row in overturned.items())
        raise ApprovalConflictError(
            f"Not {status}: {len(overturned)} trajectory(ies) have the opposite decision ({listed}). "
            "Re-run with --force (force=True) to overturn it; both decisions stay in the history (ee traces show)."
        )
    latest = _latest_decided(store, resolved)
    if redact:
        redacted = _reviewer_text(store)
        by = redacted(by)
        reason = {i: redacted(text) for i, text in reason.items()} if isinstance(reason, Mapping) else redacted(reason)
    now = utcnow()
    events = [
        ApprovalEvent(
            trajectory_id=i,
            status=status,
            by=by,
            at=now if latest.get(i) is None or now > latest[i] else latest[i] + TICK,
            reason=reason.get(i) if isinstance(reason, Mapping) else reason,
            overrides=_approval(overturned[i]) if i in overturned else None,
        )
        for i in resolved
    ]
    store.set_approval(events)
    return events


def _current_decisions(store: ExperienceStore, ids: Sequence[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The full ids of ``ids`` (prefixes resolved; each once, in order) and each one's current decision (its
    ``approval*`` columns, by id). The local store reads the ids' column once to resolve them all, then those
    trajectories' rows alone; another store (or a subclass with a ``trajectories`` of its own) answers from its
    :meth:`trajectories`."""
    from ee_middleware.store.registry import reads_rows_by_id

    if reads_rows_by_id(store):  # (a subclass's own trajectory_index may not take ids: it answers through trajectories())
        resolved = list(dict.fromkeys(store.resolve_ids(ids)))
        frame = store.trajectory_index(["id"], ids=resolved)
        current = {row["id"]: row for row in frame.to_dicts()}
        return resolved, current
    frame = store.trajectories().select("id", *APPROVAL_COLUMNS)
    current = {row["id"]: row for row in frame.to_dicts()}
    prefixes = [i for i in ids if i not in current]
    resolve_ids = getattr(store, "resolve_ids", None)  # (a local store's subclass reads the ids once for all of them)
    full = dict(zip(prefixes, resolve_ids(prefixes) if resolve_ids is not None else map(store.resolve_id, prefixes), strict=True))
    return list(dict.fromkeys(i if i in current else full[i] for i in ids)), current


def _reviewer_text(store: ExperienceStore) -> Callable[[Any], Any]:
    """How a decision's ``by`` and ``reason`` are redacted before they are stored: by the store's rules, kinds,
    patterns, ``redact_fn`` and pseudonym salt (:func:`~ee_middleware.capture.store_redaction.store_redactor`, as every
    writer after capture uses them), so a value gets the pseudonym it has in the store's runs. A rule's
    ``redact_fn`` that cannot be imported raises a :class:`~ee_middleware.errors.ConfigError` (nothing is recorded)."""
    from ee_middleware.capture.store_redaction import store_redactor

    redactor = store_redactor(store)
    return redactor.redact_value if redactor.enabled else (lambda value: value)


TICK = dt.timedelta(microseconds=1)
"""How much later than the decision it follows a decision counts (the stores keep times to the microsecond)."""


def in_order_decided(decisions: pl.DataFrame) -> pl.DataFrame:
    """``decisions`` (rows of :data:`~ee_middleware.store.tables.APPROVAL_SCHEMA`, in the order recorded) in the order
    they were made, oldest first: by time, except that a decision that overrides another comes after it whatever the
    clocks of the machines that made them said (and so after everything that one came after); equal times keep the
    order recorded. The last decision per trajectory is its current one."""
    return (
        decisions.with_columns(decided_times(decisions).alias("_decided"))
        .with_row_index("_seq")
        .sort(["_decided", "_seq"], nulls_last=False)
        .drop("_seq", "_decided")
    )


def decided_times(decisions: pl.DataFrame) -> pl.Series:
    """Per row of ``decisions``: when it counts as made. Its ``at``, but for a decision that overrides another at least a
    microsecond after that one counts (its ``overrides_*`` name it; without a match, its ``overrides_at``)."""
    at = decisions["at"]
    overriding = decisions["overrides_status"].is_not_null()
    if not overriding.any():
        return at
    involved = decisions.with_row_index("_i").filter(
        pl.col("trajectory_id").is_in(decisions.filter(overriding)["trajectory_id"].unique().implode())
    )
    rows = {r["_i"]: r for r in involved.iter_rows(named=True)}
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for i, r in rows.items():
        by_key.setdefault((r["trajectory_id"], r["status"], r["by"], r["at"]), []).append(i)

    def overridden(i: int) -> list[int]:
        r = rows[i]
        if r["overrides_status"] is None:
            return []
        return [j for j in by_key.get((r["trajectory_id"], r["overrides_status"], r["overrides_by"], r["overrides_at"]), []) if j != i]

    decided: dict[int, dt.datetime | None] = {}
    for start in rows:  # depth first, without recursion: a trajectory may have a long chain of overrides
        stack, path = [start], set()
        while stack:
            i = stack[-1]
            if i in decided:
                stack.pop()
                path.discard(i)
                continue
            path.add(i)
            waiting = [j for j in overridden(i) if j not in decided and j not in path]  # on the path: a cycle, cut
            if waiting:
                stack.extend(waiting)
                continue
            r, time = rows[i], rows[i]["at"]
            befores = [decided[j] for j in overridden(i) if j in decided] + [r["overrides_at"]]
            before = max((b for b in befores if b is not None), default=None) if r["overrides_status"] is not None else None
            if before is not None and (time is None or time <= before):
                time = before + TICK
            decided[i] = time
            stack.pop()
            path.discard(i)
    moved = pl.DataFrame({"_i": list(decided), "_decided": list(decided.values())}, schema={"_i": pl.UInt32(), "_decided": at.dtype})
    joined = decisions.with_row_index("_i").join(moved, on="_i", how="left", maintain_order="left")
    return joined.select(pl.coalesce("_decided", "at"))["_decided"].alias("at")


def _latest_decided(store: ExperienceStore, ids: Sequence[str]) -> dict[str, dt.datetime | None]:
    """Per trajectory of ``ids``: when its latest decision counts as made (:func:`decided_times`), if it has any."""
    history = store.approvals(list(ids))
    if history.is_empty():
        return {}
    latest = history.select("trajectory_id", decided_times(history).alias("decided")).group_by("trajectory_id").agg(pl.col("decided").max())
    return dict(zip(latest["trajectory_id"].to_list(), latest["decided"].to_list(), strict=True))


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
