"""A runs folder where one run.json or stage manifest is damaged (a hand edit, disk trouble, a copy cut short).

Before: a run.json that was JSON but not an object (``[]``) made ``ee runs list/show/prune`` fail as "unexpected
TypeError ... a bug in ee-middleware", one without ``id`` "unexpected KeyError: 'id'", a damaged stage manifest
"unexpected JSONDecodeError"; and with the newest run's run.json cut short, ``ee runs show latest`` answered with the
older run (exit 0, nothing on stderr) and ``runs list`` hid the run. Now the damaged file is named with the fix, ``runs
list`` lists the rest and marks the damaged run, ``latest`` is never quietly another run, and prune keeps what it cannot
read."""

from __future__ import annotations

import json
import time
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
        assert "restore it from a backup, or, when no stage after it has finished, remove it" in " ".join(shown.stderr.split())
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


def test_list_json_says_a_run_with_a_damaged_stage_manifest_is_damaged_as_the_table_does(tmp_path: Path) -> None:
    """Sweep: the table showed ``damaged ?/1``, the JSON ``"status": "succeeded"`` with nothing else: a script reading it
    saw a healthy run. Its recorded status is kept beside."""
    _, older, newer = _two_runs(tmp_path / "runs")
    (newer.folder / "stages" / "select.json").write_text("{cut")
    listed = ee("runs", "list", "--runs", tmp_path / "runs", "--json")
    assert listed.exit_code == 0, listed.output
    by_id = {r["id"]: r for r in json.loads(listed.stdout)}
    assert by_id[older.id]["status"] == "succeeded" and "recorded_status" not in by_id[older.id]
    assert (by_id[newer.id]["status"], by_id[newer.id]["recorded_status"]) == (DAMAGED, "succeeded")
    assert "select.json cannot be read" in by_id[newer.id]["error"]


def test_a_run_folder_without_a_readable_run_json_or_with_its_stages_gone_is_listed_as_damaged(tmp_path: Path) -> None:
    """Sweep: a run folder whose run.json is a folder, or lost, was not listed at all (``latest`` quietly the older run,
    ``show ID``: "no run matches"); a succeeded run whose stages folder is gone listed as ``succeeded 0/1``."""
    import os
    import shutil
    import time

    runs, older, newer = _two_runs(tmp_path / "runs")
    (newer.folder / "run.json").unlink()
    (newer.folder / "run.json").mkdir()
    assert [r.status for r in runs.list()] == ["succeeded", DAMAGED]
    with pytest.raises(JobError, match=r"run.json cannot be read"):
        runs.get("latest").save()  # (never written over)
    shutil.rmtree(newer.folder / "run.json")
    assert [r.id for r in runs.list()] == [older.id], "a run being made (no run.json yet, a few seconds old) is not one yet"
    long_ago = time.time() - 60
    os.utime(newer.folder, (long_ago, long_ago))
    assert [(r.id, r.status) for r in runs.list()] == [(older.id, "succeeded"), (newer.id, DAMAGED)]
    shutil.rmtree(older.folder / "stages")
    listed = ee("runs", "list", "--runs", tmp_path / "runs")
    assert listed.exit_code == 0 and " ".join(listed.output.split()).count("damaged ?/") == 1, listed.output
    shown = ee("runs", "show", older.id, "--runs", tmp_path / "runs")
    assert shown.exit_code == 1 and "succeeded, but its stages folder" in " ".join(shown.output.split())


def test_show_names_a_manifest_value_of_another_shape_than_written(tmp_path: Path) -> None:
    """Sweep: ``outputs.moved = 5`` in a gate manifest: "unexpected TypeError: 'int' object is not iterable" half way
    through the table."""
    _, _, newer = _two_runs(tmp_path / "runs")
    newer.write_stage("gate", {"stage": "gate", "status": "done", "outputs": {"passed": True, "moved": 5, "reasons": 3}})
    newer.update(stage_order=["select", "gate"])
    shown = ee("runs", "show", newer.id, "--runs", tmp_path / "runs")
    said = " ".join(shown.output.split())
    assert shown.exit_code == 1 and "value of a shape this version does not write" in said and "bug in ee-middleware" not in said, said


def test_prune_keeps_the_live_adapters_run_whose_register_manifest_is_gone(tmp_path: Path) -> None:
    """Was (a sweep): prune read a run's candidate from its register manifest alone; with that manifest removed (as a
    damaged manifest's error advised), the run behind the live adapter (or the one a rollback returns to) was removed,
    while `ee runs list` still named its candidate from run.json's outcome."""
    from ee_middleware.adapters.registry import LocalAdapterRegistry
    from ee_middleware.jobs.runs import SUCCEEDED
    from tests.adapters.helpers import write_adapter

    registry = LocalAdapterRegistry(tmp_path / "registry")
    record = registry.register(write_adapter(tmp_path / "adapter"), "shop")
    registry.switch_live(record.name)
    runs = RunsDir(tmp_path / "runs")
    run = runs.create("improve", {"improve": {"app": "shop", "store": "s", "registry": str(tmp_path / "registry")}}, "h")
    run.write_stage("register", {"stage": "register", "status": "done", "attempt": 1, "outputs": {"candidate": record.name}})
    run.update(status=SUCCEEDED, outcome={"candidate": record.name, "promoted": True})
    newer = runs.create("improve", {"improve": {"app": "shop", "store": "s", "registry": str(tmp_path / "registry")}}, "h")
    newer.update(status=SUCCEEDED, outcome={"promoted": False})  # the watermark now
    run.stage_path("register").unlink()
    done = CliRunner().invoke(app, ["runs", "prune", "--runs", str(tmp_path / "runs"), "--json", "--keep", "0", "--dry-run"])
    assert done.exit_code == 0, done.output
    planned = json.loads(done.stdout)
    assert planned["removed"] == [], planned
    why = {entry["id"]: entry["why"] for entry in planned["kept"]}
    assert "is live" in why[run.id] and record.name in why[run.id], why


def test_runs_show_latest_with_a_config_is_its_apps_newest_run(tmp_path: Path) -> None:
    """Was (a sweep): `ee runs show latest --config improve.toml` showed the folder's newest run, of whichever app, though
    several apps' nightly jobs may share a runs folder and a cron check reads it to learn whether its app promoted."""
    runs = RunsDir(tmp_path / "runs")
    mine = runs.create("improve", {"improve": {"app": "shop", "store": "s"}}, "h")
    time.sleep(0.01)  # (a run's id is its millisecond: the other app's run is the newer)
    runs.create("improve", {"improve": {"app": "other.app", "store": "s"}}, "h")
    config = tmp_path / "improve.toml"
    config.write_text(f'[improve]\napp = " shop "\nruns = "{tmp_path / "runs"}"\n')
    shown = CliRunner().invoke(app, ["runs", "show", "latest", "--config", str(config), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["id"] == mine.id
    newest = CliRunner().invoke(app, ["runs", "show", "latest", "--runs", str(tmp_path / "runs"), "--json"])
    assert json.loads(newest.stdout)["id"] != mine.id, "without a config: the folder's newest, as before"
