"""The replay stores exactly the rollouts it stored before it was made faster: on 1 worker, 2 worker processes and Ray.

``golden/bfcl_multi_turn_base_k8.json`` was captured from the replay job as it was before the
throughput work of issue 11 (``python -m tests.replay.golden_replay``), on the first BFCL
multi_turn_base entries with K=8: rollout ids, proposed calls, proposer metadata, observations and
replay records. Every executor must reproduce it exactly.
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
