"""``ee runs list`` with one run whose stage manifest is damaged: the other runs are listed and that one is marked
damaged (as a damaged run.json is), instead of the whole list failing on that file; ``ee runs show`` on it still fails
naming the file and the fix. A manifest (or run.json) that is JSON but holds a field of the wrong type (``outputs`` a
list, ``seconds`` a string) is damaged the same way: before, ``ee runs list`` failed on it as "unexpected TypeError"."""

from __future__ import annotations

import json
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
    assert "restore it from a backup, or, when no stage after it has finished, remove it" in " ".join(shown.stderr.split())
    assert manifest.read_text() == damage, "the damaged file is left as it was"


_DONE = '"stage": "select", "status": "done"'


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (f'{{{_DONE}, "outputs": [1]}}', "its 'outputs' is a JSON array, not an object"),
        (f'{{{_DONE}, "outputs": "new=4"}}', "its 'outputs' is a JSON string, not an object"),
        (f'{{{_DONE}, "inputs": [1]}}', "its 'inputs' is a JSON array, not an object"),
        (f'{{{_DONE}, "decisions": "kept 4"}}', "its 'decisions' is a JSON string, not an array of strings"),
        (f'{{{_DONE}, "decisions": [4]}}', "its 'decisions' is not an array of strings"),
        (f'{{{_DONE}, "summary": 4}}', "its 'summary' is a JSON number, not a string"),
        (f'{{{_DONE}, "error": {{"x": 1}}}}', "its 'error' is a JSON object, not a string"),
        (f'{{{_DONE}, "started_at": 1764500000}}', "its 'started_at' is a JSON number, not a string"),
        (f'{{{_DONE}, "finished_at": "yesterday"}}', "its 'finished_at' 'yesterday' is not an ISO time"),
        (f'{{{_DONE}, "seconds": "2.5"}}', "its 'seconds' is a JSON string, not a number"),
        (f'{{{_DONE}, "seconds": true}}', "its 'seconds' is a JSON true/false, not a number"),
        (f'{{{_DONE}, "attempt": "2"}}', "its 'attempt' is a JSON string, not a whole number"),
        (f'{{{_DONE}, "attempt": 1.5}}', "its 'attempt' is a JSON number, not a whole number"),
        (f'{{{_DONE}, "peak_rss_mb": 120.5}}', "its 'peak_rss_mb' is a JSON number, not an object"),
        (f'{{{_DONE}, "peak_rss_mb": {{"self": "120"}}}}', "its 'peak_rss_mb' is not an object of numbers"),
        (f'{{{_DONE}, "budget_cuts": {{}}}}', "its 'budget_cuts' is a JSON object, not an array"),
        ('{"stage": "select", "status": ["done"]}', "no 'status' in it"),
    ],
)
def test_a_stage_manifest_with_a_field_of_the_wrong_type_is_damaged_not_a_crash(tmp_path: Path, damage: str, named: str) -> None:
    runs = RunsDir(tmp_path / "runs")
    made = []
    for new in (3, 4):
        run = runs.create("improve", {"improve": {"app": "shop"}}, "h1")
        run.write_stage("select", {"stage": "select", "status": "done", "outputs": {"new": new}})
        run.update(status="succeeded", stage_order=["select", "replay"])
        made.append(run)
    manifest = made[1].stage_path("select")
    manifest.write_text(damage)

    listed = ee("runs", "list", "--runs", runs.root)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.split()}
    assert rows[made[0].id][1:3] == ["succeeded", "1/2"] and rows[made[0].id][-1] == "3", rows
    assert rows[made[1].id][1:3] == ["damaged", "?/2"] and rows[made[1].id][-1] == "-", rows

    for shown in (ee("runs", "show", made[1].id, "--runs", runs.root), ee("runs", "show", made[1].id, "--runs", runs.root, "--json")):
        said = " ".join(shown.stderr.split())
        assert shown.exit_code == 1 and said.startswith(f"error: {manifest} cannot be read ({named}"), shown.output
        assert "unexpected" not in said and "restore it from a backup, or, when no stage after it has finished, remove it" in said, said
    assert manifest.read_text() == damage, "the damaged file is left as it was"


def test_a_stage_manifest_as_ee_improve_writes_it_is_read(tmp_path: Path) -> None:
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "shop"}}, "h1")
    manifest = {
        "stage": "select",
        "status": "done",
        "attempt": 2,
        "started_at": "2026-11-30T16:58:20+00:00",
        "finished_at": "2026-11-30T16:58:22+00:00",
        "pid": 4242,
        "seconds": 2,
        "seconds_earlier_attempts": 1.5,
        "untimed_attempts": 1,
        "peak_rss_mb": {"self": 120.5, "children": 0},
        "peak_rss_per_stage": True,
        "inputs": {"watermark": None},
        "summary": "4 new",
        "outputs": {"new": 4},
        "decisions": ["kept 4"],
        "budget_cuts": [{"budget": "hours", "cut": "none"}],
        "incomplete_reads": [],
        "error": None,
        "live_changed": {"app": "shop", "live": None},
    }
    run.write_stage("select", manifest)
    assert run.stage("select") == manifest and run.outputs("select") == {"new": 4}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"outcome": [1]}, "its 'outcome' is a JSON array, not an object"),
        ({"outcome": {"candidate": 5}}, "its 'outcome.candidate' is a JSON number, not a string"),
        ({"config": [1]}, "its 'config' is a JSON array, not an object"),
        ({"job": ["improve"]}, "its 'job' is a JSON array, not a string"),
        ({"stage_order": [{"select": 1}]}, "its 'stage_order' is not an array of strings"),
        ({"stage_order": None}, "its 'stage_order' is null, not an array of strings"),
        ({"budget_cuts": ["x"]}, "its 'budget_cuts' is not an array of objects"),
        ({"watermark": [1]}, "its 'watermark' is a JSON array, not an object"),
        ({"report": "report.md"}, "its 'report' is a JSON string, not an object"),
        ({"started_at": 1764500000}, "its 'started_at' is a JSON number, not a string"),
        ({"attempts": "2"}, "its 'attempts' is a JSON string, not a whole number"),
    ],
)
def test_a_run_json_with_a_field_of_the_wrong_type_is_listed_damaged_not_a_crash(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    runs = RunsDir(tmp_path / "runs")
    made = []
    for new in (3, 4):
        run = runs.create("improve", {"improve": {"app": "shop"}}, "h1")
        run.write_stage("select", {"stage": "select", "status": "done", "outputs": {"new": new}})
        run.update(status="succeeded", stage_order=["select", "replay"], outcome={"candidate": f"shop-{new}"})
        made.append(run)
    path = made[1].folder / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))

    listed = ee("runs", "list", "--runs", runs.root)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.split()}
    assert {"succeeded", "1/2", "shop-3"} <= set(rows[made[0].id]), rows  # (an app column too: the damaged run names none)
    assert "damaged" in rows[made[1].id], rows
    assert runs.last_successful().id == made[0].id, "a damaged run is never the watermark"

    shown = ee("runs", "show", made[1].id, "--runs", runs.root)
    said = " ".join(shown.stderr.split())
    assert shown.exit_code == 1 and said.startswith(f"error: {path} cannot be read ({named}"), shown.output
