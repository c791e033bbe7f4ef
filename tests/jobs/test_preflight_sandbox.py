"""``ee improve``'s check before a run starts: a ``traces`` suite needs the evaluation's sandbox to have
``state_digest()``. Without it, every held-out task was left out at the evaluate stage, after replay and training, the
gate failed ('no task was scored') and the run ended with exit status 0, every night. Real TOML files, a real store, the
real command; the sandboxes are a user's own, written as a module of the test."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.runs import RunsDir
from ee_middleware.store import LocalExperienceStore
from tests.jobs.test_config import _base_folder, _improve_file

runner = CliRunner()

SANDBOXES = '''
from ee_middleware.records import Observation

BUILT = []


class FilesSandbox:
    """A user's sandbox: files in a dict; no state_digest()."""

    kind = "files"

    def __init__(self):
        BUILT.append(type(self).__name__)
        self.world = {}

    def covers(self, name):
        return name == "write_file"

    def reset(self, environment):
        self.world = dict((environment or {}).get("files", {}))

    def execute(self, call):
        self.world[call.arguments["path"]] = call.arguments["content"]
        return Observation(content="ok")

    def snapshot(self):
        return dict(self.world)

    def restore(self, snapshot):
        self.world = dict(snapshot)

    def close(self):
        pass


class DigestFilesSandbox(FilesSandbox):
    def state_digest(self):
        return repr(sorted(self.world.items()))


class Wrapper:
    """Hands every attribute on to the sandbox it wraps (its class cannot tell whether state_digest is there)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


def make_sandbox():
    return FilesSandbox()


def make_digest_sandbox() -> DigestFilesSandbox:
    return DigestFilesSandbox()


def make_annotated_without() -> FilesSandbox:
    return FilesSandbox()


def make_subclass_annotated_as_base() -> FilesSandbox:
    return DigestFilesSandbox()


def make_wrapped():
    return Wrapper(DigestFilesSandbox())


def make_wrapped_without():
    return Wrapper(FilesSandbox())


def make_raising():
    raise RuntimeError("the files service is down")
'''


@pytest.fixture
def sandboxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """The user's sandbox module (a name of its own per test: a module is imported once per process)."""
    name = "user_sandboxes_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(SANDBOXES))
    monkeypatch.syspath_prepend(str(folder))
    LocalExperienceStore(tmp_path / "s").close()
    return name


def improve(path: Path):
    return runner.invoke(app, ["improve", "--config", str(path), "--no-progress"])


def _config(tmp_path: Path, sandbox: str, *, suites: str = '["traces:3"]', table: str = "replay") -> Path:
    return _improve_file(tmp_path, _base_folder(tmp_path), f'suites = {suites}\n[{table}]\nsandbox = "{sandbox}"\n')


def _built(module: str) -> list[str]:
    import sys

    return list(sys.modules[module].BUILT)


def test_a_sandbox_without_state_digest_stops_a_job_with_a_traces_suite_before_a_run_starts(tmp_path: Path, sandboxes: str) -> None:
    path = _config(tmp_path, f"{sandboxes}:make_sandbox", suites='["traces:3", "bfcl:simple:2"]')

    result = improve(path)

    assert result.exit_code == 1, result.output
    error = result.stderr.strip()
    assert f"[replay] sandbox (the evaluation's too: [eval] names none) = '{sandboxes}:make_sandbox' in {path}" in error
    assert f"{sandboxes}.FilesSandbox) has no state_digest() method" in error
    assert "Add a state_digest() -> str method" in error and "drop 'traces:3' from [improve] suites (suites = ['bfcl:simple:2'])" in error
    assert RunsDir(tmp_path / "runs").list() == []  # nothing replayed, nothing trained


