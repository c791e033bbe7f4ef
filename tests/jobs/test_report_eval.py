"""The run report's evaluation parts (the chart, the stage summary, the Lineage gate command) from real runs."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from ee_middleware.jobs.deploy import _eval_line
from ee_middleware.jobs.report import build_blocks, chart_figure, suite_labels, to_markdown
from ee_middleware.jobs.runs import Run, RunsDir


def _evaluated_run(tmp_path: Path, config: str, tables: dict[str, Any]) -> Run:
    """A run whose evaluate stage holds two real eval runs (oracle as the candidate, noop as the baseline, 2 tasks), with
    ``config`` as the configuration file the run kept."""
    dirs = {}
    for side, model in (("candidate", "oracle"), ("baseline", "noop")):
        dirs[side] = tmp_path / "eval" / side
        [summary] = run_eval(EvalJob(suites=["bfcl:simple:2"], model=model, out=str(dirs[side])))
        dirs[side] = {"dir": str(dirs[side]), "suites": [summary]}
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "shop"}, **tables}, "hash")
    (run.folder / "config.toml").write_text(config)
    outputs = {"baseline": "base", "candidate": "shop-v1", "runs": dirs}
    run.write_stage("evaluate", {"stage": "evaluate", "status": "done", "outputs": outputs})
    run.update(status="succeeded", stage_order=["evaluate"])
    return run


def _gate_command(run: Run) -> list[str]:
    [row] = [line for line in to_markdown(build_blocks(run)).splitlines() if line.startswith("| eval |")]
    command = row.split("|")[3].strip().strip("`")
    assert command.startswith("ee eval gate "), row
    return shlex.split(command)[1:]


def test_the_lineage_gate_command_takes_the_runs_own_gate_decision_again(tmp_path: Path) -> None:
    """Before: `ee eval gate --candidate C --baseline B`, without the run's [gate] table (min_tasks = 1): it FAILED
    (default min_tasks 20) where the run's gate had PASSED."""
    run = _evaluated_run(tmp_path, '[improve]\napp = "shop"\n\n[gate]\nmin_tasks = 1\n', {"gate": {"min_tasks": 1}})
    args = _gate_command(run)
    assert args[-2:] == ["--policy", str(run.folder / "config.toml")], args
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "PASS" in result.output, result.output
    without = CliRunner().invoke(app, args[:-2])
    assert without.exit_code == 1 and "fewer than min_tasks = 20" in " ".join(without.output.split()), without.output


def test_without_a_gate_table_the_lineage_command_uses_the_defaults_as_the_run_did(tmp_path: Path) -> None:
    run = _evaluated_run(tmp_path, '[improve]\napp = "shop"\n', {"gate": {}})
    args = _gate_command(run)
    assert "--policy" not in args  # the file has no [gate] table for `ee eval gate --policy` to read
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "fewer than min_tasks = 20" in " ".join(result.output.split()), result.output


def test_two_tau_suites_are_told_apart_in_the_chart_and_the_stage_summary() -> None:
    """Before: both bars of eval.png read 'tau' and the evaluate stage said 'baseline tau 0%, tau 25%' (only bfcl suites
    kept their category)."""
    names = ["tau:library:test", "tau:mydomains.flightdesk:domain:test", "bfcl:simple", "traces:/data/store:shop"]
    suites = [{"suite": name, "tasks": 4, "success_rate": rate} for name, rate in zip(names, (0.0, 0.25, 0.5, 1.0), strict=True)]
    ev = {"baseline": "base", "candidate": "shop-v1", "runs": {"candidate": {"suites": suites}, "baseline": {"suites": suites}}}
    figure = chart_figure(ev)
    ticks = [label.get_text().rsplit("\n", 1)[0].replace(":\n", ":") for label in figure.axes[0].get_xticklabels()]
    assert ticks == ["tau:library:test", "tau:flightdesk:test", "bfcl:simple", "traces:shop"], ticks
    assert _eval_line(ev).startswith("baseline tau:library:test 0%, tau:flightdesk:test 25%, bfcl:simple 50%, traces:shop 100%;")
    # Where the short names would be the same, the suites' full names.
    same = ["tau:a.flights:domain:test", "tau:b.flights:domain:test", "traces:/a:shop", "traces:/b:shop"]
    assert suite_labels(same) == same


