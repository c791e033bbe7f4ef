"""A store with real BFCL expert trajectories and real rollouts from the replay job."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay


@pytest.fixture(scope="session")
def replayed_store_template(bfcl_expert_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replayed") / "experience"
    shutil.copytree(bfcl_expert_store_template, root)
    summary = run_replay(ReplayConfig.load(store=root, k=4))
    assert summary.done > 0 and not summary.failed
    return root


@pytest.fixture
def replayed_store(replayed_store_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "replayed"
    shutil.copytree(replayed_store_template, target)
    return target
