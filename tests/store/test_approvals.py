"""Approval decisions made at the same moment by two processes: neither overturns the other silently."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import polars as pl
import pytest

from ee_middleware import records
from ee_middleware.records import ApprovalEvent
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.approvals import decide
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[2]

DECIDER = textwrap.dedent(
    """
    import os, sys, time
    from ee_middleware.errors import ApprovalConflictError
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.store.approvals import decide
    root, status, start, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    store = LocalExperienceStore(root)
    store.trajectories()  # imports done before the start
    for i in range(count):
        while time.time() < start + i * 0.05:  # both processes decide on t{i} at the same moment
            pass
        try:
            decide(store, [f"t{i}"], status, by=status)  # as `ee traces approve` / `reject` without --force
        except ApprovalConflictError:
            pass
    """
)


def test_two_people_deciding_on_one_trajectory_at_once_never_overturn_silently(store_path: Path):
    count = 12
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(f"t{i}") for i in range(count)])
    store.close()
    start = str(time.time() + 3.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", DECIDER, str(store_path), status, start, str(count)], cwd=REPO)
        for status in ("approved", "rejected")
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    history = LocalExperienceStore(store_path).approvals()
    for i in range(count):
        decisions = history.filter(history["trajectory_id"] == f"t{i}").to_dicts()
        assert len(decisions) == 1, f"t{i}: the second decision saw the first and was refused without --force: {decisions}"


def _decision(trajectory_id: str, status: str, by: str, at: dt.datetime, overrides: ApprovalEvent | None = None) -> ApprovalEvent:
    return ApprovalEvent(
        trajectory_id=trajectory_id, status=status, by=by, at=at, overrides=None if overrides is None else overrides.as_approval()
    )


def test_a_decision_that_overrides_another_wins_over_it_whatever_the_clocks_said(store_path: Path):
    """Decisions as they are stored, made on machines whose clocks disagree: Bob's clock was 2 minutes behind Alice's
    when he rejected (with --force) what she had approved, so his decision has the earlier time. The current decision
    was the one with the latest time: Alice's approval stood and the rejected trajectory kept training. Also after a
    compaction (the decisions then come from Parquet), and for an override of an override (Carol's clock between)."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("t1"), sample_trajectory("t2")])
    t = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    alice = _decision("t1", "approved", "alice", t)
    bob = _decision("t1", "rejected", "bob", t - dt.timedelta(minutes=2), overrides=alice)
    store.set_approval([alice, _decision("t2", "approved", "alice", t)])
    store.set_approval([bob])
    for compacted in (False, True):
        if compacted:
            store.compact()
        reader = LocalExperienceStore(store_path)
        row = reader.trajectories().filter(pl.col("id") == "t1").row(0, named=True)
        assert (row["approval"], row["approval_by"]) == ("rejected", "bob"), f"compacted={compacted}"
        assert reader.get("t1").approval.status == "rejected"
        assert reader.trajectories(status="approved")["id"].to_list() == ["t2"], "the rejected trajectory no longer trains"
        assert reader.trajectory_index(["id"], status="approved")["id"].to_list() == ["t2"]
        assert reader.approvals(["t1"])["by"].to_list() == ["alice", "bob"], "the history is in the order decided"
    carol = _decision("t1", "approved", "carol", t - dt.timedelta(minutes=1), overrides=bob)
    store.set_approval([carol])
    reader = LocalExperienceStore(store_path)
    assert reader.get("t1").approval.by == "carol", "an override of an override wins over both"
    assert reader.approvals(["t1"])["by"].to_list() == ["alice", "bob", "carol"]


def _clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: dt.timedelta) -> None:
    """This process's clock ``offset`` from the true one (simulated: records take the time from ``records.dt``)."""
    real = dt.datetime

    class Skewed(real):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return real.now(tz) + offset

    monkeypatch.setattr(records, "dt", types.SimpleNamespace(datetime=Skewed, UTC=dt.UTC, timedelta=dt.timedelta, date=dt.date))


