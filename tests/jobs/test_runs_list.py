"""``ee runs list`` as a person reads it: a table that fits a narrow terminal without cutting words apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir


def _finished_run(runs: RunsDir, app_name: str, candidate: str, *, promoted: bool) -> str:
    run = runs.create("improve", {"improve": {"app": app_name, "store": "/data/experience"}}, "hash")
    run.write_stage("select", {"stage": "select", "status": "done", "outputs": {"new": 13}})
    run.update(
        status="succeeded",
        stage_order=["select"],
        outcome={"candidate": candidate, "gate_passed": promoted, "promoted": promoted},
    )
    return run.id


def test_runs_list_fits_80_columns_without_breaking_words(tmp_path: Path) -> None:
    """At 80 columns (a plain terminal, a CI log) every header and short value was folded into pieces ('stat/us',
    'succ/eede/d', '2026/-11-/30'): the runs folder's table could not be read. Short values now stay whole, the start
    time is the run id's own (it is the start, UTC), and one app is named once, in the title."""
    runs = RunsDir(tmp_path / "runs")
    first = _finished_run(runs, "booking-bot", "booking-bot-v1-4e336746", promoted=False)
    second = _finished_run(runs, "booking-bot", "booking-bot-v2-0c1d2e3f", promoted=True)
    result = CliRunner().invoke(app, ["runs", "list", "--runs", str(runs.root)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    text = result.stdout
    for word in ("status", "stages", "candidate", "gate", "promoted", "succeeded", "fail", "pass", "1/1"):
        assert word in text, (word, text)
    assert first in text and second in text, "the id `ee runs show` takes, whole"
    title = "".join(lines[: next(i for i, line in enumerate(lines) if "status" in line)])  # wraps with the runs folder's path
    assert "2 runs" in title and "booking-bot" in title, "one app: named in the title"

    _finished_run(runs, "calendar-bot", "calendar-bot-v1-11223344", promoted=False)
    several = CliRunner().invoke(app, ["runs", "list", "--runs", str(runs.root)], env={"COLUMNS": "120"})
    assert several.exit_code == 0, several.output
    rows = [line for line in several.stdout.splitlines() if line.strip().startswith("2")]
    assert len(rows) == 3 and all(("booking-bot" in row) != ("calendar-bot" in row) for row in rows), several.stdout


def test_a_killed_run_leaves_the_candidate_column_its_header_at_80_columns(tmp_path: Path) -> None:
    """With a 'running (killed?)' row (a run whose process was killed: what a cron log shows after a node was lost),
    the status column took 17 characters it would not wrap, and at 80 columns the candidate column was squeezed to a
    header of 'te' and names cut into 7-character pieces. The status now wraps at its space and the candidate column
    keeps at least its header's width."""
    runs = RunsDir(tmp_path / "runs")
    _finished_run(runs, "notes-bot", "notes-bot-v1-8c39db52", promoted=True)
    killed = runs.create("improve", {"improve": {"app": "notes-bot", "store": "/data/experience"}}, "hash")
    killed.update(stage_order=["select"])  # 'running' in run.json while no process holds the lock
    result = CliRunner().invoke(app, ["runs", "list", "--runs", str(runs.root)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    [header] = [line for line in lines if "run (started, UTC)" in line]
    assert "candidate" in header.split(), result.stdout
    assert "(killed?)" in result.stdout and killed.id in result.stdout
    rows = [line.split() for line in lines if line.strip()[:8].isdigit()]  # a run's first line: its id, status, ...
    assert any(row[3].startswith("notes-bot-v") for row in rows), result.stdout


def test_runs_show_says_a_killed_run_may_be_dead_as_runs_list_does(tmp_path: Path) -> None:
    """A run whose process was killed (SIGKILL, a node lost) stays 'running' in run.json. `ee runs list` said
    'running (killed?)' (no process holds the runs folder's lock) but `ee runs show` said 'running', and showed its
    unfinished stage as having run 0.0 s: the two commands disagreed about the same run. Both now say the same, and an
    unfinished stage's time is '-'; while a process holds the lock both say 'running'."""
    runs = RunsDir(tmp_path / "runs")
    run = runs.create("improve", {"improve": {"app": "booking-bot", "store": "/data/experience"}}, "hash")
    run.update(stage_order=["select", "train"])
    run.write_stage("select", {"stage": "select", "status": "done", "seconds": 1.5, "outputs": {"new": 3}, "summary": "3 new"})
    run.write_stage("train", {"stage": "train", "status": "running", "attempt": 1, "started_at": "2026-11-30T16:58:20+00:00"})

    def shown(command: str) -> str:
        result = CliRunner().invoke(app, ["runs", command, "--runs", str(runs.root)], env={"COLUMNS": "160"})
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "running (killed?)" in shown("list")
    show = shown("show")
    assert f"ee improve run {run.id}: running (killed?)" in show, show
    [train_row] = [line for line in show.splitlines() if line.startswith("│ train")]
    assert "0.0" not in train_row and " - " in train_row, train_row
    with runs.lock():  # a live process holds the lock: really running
        assert "(killed?)" not in shown("list") and "(killed?)" not in shown("show")

    def as_json(command: str) -> list[bool]:  # `runs show --json` had no lock_held: a killed run read as running (a sweep)
        answer = json.loads(CliRunner().invoke(app, ["runs", command, "--runs", str(runs.root), "--json"]).stdout)
        return [r["lock_held"] for r in (answer if isinstance(answer, list) else [answer])]

    assert as_json("list") == as_json("show") == [False]
    with runs.lock():
        assert as_json("list") == as_json("show") == [True]


def test_a_value_that_cannot_be_computed_is_null_in_run_json_and_json_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # With one held-out state the likelihood's standard error is NaN: run.json, likelihood.json and `ee runs show --json`
    # held 'NaN', which is not JSON (a strict parser, jq, refuses the file).
    import json
    import math

    from ee_middleware.cli.common import print_json
    from ee_middleware.jobs.deploy import compare_likelihood, metrics_moved
    from ee_middleware.jobs.runs import RUN_FILE, Run

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    one_state = {"per_state_nll": {"base": [5.9], "candidate": [5.8]}, "names": {"base": "base", "candidate": "a-v2"}, "baseline": "base"}
    likelihood = compare_likelihood(one_state)
    assert math.isnan(likelihood["se"])
    run = Run(tmp_path, {"id": "r1", "status": "running", "stage_order": ["gate"], "outcome": {"likelihood": likelihood}})
    run.save()
    assert strict((tmp_path / RUN_FILE).read_text())["outcome"]["likelihood"]["se"] is None
    run.write_stage("gate", {"stage": "gate", "status": "done", "outputs": {"likelihood": likelihood}})  # what the gate writes
    assert strict(run.stage_path("gate").read_text())["outputs"]["likelihood"]["se"] is None
    assert run.outputs("gate")["likelihood"]["se"] is None
    print_json({"models": [{"paired_se": math.nan, "paired_diff": -0.1, "values": (math.inf, 1.0)}]})
    assert strict(capsys.readouterr().out) == {"models": [{"paired_se": None, "paired_diff": -0.1, "values": [None, 1.0]}]}
    [line] = metrics_moved({}, likelihood)
    assert "(-0.100 ± n/a (one state) s.e., 100% of 1 states improved; within 2 s.e.)" in line, line


def test_a_likelihood_with_no_state_scored_is_summed_up_without_failing() -> None:
    # Every held-out completion longer than max_length: no state is scored, mean_nll is NaN in memory and null once
    # read back from likelihood.json; the evaluate stage's summary line formatted it with :.3f and failed.
    import math

    from ee_middleware.jobs.deploy import _eval_line
    from ee_middleware.messages import finite_or_null

    models = [{"model": "base", "mean_nll": math.nan}, {"model": "candidate", "mean_nll": math.nan, "paired_se": math.nan}]
    like = {"states": 0, "baseline": "base", "models": models, "per_state_nll": {"base": [], "candidate": []}, "names": {}}
    for value in (like, finite_or_null(like)):
        assert _eval_line({"runs": {}, "likelihood": value}).endswith("NLL base - -> candidate -")
