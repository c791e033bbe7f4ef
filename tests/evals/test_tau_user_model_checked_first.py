"""``ee eval run``'s tau user simulator (``--user-model``, ``user_model`` under ``[eval]``) is built before any task runs
and before anything is written, as the model spec is. Before: its client was built per task, so a typo'd spec failed
every task as ``harness_error``, the run exited 0 with 0% success, and the corrected command was refused on that
folder ("holds results of a run with other settings")."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.suites import SuiteSettings, load_suite

from .test_tau import user_server  # noqa: F401 - the scripted user simulator (a real HTTP server)

TYPOS = [
    ("http://127.0.0.1:1/v1", "matches none of the accepted forms"),  # no openai: and no #MODEL
    ("openai:http://127.0.0.1:1/v1", "needs the base URL and the model, separated by '#'"),
    ("ee_no_such_package.users:factory", "Cannot import 'ee_no_such_package.users'"),
    ("ee_middleware.evals.clients:no_such_factory", "has no attribute 'no_such_factory'"),
]


@pytest.mark.parametrize(("spec", "why"), TYPOS)
def test_a_typod_user_model_fails_the_run_before_anything_is_written(tmp_path: Path, spec: str, why: str) -> None:
    out = tmp_path / "run"
    args = ["eval", "run", "--suite", "tau:library:2", "--model-spec", "oracle", "--user-model", spec, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"The tau user simulator {spec!r} (--user-model, or user_model under [eval]) cannot be built" in said, said
    assert why in said and "Accepted forms: 'local:DIR[@ADAPTER]'" in said and "'openai:BASE_URL#MODEL'" in said, said
    assert not out.exists(), "nothing written: the corrected command starts the run afresh"


def test_the_corrected_command_then_runs_into_the_same_folder(tmp_path: Path, user_server: tuple[str, type]) -> None:  # noqa: F811
    url, _ = user_server
    out = tmp_path / "run"
    base = ["eval", "run", "--suite", "tau:library:test:1", "--model-spec", "oracle", "--out", str(out), "--no-progress", "--json"]
    assert CliRunner().invoke(app, [*base, "--user-model", url]).exit_code == 1  # the URL alone: no openai:, no #MODEL
    fixed = CliRunner().invoke(app, [*base, "--user-model", f"openai:{url}#customer"])
    assert fixed.exit_code == 0, fixed.output
    assert '"success_rate": 1.0' in fixed.stdout


def test_the_eval_tables_user_model_is_checked_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "eval.toml"
    out = tmp_path / "run"
    config.write_text(f'[eval]\nsuites = ["tau:library:1"]\nmodel = "oracle"\nout = "{out}"\nuser_model = "customer-sim"\n')
    result = CliRunner().invoke(app, ["eval", "run", "--config", str(config), "--no-progress"])
    assert result.exit_code == 1
    assert "user_model under [eval]" in " ".join(result.output.split()) and not out.exists()


def test_run_eval_and_the_suite_refuse_it_too(tmp_path: Path) -> None:
    """``ee improve``'s evaluate stage and a worker process build the suite the same way."""
    job = EvalJob(suites=["tau:library:1"], model="oracle", out=str(tmp_path / "run"), user_model="openai:http://x/v1")
    with pytest.raises(ConfigError, match=r"The tau user simulator 'openai:http://x/v1' .* cannot be built"):
        run_eval(job)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"user_model under \[eval\]"):
        load_suite("tau:library:1", SuiteSettings(user_model="no-such-client"))
