"""A task with a turn whose ground truth takes more model answers (its calls one answer at a time, then the reply) than
``--max-steps-per-turn`` lets a turn have is said before the run: a model that calls as the ground truth does (the
oracle included) is cut off before the turn ends, whatever it would have done. Before, such a task loaded silently and
even the oracle failed it. The REAL library tau domain, REAL BFCL entries and the REAL eval runner, with the
oracle."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import answers_to_follow, run_eval
from ee_middleware.evals.suites import load_suite


def test_the_answers_a_turn_takes_its_calls_one_at_a_time_then_the_reply() -> None:
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}
    reply = {"role": "assistant", "content": "Done."}
    assert answers_to_follow([]) == 1
    assert answers_to_follow([call, call, reply]) == 3
    assert answers_to_follow([call]) == 2  # BFCL's ground truth: a turn's calls in one answer, no reply recorded


def test_a_step_limit_shorter_than_a_ground_truth_turn_is_said_and_the_limit_it_names_is_enough(tmp_path: Path) -> None:
    tasks = load_suite("tau:library").tasks()
    most = max(answers_to_follow(turn) for task in tasks for turn in task.reference)
    assert most >= 3, "the library's tasks make several calls in a turn"
    short = 2  # below the longest turn, and below several tasks' turns (more than the three a warning names)
    with pytest.warns(UserWarning, match=r"task\(s\) of tau:library:test have a turn whose ground truth takes more model answers") as said:
        run_eval(EvalJob(suites=["tau:library"], model="oracle", out=str(tmp_path / "short"), max_steps_per_turn=short))
    text = str(said[0].message)
    assert f"than --max-steps-per-turn {short} lets a turn have" in text and f"to at least {most}." in text, text
    over = sum(any(answers_to_follow(turn) > short for turn in task.reference) for task in tasks)
    assert f"ee eval: {over} task(s) of tau:library:test" in text
    assert over > 3 and f", and {over - 3} more)" in text, text  # three named, the rest counted (was: "15 task(s)", three named)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at the limit it names: nothing said, and the oracle passes every task
        [summary] = run_eval(EvalJob(suites=["tau:library"], model="oracle", out=str(tmp_path / "enough"), max_steps_per_turn=most))
    assert summary["success_rate"] == 1.0


def test_bfcl_at_a_limit_of_one_says_nothing_and_passes(tmp_path: Path) -> None:
    """BFCL's loop gives a turn one answer more than the limit (a turn still calling in it is force-quit), and its
    ground truth makes a turn's calls in one answer: a limit of 1 is enough, and nothing is said."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [summary] = run_eval(EvalJob(suites=["bfcl:multi_turn_base:3"], model="oracle", out=str(tmp_path / "bfcl"), max_steps_per_turn=1))
    assert summary["success_rate"] == 1.0


def test_ee_eval_run_says_it_in_one_warning_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    args = ["eval", "run", "--suite", "tau:library:3", "--model-spec", "oracle", "--max-steps-per-turn", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "ground truth takes more model answers" in line]
    assert len(said) == 1 and said[0].startswith("warning: ee eval: "), result.stderr
    assert "UserWarning" not in result.stderr and "run_eval(" not in result.stderr, result.stderr
