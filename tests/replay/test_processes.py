"""``ee replay run`` always ends and leaves no process behind: workers, sandbox children, tools' own processes.

Each test runs the real CLI in a separate process with a marker in its environment, which every
process it starts inherits (workers, sandbox children, processes the tools start, even after they
are re-parented to init), and then counts the live processes that carry the marker.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import send_json, serving
from tests.conftest import BFCL_ENTRIES
from tests.processes import ended

pytestmark = pytest.mark.timeout(240)

REPO_ROOT = Path(__file__).resolve().parents[2]
FORKING = "tests.replay.sandboxes_for_tests:ForkingBFCLSandbox"
MARKER = "EE_TEST_JOB_MARKER"
ENDS_WITHIN_S = 120.0
"""A generous bound proving the job ended instead of hanging (not a speed test)."""
CLEANED_UP_WITHIN_S = 30.0
"""How long processes get to notice their job died and end (the watchdogs check every second)."""


def processes_of(marker: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose environment carries ``marker``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_until_none_left(marker: str) -> list[str]:
    """Wait (bounded) for every process of the job to end; what is still alive after that."""
    deadline = time.monotonic() + CLEANED_UP_WITHIN_S
    while (left := processes_of(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"{p.pid} {p.name()} {p.cmdline()[:4]}" for p in left if p.is_running()]


def _stop_signals_at_their_defaults() -> None:
    """(In the job's process, before it starts.) SIGINT, SIGTERM and SIGHUP at their defaults, as in a terminal: a job
    keeps a signal it was started ignoring ignored (``nohup`` ignores SIGHUP, a shell's background job SIGINT), and
    the tests below were then at the mercy of how pytest itself was started (under nohup, SIGHUP never stopped it).
    (Calls into C only, with nothing imported: a ``preexec_fn`` runs in the forked child of a process with threads.)"""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the SIGABRT of _stacks_of leaves no core file in the repository


class Job:
    """``ee replay run`` in its own session, with a marker; kills whatever it left when the test ends."""

    def __init__(self, store: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.marker = uuid.uuid4().hex
        cmd = [sys.executable, "-m", "ee_middleware.cli", "replay", "run", "--store", str(store), "--k", "2", "--no-progress", *flags]
        # PYTHONFAULTHANDLER: a job that does not stop in time is sent SIGABRT, and each of its Python processes then
        # writes every thread's stack to the job's stderr (see stopped())
        environment = {**os.environ, MARKER: self.marker, "PYTHONPATH": str(REPO_ROOT), "PYTHONFAULTHANDLER": "1", **(env or {})}
        self.proc = subprocess.Popen(
            cmd,
            env=environment,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_stop_signals_at_their_defaults,
        )

    def cleanup_processes(self) -> None:
        """Kill the job and every process it left."""
        for process in processes_of(self.marker):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def cleanup(self) -> None:
        self.cleanup_processes()
        self.proc.stderr.close()


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    started: list[Job] = []
    yield started
    for job in started:
        job.cleanup()


def finish(job: Job) -> str:
    try:
        job.proc.wait(ENDS_WITHIN_S)
    except subprocess.TimeoutExpired:
        alive = [f"{p.pid} {p.name()}" for p in processes_of(job.marker)]
        pytest.fail(f"the replay job did not end within {ENDS_WITHIN_S:g} s; its processes: {alive}")
    stderr = job.proc.stderr.read()
    assert job.proc.returncode == 0, stderr
    return stderr


def test_two_workers_with_subprocess_isolation_end_and_leave_nothing(bfcl_store_path: Path, jobs: list[Job]) -> None:
    job = Job(bfcl_store_path, "--workers", "2", "--isolation", "subprocess")
    jobs.append(job)
    finish(job)
    assert wait_until_none_left(job.marker) == []
    assert LocalExperienceStore(bfcl_store_path).replays().height == BFCL_ENTRIES


def test_processes_a_tool_started_end_with_the_job(bfcl_store_path: Path, jobs: list[Job]) -> None:
    # ForkingBFCLSandbox starts a `sleep 300` on every reset and never stops it.
    job = Job(bfcl_store_path, "--workers", "1", "--isolation", "subprocess", "--sandbox", FORKING)
    jobs.append(job)
    finish(job)
    assert wait_until_none_left(job.marker) == []


def test_a_sigkilled_job_takes_its_workers_sandbox_children_and_their_processes_along(
    bfcl_store_path: Path, jobs: list[Job], tmp_path: Path
) -> None:
    """...and its fork server's listening socket and the folder holding it (sweep S4: a ``pymp-*`` folder was left in
    the temporary folder by 12 of 13 SIGKILLs)."""
    temporary = Path(tempfile.mkdtemp(prefix="ee-t-", dir="/tmp"))  # short: a Unix socket's path has 107 bytes at most
    env = {"EE_TEST_RESET_DELAY": "5", "TMPDIR": str(temporary)}
    job = Job(bfcl_store_path, "--workers", "2", "--isolation", "subprocess", "--sandbox", FORKING, env=env)
    jobs.append(job)
    # Kill it once both workers' sandbox children are inside a reset, each having started a process.
    deadline = time.monotonic() + ENDS_WITHIN_S
    while sum(p.name() == "sleep" for p in processes_of(job.marker)) < 2:
        assert job.proc.poll() is None, job.proc.stderr.read()
        assert time.monotonic() < deadline, "the job never got to its sandboxes"
        time.sleep(0.1)
    alive = processes_of(job.marker)
    assert len(alive) >= 7  # the job, 2 workers, 2 sandbox children, 2 tool processes (and multiprocessing's helpers)
    assert list(temporary.glob("pymp-*/listener-*")), "the fork server listens in the job's folder"
    os.kill(job.proc.pid, signal.SIGKILL)  # the job's process only: nothing of its own clean-up runs
    job.proc.wait()
    assert wait_until_none_left(job.marker) == []
    assert list(temporary.glob("pymp-*")) == []
    temporary.rmdir()


def test_a_sigkilled_job_without_workers_takes_its_sandbox_childs_processes_along(bfcl_store_path: Path, jobs: list[Job]) -> None:
    """Short resets: the sandbox child sees its pipe's end between calls, before its watchdog sees its parent gone. It
    then exited by itself and left the processes its tools started running (sweep D: 13 of 13 after a SIGKILL)."""
    job = Job(bfcl_store_path, "--workers", "1", "--isolation", "subprocess", "--sandbox", FORKING, env={"EE_TEST_RESET_DELAY": "0.3"})
    jobs.append(job)
    wait_for_resets(job, 3)
    os.kill(job.proc.pid, signal.SIGKILL)
    job.proc.wait()
    assert wait_until_none_left(job.marker) == []


def test_a_temporary_folder_too_long_for_the_fork_servers_socket_spawns_the_workers(
    bfcl_store_path: Path, jobs: list[Job], tmp_path: Path
) -> None:
    """Sweep S4's runs found it: with TMPDIR deeper than a Unix socket's path allows, `ee replay run --workers 2` failed
    with "unexpected OSError: AF_UNIX path too long"; its workers are spawned instead, with a warning."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    job = Job(bfcl_store_path, "--workers", "2", env={"TMPDIR": str(deep)})
    jobs.append(job)
    stderr = finish(job)
    assert "too long for a Unix socket" in stderr and "spawning them instead" in stderr
    assert LocalExperienceStore(bfcl_store_path).replays().height == BFCL_ENTRIES


STOPS_WITHIN_S = 15.0
"""How long a job with workers gets to stop after SIGTERM or Ctrl-C (it took about a second; before, each worker first
replayed every trajectory it had been sent: minutes with slow tools)."""


def wait_for_resets(job: Job, count: int) -> None:
    """Wait until ``count`` sandbox resets of ``ForkingBFCLSandbox`` are under way (each started a ``sleep``)."""
    deadline = time.monotonic() + ENDS_WITHIN_S
    while sum(p.name() == "sleep" for p in processes_of(job.marker)) < count:
        assert job.proc.poll() is None, job.proc.stderr.read()
        assert time.monotonic() < deadline, "the job never got to its sandboxes"
        time.sleep(0.1)


def _stacks_of(job: Job) -> str:
    """What ``job``'s processes were doing: each one's state and command line, then the stacks of every thread of its
    Python processes. All are frozen (SIGSTOP) first, so that none moves on as another ends; then each in turn, the
    deepest first (a worker is killed by the kernel as its parent dies), is sent SIGABRT and let go, and with
    PYTHONFAULTHANDLER set writes its stacks to the job's stderr as it dies."""
    processes = {p.pid: p for p in processes_of(job.marker)}
    with contextlib.suppress(psutil.Error):
        processes[job.proc.pid] = psutil.Process(job.proc.pid)

    def depth(process: psutil.Process) -> int:
        found = 0
        with contextlib.suppress(psutil.Error):
            while (parent := process.ppid()) in processes and found < 100:
                process, found = processes[parent], found + 1
        return found

    listed = []
    for process in processes.values():
        with contextlib.suppress(psutil.Error):
            listed.append(f"{process.pid} (parent {process.ppid()}) {process.status()} {' '.join(process.cmdline()[:8])}")
            process.suspend()
    trackers = []
    for process in sorted(processes.values(), key=depth, reverse=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" in " ".join(process.cmdline()):
                trackers.append(process)  # let go last, unhurt: it removes the semaphores once the others are gone
            elif "python" in process.name():
                process.send_signal(signal.SIGABRT)
                process.resume()
                ended(process.pid, 5.0, poll_s=0.02)
    for tracker in trackers:
        with contextlib.suppress(psutil.Error):
            tracker.resume()
            ended(tracker.pid, 5.0, poll_s=0.02)
    job.cleanup_processes()  # (every process holding the pipe: reading it to its end waits for them)
    return "its processes:\n" + "\n".join(listed) + "\n\nits stderr, with their stacks:\n" + job.proc.stderr.read()


def stopped(job: Job, within_s: float) -> str:
    """The stderr of ``job`` once it has ended, which it must within ``within_s``, with exit code 130 (as on Ctrl-C)."""
    try:
        job.proc.wait(within_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the replay job was still running {within_s:g} s after it was told to stop\n{_stacks_of(job)}")
    stderr = job.proc.stderr.read()
    assert job.proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


@pytest.mark.parametrize(
    "how", ["SIGTERM to the job", "Ctrl-C to its process group", "SIGINT to the job alone", "SIGHUP to its process group"]
)
def test_a_job_with_workers_stops_at_once_and_says_what_it_kept(bfcl_store_path: Path, jobs: list[Job], how: str) -> None:
    # Each reset takes 30 s: a worker that finished the trajectory it replays, and those queued for it, took minutes.
    job = Job(
        bfcl_store_path,
        *("--workers", "2", "--isolation", "subprocess", "--sandbox", FORKING, "--policy", "tests.replay.policies_for_tests:gated"),
        env={"EE_TEST_RESET_DELAY": "30"},
    )
    jobs.append(job)
    wait_for_resets(job, 2)  # both workers are replaying
    if how.startswith("SIGTERM"):
        job.proc.send_signal(signal.SIGTERM)
    elif how.endswith("alone"):  # (the kernel may hand it to one of polars's threads: it was acted on 30 s later)
        job.proc.send_signal(signal.SIGINT)
    elif how.startswith("SIGHUP"):  # a closed terminal: it killed multiprocessing's resource tracker (its traceback)
        os.killpg(job.proc.pid, signal.SIGHUP)
    else:
        os.killpg(job.proc.pid, signal.SIGINT)
    stderr = stopped(job, STOPS_WITHIN_S)
    assert "might leak" not in stderr, stderr
    signal_name = how.split()[0] if how.startswith(("SIGTERM", "SIGHUP")) else "SIGINT"
    assert f"interrupted: the replay stopped ({signal_name}" in stderr, stderr
    assert "0 of 6 trajectories replayed and stored" in stderr, stderr  # none had finished its first reset
    assert "continues where it stopped" in stderr, stderr
    assert wait_until_none_left(job.marker) == []  # workers, sandbox children and the tools' processes
    assert LocalExperienceStore(bfcl_store_path).replays().height == 0  # nothing of the trajectories cut short


def test_a_second_sigterm_kills_workers_whose_sandboxes_do_not_close(bfcl_store_path: Path, jobs: list[Job], tmp_path: Path) -> None:
    resets = tmp_path / "resets"
    resets.mkdir()
    job = Job(
        bfcl_store_path,
        *("--workers", "2", "--sandbox", "tests.replay.sandboxes_for_tests:StuckClosingBFCLSandbox"),
        *("--policy", "tests.replay.policies_for_tests:gated"),
        env={"EE_TEST_RESET_DIR": str(resets), "EE_TEST_RESET_DELAY": "30", "EE_TEST_CLOSE_DELAY": "300"},
    )
    jobs.append(job)
    deadline = time.monotonic() + ENDS_WITHIN_S
    while len(list(resets.iterdir())) < 2:  # both workers are replaying
        assert job.proc.poll() is None, job.proc.stderr.read()
        assert time.monotonic() < deadline, "the job never got to its sandboxes"
        time.sleep(0.1)
    job.proc.send_signal(signal.SIGTERM)
    time.sleep(2)
    assert job.proc.poll() is None  # the workers stopped replaying, and wait on their sandboxes' close
    job.proc.send_signal(signal.SIGTERM)  # a supervisor that does not wait longer
    stderr = stopped(job, 5)
    assert "interrupted: the replay stopped (SIGTERM)" in stderr, stderr
    # the wait was said while it lasted (was: nothing between the first signal and the last line)
    said = stderr.find("stopping the replay workers")
    assert 0 <= said < stderr.find("interrupted: the replay stopped") and "a Ctrl-C or SIGTERM now kills them" in stderr, stderr
    assert wait_until_none_left(job.marker) == []


SLOW_ANSWER_S = 30.0
"""How long the stand-in model server takes to answer (a served model writing a long answer, or a hung server)."""


class _SlowModelServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowModelHandler)
        self.requests_seen = 0
        self.released = threading.Event()  # set when the test ends: the answers still pending then end at once


class _SlowModelHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat completions endpoint whose answers take :data:`SLOW_ANSWER_S`."""

    server: _SlowModelServer

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        send_json(self, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "test", "max_model_len": 32768}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests_seen += 1
        self.server.released.wait(SLOW_ANSWER_S)
        call = {"id": "c0", "type": "function", "function": {"name": "nothing_here", "arguments": "{}"}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        try:
            send_json(
                self,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}],
                },
            )
        except OSError:
            pass


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_job_with_a_served_policy_stops_without_waiting_for_the_model_requests_in_flight_slow_server_stand_in(
    bfcl_store_path: Path, jobs: list[Job], workers: str
) -> None:
    # Before, a stopped job (and each stopped worker) waited for every proposal request already sent: 18-40 s with
    # 12-20 s answers, minutes with a long answer; in the job's own process a second SIGTERM was ignored meanwhile.
    server = _SlowModelServer()
    with serving(server) as url:
        try:
            job = Job(bfcl_store_path, "--workers", workers, "--policy", f"openai:{url}#m", "--requests-in-flight", "4")
            jobs.append(job)
            deadline = time.monotonic() + ENDS_WITHIN_S
            while server.requests_seen < 4:  # proposal requests are in flight
                assert job.proc.poll() is None, job.proc.stderr.read()
                assert time.monotonic() < deadline, "the job never asked the model"
                time.sleep(0.1)
            time.sleep(1)
            job.proc.send_signal(signal.SIGTERM)
            stderr = stopped(job, 8)
            assert "interrupted: the replay stopped (SIGTERM" in stderr, stderr
            assert wait_until_none_left(job.marker) == []
        finally:
            server.released.set()