def test_the_last_decision_made_is_current_with_a_clock_behind_simulated(store_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Decisions made one after the other through decide (as `ee traces approve/reject` make them), the second on a
    machine whose clock is 2 minutes behind (simulated). With --force (an override) and without it (a second approval,
    with a reason): the later decision is the current one, and is recorded after the one it followed."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("forced"), sample_trajectory("agreed")])
    decide(store, ["forced", "agreed"], "approved", by="alice")
    _clock_off_by(monkeypatch, -dt.timedelta(minutes=2))
    (forced,) = decide(store, ["forced"], "rejected", by="bob", reason="leaks a card number", force=True)
    decide(store, ["agreed"], "approved", by="bob", reason="checked the refund amount")
    monkeypatch.undo()
    assert forced.overrides is not None and forced.overrides.by == "alice"
    reader = LocalExperienceStore(store_path)
    current = {r["id"]: r for r in reader.trajectories().to_dicts()}
    assert (current["forced"]["approval"], current["forced"]["approval_by"]) == ("rejected", "bob")
    assert (current["agreed"]["approval_by"], current["agreed"]["approval_reason"]) == ("bob", "checked the refund amount")
    history = reader.approvals(["agreed"]).to_dicts()
    assert [d["by"] for d in history] == ["alice", "bob"] and history[1]["at"] > history[0]["at"]


def test_one_id_given_as_a_string_is_that_id_and_a_decision_says_who_made_it(store_path: Path):
    """Before: ``store.reject("7b", ...)`` read the string as the prefixes "7" and "b", and rejected the two other
    trajectories they matched; the full id as a string raised "No trajectory '4'"; ``by=""`` was stored."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(name) for name in ("7b-run", "7-other", "b-other")])
    store.reject("7b", by="alice", reason="wrong refund")
    store.approve("b-other", by=" bob ")
    decided = {row["id"]: (row["approval"], row["approval_by"]) for row in store.trajectories().to_dicts()}
    assert decided == {"7b-run": ("rejected", "alice"), "7-other": ("pending", None), "b-other": ("approved", "bob")}
    assert store.approvals("7b-run")["trajectory_id"].unique().to_list() == ["7b-run"]
    assert store.steps("7b-run")["trajectory_id"].unique().to_list() == ["7b-run"]
    for by in ("", "  ", None):
        with pytest.raises(ValueError, match="say who decides"):
            store.approve(["7-other"], by=by)  # type: ignore[arg-type]
    assert store.get("7-other").approval.status == "pending"
    store.close()


def test_approving_by_prefixes_reads_the_ids_once_not_the_table_once_a_prefix(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: each prefix (as `ee traces list` prints ids) was resolved by reading the whole trajectories table, every
    column, conversations included: 20 prefixes took 46 s on a store of 86k runs. Now the id column is read once."""
    store = LocalExperienceStore(store_path)
    names = [f"run-{i:02d}-{'x' * 20}" for i in range(12)]
    store.write([sample_trajectory(name) for name in names])
    loads: list[tuple[str, ...]] = []
    real_load, real_scanned = LocalExperienceStore._load, LocalExperienceStore._scanned
    monkeypatch.setattr(LocalExperienceStore, "_load", lambda self, names=(): loads.append(tuple(names)) or real_load(self, names))
    scans: list[str] = []
    monkeypatch.setattr(
        LocalExperienceStore, "_scanned", lambda self, table, *a, **k: scans.append(table) or real_scanned(self, table, *a, **k)
    )
    store.approve([names[11]], by="alice")  # (first-use reads: the store's redaction rules)
    scans.clear()
    loads.clear()
    store.approve([names[10][:6]], by="alice")
    one = (list(scans), list(loads))
    scans.clear()
    loads.clear()
    store.approve([name[:6] for name in names[:10]], by="alice")
    # as many reads for 10 as for 1, none of a whole table: the id column once, then those trajectories' rows alone
    assert loads == [] and scans.count("trajectories") == 4 and (scans, loads) == one, (one, scans, loads)
    assert store.approvals(names[:10])["status"].to_list().count("approved") == 10
    store.close()
