"""Running the CLI (or any Python) as a user whom file permissions stop, for tests of files the user may not read.

Root reads, writes and searches any file whatever its mode bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a root
suite checks permissions in a child process, in this order:

1. none needed: this process is already held to mode bits (not root, or root without those capabilities): in-process;
2. root without those two capabilities (``setpriv``, else ``capsh``): this very interpreter (``sys.executable``) and
   environment, held to mode bits like anyone (a mode-000 file is its owner's no more than anyone's);
3. the ``nobody`` user, only where it runs this same interpreter (same version, prefix and base prefix: a venv whose
   Python lives under a mode-700 /root would start the binary on another stdlib);
4. otherwise the tests skip, with :data:`MISSING` saying what each way lacked.

Every way is checked on a mode-000 file, not assumed. Files the tests make must be reachable by the child: mode-000
files are refused to all of these, but ``nobody`` needs the folders around them open (see :func:`open_folder`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NO_DAC = "-dac_override,-dac_read_search"
"""The capabilities that let root ignore a file's mode bits, as setpriv's list of ones to drop."""
NOBODY = 65534
_SAME_PYTHON = "import sys; print(repr((sys.version, sys.prefix, sys.base_prefix)))"


def _switches() -> list[tuple[str, list[str] | None, str]]:
    """Each way to run a command as a held user, in order of preference: (what it is, its command prefix or None, why
    it is missing when None)."""
    no_dac = "root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH"
    switches: list[tuple[str, list[str] | None, str]] = []
    if (setpriv := shutil.which("setpriv")) is not None:
        switches.append((f"{no_dac} (setpriv)", [setpriv, f"--inh-caps={NO_DAC}", f"--bounding-set={NO_DAC}"], ""))
    if (capsh := shutil.which("capsh")) is not None:  # capsh runs bash: `exec "$0" "$@"` runs the command itself
        switches.append((f"{no_dac} (capsh)", [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$0" "$@"'], ""))
    if setpriv is not None:
        switches.append(
            (f"the nobody user (uid {NOBODY}, setpriv)", [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"], "")
        )
    if capsh is not None:
        switches.append(
            (f"the nobody user (uid {NOBODY}, capsh)", [capsh, f"--gid={NOBODY}", f"--uid={NOBODY}", "--", "-c", 'exec "$0" "$@"'], "")
        )
    return switches or [("any other user", None, "neither setpriv (util-linux) nor capsh (libcap2-bin) is installed")]


def _refused_in_this_process(probe: Path) -> bool:
    try:
        probe.read_bytes()
    except PermissionError:
        return True
    return False


def _why_not(switch: list[str], probe: Path) -> str | None:
    """None when ``switch`` runs this interpreter as it runs here and the child is refused ``probe`` (mode 000);
    otherwise what is wrong."""
    check = f"{_SAME_PYTHON}\ntry:\n    open({str(probe)!r}, 'rb')\nexcept PermissionError:\n    print('refused')"
    try:
        done = subprocess.run([*switch, sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not start: {exc}"
    if done.returncode != 0:
        return f"cannot run {sys.executable}: {(done.stderr.strip().splitlines() or ['exit ' + str(done.returncode)])[-1]}"
    same, _, refused = done.stdout.partition("\n")
    here = repr((sys.version, sys.prefix, sys.base_prefix))
    if same.strip() != here:
        return f"runs another Python build or stdlib ({same.strip()!r}, not {here!r})"
    if refused.strip() != "refused":
        return "still reads a mode-000 file"
    return None


def _held_user() -> tuple[list[str] | None, str]:
    """The command prefix that runs a command as a held user (``[]``: in this process) and, when there is none, what
    is missing."""
    folder = Path(tempfile.mkdtemp(prefix="ee-held-probe-"))
    try:
        folder.chmod(0o755)  # reachable by nobody
        probe = folder / "mode-000"
        probe.write_bytes(b"x")
        probe.chmod(0)
        if _refused_in_this_process(probe):
            return [], ""
        missing = []
        for what, switch, why_missing in _switches():
            why = why_missing if switch is None else _why_not(switch, probe)
            if why is None:
                return switch, ""
            missing.append(f"{what}: {why}")
        return None, f"this process (uid {os.geteuid()}) reads files whatever their mode, and no held user runs here; " + "; ".join(missing)
    finally:
        shutil.rmtree(folder)


HELD, MISSING = _held_user()
needs_held_user = pytest.mark.skipif(HELD is None, reason=MISSING)
"""Skip a test that needs a user whom file permissions stop, saying what is missing, where there is none."""


def ee_as_held_user(*args: str) -> tuple[int, str]:
    """The ``ee`` CLI run by a user whom file permissions stop (see the module docstring): exit code and output."""
    if HELD is None:
        raise RuntimeError(f"no user whom file permissions stop: {MISSING}")  # the test lacks @needs_held_user
    if not HELD:
        from typer.testing import CliRunner

        from ee_middleware.cli.app import app

        result = CliRunner().invoke(app, list(args))
        return result.exit_code, result.output
    done = subprocess.run(
        [*HELD, sys.executable, "-m", "ee_middleware.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": "/tmp", "COLUMNS": "4000"},  # a HOME nobody may reach; lines unwrapped
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


@contextmanager
def open_folder(prefix: str) -> Iterator[Path]:
    """A new folder any user may reach (pytest's own tmp_path is its owner's only), removed afterwards whatever modes
    the test left inside it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        _open_up(path)
        shutil.rmtree(path)


def _open_up(folder: Path) -> None:
    """Give ``folder`` and what is in it back their usual modes, each folder before it is listed (a user held to mode
    bits cannot list a mode-000 folder, even its own)."""
    folder.chmod(0o755)
    for inner in folder.iterdir():
        if inner.is_dir() and not inner.is_symlink():
            _open_up(inner)
        elif not inner.is_symlink():
            inner.chmod(0o644)


def python_as_held_user(code: str, cwd: Path) -> tuple[int, str]:
    """Python ``code`` run in a child process by a user whom file permissions stop (see the module docstring), in
    ``cwd`` (a folder that user may reach, :func:`open_folder`): exit code and output."""
    if HELD is None:
        raise RuntimeError(f"no user whom file permissions stop: {MISSING}")  # the test lacks @needs_held_user
    done = subprocess.run(
        [*HELD, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "HOME": "/tmp", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr
