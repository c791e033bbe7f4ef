"""An ``OSError`` a store plug-in's own code raises names the plug-in and its line (a plug-in sweep of 2026-12-07): an
export told a connection lost mid-read as a local file problem, advising to check the file's permissions and to run
`ee store info --store <the plug-in's location>`, which then failed; `ee replay list` told an I/O error of the
plug-in's backend (EIO, no file named) as one of the user's files. A real SQLite store plug-in, the real CLI."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.records import Trajectory
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.store.sqlite_plugin import SqliteStore

runner = CliRunner()


class DropsItsConnection(SqliteStore):
    """Loses its connection while trajectories are read, and its backend fails reading rollouts."""

    def iter_trajectories(self, *, status: str | None = None) -> Iterator[Trajectory]:
        raise ConnectionResetError("lost connection mid-read")

    def rollouts(self, trajectory_ids: Sequence[str] | None = None, *, replay_id: str | None = None) -> pl.DataFrame:
        raise OSError(errno.EIO, "I/O error reading rollouts")


def open_dropping() -> DropsItsConnection:
    """The factory a --store spec names (it takes no arguments: the file comes from the environment, as a user's would)."""
    return DropsItsConnection(os.environ["TEST_DROPPING_STORE"])


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    db = tmp_path / "experience.sqlite"
    monkeypatch.setenv("TEST_DROPPING_STORE", str(db))
    store = SqliteStore(str(db))
    store.write([sample_trajectory("t1")])
    store.approve(["t1"], by="alice")
    store.close()
    return "tests.cli.test_plugin_store_os_errors:open_dropping"


def _error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)["error"]["message"]


def test_an_export_of_a_plug_in_store_that_fails_names_the_plug_in_not_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _store(tmp_path, monkeypatch)
    result = runner.invoke(app, ["traces", "export", "--store", spec, "--format", "jsonl", "--out", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "failed while the export read it: ConnectionResetError: lost connection mid-read" in message, message
    assert "test_plugin_store_os_errors.py" in message and "Nothing was written to" in message, message
    assert "ee store info" not in message and "permissions" not in message, message
    assert not (tmp_path / "out.jsonl").exists()


def test_an_io_error_a_plug_in_store_raises_names_the_plug_in_and_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _store(tmp_path, monkeypatch)
    message = _error(runner.invoke(app, ["replay", "list", "--store", spec, "--json"]))
    assert "failed: OSError: [Errno 5] I/O error reading rollouts (at " in message, message
    assert "test_plugin_store_os_errors.py" in message and "the operation that failed names no file" not in message, message
