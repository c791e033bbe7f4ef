"""A Ctrl-C in the first half second of ``ee``, while the command line is still being imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A real SIGINT, sent by the process to itself when the import of one command group begins: the interrupt lands inside
# the command line's loading, as a user's Ctrl-C right after pressing Enter does.
_INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys

cut = sys.argv[1]

class _CtrlCOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == cut:
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _CtrlCOnImport())
sys.argv = ["ee", "store", "--help"]
from ee_middleware.cli import main
main()
"""


@pytest.mark.parametrize("module", ["ee_middleware.cli.traces", "ee_middleware.cli.common", "ee_middleware._lifetime"])
def test_a_ctrl_c_while_the_command_line_loads_exits_130_with_one_line_and_no_traceback(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT, module],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == "interrupted: stopped by SIGINT before the command started; nothing was done.", done.stderr
    assert done.stdout == ""
