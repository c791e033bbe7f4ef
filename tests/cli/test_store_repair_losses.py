"""``ee store repair`` says which trajectories lost what with the parts it took out (human output and --json, whose
earlier keys stay as they were), and every command that opens a store names a --store that is a file as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

runner = CliRunner()


def ee(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def decided(store_path: Path) -> Path:
    """a, b approved and r rejected ("contains PII"), compacted; then its steps and approvals parts cut off."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(i) for i in ("a", "b", "r")])
    store.approve(["a", "b"], by="alice")
    store.reject(["r"], by="alice", reason="contains PII")
    store.compact()
    for table in ("steps", "approvals"):
        (part,) = store_path.glob(f"{table}/part-*.parquet")
        part.write_bytes(part.read_bytes()[:100])
    return store_path


def test_repair_json_lists_what_each_part_took_and_keeps_its_keys(decided: Path):
    result = ee("store", "repair", "--store", str(decided), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("root", "quarantined_parts", "missing_parts_dropped", "quarantined_segments", "unreadable_files", "replays_reopened"):
        assert key in report
    assert len(report["quarantined_parts"]) == 2
    assert {i["trajectory_id"] for i in report["steps_lost"]} == {"a", "b", "r"}
    # "was": what it showed without the lost part (the decisions in it cannot be read)
    assert {i["trajectory_id"]: i["was"] for i in report["decisions_lost"]} == {"a": "pending", "b": "pending", "r": "pending"}
    by_table = {item["table"]: item for item in report["parts_lost"]}
    assert sorted(by_table["steps"]["trajectories"]) == ["a", "b", "r"]
    assert sorted(by_table["approvals"]["trajectories"]) == ["a", "b", "r"]


def test_repair_says_who_lost_what_and_later_reads_are_honest(decided: Path):
    result = ee("store", "repair", "--store", str(decided))
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "held steps of 3 trajectories now missing some: a, b, r" in out, out
    assert "held approval decisions, which are lost; 3 trajectories may have had one in it" in out
    listed = json.loads(ee("traces", "list", "--store", str(decided), "--json").stdout)
    assert {row["id"]: (row["approval"], row["approval_by"]) for row in listed} == {i: ("rejected", "ee store repair") for i in "abr"}
    assert all("steps were lost in `ee store repair`" in row["approval_reason"] for row in listed)
    shown = " ".join(ee("traces", "show", "r", "--store", str(decided)).stdout.split())
    assert "approval=rejected by ee store repair" in shown and "steps were lost" in shown
    approve = ee("traces", "approve", "a", "--store", str(decided), "--by", "alice")
    assert approve.exit_code == 1 and "steps were lost" in " ".join(approve.output.split())


def test_a_lost_rejection_is_not_silently_pending(store_path: Path):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("r")])
    store.reject(["r"], by="alice", reason="contains PII")
    store.compact()
    (part,) = store_path.glob("approvals/part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    assert ee("store", "repair", "--store", str(store_path)).exit_code == 0
    (row,) = json.loads(ee("traces", "list", "--store", str(store_path), "--json").stdout)
    assert (row["approval"], row["approval_by"]) == ("pending", "ee store repair")
    approve = ee("traces", "approve", "r", "--store", str(store_path), "--by", "bob")
    said = " ".join(approve.output.split())
    assert approve.exit_code == 1 and "may have lost an earlier decision" in said and "--force" in said, said
    forced = ee("traces", "approve", "r", "--store", str(store_path), "--by", "bob", "--force")
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize(
    "command",
    [("store", "info"), ("store", "repair"), ("store", "compact"), ("traces", "list")],
)
def test_a_store_path_that_is_a_file_is_named_as_such(tmp_path: Path, command: tuple[str, ...]):
    plain = tmp_path / "plain.txt"
    plain.write_text("hi\n")
    result = ee(*command, "--store", str(plain))
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "plain.txt is a file, not a folder: pass the store's folder" in said, said
    assert "Record a run" not in said and "Not a directory" not in said
    assert plain.read_text() == "hi\n"
