"""``ee traces list --json`` and ``ee traces show --json`` write a time one way: as the trajectory's own times are written
(pydantic's ISO 8601, ``Z`` for UTC). ``show`` gave the approval as ``...Z`` and the same decision in its approval history
as ``...+00:00`` in one document, so a script comparing the two texts found them different."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory


def _json(*args: str) -> object:
    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_an_instant_reads_the_same_in_the_listing_the_trajectory_and_its_approval_history(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("run-1")])
    store.approve("run-1", by="reviewer@example.com", reason="checked")
    store.close()
    shown = _json("traces", "show", "run-1", "--store", str(store.root), "--no-states")
    (listed,) = _json("traces", "list", "--store", str(store.root))
    (decision,) = shown["approval_history"]
    assert decision["at"] == shown["approval"]["at"] == listed["approval_at"]
    assert decision["at"].endswith("Z") and listed["started_at"] == shown["started_at"]
    assert listed["started_at"].endswith("Z") and listed["ended_at"] == shown["ended_at"]
