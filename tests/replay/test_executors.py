"""The local process executor's start-up paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.replay import executors
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from tests.conftest import BFCL_ENTRIES


def _rollouts(path: Path) -> pl.DataFrame:
    return LocalExperienceStore(path).rollouts().drop("created_at", "duration_ms").sort("id")


def test_where_the_fork_server_cannot_start_workers_are_spawned_with_the_same_rollouts(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python whose multiprocessing internals differ (simulated: the fork server's set-up raises AttributeError)."""
    twin = tmp_path / "twin"
    shutil.copytree(bfcl_store_path, twin)
    run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2))

    def changed_internals(self: object, preload: object) -> None:
        raise AttributeError("'ForkServer' object has no attribute '_forkserver_pid'")

    monkeypatch.setattr(executors._JobForkServer, "__init__", changed_internals)
    spawned: list[str] = []
    real_pool = executors.ProcessPoolExecutor

    def pool(*args: object, mp_context: object, **kwargs: object) -> object:
        spawned.append(mp_context.get_start_method())  # type: ignore[attr-defined]
        return real_pool(*args, mp_context=mp_context, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(executors, "ProcessPoolExecutor", pool)
    summary = run_replay(ReplayConfig.load(store=twin, k=2, workers=2))
    assert spawned == ["spawn"]
    assert "spawning them instead" in caplog.text
    assert summary.done == BFCL_ENTRIES
    assert _rollouts(twin).equals(_rollouts(bfcl_store_path))
