"""``ee traces approve|reject --by`` and ``ee traces ingest --approve-by``: an empty or blank name is a usage error, and
nothing is decided."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory


@pytest.fixture
def store(tmp_path: Path) -> Path:
    LocalExperienceStore(tmp_path / "store").write([sample_trajectory("t1")])
    return tmp_path / "store"


@pytest.mark.parametrize("command", ["approve", "reject"])
@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_a_blank_approver_is_a_usage_error_and_nothing_is_decided(store: Path, command: str, name: str) -> None:
    result = CliRunner().invoke(app, ["traces", command, "t1", "--store", str(store), "--by", name])
    assert result.exit_code == 2, result.output
    assert "'--by'" in result.stderr and "e.g. --by alice" in result.stderr, result.stderr
    assert LocalExperienceStore(store).trajectories()["approval"].to_list() == ["pending"]


def test_a_named_approver_is_stored_without_surrounding_blanks(store: Path) -> None:
    result = CliRunner().invoke(app, ["traces", "approve", "t1", "--store", str(store), "--by", " alice "])
    assert result.exit_code == 0, result.output
    assert LocalExperienceStore(store).trajectories()["approval_by"].to_list() == ["alice"]


def test_a_blank_approve_by_on_ingest_is_a_usage_error(tmp_path: Path) -> None:
    spans = tmp_path / "spans.json"
    spans.write_text('{"resourceSpans": []}')
    result = CliRunner().invoke(app, ["traces", "ingest", str(spans), "--store", str(tmp_path / "store"), "--approve-by", "  "])
    assert result.exit_code == 2 and "'--approve-by'" in result.stderr, result.output
    assert not (tmp_path / "store").exists()