def test_the_lineage_says_where_the_held_out_likelihood_decided_the_gate_that_ee_eval_gate_does_not_take(tmp_path: Path) -> None:
    """Before: the lineage gave `ee eval gate ...` as the command that shows the gate, which printed PASS (exit 0) for a
    run whose gate FAILED on the likelihood tie-break, and nothing said the likelihood had decided. A gate row now says
    the run's own decision and why, and points at `ee runs show`."""
    run = _evaluated_run(tmp_path, '[improve]\napp = "shop"\n\n[gate]\nmin_tasks = 1\n', {"gate": {"min_tasks": 1}})
    reason = "likelihood: no task changed outcome, and the candidate's held-out action NLL is higher than the baseline's"
    outputs = {"passed": False, "reasons": [reason], "gate_on_likelihood": False}
    said = {"summary": f"fail: {reason}", "decisions": [f"FAIL: {reason} (candidate shop-v1 vs base)"]}  # as the stage writes them
    run.write_stage("gate", {"stage": "gate", "status": "done", "outputs": outputs, **said})
    run.update(stage_order=["evaluate", "gate"])
    markdown = to_markdown(build_blocks(run))
    [stage_row] = [line for line in markdown.split("## Lineage")[0].splitlines() if line.startswith("| gate |")]
    assert stage_row.count(reason) == 1, stage_row  # (was: "fail: R; FAIL: R (candidate ...)")
    lineage = to_markdown(build_blocks(run)).split("## Lineage")[1]
    [row] = [line for line in lineage.splitlines() if line.startswith("| gate |")]
    _, _step, what, follow, _ = row.split("|")
    assert what.strip().startswith(f"failed: {reason}") and "ee eval gate, on task success alone, passes" in what, row
    assert shlex.split(follow.strip().strip("`")) == ["ee", "runs", "show", run.folder.name, "--runs", str(run.folder.parent)]
    shown = CliRunner().invoke(app, shlex.split(follow.strip().strip("`"))[1:])
    assert shown.exit_code == 0 and "likelihood" in shown.output, shown.output
    assert CliRunner().invoke(app, _gate_command(run)).exit_code == 0, "the task-success part alone passes"


def test_with_several_trials_the_report_shows_the_pass_k_the_gate_compared(tmp_path: Path) -> None:
    """With [eval] trials > 1 the gate compares pass^k (a task passes when every trial did), but the report's table,
    chart, stage line and the terminal table showed the per-trial success rate: 75% -> 67% beside '+16.7 points' and a
    gate that PASSED (a report sweep: pass^2 was 50% -> 67%)."""
    from ee_middleware.cli.improve_cmds import results_table

    def suite(rate: float, pass_k: float) -> dict[str, Any]:
        return {"suite": "bfcl:multi_turn_base", "tasks": 6, "trials": 2, "success_rate": rate, "pass_hat_k": pass_k}

    ev = {
        "baseline": "base",
        "candidate": "shop-v1",
        "runs": {
            "baseline": {"dir": str(tmp_path / "b"), "suites": [suite(0.75, 0.5)]},
            "candidate": {"dir": str(tmp_path / "c"), "suites": [suite(2 / 3, 2 / 3)]},
        },
    }
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "shop"}}, "hash")
    run.write_stage("evaluate", {"stage": "evaluate", "status": "done", "outputs": ev})
    run.update(status="succeeded", stage_order=["evaluate"])
    report = to_markdown(build_blocks(run))
    [row] = [line for line in report.splitlines() if line.startswith("| bfcl:multi_turn_base |")]
    assert "| 50.0% | 66.7% |" in row and "75.0%" not in row, row
    assert "pass^2 (2 trials, every one passed), as the gate compares it" in report
    figure = chart_figure(ev)
    heights = [round(bar.get_height(), 1) for bar in figure.axes[0].patches]
    assert heights == [50.0, 66.7] and figure.axes[0].get_ylabel().startswith("pass^2")
    assert _eval_line(ev) == "pass^2: baseline bfcl:multi_turn_base 50%; candidate bfcl:multi_turn_base 67%"
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(results_table(ev))
    text = console.export_text()
    assert "50.0%" in text and "66.7%" in text and "75.0%" not in text and "pass^2" in text, text

    # one trial: the success rate, named as before
    single = {**ev, "runs": {side: {**r, "suites": [{**s, "trials": 1} for s in r["suites"]]} for side, r in ev["runs"].items()}}
    assert _eval_line(single).startswith("baseline bfcl:multi_turn_base 75%;")
    assert chart_figure(single).axes[0].get_ylabel() == "task success (%)"


