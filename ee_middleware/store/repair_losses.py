"""What ``ee store repair`` took out of the store, per trajectory, recorded where every later read sees it.

A damaged or missing Parquet part that repair takes out loses its rows. Which trajectories that touched is worked out
from what is left, and the store keeps it in its approval log, as it keeps lost rollouts in replay records (a ``failed``
record per replay that lost rollouts: ``replays_reopened``):

- steps: a trajectory with fewer steps than it was recorded with gets a ``rejected`` decision by ``ee store repair``
  saying how many were lost, when and how to get them back. It stays out of training, ``ee traces list`` and ``show``
  show why, and approving it needs ``--force`` (as overturning any rejection).
- approval decisions: the part's rows cannot be read, so which decisions it held is not known. Every trajectory that
  may have had one in it (one recorded before the part was written, without a decision made since) gets a ``pending``
  decision by ``ee store repair`` saying that an earlier decision may have been lost. A rejection ("contains PII")
  is not silently pending again: approving or rejecting such a trajectory needs ``--force``
  (:func:`~ee_middleware.store.approvals.decide`), after checking it.
- trajectories: their steps, decisions and rollouts stay, without a trajectory to belong to; they are listed.

Decisions made by repair are written as written here, not redacted: they hold only ids, counts, times and paths.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ee_middleware.store.approvals import REPAIRER, _describe, decide_as_repair, decided_times

if TYPE_CHECKING:
    from ee_middleware.store.local import LocalExperienceStore

_PART_STAMP = re.compile(r"^part-(\d{8}T\d{6})-(\d{9})-")


def lost_parts(done: dict[str, Any]) -> dict[str, list[str]]:
    """The parts repair took out (moved to quarantine/ or dropped as missing), by table."""
    found: dict[str, list[str]] = {}
    for path in [item["part"] for item in done["quarantined_parts"]] + list(done["missing_parts_dropped"]):
        found.setdefault(Path(path).parent.name, []).append(path)
    return found


def written_at(part: str) -> dt.datetime | None:
    """When a part was written, from its name (``part-YYYYMMDDTHHMMSS-NNNNNNNNN-….parquet``); ``None`` for another name."""
    match = _PART_STAMP.match(Path(part).name)
    if match is None:
        return None
    seconds = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    return seconds + dt.timedelta(microseconds=int(match.group(2)) // 1000 + 1)


def record_losses(store: LocalExperienceStore, done: dict[str, Any]) -> dict[str, Any]:
    """Work out and record what the parts ``done`` (:meth:`~LocalExperienceStore.repair`'s report) took out lost, per
    trajectory. Returns the report's new keys: ``steps_lost`` (``trajectory_id``, ``had``, ``left``, ``was``: its decision
    before), ``decisions_lost`` (``trajectory_id``, ``was``), ``trajectories_lost`` (ids whose steps, decisions or
    rollouts are left without their trajectory) and ``parts_lost`` (per part taken out: ``part``, ``table``, ``lost``: what
    it held, in words, and ``trajectories``: the ids that lost rows of its table in this repair)."""
    parts = lost_parts(done)
    if not parts:
        return {"steps_lost": [], "decisions_lost": [], "trajectories_lost": [], "parts_lost": []}
    at = dt.datetime.now(dt.UTC)
    # decisions first: a trajectory that lost both is rejected for its steps, saying that a decision may have been lost
    decisions = _mark_lost_decisions(store, parts["approvals"], at) if "approvals" in parts else []
    steps = _mark_lost_steps(store, parts["steps"], at) if "steps" in parts else []
    orphans = _orphans(store) if "trajectories" in parts else []
    by_table = {
        "steps": ("steps", [item["trajectory_id"] for item in steps]),
        "approvals": ("approval decisions", [item["trajectory_id"] for item in decisions]),
        "trajectories": ("trajectory records", orphans),
        "rollouts": ("rollouts", list(dict.fromkeys(item["trajectory_id"] for item in done.get("replays_reopened", [])))),
        "replays": ("replay records", []),
    }
    parts_lost = [
        {"part": path, "table": table, "lost": by_table.get(table, (table, []))[0], "trajectories": by_table.get(table, (table, []))[1]}
        for table, paths in parts.items()
        for path in paths
    ]
    if steps or decisions:
        store.close()  # the decisions synced before repair returns
    return {"steps_lost": steps, "decisions_lost": decisions, "trajectories_lost": orphans, "parts_lost": parts_lost}


def _when(at: dt.datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S} UTC"


def _names(paths: Sequence[str]) -> str:
    return ", ".join(Path(p).name for p in paths)


def _mark_lost_steps(store: LocalExperienceStore, parts: Sequence[str], at: dt.datetime) -> list[dict[str, Any]]:
    """Reject, by ``ee store repair``, each trajectory left with fewer steps than it was recorded with (one marked by an
    earlier repair stays as it is)."""
    trajectories = store.trajectories()
    left = store.steps().group_by("trajectory_id").agg(pl.len().alias("left"))
    short = (
        trajectories.join(left, left_on="id", right_on="trajectory_id", how="left")
        .with_columns(pl.col("left").fill_null(0))
        .filter((pl.col("left") < pl.col("num_steps")) & ~((pl.col("approval") == "rejected") & pl.col("approval_by").eq_missing(REPAIRER)))
    )
    if short.is_empty():
        return []
    lost, reasons = [], {}
    for row in short.iter_rows(named=True):
        if row["approval"] == "pending" and row["approval_by"] == REPAIRER:
            was = ". A decision made on it may also have been lost, with a damaged approvals part"
        else:
            was = f". Before, it was {_describe(row)}" if row["approval"] != "pending" else ""
        reasons[row["id"]] = (
            f"{row['num_steps'] - row['left']} of its {row['num_steps']} steps were lost in `ee store repair` at {_when(at)} "
            f"(a damaged or missing steps part: {_names(parts)}, kept in quarantine/steps/ when damaged). It stays out of "
            "training: restore the part from a backup into steps/ and run `ee store compact`, then approve it with --force" + was
        )
        lost.append({"trajectory_id": row["id"], "had": row["num_steps"], "left": row["left"], "was": row["approval"]})
    decide_as_repair(store, reasons, "rejected")
    return lost


def _mark_lost_decisions(store: LocalExperienceStore, parts: Sequence[str], at: dt.datetime) -> list[dict[str, Any]]:
    """Set back to pending, by ``ee store repair`` saying why, each trajectory that may have had a decision in the approval
    parts taken out: recorded before the last of them was written (any trajectory when a part's name does not say when),
    and without a decision made since."""
    stamps = [written_at(p) for p in parts]
    cutoff = None if any(s is None for s in stamps) else max(s for s in stamps if s is not None)
    trajectories = store.trajectories()
    history = store.approvals()
    if not history.is_empty():
        latest = (
            history.select("trajectory_id", decided_times(history).alias("decided")).group_by("trajectory_id").agg(pl.col("decided").max())
        )
        trajectories = trajectories.join(latest, left_on="id", right_on="trajectory_id", how="left")
    else:
        trajectories = trajectories.with_columns(pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("decided"))
    candidates = trajectories.filter(~((pl.col("approval") == "pending") & pl.col("approval_by").eq_missing(REPAIRER)))
    if cutoff is not None:
        candidates = candidates.filter(
            (pl.col("started_at").is_null() | (pl.col("started_at") < cutoff))
            & (pl.col("decided").is_null() | (pl.col("decided") < cutoff))
        )
    if candidates.is_empty():
        return []
    before = f"before {_when(cutoff)} " if cutoff is not None else ""
    lost, reasons = [], {}
    for row in candidates.iter_rows(named=True):
        shown = _describe(row) if row["approval"] != "pending" else None
        reasons[row["id"]] = (
            f"a decision made on it {before}may have been lost in `ee store repair` at {_when(at)} (a damaged or missing "
            f"approvals part: {_names(parts)}, kept in quarantine/approvals/ when damaged)"
            + (f"; it showed {shown}, which a lost decision may have overturned" if shown else "")
            + ". Check it (ee traces show) and decide again: approving or rejecting it needs --force"
        )
        lost.append({"trajectory_id": row["id"], "was": row["approval"]})
    decide_as_repair(store, reasons, "pending")
    return lost


def _orphans(store: LocalExperienceStore) -> list[str]:
    """Ids whose steps, decisions or rollouts are in the store without their trajectory."""
    known = set(store.trajectories()["id"].to_list())
    found: dict[str, None] = {}
    for ids in (store.steps()["trajectory_id"], store.approvals()["trajectory_id"], store.rollouts()["trajectory_id"]):
        for i in ids.unique(maintain_order=True).to_list():
            if i not in known:
                found[i] = None
    return list(found)
