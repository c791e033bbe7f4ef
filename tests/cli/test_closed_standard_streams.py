"""``ee`` started with its stdout (or stderr) closed, as some daemons and cron wrappers start it (``ee ... >&-``): the
command runs as with ``> /dev/null`` and keeps its own exit status. Before, every command, ``ee --version`` too, ended
with exit 1 and a 40-line traceback (``AttributeError: 'NoneType' object has no attribute 'flush'``) that buried the
command's own ``error:`` line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.store.approvals import decide
from tests.conftest import USER_TASK

ENTRY = "import sys; from ee_middleware.cli.app import main; sys.argv[0] = 'ee'; main()"


def _ee_with_closed(fd: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``ee ARGS`` in a real process whose file descriptor ``fd`` is closed before Python starts."""
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        stdout=None if fd == 1 else subprocess.PIPE,
        stderr=None if fd == 2 else subprocess.PIPE,
        text=True,
        cwd=cwd,
        preexec_fn=lambda: os.close(fd),
        timeout=120,
    )


def test_a_command_started_without_stdout_runs_with_its_own_exit_status(tmp_path: Path) -> None:
    version = _ee_with_closed(1, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stderr == "", version.stderr
    failing = _ee_with_closed(1, "runs", "list", "--runs", str(tmp_path / "nope"), "--json", cwd=tmp_path)
    assert failing.returncode == 1, failing.stderr
    assert failing.stderr.startswith("error: No runs folder at ") and "Traceback" not in failing.stderr, failing.stderr
    assert failing.stderr.count("\n") == 1, "the command's own error line, alone"


def test_an_export_without_stdout_writes_its_file_alone_and_exits_0(react_graph: Any, store_path: Path, inventory: Any) -> None:
    # The first file opened would take the closed descriptor 1: what was meant for stdout could have gone into it.
    agent = record_experience(react_graph, app="shop", store=store_path)
    inventory.stock["pear"] = 0
    agent.invoke(USER_TASK, {"configurable": {"thread_id": "t0"}})
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    decide(store, [store.trajectories()["id"][0]], "approved", by="alice")
    out = store_path.parent / "out.jsonl"
    result = _ee_with_closed(1, "traces", "export", "-s", str(store_path), "-f", "jsonl", "-o", str(out), cwd=store_path.parent)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["messages"], "the examples alone, nothing meant for stdout"
    stderr_closed = _ee_with_closed(2, "--version", cwd=store_path.parent)
    assert stderr_closed.returncode == 0 and stderr_closed.stdout.startswith("ee-middleware "), stderr_closed.stdout