def test_the_report_carries_the_notes_that_say_a_number_measures_less(tmp_path: Path) -> None:
    """The gate's notes (answers cut at max_tokens) and the likelihood's states cut from the left were in gate.json and on
    the terminal, never in the report, which also said 'No budget cut anything in this run.' (a report sweep)."""
    suites = [{"suite": "bfcl:simple", "tasks": 2, "trials": 1, "success_rate": 0.5, "pass_hat_k": 0.5}]
    fitted = "6 of the 6 scored held-out states did not fit [train] max_length 64 whole; 6 of them were cut from the left"
    ev = {
        "baseline": "base",
        "candidate": "shop-v1",
        "runs": {side: {"dir": str(tmp_path / side), "suites": suites} for side in ("baseline", "candidate")},
        "likelihood": {
            "states": 6,
            "baseline": "base",
            "fitted": fitted,
            "cut_from_the_left": 6,
            "names": {"base": "base", "candidate": "shop-v1"},
            "models": [
                {"model": "base", "mean_nll": 2.0, "paired_diff": None},
                {"model": "candidate", "mean_nll": 1.9, "paired_diff": -0.1, "paired_se": 0.01, "improved_share": 1.0},
            ],
            "per_state_nll": {"base": [2.0] * 6, "candidate": [1.9] * 6},
        },
    }
    cut = "the baseline run has 9 answer(s) cut off at max_tokens (finish_reason 'length'): its score may show its token limit"
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "shop"}}, "hash")
    run.write_stage("evaluate", {"stage": "evaluate", "status": "done", "outputs": ev})
    run.write_stage(
        "gate",
        {"stage": "gate", "status": "done", "outputs": {"passed": True, "reasons": [], "task_success": {"suites": [], "notes": [cut]}}},
    )
    run.update(status="succeeded", stage_order=["evaluate", "gate"])
    report = " ".join(to_markdown(build_blocks(run)).split())
    assert cut in report and fitted in report and "Read the numbers above with these notes" in report
    assert "No budget of [improve.budgets] cut anything" in report


def test_the_training_line_gives_each_stages_own_losses() -> None:
    """'loss 7.615 -> 7.634' compared the first IWM batch with the last IL batch (a report sweep): it read as a rise where
    IL fell 7.650 -> 7.634. A training of several stages gives each stage's first and last loss."""
    from ee_middleware.trainers.training.report import loss_text

    stages = [
        {"name": "iwm", "steps": 3, "first_loss": 7.615, "final_loss": 7.629},
        {"name": "il", "steps": 3, "first_loss": 7.650, "final_loss": 7.634},
    ]
    metrics = {"first_loss": 7.615, "final_loss": 7.634, "stages": stages}
    assert loss_text(metrics) == "loss iwm 7.615 -> 7.629, il 7.650 -> 7.634"
    assert loss_text({**metrics, "stages": stages[1:]}) == "loss 7.615 -> 7.634"
    assert loss_text({"first_loss": None, "final_loss": None, "stages": []}) == "loss - -> -"


def test_the_chart_gives_many_suites_room_and_cuts_a_long_name_visibly() -> None:
    """Five BFCL suites' labels ran into each other at the fixed width, and a long adapter name was cut at 48 characters
    mid-word without a sign (a report sweep)."""
    names = [f"bfcl:multi_turn_{k}" for k in ("base", "miss_func", "miss_param", "long_context", "composite")]
    suites = [{"suite": name, "tasks": 6, "trials": 1, "success_rate": 0.5} for name in names]
    candidate = "shop-with-a-very-long-adapter-name-v123456789-extra"
    ev = {"baseline": "base", "candidate": candidate, "runs": {side: {"suites": suites} for side in ("baseline", "candidate")}}
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = chart_figure(ev)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.tight_layout()
    boxes = [tick.get_window_extent(renderer=renderer) for tick in figure.axes[0].get_xticklabels()]
    assert len(boxes) == 5 and all(left.x1 < right.x0 for left, right in itertools.pairwise(boxes)), boxes
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend[1].endswith("…)") and len(legend[1]) <= 48 and legend[1].startswith("candidate (shop-with")


def test_the_confidence_interval_is_given_to_a_tenth_of_a_point(tmp_path: Path) -> None:
    """Whole points showed a CI from -0.43 to +9.84 points as [-0, +10]: whether it holds 0 could not be read."""
    suites = [{"suite": "bfcl:simple", "tasks": 100, "trials": 1, "success_rate": 0.5, "pass_hat_k": 0.5}]
    ev = {
        "baseline": "base",
        "candidate": "shop-v1",
        "runs": {s: {"dir": str(tmp_path / s), "suites": suites} for s in ("baseline", "candidate")},
    }
    compared = {"suite": "bfcl:simple", "delta": 0.04, "ci_low": -0.0043, "ci_high": 0.0984, "p_value": 0.125}
    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "shop"}}, "hash")
    run.write_stage("evaluate", {"stage": "evaluate", "status": "done", "outputs": ev})
    gate = {"passed": True, "reasons": [], "task_success": {"suites": [compared], "notes": []}}
    run.write_stage("gate", {"stage": "gate", "status": "done", "outputs": gate})
    run.update(status="succeeded", stage_order=["evaluate", "gate"])
    [row] = [line for line in to_markdown(build_blocks(run)).splitlines() if line.startswith("| bfcl:simple |")]
    assert "| +4.0 | [-0.4, +9.8] |" in row, row
