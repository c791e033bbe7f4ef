"""``ee eval``'s own errors: what a missing model and a run folder given as a file say (the real ee command), and its
--json stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.clients import NoopClient
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


def test_suites_and_out_may_come_from_the_eval_table_alone_and_a_key_spelled_as_its_flag_is_named(tmp_path: Path) -> None:
    """Before: --suite and --out were required flags, so a file's suites and out never stood alone ("Missing option
    '--suite'", exit 2), and suite = [...] (the key spelled as its flag) got that usage error instead of its
    'did you mean suites?'."""
    out = tmp_path / "run"
    config = tmp_path / "eval.toml"
    config.write_text(f'[eval]\nsuites = ["bfcl:simple:1"]\nmodel = "oracle"\nout = "{out}"\n')
    ok = CliRunner().invoke(app, ["eval", "run", "--config", str(config), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["tasks"] == 1 and (out / "results.parquet").is_file()
    elsewhere = tmp_path / "other"  # flags override the file
    flagged = CliRunner().invoke(app, ["eval", "run", "--config", str(config), "--out", str(elsewhere), "--json"])
    assert flagged.exit_code == 0 and (elsewhere / "results.parquet").is_file(), flagged.output

    typo = tmp_path / "typo.toml"
    typo.write_text('[eval]\nsuite = ["bfcl:simple:1"]\nmodel = "oracle"\n')
    for more in ([], ["--out", str(tmp_path / "run2")]):
        result = CliRunner().invoke(app, ["eval", "run", "--config", str(typo), *more])
        assert result.exit_code == 1, result.output
        message = " ".join(result.stderr.split())
        assert "suite: Extra inputs are not permitted (did you mean suites?)" in message and "Missing option" not in message, message

    bare = tmp_path / "model-only.toml"
    bare.write_text('[eval]\nmodel = "oracle"\n')
    result = CliRunner().invoke(app, ["eval", "run", "--config", str(bare)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "no suite to run: give --suite SPEC" in message and 'suites = ["SPEC", ...] under [eval]' in message, message
    assert "no run folder: give --out DIR" in message and 'out = "DIR" under [eval]' in message, message
    assert "no model to evaluate" not in message and "Field required" not in message


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
    folder = CliRunner().invoke(app, [*args[:3], str(out), *args[4:]])  # taken as a run folder: here, the baseline's own
    assert folder.exit_code == 1 and "are the same run folder" in " ".join(folder.output.split()), folder.output


class _ChattyNoop(NoopClient):
    """The noop model, printing about each answer as a chatty model client or library does (a print, a write to file
    descriptor 1)."""

    def complete(self, messages: Any, **options: Any) -> Any:
        print("CHATTY-MODEL by print", flush=True)
        os.write(1, b"CHATTY-MODEL on fd 1\n")
        return super().complete(messages, **options)


def chatty_noop(**options: Any) -> NoopClient:
    """A ``module:factory`` model spec (``tests.cli.test_eval_cmds:chatty_noop``)."""
    return _ChattyNoop()


def test_what_the_models_code_prints_goes_to_stderr_and_json_stdout_is_the_summary_alone(tmp_path: Path) -> None:
    """A model given as module:factory (or a sandbox's tools, in a traces: suite) that printed wrote into `ee eval run
    --json`'s stdout before the summary, as in `ee replay run`; now the command's file descriptor 1 is stderr while it
    runs them (the real ee process: a test runner's captured sys.stdout never sees file descriptor 1)."""
    repository = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "ee_middleware.cli", "eval", "run", "--suite", "bfcl:simple:1", "--out", str(tmp_path / "run")]
    command += ["--model-spec", "tests.cli.test_eval_cmds:chatty_noop", "--no-progress", "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repository), os.environ.get("PYTHONPATH", "")])}
    ran = subprocess.run(command, capture_output=True, text=True, cwd=repository, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "CHATTY-MODEL" not in ran.stdout, ran.stdout
    assert json.loads(ran.stdout)
    assert "CHATTY-MODEL by print" in ran.stderr and "CHATTY-MODEL on fd 1" in ran.stderr


def test_a_malformed_endpoint_is_a_usage_error_naming_what_is_wrong(tmp_path: Path) -> None:
    """Before: ``--endpoint 'http://local host:8000/v1'`` ran the suite and reported the server down on every task (exit
    1 after the whole run), and an unclosed IPv6 bracket was urllib's "Invalid IPv6 URL" from the model client. Now the
    flag is checked as ``--server`` is, before anything runs; a well-formed one still runs."""
    out = tmp_path / "run"
    for endpoint, said in [
        ("http://local host:8000/v1", "a space in it"),
        ("http://[::1:8000/v1", "an unclosed '['"),
        ("localhost:8000/v1", "does not start with http:// or https://"),
        ("http://127.0.0.1:99999/v1", "out of range"),
    ]:
        result = CliRunner().invoke(
            app, ["eval", "run", "--suite", "bfcl:simple:1", "--endpoint", endpoint, "--model", "m", "--out", str(out)]
        )
        message = " ".join(result.stderr.split())
        assert result.exit_code == 2 and "--endpoint" in message and said in message, (endpoint, result.output)
        assert not out.exists()
