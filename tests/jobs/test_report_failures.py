"""A run report that cannot be written is said whatever the progress setting, and the run's record no longer names an
earlier attempt's report as its own; ``ee runs show`` says when the files it names are gone. Before (a sweep): under
``--no-progress`` nothing was said, the summary printed the old report's paths, and ``ee runs show`` named report
files that had been removed. Scripted stages, the real registry, run folder and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs import report as report_module
from ee_middleware.jobs.improve import run_improve
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.scripted_stages import script_stages, scripted_config
from tests.jobs.test_promote_live_changed import _adapter


def _shown(config: object) -> str:
    done = CliRunner().invoke(app, ["runs", "show", "latest", "--runs", str(config.runs)], env={"COLUMNS": "300"})  # type: ignore[attr-defined]
    assert done.exit_code == 0, done.output
    return " ".join(done.output.split())


def test_a_report_that_cannot_be_written_is_said_and_not_named_and_missing_files_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = scripted_config(tmp_path)
    script_stages(monkeypatch, _adapter(tmp_path / "trained", seed=3), interrupt="evaluate")
    with pytest.raises(KeyboardInterrupt):
        run_improve(config)
    [run] = RunsDir(config.runs).list()
    assert (run.folder / "report.md").is_file() and RunsDir(config.runs).get(run.id).data["report"]

    def refused(run: object) -> dict[str, Path]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "write_report", refused)
    script_stages(monkeypatch, tmp_path / "trained")
    with pytest.warns(UserWarning, match=r"ee improve: the report could not be written: OSError: \[Errno 28\] No space left"):
        continued = run_improve(config)
    assert continued.status == "succeeded" and "report" not in continued.data, "the first attempt's report is not this one's"
    shown = _shown(config)
    assert "the report could not be written: OSError" in shown and "Report:" not in shown, shown

    monkeypatch.undo()
    (run.folder / "report.md").unlink()
    RunsDir(config.runs).get(run.id).update(report={"markdown": str(run.folder / "report.md"), "html": str(run.folder / "report.html")})
    shown = _shown(config)
    assert f"Report: {run.folder / 'report.md'} not found (removed or moved since the run wrote it)" in shown, shown
