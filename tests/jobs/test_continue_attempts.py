"""A continued run's record: the attempt that ended goes into ``earlier_attempts`` and the fields that told how it ended
leave run.json's top level; ``pid`` and ``host`` are the attempt that runs now (rimprove finding 3)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ee_middleware.jobs.report import build_blocks, to_markdown
from ee_middleware.jobs.runs import FAILED, RUNNING, RunsDir, continue_attempt


def _failed(tmp_path: Path):
    runs = RunsDir(tmp_path / "runs")
    run = runs.create("improve", {"improve": {"app": "shop"}}, "h")
    run.update(stage_order=["select", "datasets"], pid=21544, host="night-box")
    run.write_stage("select", {"stage": "select", "status": "done", "attempt": 1, "outputs": {}})
    run.write_stage("datasets", {"stage": "datasets", "status": "failed", "attempt": 1, "error": "KeyboardInterrupt: SIGINT (Ctrl-C)"})
    run.update(
        status=FAILED,
        failed_at="2026-12-03T16:47:39+00:00",
        error="KeyboardInterrupt: SIGINT (Ctrl-C)",
        traceback="Traceback (most recent call last): ...",
    )
    return runs, run


def test_a_continued_attempt_clears_how_the_last_one_ended_and_records_its_own_process(tmp_path: Path) -> None:
    # Was: a run continued to success kept failed_at, the old traceback and attempt 1's pid in run.json and --json.
    runs, run = _failed(tmp_path)
    continue_attempt(run)
    data = runs.get(run.id).data
    assert data["status"] == RUNNING and data["attempts"] == 2
    assert not {"failed_at", "error", "traceback"} & set(data), data
    assert data["pid"] == os.getpid() and data["host"] == socket.gethostname() and data["resumed_at"]
    [earlier] = data["earlier_attempts"]
    assert earlier["attempt"] == 1 and earlier["pid"] == 21544 and earlier["host"] == "night-box" and earlier["ended"] == "failed"
    assert earlier["ended_at"] == "2026-12-03T16:47:39+00:00" and earlier["stage"] == "datasets"
    assert earlier["error"].startswith("KeyboardInterrupt") and earlier["traceback"].startswith("Traceback")
    assert earlier["started_at"] == data["started_at"]

    # killed outright (run.json still says running): the next attempt says so, and the history grows
    continue_attempt(run)
    data = runs.get(run.id).data
    assert data["attempts"] == 3 and [a["attempt"] for a in data["earlier_attempts"]] == [1, 2]
    second = data["earlier_attempts"][1]
    assert second["ended"] == "killed" and second["pid"] == os.getpid() and "without marking the run" in second["error"]

    report = to_markdown(build_blocks(runs.get(run.id)))
    assert "attempt 1 (pid 21544 on night-box" in report and "failed in its datasets stage at 2026-12-03T16:47:39+00:00" in report
