"""Continued runs, end to end through ``ee improve`` on real BFCL expert trajectories and a tiny random Llama (TEST
model): a run continued to success reads as one that succeeded (rimprove finding 3), and a forced run that selected
nothing selects again once trajectories are approved (finding 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import write_config

pytestmark = pytest.mark.heavy  # whole ee improve runs, continued


def improve(path: Path, *flags: str):
    return CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress", "--json", *flags])


def test_a_run_continued_to_success_keeps_no_failure_fields_and_names_its_own_process(workspace: Path, tiny_base: Path) -> None:
    path = write_config(workspace, tiny_base)
    good = path.read_text()
    heldout = next(line for line in good.splitlines() if line.startswith("heldout_ids"))
    path.write_text(good.replace(heldout, 'heldout_app = "no-such-app"'))
    assert improve(path).exit_code == 1
    runs = RunsDir(workspace / "runs")
    [run] = runs.list()
    assert run.data["failed_at"] and run.data["traceback"]
    run.update(pid=1)  # as the process of the first attempt, another than this one, left it
    path.write_text(good)
    result = improve(path)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    for data in (shown, runs.get(run.id).data):
        assert data["status"] == "succeeded" and not {"failed_at", "error", "traceback"} & set(data), data
        assert data["pid"] == os.getpid() and data["attempts"] == 2
        [earlier] = data["earlier_attempts"]
        assert earlier["pid"] == 1 and earlier["ended"] == "failed" and earlier["stage"] == "datasets"
        assert "heldout_app" in earlier["error"] and earlier["traceback"]


def _set_pending(store_path: Path) -> list[str]:
    """Every trajectory of the store back to pending review (as if none had been approved yet); their ids."""
    from ee_middleware.records import ApprovalEvent
    from ee_middleware.store.registry import open_store

    store = open_store(store_path, create=False)
    try:
        ids = store.trajectories()["id"].to_list()
        store.set_approval([ApprovalEvent(trajectory_id=i, status="pending", by="test") for i in ids])
        assert store.trajectories(status="approved").height == 0
    finally:
        store.close()
    return ids


def test_a_forced_run_that_selected_nothing_selects_again_once_trajectories_are_approved(workspace: Path, tiny_base: Path) -> None:
    # Was: continued with its old, empty selection: datasets built from trajectories it never replayed, its report saying
    # they await review, its watermark None, so that the next run selected, replayed and trained on them again.
    from ee_middleware.store.registry import open_store

    path = write_config(workspace, tiny_base)
    ids = _set_pending(workspace / "experience")
    failed = improve(path, "--force")
    assert failed.exit_code == 1, failed.output
    runs = RunsDir(workspace / "runs")
    [run] = runs.list()
    assert run.outputs("select")["nothing_new"] and run.stage("datasets")["status"] == "failed"
    store = open_store(workspace / "experience", create=False)
    try:
        store.approve(ids, by="reviewer")
    finally:
        store.close()

    result = improve(path)
    assert result.exit_code == 0, result.output
    run = runs.get(run.id)
    assert run.status == "succeeded" and len(runs.list()) == 1
    select, replay = run.stage("select"), run.stage("replay")
    assert select["attempt"] == 2 and select["outputs"]["new"] == len(ids) and select["outputs"]["pending_review"] == 0
    assert (
        select["decisions"][0].startswith("run again in attempt 2: its select stage (attempt 1")
        and "selected nothing" in select["decisions"][0]
    )
    assert replay["attempt"] == 2 and replay["outputs"]["trajectories"] == len(ids)
    [reselected] = run.data["reselected"]
    assert reselected["attempt"] == 2
    assert run.data["watermark"]["after"] is not None
    assert "approved_after_select" not in run.outputs("datasets")  # every trajectory it learned from was selected and replayed
    report = (run.folder / "report.md").read_text()
    assert "await review" not in report and "run again in attempt 2" in report

    again = improve(path)  # the watermark covers them: nothing new, nothing trained twice
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "nothing-new", again.output
