"""Approval decisions made at the same moment by two processes: neither overturns the other silently."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ee_middleware.store import LocalExperienceStore
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
