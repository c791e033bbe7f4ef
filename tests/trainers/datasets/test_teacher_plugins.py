"""SR teachers given as plug-ins to ``ee datasets build``: their options, and errors they raise or make while they write."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.testing.http import serving

runner = CliRunner()
PLUGINS = "tests.trainers.datasets.teacher_plugins"


def build(store: Path, out: Path, root: str, *args: str) -> Any:
    """``ee [ROOT] datasets build`` of SR from ``store`` into ``out`` (``root``: an option of ``ee`` itself, or "")."""
    command = [root] if root else []
    return runner.invoke(app, [*command, "datasets", "build", "--store", str(store), "--kinds", "sr", "--out", str(out), *args])


def _error_line(result: Any) -> str:
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    return line


@pytest.mark.parametrize(
    ("factory", "raised"),
    [
        ("make_down", "ConnectionError: rationale service at http://rationale.internal returned 503"),
        ("make_bug", "RuntimeError: no rationale for"),
        ("make_bad_sampling", "ConfigError: temperature must be >= 0"),  # ee's plain ConfigError, raised in the plug-in
    ],
)
def test_an_error_a_teacher_raises_names_the_teacher_and_its_line(replayed_store: Path, tmp_path: Path, factory: str, raised: str) -> None:
    """Was: a ConnectionError read 'error: rationale service ... returned 503 (the operation that failed names no file).'
    (no type, no teacher, a file error), a RuntimeError 'unexpected RuntimeError ... (a bug in ee-middleware ...)'."""
    spec = f"{PLUGINS}:{factory}"
    result = build(replayed_store, tmp_path / "data", "", "--teacher", spec)
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert f"The teacher '{spec}' failed in write(cases): {raised}" in line, line
    assert "teacher_plugins.py:" in line and ", in write: `" in line, line
    assert "names no file" not in line and "bug in ee-middleware" not in line, line
    assert "Traceback" not in result.output


def test_verbose_shows_the_traceback_of_a_teachers_error(replayed_store: Path, tmp_path: Path) -> None:
    result = build(replayed_store, tmp_path / "data", "--verbose", "--teacher", f"{PLUGINS}:make_down")
    assert result.exit_code == 1, result.output
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    assert 'raise ConnectionError("rationale service' in result.stderr, result.stderr
    assert "failed in write(cases): ConnectionError" in _error_line(result)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("make_short", r"returned (\d+) texts for (\d+) cases: write\(cases\) must return a list of one text per case"),
        ("make_numbers", r"returned int for case 0 of \d+ \(\d+\), not a text"),
    ],
)
def test_a_teacher_that_does_not_return_one_text_per_case_is_named(
    replayed_store: Path, tmp_path: Path, factory: str, message: str
) -> None:
    """Was: 'unexpected ValueError: zip() argument 2 is shorter than argument 1 (a bug in ee-middleware ...)', and an int
    for a text 'unexpected AttributeError: 'int' object has no attribute 'strip''."""
    import re

    spec = f"{PLUGINS}:{factory}"
    result = build(replayed_store, tmp_path / "data", "", "--teacher", spec)
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    found = re.search(message, line)
    assert found and f"The teacher '{spec}'" in line, line
    if factory == "make_short":
        assert int(found[1]) == int(found[2]) - 1, line
    assert not (tmp_path / "data" / "sr.parquet").exists()


def test_a_teacher_returning_a_generator_of_texts_is_used(replayed_store: Path, tmp_path: Path) -> None:
    result = build(replayed_store, tmp_path / "data", "", "--teacher", f"{PLUGINS}:make_generator", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["datasets"]["sr"]["rows"] > 0


def test_teacher_settings_reach_a_plugin_teacher_from_the_flag_and_the_file(replayed_store: Path, tmp_path: Path) -> None:
    """Was: [datasets.teacher_settings] was refused ('Extra inputs are not permitted') and --teacher-setting did not exist:
    a teacher plug-in could not be given an option."""
    config = tmp_path / "datasets.toml"
    config.write_text(f'[datasets]\nteacher = "{PLUGINS}:make_styled"\n\n[datasets.teacher_settings]\nstyle = "from-file"\nmode = "ok"\n')
    for args, style in (([], "from-file"), (["--teacher-setting", "style=from-flag"], "from-flag")):
        out = tmp_path / f"data-{style}"
        result = build(replayed_store, out, "", "--config", str(config), *args, "--json")
        assert result.exit_code == 0, result.output
        completions = pl.read_parquet(out / "sr.parquet")["completion"].to_list()
        assert completions and all(f"({style}) I call" in json.loads(c)[0]["content"] for c in completions)
        assert json.loads(result.stdout)["config"]["teacher_settings"] == {"style": style, "mode": "ok"}


def test_a_setting_the_teacher_does_not_take_is_named(replayed_store: Path, tmp_path: Path) -> None:
    result = build(replayed_store, tmp_path / "data", "", "--teacher-setting", "stlye=x", "--teacher", f"{PLUGINS}:make_styled")
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert "Bad options for teacher" in line and "stlye (did you mean style?)" in line, line
    bad = build(replayed_store, tmp_path / "data", "", "--teacher-setting", "style")
    assert bad.exit_code == 1 and "--teacher-setting 'style': write KEY=VALUE" in _error_line(bad), bad.output


class _RecordingTeacherServer(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[dict[str, Any], str]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _RecordingTeacherServer.requests.append((body, self.headers.get("Authorization", "")))
        reply = {"choices": [{"message": {"role": "assistant", "content": "I call this because it returns what the task needs."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_an_openai_teacher_gets_its_settings_and_its_api_key_is_not_written(replayed_store: Path, tmp_path: Path) -> None:
    """Was: ee datasets build passed no option to any teacher, so an openai: teacher's max_tokens, timeout_s and api_key
    could not be set."""
    _RecordingTeacherServer.requests.clear()
    out = tmp_path / "data"
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _RecordingTeacherServer)) as url:
        settings = ["--teacher-setting", "max_tokens=77", "--teacher-setting", "timeout_s=30", "--teacher-setting", "api_key=sk-not-shown"]
        result = build(replayed_store, out, "", "--teacher", f"openai:{url}#teacher-model", *settings, "--json")
    assert result.exit_code == 0, result.output
    assert _RecordingTeacherServer.requests
    assert all(body["max_tokens"] == 77 and auth == "Bearer sk-not-shown" for body, auth in _RecordingTeacherServer.requests)
    recorded = (out / "datasets.json").read_text()
    assert "sk-not-shown" not in recorded and "sk-not-shown" not in result.stdout
    assert json.loads(recorded)["config"]["teacher_settings"] == {"max_tokens": 77, "timeout_s": 30, "api_key": "***"}


def test_the_help_of_teacher_lists_the_plugin_forms() -> None:
    result = runner.invoke(app, ["datasets", "build", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert "package.module:factory" in text and "ee_middleware.teachers entry point" in text, text
    assert "--teacher-setting" in text, text
