"""``ee train`` says a warning in one ``warning:`` line, as the other commands do, and says on stderr what an interrupt
left (sweep rtrain finding 7): was, Python's format (the trainer's file, line number and source line after every
``ContextBudgetWarning``), and nothing at all on Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture
def base_and_data(tmp_path: Path) -> tuple[Path, Path]:
    from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, save_tiny_llama
    from tests.trainers.training.conftest import build_tokenizer, write_datasets

    return save_tiny_llama(tmp_path / "base", build_tokenizer(TOOL_CHAT_TEMPLATE)), write_datasets(tmp_path / "data")


def test_a_training_warning_is_one_line_without_the_source_line(base_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    base, data = base_and_data
    command = ["train", "--base-model", str(base), "--data", str(data), "-o", str(tmp_path / "out"), "--max-steps", "1"]
    result = CliRunner().invoke(app, [*command, "--max-length", "96", "--backend", "peft-loop", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    [warning] = [line for line in lines if "lose more than older turns" in line]
    assert warning.startswith("warning: 100% of the 16 IL rows trained on lose more than older turns at max_length=96"), warning
    assert "ContextBudgetWarning" not in result.stderr and "_prepare(" not in result.stderr and ".py:" not in result.stderr
    assert result.stdout.strip() == str(tmp_path / "out")
    assert warnings.showwarning.__module__ != "ee_middleware.cli.train_cmds", "Python's own display is put back"


@pytest.mark.parametrize("when", ["training", "after-writing"])
def test_an_interrupt_says_whether_the_adapter_was_written_and_that_a_rerun_starts_over(
    when: str, base_and_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ee_middleware.trainers.training import api

    base, data = base_and_data
    out = tmp_path / "out"

    def stopped(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    if when == "training":
        monkeypatch.setattr(api, "_run_stages", stopped)
    else:  # the signal came after the adapter was renamed into place
        monkeypatch.setattr(api, "print_summary", stopped)
    command = ["train", "--base-model", str(base), "--data", str(data), "-o", str(out), "--max-steps", "1", "--backend", "peft-loop"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 130, result.output
    line = " ".join(result.stderr.split())
    if when == "training":
        assert (
            f"interrupted: training stopped (SIGINT (Ctrl-C)) before the adapter was written: nothing was written to {out}. "
            "Training keeps no checkpoints: the same command starts it again from the beginning." in line
        ), line
        assert not out.exists()
    else:
        assert f"interrupted: training stopped (SIGINT (Ctrl-C)) after the adapter was written to {out}; it is complete." in line, line
    if when == "training":  # --json's error message is that line's text (was "interrupted ()")
        as_json = CliRunner().invoke(app, [*command, "--json"])
        error = json.loads(as_json.stdout)["error"]
        assert as_json.exit_code == 130 and error["message"].startswith("training stopped (SIGINT (Ctrl-C)) before the adapter"), error
