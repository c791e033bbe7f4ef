"""``ee improve`` says its warnings as ``warning:`` lines on stderr, once each, as the other commands do (docs sweep: an
unknown table such as ``[notify]`` came out as a Python ``UserWarning`` with the library's file, line and source line,
twice in a run). A real config file, the real CLI; the run stops at its preflight check (the store records no app)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from tests.jobs.test_config import _base_folder, _improve_file


def test_an_unknown_table_is_one_warning_line(tmp_path: Path) -> None:
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), '[notify]\nslack_webhook = "https://hooks.example/x"\n')

    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress"])

    lines = [line for line in result.stderr.splitlines() if "[notify]" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "which no ee job reads" in lines[0], result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr, result.stderr
