"""``[eval] trials`` has the bound ``--trials`` has (a run lists every task's trials before the first one runs: a
``trials = 100000000000000000`` hung), and ``[eval] temperature`` must be finite as ``--temperature`` must (``inf``
loaded, and failed every request, whose JSON cannot carry it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli import eval_cmds
from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals import job
from ee_middleware.evals.job import EvalJob

EVAL = '[eval]\nsuites = ["bfcl:simple"]\nmodel = "openai:http://127.0.0.1:9/v1#m"\nout = "{out}"\n{setting}\n'


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("trials = 100000000000000000", "trials: Input should be less than or equal to 1000"),
        ("trials = 1001", "trials: Input should be less than or equal to 1000"),
        ("temperature = inf", "temperature: Input should be a finite number"),
        ("temperature = nan", "temperature: Input should be"),
    ],
)
def test_the_file_is_refused_with_a_setting_out_of_its_flags_range(setting: str, said: str, tmp_path: Path) -> None:
    config = tmp_path / "eval.toml"
    config.write_text(EVAL.format(out=tmp_path / "out", setting=setting))
    with pytest.raises(ConfigError) as caught:  # (what ee eval run loads its file with: before, a run that hung)
        EvalJob.load(config)
    assert str(caught.value).startswith("Invalid eval configuration: " + said) and str(config) in str(caught.value), caught.value


def test_eval_run_refuses_an_infinite_temperature_in_its_file_before_it_runs(tmp_path: Path) -> None:
    config = tmp_path / "eval.toml"
    config.write_text(EVAL.format(out=tmp_path / "out", setting="temperature = inf\nretries = 0\ntimeout_s = 5"))
    result = CliRunner().invoke(app, ["eval", "run", "--config", str(config)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Invalid eval configuration: temperature: Input should be a finite number" in flat, flat
    assert not (tmp_path / "out").exists(), "nothing was run"


@pytest.mark.parametrize("values", [{"trials": 10**17}, {"temperature": float("inf")}])
def test_the_eval_job_refuses_them_from_code(values: dict[str, float], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=next(iter(values))):
        EvalJob.load(None, suites=["bfcl:simple"], model="noop", out=str(tmp_path), **values)


def test_the_flag_and_the_file_have_one_bound(tmp_path: Path) -> None:
    assert eval_cmds.MAX_TRIALS == job.MAX_TRIALS
    at_most = EvalJob.load(None, suites=["bfcl:simple"], model="noop", out=str(tmp_path), trials=job.MAX_TRIALS)
    assert at_most.trials == job.MAX_TRIALS
