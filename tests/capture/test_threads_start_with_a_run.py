"""Capture starts its threads when a process first records, not when a recorder is built or a process forked; and a
``multiprocessing`` worker of any start method writes its runs when its pool is closed.

A recorder built with capture's SIGTERM handler installed started its span finisher and store writer at once (two
threads kept for as long as the process lives, for each recorder, used or not), and capture's SIGTERM writer was
started with the handler and again in every forked process (also a ``subprocess`` ``preexec_fn`` child, between fork
and exec): a process that never records was multi-threaded (Python 3.12+ warns at each ``os.fork`` of one). They are
needed running before SIGTERM only where a run may be in flight, so they start as the process's first run starts
(tests/capture/test_sigterm_before_any_run.py keeps what that fixed).

A ``forkserver`` ``Pool`` worker imports capture itself (with the module of its first task) and ends with
``os._exit``, which runs no ``atexit`` hook: its runs were lost when the pool was closed and joined.

Real processes, real ``create_agent`` graphs, real recorders and the real local store.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from tests.capture.test_fork_children import run_script
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.capture.test_sigterm import AGENT
from tests.capture.test_sigterm_handler_locks import ENDS_WITHIN_S, SPIN

pytestmark = [
    pytest.mark.usefixtures("no_child_left"),
    pytest.mark.skipif(sys.platform == "win32", reason="no SIGTERM handler, no fork on Windows"),
]

NAMES = """
def capture_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("ee-"))
"""

CAPTURE_THREADS = ["ee-capture-sigterm-flush", "ee-experience-writer", "ee-span-finisher"]

UNUSED_RECORDERS = (
    """
import gc, json, os, signal, sys, threading
from agent import ask, build, say
"""
    + NAMES
    + """
agents = [build(sys.argv[1]) for _ in range(50)]  # capture's SIGTERM handler is installed with the first
assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
built = capture_threads()
del agents
gc.collect()
dropped = capture_threads()
agent = build(sys.argv[1])
ask(agent, "first")
agent.flush()
say(json.dumps({"built": built, "dropped": dropped, "recorded": capture_threads()}))
"""
)


def test_recorders_never_run_start_no_thread_and_the_first_run_starts_capture_s(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(AGENT)
    store = tmp_path / "experience"
    done = run_script(UNUSED_RECORDERS, str(store), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = json.loads(done.stdout.splitlines()[-1])
    assert threads["built"] == [], "50 recorders built, none run: no capture thread"
    assert threads["dropped"] == []
    assert threads["recorded"] == CAPTURE_THREADS, "one recorder run: its two threads and the process's SIGTERM writer"
    assert LocalExperienceStore(store).trajectories()["thread_id"].to_list() == ["first"]


CHILDREN_THAT_DO_NOT_RECORD = (
    """
import json, os, subprocess, sys, threading, warnings
from agent import ask, build, say
"""
    + NAMES
    + """
agents = [build(sys.argv[1]) for _ in range(5)]
ask(agents[0], "parent")  # the parent records: its capture threads run
agents[0].flush()


def in_a_child(report):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, json.dumps(report()).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        return json.loads(f.read())


def recording_child():
    ask(agents[1], "child")
    agents[1].flush()
    return capture_threads()


r, w = os.pipe()
subprocess.run(["true"], preexec_fn=lambda: os.write(w, json.dumps(capture_threads()).encode()), check=True)
os.close(w)
with os.fdopen(r) as f:
    preexec = json.loads(f.read())
