"""``ee traces list`` on a store of many runs: filters by run status, start time (an ISO time or a span back from now),
thread and model, besides approval and app (before, a store of 86k runs could be narrowed by approval and app alone).
A mistyped time is a usage error before the store is read. A real local store and the real CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

runner = CliRunner()
NOW = datetime.now(UTC)


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    store = LocalExperienceStore(tmp_path / "store")
    runs = [
        ("old-ok", NOW - timedelta(days=10), "completed", "thread-a", "small"),
        ("old-error", NOW - timedelta(days=9), "error", "thread-b", "small"),
        ("day-ok", NOW - timedelta(hours=20), "completed", "thread-a", "large"),
        ("new-stopped", NOW - timedelta(minutes=10), "stopped", "thread-c", "large"),
    ]
    store.write(
        [
            sample_trajectory(name).model_copy(update={"started_at": started, "status": status, "thread_id": thread, "model": model})
            for name, started, status, thread, model in runs
        ]
    )
    store.close()
    return store.root


def _listed(root: Path, *args: str) -> list[str]:
    result = runner.invoke(app, ["traces", "list", "--store", str(root), "--json", *args])
    assert result.exit_code == 0, result.output
    return [row["id"] for row in json.loads(result.output)]


def test_filters_narrow_the_listing(store_root: Path) -> None:
    assert _listed(store_root) == ["old-ok", "old-error", "day-ok", "new-stopped"]
    assert _listed(store_root, "--run-status", "error") == ["old-error"]
    assert _listed(store_root, "--since", "24h") == ["day-ok", "new-stopped"]
    assert _listed(store_root, "--since", "1h") == ["new-stopped"]
    assert _listed(store_root, "--until", "2d") == ["old-ok", "old-error"]
    since = (NOW - timedelta(days=9, hours=12)).strftime("%Y-%m-%dT%H:%M:%S")  # no zone: UTC
    assert _listed(store_root, "--since", since, "--until", "1h") == ["old-error", "day-ok"]
    offset = (NOW - timedelta(days=9, hours=12)).astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    assert _listed(store_root, "--since", offset, "--until", "1h") == ["old-error", "day-ok"]
    assert _listed(store_root, "--thread", "thread-a") == ["old-ok", "day-ok"]
    assert _listed(store_root, "--model", "large", "--run-status", "completed") == ["day-ok"]
    assert _listed(store_root, "--model", "other") == []
    assert _listed(store_root, "--since", (NOW + timedelta(days=1)).strftime("%Y%m%d")) == []


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "24x", "", "99999999999999999d"])
def test_a_mistyped_time_is_a_usage_error_before_any_read(tmp_path: Path, value: str) -> None:
    result = runner.invoke(app, ["traces", "list", "--store", str(tmp_path / "no-store"), "--since", value])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Invalid value for --since:" in said and "is no time" in said and "24h" in said, said
