"""A Ctrl-C (or SIGTERM) in the first second of ``ee``, while the command line is still being imported, built and
parsed: exit 130 with the ``interrupted:`` line, never a traceback, never silence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A real signal, sent by the process to itself when the import of one module begins: it lands inside the command line's
# loading, as a user's Ctrl-C right after pressing Enter does.
_INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys

cut, sent = sys.argv[1], getattr(signal, sys.argv[2])

class _SignalOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == cut:
            os.kill(os.getpid(), sent)
        return None

sys.meta_path.insert(0, _SignalOnImport())
sys.argv = ["ee", "store", "--help"]
from ee_middleware.cli import main
main()
"""

# The same signal sent from inside typer's building of the command tree, or click's parsing of the arguments (injected:
# no import happens there to hook; the signal itself is real).
_INTERRUPTED_STEP = """
import os, signal, sys

step, sent = sys.argv[1], getattr(signal, sys.argv[2])
sys.argv = ["ee", "store", "info", "--store", "/nonexistent"]
import typer.main
from ee_middleware.cli import app as cli_app

def signalling(original):
    def step_(*args, **kwargs):
        os.kill(os.getpid(), sent)
        return original(*args, **kwargs)
    return step_

if step == "build":
    typer.main.get_command = signalling(typer.main.get_command)
else:
    cli_app._Root.make_context = signalling(cli_app._Root.make_context)
from ee_middleware.cli import main
main()
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2]
    )


def _said(signal_name: str) -> str:
    return f"interrupted: stopped by {signal_name} before the command started; nothing was done."


@pytest.mark.parametrize("module", ["ee_middleware.cli.traces", "ee_middleware.cli.common", "ee_middleware._lifetime"])
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_line_imports_exits_130_with_one_line_and_no_traceback(module: str, signal_name: str) -> None:
    done = _run(_INTERRUPTED_IMPORT, module, signal_name)
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == _said(signal_name), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("step", ["build", "parse"])
def test_a_ctrl_c_while_typer_builds_or_parses_the_command_line_is_said_injected(step: str) -> None:
    # build: it ended in a traceback of typer's get_command; parse: typer exited 130 and said nothing at all
    done = _run(_INTERRUPTED_STEP, step, "SIGINT")
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == _said("SIGINT"), done.stderr
