"""An output path on a read-only file system gets advice for an output (a writable output folder, or remount), not the
store's ("copy the store somewhere writable"); a read-only store keeps the store's advice. Real read-only bind mounts
(tests/store/mounts.py; skipped where mounting is refused)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.errors import OutputError
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.store.mounts import read_only_view

OUTPUT_ADVICE = "The file system is mounted read-only: choose an output path on a writable file system, or remount it read-write."


@pytest.fixture
def store(tmp_path: Path) -> Path:
    LocalExperienceStore(tmp_path / "store").write([sample_trajectory("t1")])
    approved = CliRunner().invoke(app, ["traces", "approve", "t1", "--store", str(tmp_path / "store"), "--by", "alice"])
    assert approved.exit_code == 0, approved.output
    return tmp_path / "store"


@pytest.mark.parametrize("out", ["ds", "."])
def test_datasets_build_into_a_read_only_folder_advises_a_writable_output_folder(store: Path, tmp_path: Path, out: str) -> None:
    (tmp_path / "outputs").mkdir()
    with read_only_view(tmp_path / "outputs") as view:
        result = CliRunner().invoke(app, ["datasets", "build", "--store", str(store), "--kinds", "il", "--out", str(view / out)])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert "Read-only file system" in result.stderr and OUTPUT_ADVICE in result.stderr, result.stderr
        assert "copy the store" not in result.stderr
    assert list((tmp_path / "outputs").iterdir()) == []


def test_curriculum_variants_into_a_read_only_folder_advise_a_writable_output_folder(tmp_path: Path) -> None:
    from ee_middleware.cli.curriculum_cmds import _write_variants

    (tmp_path / "outputs").mkdir()
    with read_only_view(tmp_path / "outputs") as view, pytest.raises(OutputError) as raised:
        _write_variants(view / "tasks.jsonl", [{"instruction": "Show the current folder."}])
    assert f"Cannot write {view / 'tasks.jsonl'}: Read-only file system. Nothing was written. {OUTPUT_ADVICE}" == str(raised.value)


def test_a_read_only_store_keeps_the_stores_advice(store: Path) -> None:
    with read_only_view(store) as view:
        result = CliRunner().invoke(app, ["traces", "reject", "t1", "--store", str(view), "--by", "alice", "--force"])
    assert result.exit_code == 1 and "remount it read-write, or copy the store somewhere writable" in result.stderr, result.output


def test_traces_export_into_a_read_only_folder_advises_a_writable_output_folder(store: Path, tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    with read_only_view(tmp_path / "outputs") as view:
        result = CliRunner().invoke(app, ["traces", "export", "--store", str(store), "-f", "jsonl", "-o", str(view / "t.jsonl")])
        assert result.exit_code == 1 and OUTPUT_ADVICE in result.stderr, result.output
        assert "copy the store" not in result.stderr
    assert list((tmp_path / "outputs").iterdir()) == []
