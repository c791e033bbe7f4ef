"""The replay stores exactly the rollouts it stored before it was made faster: on 1 worker, 2 worker processes and Ray.

``golden/bfcl_multi_turn_base_k8.json`` was captured from the replay job as it was before the
throughput work of issue 11 (``python -m tests.replay.golden_replay``), on the first BFCL
multi_turn_base entries with K=8: rollout ids, proposed calls, proposer metadata, observations and
replay records, and written again when ``mutate`` stopped proposing calls that differ only by an argument at its
schema default (4 of 312 were, ``ls(a=False)`` next to ``ls()``; 16 rollouts in 4 of 39 states changed). Every
executor must reproduce it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from tests.replay.golden_replay import GOLDEN, K, outputs, stable_store


@pytest.fixture
def stable_store_path(bfcl_expert_store_template: Path, tmp_path: Path) -> Path:
    return stable_store(bfcl_expert_store_template, tmp_path / "stable")


def _check_against_golden(store: Path, **config: object) -> None:
    golden = json.loads(GOLDEN.read_text())
    summary = run_replay(ReplayConfig.load(store=store, k=K, **config))
    assert summary.replay_id == golden["replay_id"]
    got = outputs(store, summary.replay_id)
    assert sorted(got["rollouts"]) == sorted(golden["rollouts"]), "different rollout ids"
    for rollout_id, expected in golden["rollouts"].items():
        assert got["rollouts"][rollout_id] == expected, f"rollout {rollout_id} differs"
    assert got["records"] == golden["records"]
    assert summary.branches == len(golden["rollouts"])


def test_one_worker_stores_the_golden_rollouts(stable_store_path: Path) -> None:
    _check_against_golden(stable_store_path, workers=1)


def test_two_worker_processes_store_the_golden_rollouts(stable_store_path: Path) -> None:
    _check_against_golden(stable_store_path, workers=2)


def test_ray_on_a_local_cluster_stores_the_golden_rollouts(stable_store_path: Path) -> None:
    pytest.importorskip("ray")
    _check_against_golden(stable_store_path, workers=2, executor="ray")


def test_worker_processes_write_their_own_spool_segments_and_send_back_only_records(
    stable_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from ee_middleware.replay import job
    from ee_middleware.store import spool

    monkeypatch.setattr(job, "light_in_process", lambda config: False)  # every trajectory to the workers
    before = {s.name for s in spool.list_segments(stable_store_path / "spool")}
    seen = []
    summary = run_replay(ReplayConfig.load(store=stable_store_path, k=2, workers=2), on_outcome=lambda o, n, total: seen.append(o))
    assert summary.done == len(seen) and all(o.stored and not o.rollouts and o.record.status == "done" for o in seen)
    written = [s for s in spool.list_segments(stable_store_path / "spool") if s.name not in before]
    writers = {s.name.split("-")[-2] for s in written}  # the pid in the segment's name
    assert str(os.getpid()) not in writers and len(writers) >= 1
    assert sum(len(spool.decode_lines(s.read_bytes(), s, live=False)[0]) for s in written) == summary.branches + summary.done


def test_a_worker_that_cannot_open_the_job_store_sends_its_rollouts_back(stable_store_path: Path) -> None:
    from ee_middleware.replay.executors import WorkerSpec, _Worker
    from ee_middleware.replay.runner import ReplaySettings
    from ee_middleware.replay.sandboxes.registry import sandbox_factory
    from ee_middleware.store import LocalExperienceStore

    store = LocalExperienceStore(stable_store_path)
    trajectory = next(store.iter_trajectories(status="approved"))
    settings = ReplaySettings(replay_id="r", policy="mutate", k=2)
    for marker in ('{"another": "store"}', None):
        spec = WorkerSpec(sandbox_factory("bfcl"), "mutate", settings, store=str(stable_store_path / "nowhere"), store_marker=marker)
        worker = _Worker(spec)
        outcome = worker.replay(trajectory)
        worker.close()
        assert not outcome.stored and outcome.rollouts
    other = WorkerSpec(sandbox_factory("bfcl"), "mutate", settings, store=str(stable_store_path), store_marker='{"another": "store"}')
    worker = _Worker(other)
    assert not worker.replay(trajectory).stored  # a store at that path, but not the job's
    worker.close()
    assert store.rollouts(replay_id="r").is_empty()
