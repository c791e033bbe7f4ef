"""``ee eval run`` with ``[eval] timeout_s = inf`` stops when it reads the file, with an error naming the setting and a
finite value to use: before, the file loaded and the run failed when the model client was built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob

EVAL = '[eval]\nsuites = ["bfcl:simple"]\nmodel = "openai:http://127.0.0.1:9/v1#m"\nout = "{out}"\ntimeout_s = {timeout}\n'


def test_eval_run_refuses_an_infinite_timeout_in_its_file(tmp_path: Path) -> None:
    config = tmp_path / "eval.toml"
    config.write_text(EVAL.format(out=tmp_path / "out", timeout="inf"))
    result = CliRunner().invoke(app, ["eval", "run", "--config", str(config)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Invalid eval configuration: timeout_s:" in flat and "must be a finite number of seconds" in flat, flat
    assert "e.g. 120" in flat and "(got inf)" in flat, flat
    assert not (tmp_path / "out").exists(), "nothing was run"


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_the_eval_job_refuses_a_timeout_that_is_not_finite_from_code(value: float, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        EvalJob.load(None, suites=["bfcl:simple"], model="noop", out=os.fspath(tmp_path), timeout_s=value)


def test_a_finite_timeout_loads(tmp_path: Path) -> None:
    config = tmp_path / "eval.toml"
    config.write_text(EVAL.format(out=tmp_path / "out", timeout="3600"))
    assert EvalJob.load(config).client_options()["timeout_s"] == 3600.0
