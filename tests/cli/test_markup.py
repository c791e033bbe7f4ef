"""Text that comes from users, configs and errors is printed as it is: brackets are not rich markup."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.cli.improve_cmds import RichProgress
from ee_middleware.jobs.runs import RunsDir

ERROR = "/work/ee.toml has no [replay] table but has [replays]: did you mean [replay]? (list[/] of [red])"


def test_runs_show_prints_a_failed_runs_error_with_its_brackets(tmp_path: Path) -> None:
    runs = RunsDir(tmp_path / "runs")
    run = runs.create("improve", {}, "hash")
    run.data.update(status="failed", error=ERROR)
    run.save()
    shown = CliRunner().invoke(app, ["runs", "show", run.id, "--runs", str(tmp_path / "runs")], terminal_width=400)
    assert shown.exit_code == 0, shown.output  # was: "unexpected MarkupError" on [/]; [replay] and [red] vanished
    assert ERROR in " ".join(shown.stdout.split())


def test_improves_progress_lines_keep_brackets() -> None:
    out = Console(record=True, width=400)
    progress = RichProgress(out)
    progress.info("check [datasets] kinds")
    progress.stage_done("replay", 1.0, "skipped arr[i] [/]")
    text = out.export_text()
    assert "check [datasets] kinds" in text and "skipped arr[i] [/]" in text
