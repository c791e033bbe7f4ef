"""``ee eval``'s own errors: what a missing model and a run folder given as a file say (the real ee command)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval


def test_a_run_without_a_model_names_the_flags_that_give_one(tmp_path: Path) -> None:
    """Before: "Invalid eval configuration: model: Field required", naming no flag."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", "run", "--suite", "bfcl:simple:1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "no model to evaluate: give --model-spec SPEC" in message and "--endpoint URL with --model NAME" in message
    assert "Field required" not in message and not out.exists()
    config = tmp_path / "eval.toml"
    config.write_text('[eval]\nmodel = "oracle"\n')  # a model under [eval] is one
    ok = CliRunner().invoke(app, ["eval", "run", "--suite", "bfcl:simple:1", "--out", str(out), "--config", str(config), "--json"])
    assert ok.exit_code == 0, ok.output


def test_the_gate_given_a_results_file_names_the_run_folder(tmp_path: Path) -> None:
    """Before: a run's results.parquet given as --candidate read "The run folder ... does not exist"."""
    out = tmp_path / "run"
    run_eval(EvalJob(suites=["bfcl:simple:1"], model="oracle", out=str(out)))
    args = ["eval", "gate", "--candidate", str(out / "results.parquet"), "--baseline", str(out), "--min-tasks", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert f"{out / 'results.parquet'} is a file: --candidate takes a run folder" in message, message
    assert f"here {out}" in message and "does not exist" not in message
    assert CliRunner().invoke(app, [*args[:3], str(out), *args[4:]]).exit_code == 0
