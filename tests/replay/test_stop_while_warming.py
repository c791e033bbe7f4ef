"""A replay job stopped while its workers still build their sandbox and policy (warm-up), or close them after replaying
everything, and one whose worker died: the stop reaches every worker that is alive, and only those.

The first tests run the real CLI in a separate process (see :mod:`tests.replay.test_processes`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from tests.replay.test_processes import ENDS_WITHIN_S, STOPS_WITHIN_S, Job, jobs, stopped, wait_until_none_left

__all__ = ["jobs"]  # the fixture, used by name (by start)

pytestmark = pytest.mark.timeout(240)

BUILD_DELAY_S = 300
"""How long the policy takes to build in each worker (a model loading): far past the time a stop may take."""


@pytest.fixture
def start(bfcl_store_path: Path, jobs: list[Job]) -> Callable[..., Job]:
    """Starts ``ee replay run`` on the BFCL store with these flags and environment; whatever it leaves is killed when
    the test ends."""

    def start_job(*flags: str, **env: str) -> Job:
        job = Job(bfcl_store_path, *flags, env=env)
        jobs.append(job)
        return job

    return start_job


def _wait_until(job: Job, ready: Callable[[], bool], what: str, poll_s: float) -> None:
    """Wait until ``ready()`` says that ``what`` happened, which it must within ``ENDS_WITHIN_S``; the job still runs."""
    deadline = time.monotonic() + ENDS_WITHIN_S
    while not ready():
        assert job.proc.poll() is None, f"the job ended (exit {job.proc.returncode}) before {what}: {job.proc.stderr.read()}"
        assert time.monotonic() < deadline, f"not after {ENDS_WITHIN_S:g} s: {what}"
        time.sleep(poll_s)


def _stop(job: Job, how: str, store: Path, stored: int) -> None:
    """Stop ``job`` once, as ``how`` says. It must end as stopped (exit 130) within ``STOPS_WITHIN_S``, saying that it
    stored ``stored`` of the 6 trajectories (and have stored those), and leave none of its processes behind."""
    if how == "SIGTERM to the job":
        job.proc.send_signal(signal.SIGTERM)
    elif how == "Ctrl-C to its process group":
        os.killpg(job.proc.pid, signal.SIGINT)
    else:
        raise ValueError(f"no such way to stop a job: {how!r} (SIGTERM to the job, Ctrl-C to its process group)")
    stderr = stopped(job, STOPS_WITHIN_S)
    # (stopped before the job had counted its trajectories, as its fork server starts first, it says none was replayed)
    said = f"{stored} of 6 trajectories" in stderr or (stored == 0 and "before replaying any trajectory" in stderr)
    assert "interrupted: the replay stopped" in stderr and said, stderr
    assert wait_until_none_left(job.marker) == [], "workers and their sandbox children end with the job"
    assert LocalExperienceStore(store).replays().height == stored


@pytest.mark.parametrize(
    ("how", "executor"), [("SIGTERM to the job", "local"), ("Ctrl-C to its process group", "local"), ("SIGTERM to the job", "ray")]
)
def test_a_job_stopped_while_its_workers_build_their_policy_ends_at_once(
    bfcl_store_path: Path, start: Callable[..., Job], tmp_path: Path, how: str, executor: str
) -> None:
    """Before, the stop reached no local worker still in its warm-up: the job waited for their policies to build (300 s
    here; a model's load in practice), and a worker that got Ctrl-C went on building. A Ray actor still being built was
    asked to close after it, and killed only 30 s later."""
    if executor == "ray":
        pytest.importorskip("ray")
    built = tmp_path / "building"
    built.mkdir()
    job = start(
        *("--workers", "2", "--executor", executor, "--isolation", "subprocess"),
        *("--policy", "tests.replay.policies_for_tests:slow_to_build"),
        EE_TEST_BUILD_DIR=str(built),
        EE_TEST_BUILD_DELAY=str(BUILD_DELAY_S),
    )
    # both workers are building their policy (each its sandbox child already)
    _wait_until(job, lambda: len(list(built.iterdir())) >= 2, "both workers build their policy", poll_s=0.1)
    _stop(job, how, bfcl_store_path, stored=0)


@pytest.mark.parametrize("how", ["SIGTERM to the job", "Ctrl-C to its process group"])
def test_a_job_stopped_before_its_workers_are_forked_ends_at_once(
    bfcl_store_path: Path, start: Callable[..., Job], tmp_path: Path, how: str
) -> None:
    """The stop comes while the job's fork server still imports what workers need (no worker forked, no call queued
    yet). Before, the job then waited for every worker's whole warm-up (300 s here; a second SIGTERM did not end that
    wait either), and a Ctrl-C to its process group ended the fork server in its imports with a "Fatal Python error"
    traceback on the terminal."""
    built = tmp_path / "building"
    built.mkdir()
    job = start(
        *("--workers", "2", "--isolation", "subprocess", "--policy", "tests.replay.policies_for_tests:slow_to_build"),
        EE_TEST_BUILD_DIR=str(built),
        EE_TEST_BUILD_DELAY=str(BUILD_DELAY_S),
    )
    _wait_until(job, lambda: _has_fork_server(job.proc.pid), "the job started its fork server", poll_s=0.005)
    time.sleep(0.1)
    assert list(built.iterdir()) == [], "no worker builds its policy yet (the fork server still imports)"
    _stop(job, how, bfcl_store_path, stored=0)
    assert list(built.iterdir()) == [], "a worker forked after the stop skips its warm-up"


CLOSE_DELAY_S = 3.0
"""How long each worker's policy takes to close (a model unloading): the stop comes meanwhile."""


