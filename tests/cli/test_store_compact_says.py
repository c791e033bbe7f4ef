"""``ee store compact`` says what it waits for and what it folds (sweep of a store at 100k trajectories, L1-L2): a
second compaction waited for the first without a word, and a compaction of a 350 MB spool printed nothing for half a
minute. A real local store; the lock another process holds is the real ``flock``."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli import store_cmds
from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory


@pytest.fixture
def store(tmp_path: Path) -> Path:
    opened = LocalExperienceStore(tmp_path / "store")
    opened.write([sample_trajectory(f"t{i}") for i in range(3)])
    opened.close()
    return tmp_path / "store"


def test_a_compaction_another_process_runs_is_seen_and_said(store: Path) -> None:
    opened = LocalExperienceStore(store)
    assert not opened.compaction_running()
    with open(store / ".compact.lock", "a") as held:  # (another open file description: what another process holds)
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert opened.compaction_running()
    assert not opened.compaction_running()


def test_compact_says_the_spool_it_folds_when_it_is_large(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = CliRunner().invoke(app, ["store", "compact", "--store", str(store)])
    assert quiet.exit_code == 0 and "compacting" not in quiet.stderr, quiet.output  # (a small spool: nothing to wait for)
    opened = LocalExperienceStore(store)
    opened.write([sample_trajectory("t9")])
    opened.close()
    assert opened.spool_size()[0] == 1 and opened.spool_size()[1] > 0
    monkeypatch.setattr(store_cmds, "SAID_SPOOL_BYTES", 1)
    said = CliRunner().invoke(app, ["store", "compact", "--store", str(store)])
    assert said.exit_code == 0, said.output
    assert "compacting 1 spool segment(s)" in said.stderr and "waiting" not in said.stderr, said.stderr
    assert "Compacted 1 spool segment(s)" in said.stdout


def test_a_compaction_waiting_for_another_says_so_not_the_spool_that_one_folds(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It measured the spool before it waited, and announced a compaction of the size the other one then folded: "compacting
    1 spool segment(s), 53 MB" followed by "Compacted 0 spool segment(s)" (sweep of 2026-12-07)."""
    monkeypatch.setattr(store_cmds, "SAID_SPOOL_BYTES", 1)
    monkeypatch.setattr(LocalExperienceStore, "compaction_running", lambda self: True)
    said = CliRunner().invoke(app, ["store", "compact", "--store", str(store)])
    assert said.exit_code == 0, said.output
    assert "waiting for the compaction of" in said.stderr and "compacting" not in said.stderr, said.stderr


def test_repair_says_it_waits_for_a_compaction_another_process_runs(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repair takes the compaction's lock, and waited for a hung compaction without a word (a multi-process sweep)."""
    quiet = CliRunner().invoke(app, ["store", "repair", "--store", str(store)])
    assert quiet.exit_code == 0 and "waiting" not in quiet.stderr, quiet.output
    monkeypatch.setattr(LocalExperienceStore, "compaction_running", lambda self: True)
    said = CliRunner().invoke(app, ["store", "repair", "--store", str(store)])
    assert said.exit_code == 0 and "waiting for the compaction of" in said.stderr, said.output
