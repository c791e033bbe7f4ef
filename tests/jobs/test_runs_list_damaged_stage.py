"""``ee runs list`` with one run whose stage manifest is damaged: the other runs are listed and that one is marked
damaged (as a damaged run.json is), instead of the whole list failing on that file; ``ee runs show`` on it still fails
naming the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir


def ee(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("damage", ["{cut", "[1, 2]", '{"status": "done"}'])
def test_a_damaged_stage_manifest_marks_its_run_damaged_and_the_others_are_listed(tmp_path: Path, damage: str) -> None:
    runs = RunsDir(tmp_path / "runs")
    made = []
    for new in (3, 4, 5):
        run = runs.create("improve", {"improve": {"app": "shop"}}, "h1")
        run.write_stage("select", {"stage": "select", "status": "done", "outputs": {"new": new}})
        run.update(status="succeeded", stage_order=["select", "replay"])
        made.append(run)
    manifest = made[1].stage_path("select")
    manifest.write_text(damage)

    listed = ee("runs", "list", "--runs", runs.root)
    assert listed.exit_code == 0, listed.output
    rows = {
        line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.split() and line.split()[0] in {r.id for r in made}
    }
    assert rows[made[0].id][1:4] == ["succeeded", "1/2", "-"] and rows[made[0].id][-1] == "3", rows
    assert rows[made[2].id][1:4] == ["succeeded", "1/2", "-"] and rows[made[2].id][-1] == "5", rows
    assert rows[made[1].id][1:3] == ["damaged", "?/2"] and rows[made[1].id][-1] == "-", rows

    shown = ee("runs", "show", made[1].id, "--runs", runs.root)
    assert shown.exit_code == 1 and shown.stderr.startswith(f"error: {manifest} cannot be read ("), shown.output
    assert "restore it from a backup, or remove it" in shown.stderr
    assert manifest.read_text() == damage, "the damaged file is left as it was"