@pytest.mark.parametrize("how", ["SIGTERM to the job", "Ctrl-C to its process group"])
def test_a_job_stopped_while_its_workers_close_after_replaying_everything_ends_as_stopped(
    bfcl_store_path: Path, start: Callable[..., Job], tmp_path: Path, how: str
) -> None:
    """Every trajectory was replayed and stored; the stop comes while the workers close their policies. Before, that
    first SIGTERM or Ctrl-C was taken as a second one: it killed the workers mid-close and was swallowed, and the job
    printed its summary and exited 0, as if nobody had stopped it. It now stops the workers, lets them close to the end
    (a further signal would kill them), and exits 130 saying it was stopped."""
    closing, closed = tmp_path / "closing", tmp_path / "closed"
    closing.mkdir()
    closed.mkdir()
    job = start(
        *("--workers", "2", "--policy", "tests.replay.policies_for_tests:slow_to_close"),
        EE_TEST_CLOSING_DIR=str(closing),
        EE_TEST_CLOSED_DIR=str(closed),
        EE_TEST_CLOSE_DELAY=str(CLOSE_DELAY_S),
    )

    def workers_in(folder: Path) -> set[int]:
        return {int(p.name) for p in folder.iterdir()} - {job.proc.pid}

    _wait_until(job, lambda: len(workers_in(closing)) >= 2, "both workers close their policy", poll_s=0.02)
    assert workers_in(closed) == set(), "the stop comes while the workers close"
    _stop(job, how, bfcl_store_path, stored=6)
    assert workers_in(closed) == workers_in(closing), "one stop lets the workers close to the end"


def _has_fork_server(pid: int) -> bool:
    """Whether the process ``pid`` has started its fork server (a child whose command line names it)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:  # it ended
        return False
    for child in children:
        try:
            if "forkserver" in " ".join(child.cmdline()):
                return True
        except psutil.Error:  # ended meanwhile
            continue
    return False


def test_a_job_whose_worker_died_signals_no_longer_its_pid_when_it_stops_signals_recorded(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (out of memory, a native crash) is reaped at once by the job's fork server, so its pid is free
    for any new process; the pool that ran it still lists it. The job then stops (its pool is broken) and stops its
    other worker with SIGINT: before, it sent one to the dead worker's pid too, which another process may hold by
    then. The signals sent are recorded (and sent), each with the module that sent it: the job's own code, or
    CPython's clean-up of the broken pool (which sends SIGTERM to every process it lists, the dead one too)."""
    died, built = tmp_path / "died-pid", tmp_path / "building"
    built.mkdir()
    trajectory = LocalExperienceStore(bfcl_store_path).trajectories()["id"].to_list()[2]
    monkeypatch.setenv("EE_TEST_DIE_ON", trajectory)
    monkeypatch.setenv("EE_TEST_DIED_PID", str(died))
    monkeypatch.setenv("EE_TEST_BUILD_DIR", str(built))
    monkeypatch.setenv("EE_TEST_DIE_WHEN_BUILT", "2")  # (both workers built: under load the third trajectory came first)
    sent: list[tuple[int, int, str]] = []
    real_kill = os.kill

    def recorded_kill(pid: int, sig: int) -> None:
        sent.append((pid, sig, sys._getframe(1).f_globals.get("__name__", "")))
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", recorded_kill)
    with pytest.raises(SandboxError, match="ended without answering"):
        run_replay(ReplayConfig.load(store=bfcl_store_path, k=2, workers=2, policy="tests.replay.policies_for_tests:dying"))
    dead = int(died.read_text())
    workers = {int(path.name) for path in built.iterdir()}
    assert dead in workers and len(workers) == 2 and os.getpid() not in workers, (dead, workers)
    (live,) = workers - {dead}
    by_the_job = [(pid, sig) for pid, sig, sender in sent if sender.startswith("ee_middleware.")]
    assert (live, signal.SIGINT) in by_the_job, f"the job stopped its live worker: {sent}"
    assert [sig for pid, sig in by_the_job if pid == dead] == [], f"the job signalled the dead worker's pid: {sent}"
    assert [sig for pid, sig, _ in sent if pid == dead and sig != signal.SIGTERM] == [], sent
