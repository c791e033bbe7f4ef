"""Capture's SIGTERM handler writes the runs even when the signal comes while the main thread starts a thread.

Python runs a signal handler on the main thread, between two of its bytecodes, and capture's handler never returns to
that thread (the process ends in it). It started the thread that writes the runs there; a new thread takes
:mod:`threading`'s own lock (``_active_limbo_lock``) before it runs anything, and when SIGTERM came while the main thread
was itself starting a thread (inside that lock), the writer never began: the handler waited its 5 s, and the process
ended with the runs in flight unwritten. Now the writer is running before the signal comes.

Real processes, real recorders and the real local store, real signals. The main thread holds threading's lock the way
``Thread.start`` does, spinning bytecodes (so that the handler runs in there), while SIGTERM comes; each case must end
within :data:`ENDS_WITHIN_S`. (Writing must not start a thread either: here capture's own threads are running already,
as after any run was written.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ee_middleware.capture import shutdown
from ee_middleware.store import LocalExperienceStore
from tests.capture.test_fork_children import run_script
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.capture.test_sigterm import AGENT

pytestmark = [
    pytest.mark.usefixtures("no_child_left"),
    pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM does not stop a process on Windows"),
]

ENDS_WITHIN_S = 60
"""Far past what each case takes (a few seconds); a process still running then never ends."""

SPIN = """
def spin(seconds):
    # bytecodes, not a blocking call: a signal's handler runs in here, inside the lock the caller holds
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
"""

SIGTERM_WHILE_STARTING_A_THREAD = (
    """
import json, os, signal, sys, threading, time
from agent import ask, build, say
"""
    + SPIN
    + """
agent = build(sys.argv[1], sys.argv[2])
ask(agent, "answered")
agent.flush()  # capture's own threads (the store writer's, the sender's) run: writing at SIGTERM starts none
threading.Thread(target=ask, args=(agent, "in-flight", "SLOW"), daemon=True).start()
time.sleep(1.0)  # the run in flight is in its tool
with threading._active_limbo_lock:  # what Thread.start holds (this thread starting one)
    os.kill(os.getpid(), signal.SIGTERM)
    spin(3.0)
say("went on")  # the process ended in the handler, or never: either way not here
"""
)


@pytest.mark.parametrize("offload_mode", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # (heavy: a capture child)
def test_sigterm_while_the_main_thread_starts_a_thread_writes_the_runs_and_ends_the_process(tmp_path: Path, offload_mode: str) -> None:
    (tmp_path / "agent.py").write_text(AGENT)
    store = tmp_path / "experience"
    done = run_script(SIGTERM_WHILE_STARTING_A_THREAD, str(store), offload_mode, timeout=ENDS_WITHIN_S, cwd=tmp_path)
    assert done.returncode == -15, done.stderr[-3000:]  # ended by SIGTERM, as a supervisor expects
    assert "went on" not in done.stdout
    stored = LocalExperienceStore(store).trajectories().select("thread_id", "status", "error").sort("thread_id")
    assert stored.to_dicts() == [
        {"thread_id": "answered", "status": "completed", "error": None},
        {"thread_id": "in-flight", "status": "interrupted", "error": shutdown.TERMINATED},
    ]


IN_A_FORKED_PROCESS = (
    """
import json, os, signal, sys, threading, time
from agent import ask, build, say
"""
    + SPIN
    + """
agent = build(sys.argv[1])
ask(agent, "parent")
agent.flush()
pid = os.fork()  # inherits capture's handler, not the thread that writes at SIGTERM (a fork copies no thread)
if pid == 0:
    ask(agent, "child")
    agent.flush()
    threading.Thread(target=ask, args=(agent, "child-in-flight", "SLOW"), daemon=True).start()
    time.sleep(1.0)
    with threading._active_limbo_lock:
        os.kill(os.getpid(), signal.SIGTERM)
        spin(3.0)
    os._exit(0)  # (not reached: the handler ends the process)
_, status = os.waitpid(pid, 0)
say(json.dumps(os.WTERMSIG(status) if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"))
"""
)


def test_sigterm_to_a_forked_process_while_its_main_thread_starts_a_thread_writes_its_runs(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(AGENT)
    store = tmp_path / "experience"
    done = run_script(IN_A_FORKED_PROCESS, str(store), timeout=ENDS_WITHIN_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == 15, "the forked process ended killed by SIGTERM"
    stored = LocalExperienceStore(store).trajectories().select("thread_id", "status", "error").sort("thread_id")
    assert stored.to_dicts() == [
        {"thread_id": "child", "status": "completed", "error": None},
        {"thread_id": "child-in-flight", "status": "interrupted", "error": shutdown.TERMINATED},
        {"thread_id": "parent", "status": "completed", "error": None},
    ]
