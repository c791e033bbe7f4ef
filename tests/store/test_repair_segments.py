"""``ee store repair`` takes out a finished spool segment holding a record no read can take (an integer outside 64 bits
an older version stored, a damaged line), as ``ee store compact`` does and by the same code: the segment's whole records
are folded into Parquet parts, the segment is moved to quarantine/ (kept for inspection), and the repair's report says
so. Before, repair said there was nothing to repair and every plain read went on failing on it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.testing.store_conformance import sample_replay_record, sample_trajectory

runner = CliRunner()


def _older_versions_segment(root: Path, *records: dict[str, object]) -> Path:
    """A finished segment written as an older ee-middleware wrote it: it took any integer."""
    writer = spool.SpoolWriter(root / "spool")
    writer.append(records)
    path = writer.seal()
    assert path is not None
    return path


def _trajectory(trajectory_id: str, truncated_chars: int = 0) -> dict[str, object]:
    data = sample_trajectory(trajectory_id).model_dump(mode="json")
    data["steps"][0]["observation"]["truncated_chars"] = truncated_chars
    return {"kind": "trajectory", "data": data}


def test_repair_quarantines_a_segment_holding_an_integer_outside_64_bits(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("stored-before")])
    store.compact()
    replay = sample_replay_record("kept").model_dump(mode="json") | {"seed": 2**63}
    segment = _older_versions_segment(store.root, _trajectory("kept"), _trajectory("huge", 2**64), {"kind": "replay", "data": replay})
    plain = runner.invoke(app, ["traces", "list", "--store", str(store.root), "--json"])
    assert plain.exit_code == 1 and "18446744073709551616" in plain.stderr, plain.output  # what repair is for

    repaired = runner.invoke(app, ["store", "repair", "--store", str(store.root), "--json"])
    assert repaired.exit_code == 0, repaired.output
    report = json.loads(repaired.stdout)
    (moved,) = report["quarantined_segments"]
    assert moved["segment"] == str(segment) and moved["moved_to"] == str(store.root / "quarantine" / segment.name), moved
    assert moved["records_kept"] == 1 and "2 damaged line(s) of one record or more" in moved["reason"], moved
    assert "truncated_chars 18446744073709551616" in moved["reason"], moved
    assert not segment.exists()
    kept = (store.root / "quarantine" / segment.name).read_bytes()
    assert b"18446744073709551616" in kept and b"9223372036854775808" in kept  # kept for inspection, not deleted

    after = runner.invoke(app, ["traces", "list", "--store", str(store.root), "--json"])
    assert after.exit_code == 0, after.output  # reads are complete again: no --allow-partial
    assert sorted(t["id"] for t in json.loads(after.stdout)) == ["kept", "stored-before"]
    assert LocalExperienceStore(store.root).replays().height == 0


def test_repair_leaves_whole_segments_and_live_ones_to_compaction(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    whole = _older_versions_segment(store.root, _trajectory("whole"))
    live = spool.SpoolWriter(store.root / "spool")  # a recorder still writing: never taken from under it
    live.append([_trajectory("live-huge", 2**64)])
    try:
        report = LocalExperienceStore(store.root).repair()
        assert report["quarantined_segments"] == [] and report["quarantined_parts"] == [], report
        assert whole.exists() and live.segment is not None and live.segment.exists()
        assert not (store.root / "quarantine").exists()
    finally:
        live.seal()


def test_repair_quarantines_a_segment_with_a_damaged_line_keeping_its_other_records(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    segment = _older_versions_segment(store.root, _trajectory("first"), _trajectory("second"))
    lines = segment.read_bytes().split(b"\n")
    lines[0] = lines[0][:40] + b"X" + lines[0][41:]  # a flipped byte: its checksum fails
    segment.write_bytes(b"\n".join(lines))
    report = LocalExperienceStore(store.root).repair()
    (moved,) = report["quarantined_segments"]
    assert moved["records_kept"] == 1 and "checksum mismatch" in moved["reason"], moved
    assert LocalExperienceStore(store.root).trajectories()["id"].to_list() == ["second"]


def test_repair_says_in_text_which_segment_it_moved_and_what_it_kept(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    segment = _older_versions_segment(store.root, _trajectory("kept"), _trajectory("huge", 2**64))

    repaired = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert repaired.exit_code == 0, repaired.output
    assert f"Moved spool segment {segment} to {store.root / 'quarantine' / segment.name} (" in repaired.stdout, repaired.stdout
    assert (
        "its 1 whole record(s) are in the store's Parquet parts; the damaged records are kept only in the moved segment." in repaired.stdout
    )
    assert "No damaged parts" not in repaired.stdout

    again = runner.invoke(app, ["store", "repair", "--store", str(store.root)])
    assert again.exit_code == 0 and f"No damaged parts or spool segments in {store.root}." in again.stdout, again.output
