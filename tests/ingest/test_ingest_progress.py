"""``ee traces ingest`` on a large export (ingest-at-scale sweep): it shows its progress (files read, traces assembled)
rather than nothing for minutes, and the store's warnings (a spool to compact) as ``warning:`` lines, not as Python's
warning with a file name, line number and source line. Real OTLP files, a real local store, the real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from ee_middleware.store import spool_cache

FIXTURES = Path(__file__).parent / "fixtures"


def _files(tmp_path: Path, n: int) -> list[Path]:
    source = sorted(FIXTURES.glob("*.jsonl"))[:n]
    copies = []
    for i, path in enumerate(source):
        copies.append(tmp_path / f"{i}-{path.name}")
        shutil.copyfile(path, copies[-1])
    return copies


def test_ingest_files_reports_its_progress(tmp_path: Path) -> None:
    files = _files(tmp_path, 3)
    seen: list[tuple[str, int, int | None]] = []
    report = ingest_files(files, tmp_path / "store", on_progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert [s for s in seen if s[0] == "files read"] == [("files read", i, 3) for i in (1, 2, 3)]
    assembled = [s for s in seen if s[0] == "traces assembled"]
    assert assembled and assembled[-1][1] == assembled[-1][2] and [s[1] for s in assembled] == list(range(1, len(assembled) + 1))
    assert report.runs >= 1


def test_the_cli_says_a_store_warning_as_a_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_cache, "LARGE_SPOOL_BYTES", 100)
    files = _files(tmp_path, 2)
    runner = CliRunner()
    first = runner.invoke(app, ["traces", "ingest", str(files[0]), "--store", str(tmp_path / "store")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["traces", "ingest", *map(str, files), "--store", str(tmp_path / "store")])
    assert again.exit_code == 0, again.output
    assert "warning: " in again.output and "ee store compact" in again.output, again.output
    assert ".py:" not in again.output and "LargeSpoolWarning" not in again.output, again.output
    assert "files read" in again.output and "traces assembled" in again.output


def test_no_progress_draws_no_bars(tmp_path: Path) -> None:
    """(review) --progress/--no-progress as every other command with bars has it (a nightly log can leave them out)."""
    files = _files(tmp_path, 1)
    result = CliRunner().invoke(app, ["traces", "ingest", str(files[0]), "--store", str(tmp_path / "store"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "files read" not in result.output and "ingested" in result.output


def test_a_folder_stands_for_its_otlp_files(tmp_path: Path) -> None:
    """(ingest-at-scale sweep) A folder argument failed with 'Is a directory'; a shell glob of the many thousand files a
    Collector's exporter rotates into one can pass the system's argument limit. Its *.json, *.jsonl and gzip'd files are
    read (not its subfolders, nor hidden or other files); a folder holding none is a problem naming what it looked for."""
    import gzip

    folder = tmp_path / "otlp"
    (folder / "sub").mkdir(parents=True)
    one, two = _files(tmp_path, 2)
    shutil.copyfile(one, folder / "traces-1.jsonl")
    with gzip.open(folder / "traces-2.json.gz", "wb") as packed:
        packed.write(two.read_bytes())
    (folder / "notes.txt").write_text("not otlp")
    (folder / ".traces-3.jsonl").write_text("{")  # a file being written, hidden
    shutil.copyfile(one, folder / "sub" / "other.jsonl")
    whole = ingest_files([one, two], tmp_path / "whole")
    read = ingest_files([folder], tmp_path / "store")
    assert read.problems == 0 and read.files == 2, read.errors
    assert (read.runs, len(read.ingested)) == (whole.runs, len(whole.ingested))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["traces", "ingest", str(empty), "--store", str(tmp_path / "s2")])
    assert result.exit_code == 1 and "a folder with no OTLP file in it" in " ".join(result.output.split()), result.output
