"""A run that failed at a stage is continued after the fix of that stage's settings; a change to settings a finished
stage used is refused, naming each one. Through the real ``ee improve`` on real BFCL expert trajectories and a tiny
random Llama (TEST model) as the base."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import stage_times, write_config


def improve(path: Path):
    return CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress", "--json"])


def test_a_run_failed_at_its_datasets_stage_goes_on_after_the_datasets_settings_are_fixed(workspace: Path, tiny_base: Path) -> None:
    # Was: 'Run ... was started with another configuration ... pass --new-run', so fixing the held-out rule threw the
    # finished select and replay stages away. Settings of stages a run has not finished may now change between attempts.
    path = write_config(workspace, tiny_base)
    good = path.read_text()
    heldout = next(line for line in good.splitlines() if line.startswith("heldout_ids"))
    path.write_text(good.replace(heldout, 'heldout_app = "no-such-app"'))  # passes the check, holds out nothing
    failed = improve(path)
    assert failed.exit_code == 1, failed.output
    runs = RunsDir(workspace / "runs")
    [run] = runs.list()
    assert run.status == "failed" and run.stage("datasets")["status"] == "failed" and run.stage_done("replay")
    before = stage_times(run)

    # a setting a finished stage used cannot change: each differing setting is named, with what fixed it
    path.write_text(good.replace("k = 1", "k = 2"))
    refused = improve(path)
    assert refused.exit_code == 1, refused.output
    error = " ".join(refused.stderr.split())
    assert "[replay] k: 1 -> 2 (fixed: its select stage has finished)" in error, error
    assert "[datasets] heldout_app: no-such-app -> (not set) (may change)" in error and "--new-run" in error

    path.write_text(good, encoding="utf-16")  # as PowerShell 5 writes it: read as the first attempt's file was
    resumed = improve(path)
    assert resumed.exit_code == 0, resumed.output
    run = runs.get(run.id)
    assert json.loads(resumed.stdout)["id"] == run.id and run.status == "succeeded" and len(runs.list()) == 1
    after = stage_times(run)
    assert after["select"] == before["select"] and after["replay"] == before["replay"], "finished stages are not redone"
    assert run.stage("datasets")["attempt"] == 2
    [change] = run.data["config_changes"]
    assert change["attempt"] == 2 and any(s.startswith("[datasets] heldout_app: no-such-app -> (not set)") for s in change["settings"])
    assert "heldout_app" in (run.folder / change["config_file_before"]).read_text()
    assert "heldout_app" not in (run.folder / "config.toml").read_text(encoding="utf-8")  # the stages read it as UTF-8
    assert run.data["config"]["datasets"] == {"heldout_ids": heldout.split('"')[1]}