def test_the_eval_table_s_sandbox_is_the_one_checked_and_a_class_is_read_without_building_it(tmp_path: Path, sandboxes: str) -> None:
    path = _config(tmp_path, f"{sandboxes}:FilesSandbox", table="eval")

    with pytest.raises(
        ConfigError, match=rf"\[eval\] sandbox = '{sandboxes}:FilesSandbox'.*its class {sandboxes}.FilesSandbox has no state_digest"
    ):
        ImproveConfig.load(path).check()

    assert _built(sandboxes) == []
    ImproveConfig.load(_config(tmp_path, f"{sandboxes}:DigestFilesSandbox", table="eval")).check()
    ImproveConfig.load(_config(tmp_path, f"{sandboxes}:make_digest_sandbox")).check()  # its return annotation tells
    assert _built(sandboxes) == []


def test_a_factory_that_does_not_tell_its_class_is_built_once_as_the_suite_builds_it(tmp_path: Path, sandboxes: str) -> None:
    for factory in ("make_annotated_without", "make_wrapped_without"):
        with pytest.raises(ConfigError, match=r"has no state_digest\(\) method.*replace the traces suite"):
            ImproveConfig.load(_config(tmp_path, f"{sandboxes}:{factory}")).check()
    # annotated with a class without the method, it returns a subclass with it; a wrapper hands it on
    ImproveConfig.load(_config(tmp_path, f"{sandboxes}:make_subclass_annotated_as_base")).check()
    ImproveConfig.load(_config(tmp_path, f"{sandboxes}:make_wrapped")).check()
    assert _built(sandboxes) == ["FilesSandbox", "FilesSandbox", "DigestFilesSandbox", "DigestFilesSandbox"]


def test_a_factory_that_raises_is_named_with_what_it_raised(tmp_path: Path, sandboxes: str) -> None:
    with pytest.raises(ConfigError, match=r"building one to look for its state_digest\(\).*RuntimeError: the files service is down"):
        ImproveConfig.load(_config(tmp_path, f"{sandboxes}:make_raising")).check()


def test_without_a_traces_suite_a_sandbox_without_state_digest_is_fine(tmp_path: Path, sandboxes: str) -> None:
    ImproveConfig.load(_config(tmp_path, f"{sandboxes}:make_sandbox", suites='["bfcl:simple:2"]')).check()
    assert _built(sandboxes) == []


def test_an_mcp_sandbox_is_refused_for_a_traces_suite_without_starting_its_servers(tmp_path: Path, sandboxes: str) -> None:
    marker = tmp_path / "started"
    config = tmp_path / "mcp.json"
    config.write_text(f'{{"mcpServers": {{"files": {{"command": "touch", "args": ["{marker}"]}}}}}}')

    with pytest.raises(ConfigError, match=r"\[eval\] sandbox = 'mcp:.*McpSandbox has no state_digest\(\) method.*replace the traces suite"):
        ImproveConfig.load(_config(tmp_path, f"mcp:{config}", table="eval")).check()
    assert not marker.exists()


def test_no_evaluation_sandbox_for_an_app_that_is_not_bfcl_stops_a_job_with_a_traces_suite_before_a_run_starts(
    tmp_path: Path, sandboxes: str
) -> None:
    """``[eval] sandbox = ""``: the traces suite has no default sandbox for a non-BFCL app (only bfcl.* apps get
    ``bfcl``), so it would refuse to run at the evaluate stage, after replay and training: stopped before the run."""
    path = _improve_file(
        tmp_path,
        _base_folder(tmp_path),
        f'suites = ["traces:3", "bfcl:simple:2"]\n[replay]\nsandbox = "{sandboxes}:make_digest_sandbox"\n[eval]\nsandbox = ""\n',
    )

    result = improve(path)

    assert result.exit_code == 1, result.output
    error = result.stderr.strip()
    assert f"[eval] sandbox = '' in {path}: the traces suite" in error and "for the app 'shop' every task would be left out" in error, error
    assert "drop 'traces:3' from [improve] suites (suites = ['bfcl:simple:2'])" in error, error
    assert RunsDir(tmp_path / "runs").list() == []
