"""A runs folder where one run.json or stage manifest is damaged (a hand edit, disk trouble, a copy cut short).

Before: a run.json that was JSON but not an object (``[]``) made ``ee runs list/show/prune`` fail as "unexpected
TypeError ... a bug in ee-middleware", one without ``id`` "unexpected KeyError: 'id'", a damaged stage manifest
"unexpected JSONDecodeError"; and with the newest run's run.json cut short, ``ee runs show latest`` answered with the
older run (exit 0, nothing on stderr) and ``runs list`` hid the run. Now the damaged file is named with the fix, ``runs
list`` lists the rest and marks the damaged run, ``latest`` is never quietly another run, and prune keeps what it cannot
read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.errors import JobError
from ee_middleware.jobs.runs import Run, RunsDir

DAMAGED = "damaged"
DAMAGE = {
    "a JSON list": "[]\n",
    "no id": '{"status": "succeeded"}\n',
    "cut short": None,  # the first 40 bytes of the real file
    "not UTF-8": b"\xff\xfe{",
}


def _two_runs(root: Path) -> tuple[RunsDir, Run, Run]:
    runs = RunsDir(root)
    made = []
    for _ in range(2):
        run = runs.create("improve", {"improve": {"app": "shop", "store": "/data/s"}}, "h1")
        run.write_stage("select", {"stage": "select", "status": "done", "outputs": {"new": 1}})
        run.update(status="succeeded", stage_order=["select"])
        made.append(run)
    return runs, made[0], made[1]


def _damage(run: Run, how: str) -> Path:
    path = run.folder / "run.json"
    damage = DAMAGE[how]
    if damage is None:
        path.write_bytes(path.read_bytes()[:40])
    elif isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        path.write_text(damage)
    return path


def ee(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_newest_run_json_is_named_and_latest_never_means_another_run(tmp_path: Path, how: str) -> None:
    runs, older, newest = _two_runs(tmp_path / "runs")
    path = _damage(newest, how)

    # a prefix of the newest run's id that the older one does not share (they are made milliseconds apart)
    prefix = next(newest.id[:n] for n in range(18, len(newest.id) + 1) if not older.id.startswith(newest.id[:n]))
    for which in ("latest", newest.id, prefix):
        shown = ee("runs", "show", which, "--runs", runs.root, "--json")
        assert shown.exit_code == 1, (which, shown.output)
        assert shown.stderr.startswith(f"error: {path} cannot be read (") and "unexpected" not in shown.stderr, shown.stderr
        assert "restore it from a backup or remove the run's folder" in shown.stderr
        assert json.loads(shown.stdout)["error"]["type"] == "JobError", "not the older run"
    assert "`latest` names" in ee("runs", "show", "latest", "--runs", runs.root).stderr

    listed = ee("runs", "list", "--runs", runs.root, "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[older.id]["status"] == "succeeded", "the readable run is listed as it was"
    assert rows[newest.id]["status"] == DAMAGED and str(path) in rows[newest.id]["error"], rows[newest.id]
    table = ee("runs", "list", "--runs", runs.root)
    assert table.exit_code == 0 and newest.id in table.stdout and DAMAGED in table.stdout, table.output

    pruned = ee("runs", "prune", "--keep", "0", "--runs", runs.root, "--json")
    assert pruned.exit_code == 0, pruned.output
    kept = {row["id"]: row["why"] for row in json.loads(pruned.stdout)["kept"]}
    assert kept[newest.id].startswith("damaged: its run.json cannot be read"), kept
    assert path.is_file(), "a run prune cannot read is kept, for the user to restore"
    assert ee("runs", "show", older.id, "--runs", runs.root).exit_code == 0, "the other runs still show"


def test_a_damaged_stage_manifest_is_named_with_the_fix(tmp_path: Path) -> None:
    runs, _, newest = _two_runs(tmp_path / "runs")
    manifest = newest.stage_path("select")
    for damage in ("{bad", "[1, 2]", '{"status": "done"}'):
        manifest.write_text(damage)
        shown = ee("runs", "show", "latest", "--runs", runs.root)
        assert shown.exit_code == 1 and "unexpected" not in shown.stderr, shown.output
        assert shown.stderr.startswith(f"error: {manifest} cannot be read ("), shown.stderr
        assert "restore it from a backup, or remove it" in shown.stderr
    with pytest.raises(JobError, match="cannot be read"):
        newest.stage("select")
    manifest.unlink()  # what the error says to do
    assert ee("runs", "show", "latest", "--runs", runs.root).exit_code == 0


def test_a_damaged_run_is_never_written_over(tmp_path: Path) -> None:
    runs, _, newest = _two_runs(tmp_path / "runs")
    path = _damage(newest, "a JSON list")
    [_, listed] = runs.list()
    assert listed.damage is not None and listed.status == DAMAGED
    with pytest.raises(JobError):
        listed.update(status="abandoned")
    assert path.read_text() == "[]\n", "its file is left as it was, for the user to restore"
