"""A local replay worker told to stop twice at once (Ctrl-C reaches it with the job's process group, and the job's own
SIGINT follows) ends the sandbox child of the replay it cut short.

Defect (found by the stacks tests/replay/test_processes.py now dumps of a job that does not stop in time): the second
SIGINT raised KeyboardInterrupt again inside the clean-up of the first, after ``SubprocessSandbox._stop_child`` had
forgotten its child and before it killed it; the worker's exit then waited for that child's tool call to end (a job
stopped after 15 s instead of 1, about one run in 60 on a loaded machine). Here the second signal is sent at that very
point. A real subprocess sandbox, real signals (this process's SIGINT handler is the worker's for the test)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

import psutil
import pytest

from ee_middleware.replay import executors
from ee_middleware.replay.sandboxes import isolated
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from tests.processes import ended
from tests.replay.sandboxes_for_tests import ForkingBFCLSandbox

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")


def test_a_second_stop_while_the_first_ends_the_sandbox_child_still_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EE_TEST_RESET_DELAY", "60")  # (the child's reset: a tool call that takes a minute)
    sandbox = SubprocessSandbox(ForkingBFCLSandbox, timeout_s=None, memory_mb=None)
    child = sandbox.pid
    assert child is not None
    real_kill = isolated.kill_process_group

    def kill_after_a_second_stop(pgid: int, sig: Any = signal.SIGKILL) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the job's SIGINT, as the first stop ends the child
        real_kill(pgid, sig)

    monkeypatch.setattr(isolated, "kill_process_group", kill_after_a_second_stop)
    monkeypatch.setattr(executors, "_INTERRUPTED", None)
    previous = signal.signal(signal.SIGINT, executors._on_stop_signal)
    ctrl_c = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))  # the first: Ctrl-C, while the reset runs
    try:
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt), executors._interruptible():
            sandbox.reset(None)
        assert ended(child, 10), "the sandbox's child was left running its tool call"
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, previous)
        monkeypatch.setattr(isolated, "kill_process_group", real_kill)
        with contextlib.suppress(psutil.Error):  # (left running: the child leads its group, its tool's sleep in it)
            if psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
                os.killpg(child, signal.SIGKILL)
        sandbox.close()
    assert executors._INTERRUPTED == "SIGINT"
