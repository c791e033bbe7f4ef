"""``ee traces ingest`` into a store with a damaged part fails naming it, as every command that reads the store does: it
warned, exited 0 and stored again the runs the damaged part held ("2 ingested, 0 already stored" for a file whose runs
were all stored; sweep of 2026-12-07). ``--allow-partial`` ingests all the same, as documented. A real OTLP export, a
real local store, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore

EXPORT = Path(__file__).parents[1] / "ingest" / "fixtures" / "langsmith_langgraph.jsonl"
runner = CliRunner()


def _ingest(store: Path, *flags: str):
    return runner.invoke(app, ["traces", "ingest", str(EXPORT), "--store", str(store), "--no-progress", "--json", *flags])


def test_ingest_into_a_store_with_a_damaged_part_fails_naming_it_and_stores_nothing_twice(tmp_path: Path) -> None:
    store = tmp_path / "experience"
    first = _ingest(store)
    assert first.exit_code == 0 and json.loads(first.stdout)["ingested"] == 2, first.output
    LocalExperienceStore(store).compact()
    (part,) = store.glob("trajectories/part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])

    damaged = _ingest(store)
    assert damaged.exit_code == 1, damaged.output
    error = json.loads(damaged.stdout)["error"]
    assert error["type"] == "StoreDamagedError" and str(part) in error["message"], error
    assert "ee store repair" in error["message"]
    assert list(store.glob("spool/*.jsonl")) == [], "nothing was written"

    partial = _ingest(store, "--allow-partial")
    assert partial.exit_code == 0, partial.output
    assert "Skipped unreadable Parquet part" in partial.stderr
