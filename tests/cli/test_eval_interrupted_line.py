"""``ee eval run`` stopped by Ctrl-C or SIGTERM says on stderr what was done, where it is and how to resume, exits 130
and leaves no process behind (a real command, real worker processes, real signals)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from ee_middleware.evals.runner import JOURNAL, read_journal

ROOT = Path(__file__).resolve().parents[2]
TASKS = 40


def _marked(mark: str, leader: int) -> list[psutil.Process]:
    """The processes the command started (they inherit ``EE_TEST_MARK``), but the command itself."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != leader and process.environ().get("EE_TEST_MARK") == mark:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.parametrize(("how", "workers"), [("ctrl_c", 1), ("sigterm", 2)])
def test_a_stopped_run_says_how_far_it_got_and_how_to_resume(how: str, workers: int, tmp_path: Path) -> None:
    """Before: exit 130 with nothing at all on stdout or stderr (found by sweep s19), where `ee replay run` says what it
    stored and that the same command continues."""
    mark = uuid.uuid4().hex
    env = dict(os.environ, EE_TEST_MARK=mark, EE_TEST_SLEEP="0.2", PYTHONPATH=str(ROOT))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "ee_middleware.cli", "eval", "run", "--suite", f"bfcl:simple:{TASKS}", "--workers", str(workers)]
    args += ["--model-spec", "tests.evals.test_run_workers:with_helper", "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(
        args,
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a Ctrl-C as a terminal's, whatever ran pytest
    )
    try:
        deadline = time.monotonic() + 60
        while len(read_journal(run / JOURNAL)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)  # the terminal sends it to the whole foreground process group
        else:
            proc.send_signal(signal.SIGTERM)  # a supervisor stops the command itself
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        time.sleep(1)
        left = _marked(mark, proc.pid)
        assert not left, f"left running: {[' '.join(p.cmdline()) for p in left]}"
    finally:
        for process in _marked(mark, proc.pid):
            process.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    done = len(read_journal(run / JOURNAL))
    assert 2 <= done < TASKS
    assert stdout == ""
    said = " ".join(stderr.split())  # the line as one, however the terminal's width wrapped it
    signal_name = "SIGINT (Ctrl-C)" if how == "ctrl_c" else "SIGTERM"
    found = re.search(rf"interrupted: the evaluation stopped \({re.escape(signal_name)}\) with (\d+) of {TASKS} tasks done", said)
    assert found, stderr
    assert int(found.group(1)) == done, (done, stderr)
    assert str(run / JOURNAL) in said, stderr
    assert "Run the same command again to resume" in said and "`ee eval gate` refuses this run" in said, stderr
    # the model plug-in's helper process, given the terminal's SIGINT too, prints its own KeyboardInterrupt: not ee's
    assert not [line for line in stderr.splitlines() if line.lstrip().startswith('File "') and "ee_middleware" in line], stderr
