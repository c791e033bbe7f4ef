"""Capture's SIGTERM handler writes the runs in flight when the signal comes before any run was written, while the
main thread starts a thread.

The handler hands the writing to a thread started with it (capture/shutdown.py), but the threads that write a run
(capture's span finisher, then the store writer: ``ExperienceSpanProcessor``'s) were started only when the first run
ended. Where no run had ended before SIGTERM, the flush started them itself; a new thread takes :mod:`threading`'s own
lock (``_active_limbo_lock``) before it runs, and when SIGTERM came while the main thread was starting a thread (inside
that lock, which it then never lets go of: the process ends in the handler), they never began: the handler waited its
5 s and the run in flight was lost. Now they are running once the handler is installed.

Real processes, real recorders and the real local store, real signals, as tests/capture/test_sigterm_handler_locks.py,
but no run is written (nor flushed) before the signal.
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
from tests.capture.test_sigterm_handler_locks import ENDS_WITHIN_S, SPIN

pytestmark = [
    pytest.mark.usefixtures("no_child_left"),
    pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM does not stop a process on Windows"),
]

SLOW_MODEL = """
def slow_policy(messages, tools):
    if messages[-1].content.endswith("SLOW"):  # the run's first model call waits (a slow provider)
        say("in flight")
        stuck.wait()
    return policy(messages, tools)


def build_slow_model(store, offload="thread"):
    return record_experience(create_agent(ScriptedChatModel(policy=slow_policy), [lookup]), app="shop", store=store, offload=offload)
"""

WAITING = """
waiting = threading.Event()  # set when the run in flight is in its tool or its model call (it says so)


def note(line, said=shop.say):
    said(line)
    if line == "in flight":
        waiting.set()


shop.say = note
"""

FIRST_RUN_IN_FLIGHT = (
    """
import json, os, signal, sys, threading, time
import agent as shop
from agent import ask, build, say
"""
    + SPIN
    + WAITING
    + """
agent = (build if sys.argv[3] == "tool" else shop.build_slow_model)(sys.argv[1], sys.argv[2])
threading.Thread(target=ask, args=(agent, "in-flight", "SLOW"), daemon=True).start()  # the process's first run
waiting.wait(60)
say(json.dumps(sorted(t.name for t in threading.enumerate())))
with threading._active_limbo_lock:  # what Thread.start holds (this thread starting one)
    os.kill(os.getpid(), signal.SIGTERM)
    spin(3.0)
say("went on")  # the process ended in the handler, or never: either way not here
"""
)


@pytest.mark.parametrize("waiting_in", ["tool", "model call"])  # model call: no span of the run has ended either
@pytest.mark.parametrize("offload_mode", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # (heavy: a capture child)
def test_sigterm_before_any_run_was_written_while_the_main_thread_starts_a_thread_writes_the_run(
    tmp_path: Path, offload_mode: str, waiting_in: str
) -> None:
    (tmp_path / "agent.py").write_text(AGENT + SLOW_MODEL)
    store = tmp_path / "experience"
    done = run_script(FIRST_RUN_IN_FLIGHT, str(store), offload_mode, waiting_in.split()[0], timeout=ENDS_WITHIN_S, cwd=tmp_path)
    assert done.returncode == -15, done.stderr[-3000:]  # ended by SIGTERM, as a supervisor expects
    assert "went on" not in done.stdout
    stored = LocalExperienceStore(store).trajectories().select("thread_id", "status", "error").to_dicts()
    assert stored == [{"thread_id": "in-flight", "status": "interrupted", "error": shutdown.TERMINATED}], done.stdout


IN_A_FORKED_PROCESS = (
    """
import json, os, signal, sys, threading, time
import agent as shop
from agent import ask, build, say
"""
    + SPIN
    + WAITING
    + """
agent = shop.build_slow_model(sys.argv[1])
pid = os.fork()  # inherits capture's handler, none of its threads (a fork copies none)
if pid == 0:
    threading.Thread(target=ask, args=(agent, "child-in-flight", "SLOW"), daemon=True).start()
    waiting.wait(60)
    with threading._active_limbo_lock:
        os.kill(os.getpid(), signal.SIGTERM)
        spin(3.0)
    os._exit(0)  # (not reached: the handler ends the process)
_, status = os.waitpid(pid, 0)
say(json.dumps(os.WTERMSIG(status) if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"))
"""
)


def test_sigterm_to_a_forked_process_before_any_run_was_written_writes_its_run(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(AGENT + SLOW_MODEL)
    store = tmp_path / "experience"
    done = run_script(IN_A_FORKED_PROCESS, str(store), timeout=ENDS_WITHIN_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == 15, "the forked process ended killed by SIGTERM"
    stored = LocalExperienceStore(store).trajectories().select("thread_id", "status", "error").to_dicts()
    assert stored == [{"thread_id": "child-in-flight", "status": "interrupted", "error": shutdown.TERMINATED}]