say(json.dumps({
    "parent": capture_threads(),
    "fork child": in_a_child(capture_threads),
    "preexec_fn child": preexec,
    "recording child": in_a_child(recording_child),
}))
"""
)


def test_a_forked_process_that_records_nothing_starts_no_capture_thread(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(AGENT)
    store = tmp_path / "experience"
    done = run_script(CHILDREN_THAT_DO_NOT_RECORD, str(store), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = json.loads(done.stdout.splitlines()[-1])
    assert threads["parent"] == CAPTURE_THREADS
    assert threads["fork child"] == [], "os.fork of a process with 5 recorders, the child records nothing"
    assert threads["preexec_fn child"] == [], "between fork and exec"
    assert threads["recording child"] == CAPTURE_THREADS, "a forked process that records starts its own"
    assert sorted(LocalExperienceStore(store).trajectories()["thread_id"].to_list()) == ["child", "parent"]


BUILT_AT_IMPORT_THEN_FORKED = (
    """
import json, os, sys, threading, warnings
from agent import build, say
"""
    + NAMES
    + """
agent = build(sys.argv[1])  # an app that builds its agent at import, then forks (gunicorn --preload, a Pool)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
os.waitpid(pid, 0)
say(json.dumps({"threads": threading.active_count(), "capture": capture_threads(), "warned": [str(w.message) for w in caught]}))
"""
)


def test_a_process_that_built_its_agent_and_forks_before_any_run_is_single_threaded(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(AGENT)
    done = run_script(BUILT_AT_IMPORT_THEN_FORKED, str(tmp_path / "experience"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["capture"] == []
    assert seen["threads"] == 1
    assert not [w for w in seen["warned"] if "multi-threaded" in w]  # (Python 3.12+ warns at fork otherwise)


SIGTERM_BEFORE_ANY_RUN = (
    """
import os, signal, sys, threading, time
from agent import build, say
"""
    + SPIN
    + """
agent = build(sys.argv[1])
assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # capture's
with threading._active_limbo_lock:  # what Thread.start holds (this thread starting one)
    os.kill(os.getpid(), signal.SIGTERM)
    spin(3.0)
say("went on")
"""
)


def test_sigterm_to_a_process_that_never_recorded_ends_it_at_once(tmp_path: Path) -> None:
    """Nothing to write: the handler starts no thread (one started in it would wait for the lock the main thread holds,
    5 s), and the process ends killed by SIGTERM as at the default."""
    (tmp_path / "agent.py").write_text(AGENT)
    started = time.monotonic()
    done = run_script(SIGTERM_BEFORE_ANY_RUN, str(tmp_path / "experience"), timeout=ENDS_WITHIN_S, cwd=tmp_path)
    assert done.returncode == -15, done.stderr[-3000:]
    assert "went on" not in done.stdout
    assert time.monotonic() - started < 30  # (the 3 s spin ends in the handler; the process's start takes the rest)


POOL_MODULE = """
import os
from agent import ask, build

agent = build(os.environ["EE_TEST_STORE"])  # built at import: in each worker, as it unpickles its first task


def job(i):
    ask(agent, f"job-{i}")
    return os.getpid()
"""

POOL = """
import json, multiprocessing, os, sys
os.environ["EE_TEST_STORE"] = sys.argv[1]
import jobs

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[2])
    if sys.argv[3] == "pool":
        pool = context.Pool(2)
        pids = pool.map(jobs.job, range(6))
        pool.close()
        pool.join()
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(2, mp_context=context) as executor:  # (its exit waits for the workers to end)
            pids = list(executor.map(jobs.job, range(6)))
    print(json.dumps(sorted(set(pids))))
"""


@pytest.mark.parametrize("kind", ["pool", "executor"])
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_runs_recorded_in_pool_workers_are_stored_when_the_pool_is_closed(tmp_path: Path, start_method: str, kind: str) -> None:
    (tmp_path / "agent.py").write_text(AGENT)
    (tmp_path / "jobs.py").write_text(POOL_MODULE)
    store = tmp_path / "experience"
    done = run_script(POOL, str(store), start_method, kind, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]), "the jobs ran in the pool's workers"
    stored = LocalExperienceStore(store).trajectories()
    assert sorted(stored["thread_id"].to_list()) == [f"job-{i}" for i in range(6)], done.stderr[-3000:]
    assert set(stored["status"].to_list()) == {"completed"}
