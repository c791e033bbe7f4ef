"""The promote by hand that ``ee improve``'s refusals name (:func:`~ee_middleware.jobs.deploy.promote_command`) runs
this installation's ``ee`` where the operator's ``PATH`` has none (a nightly ``/opt/venv/bin/ee improve`` from cron or
systemd, no virtualenv activated) or another one: the script beside the running Python by its full path, or
``python -m ee_middleware.cli``. Real runs folder, registry and stage runner (tests/jobs/test_promote_live_changed.py's),
the command run as written in a shell with such a ``PATH``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ee_middleware.adapters.promote import rollback
from ee_middleware.adapters.registry import open_registry
from ee_middleware.jobs.deploy import ee_program, promote_command
from ee_middleware.jobs.errors import LiveAdapterChangedError
from ee_middleware.jobs.improve import _run_stage
from tests.jobs.test_promote_live_changed import APP, _context, _setup

BARE_PATH = os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).is_dir())
"""A cron job's PATH: no virtualenv's bin/."""


def _refused_promote(tmp_path: Path) -> tuple[str, str, object]:
    """A candidate rolled back since this run registered it: the promote stage refuses it and names the promote by
    hand (no [improve.serving] servers: in the registry only). The command, the candidate and the registry."""
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="ee improve (stopped after the switch, before the manifest)")
    rollback(registry, APP, [], by="alice")
    with pytest.raises(LiveAdapterChangedError) as caught:
        _run_stage(_context(config, run), "promote")
    commands = [c for c in re.findall(r"`([^`]+)`", str(caught.value)) if " adapters promote " in c]
    assert commands == [promote_command(config, names["cand"])], str(caught.value)
    return commands[0], names["cand"], registry


def _run_as_written(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, env={**os.environ, **env}, cwd=cwd, timeout=120)


def test_without_ee_on_path_the_command_names_the_script_beside_the_running_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, `ee adapters promote ...`: `sh: ee: not found` from a cron job's PATH. Now the virtualenv's ee by its full
    path, which runs there as written."""
    beside = Path(sys.executable).parent / "ee"
    if not beside.is_file():
        pytest.skip("this Python has no ee script beside it (not an installed environment)")
    monkeypatch.setenv("PATH", BARE_PATH)
    command, candidate, registry = _refused_promote(tmp_path)
    assert shlex.split(command)[:3] == [str(beside), "adapters", "promote"], command

    done = _run_as_written(command, tmp_path, PATH=BARE_PATH)

    assert done.returncode == 0, done.stderr
    assert registry.resolve(APP) == candidate  # type: ignore[attr-defined]


def test_another_ee_on_path_is_not_the_one_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An `ee` on PATH that is another installation's (here a script that only says so) is not the one the command
    runs."""
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "ee").write_text("#!/bin/sh\necho 'another ee' >&2\nexit 3\n")
    (other / "ee").chmod(0o755)
    path = f"{other}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{BARE_PATH}"
    monkeypatch.setenv("PATH", path)
    assert ee_program() != ["ee"]
    command, candidate, registry = _refused_promote(tmp_path / "work")

    done = _run_as_written(command, tmp_path, PATH=path)

    assert done.returncode == 0, done.stderr
    assert registry.resolve(APP) == candidate  # type: ignore[attr-defined]


def test_this_installations_ee_on_path_is_named_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    beside = Path(sys.executable).parent / "ee"
    if not beside.is_file():
        pytest.skip("this Python has no ee script beside it (not an installed environment)")
    monkeypatch.setenv("PATH", f"{beside.parent}{os.pathsep}{BARE_PATH}")
    assert ee_program() == ["ee"]


def test_a_python_without_an_ee_script_runs_the_cli_as_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python with no ee script beside it and none of its own on PATH (a fresh virtualenv that imports this
    installation's packages, not its scripts): `PYTHON -m ee_middleware.cli adapters promote ...`, which runs as written."""
    env_dir = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, capture_output=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    packages = sysconfig.get_paths()["purelib"]  # this environment's, with ee-middleware's (editable) install
    Path(site, "this-installation.pth").write_text(f"import site; site.addsitedir({packages!r})\n")
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", BARE_PATH)
    assert ee_program() == [str(python), "-m", "ee_middleware.cli"]
    command, candidate, registry = _refused_promote(tmp_path / "work")
    assert shlex.split(command)[:4] == [str(python), "-m", "ee_middleware.cli", "adapters"], command

    done = _run_as_written(command, tmp_path, PATH=BARE_PATH)

    assert done.returncode == 0, done.stderr
    assert registry.resolve(APP) == candidate  # type: ignore[attr-defined]
