"""``ee store`` and ``ee traces`` on damaged, read-only and full stores: one clear line, no traceback,
no answer that hides damage, no temporary file left behind."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store import local as local_module
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.cli.json_failure import json_failure
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write
from tests.store.mounts import read_only_view

runner = CliRunner()


def ee(*args: str):
    return runner.invoke(app, list(args))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _leftovers(root: Path) -> list[str]:
    return sorted(name for name in _files(root) if name.endswith(".tmp") or "/.part-" in name)


@pytest.fixture
def damaged(store_path: Path) -> tuple[Path, Path]:
    """A store of three compactions whose second trajectories part is truncated (51 rows in the issue)."""
    store = LocalExperienceStore(store_path)
    parts: list[Path] = []
    for batch in range(3):
        before = set(store_path.glob("trajectories/part-*.parquet"))
        store.write([sample_trajectory(f"b{batch}-{i}") for i in range(4)])
        store.approve([f"b{batch}-{i}" for i in range(4)], by="alice")
        store.compact()
        parts += sorted(set(store_path.glob("trajectories/part-*.parquet")) - before)
    part = parts[1]
    part.write_bytes(part.read_bytes()[:200])
    return store_path, part


def test_a_damaged_part_fails_the_listing_unless_partial_answers_are_allowed(damaged: tuple[Path, Path]):
    store_path, part = damaged
    listing = ee("traces", "list", "--store", str(store_path), "--json")
    assert listing.exit_code == 1, listing.output
    assert "Traceback" not in listing.output and json_failure(listing, "StoreDamagedError"), "no incomplete answer is printed"
    assert str(part) in listing.stderr and "ee store repair" in listing.stderr and "--allow-partial" in listing.stderr
    partial = ee("traces", "list", "--store", str(store_path), "--json", "--allow-partial")
    assert partial.exit_code == 0, partial.output
    assert {r["id"] for r in json.loads(partial.stdout)} == {f"b{b}-{i}" for b in (0, 2) for i in range(4)}, "the rest is read"
    assert f"warning: Skipped unreadable Parquet part {part}" in partial.stderr
    for command in (("store", "info"), ("traces", "show", "b0-1")):
        failed = ee(*command, "--store", str(store_path))
        assert failed.exit_code == 1 and str(part) in failed.stderr, (command, failed.output)


def test_export_refuses_an_incomplete_answer_and_writes_nothing(damaged: tuple[Path, Path], tmp_path: Path):
    store_path, part = damaged
    out = tmp_path / "out" / "train.jsonl"
    refused = ee("traces", "export", "--store", str(store_path), "-f", "jsonl", "--out", str(out))
    assert refused.exit_code == 1 and str(part) in refused.stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == [], "no file, no temporary file"
    allowed = ee("traces", "export", "--store", str(store_path), "-f", "jsonl", "--out", str(out), "--allow-partial")
    assert allowed.exit_code == 0 and "Wrote 16 examples" in allowed.stdout  # 8 trajectories, their answers offered no tools


def test_compact_says_which_damaged_spool_segment_it_moved_to_quarantine(store_path: Path):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(name) for name in ("before", "damaged", "after")])
    segment = store._writer.segment
    store.close()
    segment.write_bytes(segment.read_bytes().replace(b"damaged", b"dXmaged"))  # bit rot: a checksum no longer matches
    compacted = ee("store", "compact", "--store", str(store_path))
    assert compacted.exit_code == 0, compacted.output  # the store is whole again: what was readable is in parts
    assert f"warning: Moved the spool segment {segment.name} to {store_path / 'quarantine' / segment.name}" in compacted.stderr
    assert "1 damaged line(s) of one record or more" in compacted.stderr and "lost to the store" in compacted.stderr
    assert "ee store repair" not in compacted.stderr, "a spool segment needs no repair after compaction"
    assert (store_path / "quarantine" / segment.name).exists()


def test_repair_quarantines_the_damaged_part_and_reads_are_complete_again(damaged: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch):
    store_path, part = damaged
    monkeypatch.setattr(local_module, "MAX_PARTS_BEFORE_MERGE", 2)  # the next compaction merges, and meets the damage
    compacted = ee("store", "compact", "--store", str(store_path))
    assert compacted.exit_code == 1 and str(part) in compacted.stderr and "ee store repair" in compacted.stderr, compacted.output
    assert part.exists(), "compaction leaves a damaged part as it is"
    repaired = ee("store", "repair", "--store", str(store_path), "--json")
    assert repaired.exit_code == 0, repaired.output
    (moved,) = json.loads(repaired.stdout)["quarantined_parts"]
    assert moved["part"] == str(part) and Path(moved["moved_to"]).exists() and not part.exists()
    listing = ee("traces", "list", "--store", str(store_path), "--json")
    assert listing.exit_code == 0 and listing.stderr == "", listing.output
    assert len(json.loads(listing.stdout)) == 8
    info = json.loads(ee("store", "info", "--store", str(store_path), "--json").stdout)
    assert info["quarantined_parts"] == 1
    again = ee("store", "repair", "--store", str(store_path))
    assert again.exit_code == 0 and "No damaged parts or spool segments" in again.stdout


def test_export_to_an_existing_folder_is_one_line_and_leaves_nothing(store_path: Path, tmp_path: Path):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(f"t{i}", steps=30) for i in range(20)])
    store.approve([f"t{i}" for i in range(20)], by="alice")
    folder = tmp_path / "exports"
    folder.mkdir()
    before = _files(tmp_path)
    for fmt in ("jsonl", "parquet"):
        result = ee("traces", "export", "--store", str(store_path), "-f", fmt, "--out", str(folder))
        assert result.exit_code == 1, result.output
        assert result.stderr.count("\n") == 1 and "is a folder" in result.stderr and f"train.{fmt}" in result.stderr
        assert _files(tmp_path) == before, "no temporary file survives"


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("t0")])
    store.approve(["t0"], by="alice")
    real_replace = os.replace

    def disk_full(src: str, dst: str) -> None:
        if str(dst).endswith("train.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr("ee_middleware._files.os.replace", disk_full)
    result = ee("traces", "export", "--store", str(store_path), "-f", "jsonl", "--out", str(tmp_path / "train.jsonl"))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "free space" in result.stderr, result.output
    assert [p.name for p in tmp_path.iterdir() if p.name != store_path.name] == []


def test_compact_on_a_full_disk_is_one_line_changes_nothing_and_leaves_nothing(store_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("t0")])
    store.close()
    before = _files(store_path)
    real_write = pl.DataFrame.write_parquet
    calls = []

    def fills_up(self: pl.DataFrame, file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:  # the trajectories part is written, the steps part hits the full disk
            file.write(b"PAR1 half")  # polars had begun the file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", fills_up)
    result = ee("store", "compact", "--store", str(store_path))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "No space left on device" in result.stderr and "Nothing stored was changed" in result.stderr
    assert _files(store_path) == before | {".compact.lock"}, "no part, temporary file or manifest is left behind"
    monkeypatch.undo()
    assert LocalExperienceStore(store_path).get("t0").num_steps == 3
    assert ee("store", "compact", "--store", str(store_path)).exit_code == 0


def test_compact_and_create_on_a_read_only_file_system_injected(store_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("t0")])
    store.close()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))

    monkeypatch.setattr(local_module, "open", read_only, raising=False)  # the compaction lock is the first write
    result = ee("store", "compact", "--store", str(store_path))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "Read-only file system" in result.stderr, result.output
    assert "remount it read-write" in result.stderr
    spans = _write(store_path.parent / "spans.jsonl", _request(GENAI_FILE))  # a run to ingest: a new store is created only then
    monkeypatch.setattr(local_module.Path, "mkdir", read_only)
    created = ee("traces", "ingest", str(spans), "--store", str(store_path.parent / "new-store"))
    assert created.exit_code == 1 and "Cannot create an experience store" in created.stderr and "Traceback" not in created.output


def test_read_only_mount_reads_fine_and_writes_fail_with_one_line(store_path: Path, tmp_path: Path):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("t0")])
    store.close()
    with read_only_view(store_path) as view:
        listing = ee("traces", "list", "--store", str(view), "--json")
        assert listing.exit_code == 0 and [r["id"] for r in json.loads(listing.stdout)] == ["t0"]
        for command in (("store", "compact"), ("traces", "approve", "t0", "--by", "alice")):
            result = ee(*command, "--store", str(view))
            assert result.exit_code == 1 and result.stderr.count("\n") == 1, (command, result.output)
            assert "Read-only file system" in result.stderr and "remount it read-write" in result.stderr
        spans = _write(tmp_path / "spans.jsonl", _request(GENAI_FILE))  # a run to ingest: a new store is created only then
        created = ee("traces", "ingest", str(spans), "--store", str(view / "new-store"))
        assert created.exit_code == 1 and "Cannot create an experience store" in created.stderr, created.output
        assert _files(store_path) == _files(view)


def _newer_segment(store_path: Path, spool_module: object) -> Path:
    """A spool segment as an app on a newer ee-middleware writes it: schema 1.9 records with a field this one lacks."""
    newer = []
    for name in ("newer-1", "newer-2"):
        data = sample_trajectory(name).model_dump(mode="json")
        data["schema_version"] = "1.9"
        data["new_top_level_field"] = {"x": 1}
        newer.append({"kind": "trajectory", "data": data})
    segment = store_path / "spool" / "29990101T000000-000000000-newerapp-1-deadbeef.jsonl"
    segment.write_bytes(b"".join(spool_module.encode_line(r) for r in newer))
    return segment


def test_records_of_a_newer_version_are_skipped_with_a_warning_that_says_to_upgrade(store_path: Path):
    """`ee traces list` failed with 'Skipped a spool record that does not fit the schema: ... Extra inputs are not
    permitted' (naming neither the segment nor the fix), and `ee store compact` kept the segment but exited 1 with
    'damaged parts found; run ee store repair' on every run, while repair found nothing to do."""
    from ee_middleware.store import spool as spool_module

    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("mine")])
    store.close()
    segment = _newer_segment(store_path, spool_module)
    listing = ee("traces", "list", "--store", str(store_path), "--json")
    assert listing.exit_code == 0, listing.output
    assert [r["id"] for r in json.loads(listing.stdout)] == ["mine"]
    assert str(segment) in listing.stderr and "newer ee-middleware" in listing.stderr and "Upgrade ee-middleware" in listing.stderr
    assert "does not fit" not in listing.stderr and "repair" not in listing.stderr
    for _ in range(2):  # and on every later run
        compacted = ee("store", "compact", "--store", str(store_path))
        assert compacted.exit_code == 0, compacted.output
        assert f"Kept the spool segment {segment.name}" in compacted.stderr and "upgrade ee-middleware" in compacted.stderr
        assert "repair" not in compacted.output + compacted.stderr
        assert segment.exists(), "kept for a version that reads it"
    assert [r["id"] for r in json.loads(ee("traces", "list", "--store", str(store_path), "--json").stdout)] == ["mine"]


def test_compact_json_says_what_it_folded_and_the_damage_it_found(damaged: tuple[Path, Path]):
    """``ee store compact`` had no --json (earlier notes' L2): a script could tell what it did only from its text."""
    store_path, part = damaged
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("late")])
    store.close()
    compacted = ee("store", "compact", "--store", str(store_path), "--json")
    assert compacted.exit_code == 1, compacted.output
    answer = json.loads(compacted.stdout)
    assert set(answer) == {"store", "segments_folded", "damaged", "unreadable", "warnings"}
    assert answer["store"] == str(store_path) and answer["segments_folded"] == 1 and answer["unreadable"] == []
    assert len(answer["damaged"]) == 1 and str(part) in answer["damaged"][0], answer  # (said once, as on stderr)
    assert ee("store", "repair", "--store", str(store_path)).exit_code == 0
    again = ee("store", "compact", "--store", str(store_path), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["segments_folded"] == 0, again.output


def test_compact_exits_1_on_a_damaged_part_it_does_not_merge(damaged: tuple[Path, Path]):
    """Its help says it exits 1 when it finds a damaged part; it looked at parts only when it merged them (more than 16
    per table), so it exited 0 on a cut-off part."""
    store_path, part = damaged
    compacted = ee("store", "compact", "--store", str(store_path))
    assert compacted.exit_code == 1, compacted.output
    assert str(part) in compacted.stderr and f"ee store repair --store {store_path}" in compacted.stderr
    assert part.exists(), "compaction leaves a damaged part as it is"
    help_text = " ".join(ee("store", "compact", "--help").stdout.split())
    assert "checks every part" in help_text
    assert ee("store", "repair", "--store", str(store_path)).exit_code == 0
    assert ee("store", "compact", "--store", str(store_path)).exit_code == 0
