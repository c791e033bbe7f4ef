"""``ee eval run --suite traces:STORE[:APP]`` without ``--sandbox``, for trajectories of an app that is not BFCL (whose
default sandbox, ``bfcl``, is the only one there is): the suite's tasks cannot be loaded, so the command fails before
anything is written, naming ``--sandbox``. A real create_agent bot recorded into a real store (the helpdesk of
:mod:`tests.evals.test_traces_uncovered_calls`), held out by ``ee datasets build``, and the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from tests.evals.test_traces_uncovered_calls import SANDBOX, _record


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _record(tmp_path_factory.mktemp("traces-no-sandbox"))


@pytest.mark.parametrize("app_part", [":desk", ""])
def test_no_sandbox_for_an_app_that_is_not_bfcl_fails_before_anything_is_written(
    desk: tuple[Path, Path], tmp_path: Path, app_part: str
) -> None:
    """Before: a run folder was written with every task left out ('no sandbox for app ...'), success_rate null, and the
    command exited 0, so CI saw success."""
    store, split = desk
    out = tmp_path / "run"
    args = ["eval", "run", "--suite", f"traces:{store}{app_part}", "--split", str(split), "--model-spec", "oracle"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "--sandbox package.module:factory" in result.output and "'desk'" in result.output, result.output
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_the_same_suite_with_a_sandbox_runs(desk: tuple[Path, Path], tmp_path: Path) -> None:
    store, split = desk
    job = EvalJob(suites=[f"traces:{store}:desk"], model="oracle", out=str(tmp_path / "run"), split=str(split))
    with pytest.raises(ConfigError, match=r"no sandbox to run its 3 held-out trajectories in.*'desk'.*--sandbox"):
        run_eval(job)
    [summary] = run_eval(job.model_copy(update={"sandbox": SANDBOX}))
    assert summary["success_rate"] == 1.0 and summary["tasks"] == 3, summary


@pytest.mark.parametrize(
    ("sandbox", "said"),
    [
        (f"{SANDBOX}x", "has no attribute 'make_sandboxx' (did you mean 'make_sandbox'?)"),
        (SANDBOX.replace("uncovered_calls", "uncovered_callz"), "Cannot import 'tests.evals.test_traces_uncovered_callz'"),
    ],
)
def test_a_sandbox_that_does_not_resolve_fails_before_anything_is_written(
    desk: tuple[Path, Path], tmp_path: Path, sandbox: str, said: str
) -> None:
    """Before: a typo in --sandbox (module or attribute) left every trajectory out ('its world cannot be rebuilt in the
    ... sandbox'), wrote a run folder and exited 0, unlike a typo in --model-spec (sweep s19, finding 3)."""
    from ee_middleware.errors import SandboxError
    from ee_middleware.evals.suites import SuiteSettings, load_suite

    store, split = desk
    out = tmp_path / "run"
    args = ["eval", "run", "--suite", f"traces:{store}:desk", "--split", str(split), "--model-spec", "oracle", "--sandbox", sandbox]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert said in " ".join(result.output.split()), result.output
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    with pytest.raises(SandboxError, match="did you mean" if "attribute" in said else "Cannot import"):
        load_suite(f"traces:{store}:desk", SuiteSettings(split=str(split), sandbox=sandbox))
