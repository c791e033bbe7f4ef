"""A value the store cannot hold (an integer outside 64 bits), made by the sandbox for one trajectory: that trajectory
fails alone (its replay record says which value and who made it), the job replays the others, and a re-run goes on."""

from __future__ import annotations

from pathlib import Path

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from tests.trainers.datasets.test_sandbox_failures import _trajectory

SANDBOX = "tests.replay.huge_value_world:make_sandbox"
POLICY = "tests.replay.huge_value_world:LookupBPolicy"


def test_a_sandbox_value_outside_64_bits_fails_its_trajectory_alone(tmp_path: Path) -> None:
    root = tmp_path / "store"
    trajectories = [_trajectory(i) for i in range(3)]
    trajectories[1] = trajectories[1].model_copy(update={"environment": {"counts": {"a": 1, "b": 2, "huge": 1}}})
    store = LocalExperienceStore(root, create=True)
    store.write(trajectories)
    store.approve([t.id for t in trajectories], by="test")
    store.close()

    for _ in range(2):  # a re-run retries it, fails it alone again, and does not die either
        summary = run_replay(ReplayConfig.load(store=root, sandbox=SANDBOX, policy=POLICY, k=1, workers=1))
        assert list(summary.failed) == ["traj-1"]
        reason = summary.failed["traj-1"]
        assert "observation.truncated_chars 18446744073709551616" in reason and "sandbox" in reason

    store = LocalExperienceStore(root)
    statuses: dict[str, set[str]] = {}
    for row in store.replays().iter_rows(named=True):
        statuses.setdefault(row["trajectory_id"], set()).add(row["status"])
        if row["trajectory_id"] == "traj-1":
            assert "truncated_chars" in (row["reason"] or "")
    assert statuses == {"traj-0": {"done"}, "traj-1": {"failed"}, "traj-2": {"done"}}
    assert {r.trajectory_id for r in store.iter_rollouts()} == {"traj-0", "traj-2"}
    store.close()
