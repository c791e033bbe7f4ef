"""``--workers N``: a worker process that dies (killed out of memory, a native crash in a model library) fails the task
it was running, and the run goes on with a new process (real worker processes, killed by a real SIGKILL)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from ee_middleware.errors import EEError
from ee_middleware.evals.clients import NoopClient
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, read_journal, run_eval
from ee_middleware.evals.suites import load_suite
from tests.evals.client_parts import TurnClient

SUITE = "bfcl:simple:12"
MARKER = "triangle"
"""The tasks whose question names it kill their worker process (4 of the first 12 simple entries)."""


def _die() -> None:
    """This process is killed by SIGKILL, as the kernel's out-of-memory killer kills."""
    os.kill(os.getpid(), signal.SIGKILL)


class _InWorkers(TurnClient):
    """A model that does :meth:`in_worker` (dies, hangs) at each request in a worker process of the run, then answers as
    noop does; in the run's own process it only answers."""

    def in_worker(self, conversation: str) -> None:
        """What it does in a worker process, given the conversation so far as JSON text."""

    def turn(self, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
        if multiprocessing.parent_process() is not None:
            self.in_worker(json.dumps(messages))
        return None


class _KilledOnMarker(_InWorkers):
    """A model whose process is killed (SIGKILL, as the kernel's out-of-memory killer kills) on the tasks naming MARKER."""

    model = "killed-on-marker"

    def in_worker(self, conversation: str) -> None:
        if MARKER in conversation:
            _die()


def killed_on_marker(**options: Any) -> NoopClient:
    """``tests.evals.test_run_workers:killed_on_marker``."""
    return _KilledOnMarker()


def killed_while_starting(**options: Any) -> NoopClient:
    """A model whose worker process is killed while it builds the model (the parent process builds it as well)."""
    if multiprocessing.parent_process() is not None:
        _die()
    return NoopClient()


def _children() -> set[int]:
    """This process's children, but multiprocessing's resource tracker (one per process, started with the first worker)."""
    return {p.pid for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())}


@pytest.fixture
def outliving() -> Callable[[], set[int]]:
    """The processes this process started since the test began (a run's workers, their own) still running when called."""
    before = _children()
    return lambda: _children() - before


def _killing() -> list[str]:
    """The ids of SUITE's tasks that kill their worker (their question names MARKER)."""
    return sorted(t.id for t in load_suite(SUITE).tasks() if MARKER in json.dumps(t.turns))


def _job(tmp_path: Path, model: str, *, suite: str = SUITE, workers: int = 2) -> EvalJob:
    """A run of ``suite`` into ``tmp_path/run`` on ``workers`` worker processes with this module's ``model`` factory."""
    return EvalJob(suites=[suite], model=f"{__name__}:{model}", out=str(tmp_path / "run"), workers=workers)


def _noop_run(job: EvalJob, tmp_path: Path) -> None:
    """The same suite run by noop in one process into ``tmp_path/noop`` (the other side of a gate)."""
    run_eval(job.model_copy(update={"model": "noop", "out": str(tmp_path / "noop"), "workers": 1}))


def test_a_worker_killed_on_a_task_fails_that_task_naming_it_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, outliving: Callable[[], set[int]]
) -> None:
    """Before: the run ended with 'unexpected BrokenProcessPool ... (a bug in ee-middleware ...)', naming no task, with no
    row journaled (the rows other workers had finished were lost), so every rerun died the same way. A death says nothing
    of the model: the same command runs such a task again once, and a task whose worker dies again keeps that failure."""
    killing = _killing()
    assert len(killing) >= 2, "the suite holds tasks that kill their worker"
    job = _job(tmp_path, "killed_on_marker")
    with caplog.at_level("WARNING", logger="ee_middleware.evals.runner"):
        [summary] = run_eval(job)
    assert summary["tasks"] == summary["runs"] == 12
    assert summary["failures"] == {"ast_decoder:decoder_failed": 12 - len(killing), "worker_died": len(killing)}
    assert summary["no_answer"] == summary["worker_deaths"] == len(killing) and summary["never_answered"] is None
    rows = read_journal(tmp_path / "run" / JOURNAL)
    died = {r["task_id"]: r for r in rows if r["error_type"] == "worker_died"}
    assert sorted(died) == killing
    assert all("worker process running this task died (killed by SIGKILL" in r["reason"] for r in died.values())
    for task_id in killing:
        assert f"bfcl:simple: task {task_id} (trial 0): the worker process running it died (killed by SIGKILL" in caplog.text
    assert not outliving(), "no worker process outlives the run"
    caplog.clear()
    with caplog.at_level("WARNING", logger="ee_middleware.evals.runner"):
        [again] = run_eval(job)  # the same command runs those tasks again, once
    assert again["failures"] == summary["failures"] and again["no_answer"] == 0 and again["worker_deaths"] == 0
    assert caplog.text.count("it counts as failed, as it did on the command before") == len(killing)
    final = [r for r in read_journal(tmp_path / "run" / JOURNAL) if r["error_type"] == "worker_died" and not r["no_answer"]]
    assert sorted(r["task_id"] for r in final) == killing and all("as one did on the command before" in r["reason"] for r in final)
    [third] = run_eval(job)  # then nothing runs again: it does not die at those tasks for ever
    assert third == again and len(read_journal(tmp_path / "run" / JOURNAL)) == 12 + len(killing)
    assert not outliving()


def test_a_worker_killed_while_it_starts_is_an_error_saying_so(tmp_path: Path, outliving: Callable[[], set[int]]) -> None:
    with pytest.raises(EEError, match=r"worker process of the run ended while it started \(killed by SIGKILL.*fewer --workers"):
        run_eval(_job(tmp_path, "killed_while_starting"))
    assert not outliving()


def killed_always(**options: Any) -> NoopClient:
    """A model whose worker process is killed on every request (a ``local:`` model the out-of-memory killer kills at each
    generate), not while it is built."""
    return _KilledAlways()


class _KilledAlways(_InWorkers):
    model = "killed-always"

    def in_worker(self, conversation: str) -> None:
        _die()


def test_a_run_whose_every_worker_died_measured_no_model_exits_1_is_refused_by_the_gate_and_taken_over(tmp_path: Path) -> None:
    """Before: every row worker_died, yet the run was a finished 0% run (exit 0, no never-answered warning), the gate
    PASSED an oracle candidate against it (+100%), and a corrected --model-spec into the same --out was refused ('holds
    6 result(s) of a run with other settings')."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.evals.gate import GatePolicy, gate

    suite, base = "bfcl:simple:6", tmp_path / "base"
    args = ["eval", "run", "--suite", suite, "--workers", "2", "--no-progress", "--json", "--out", str(base)]
    result = CliRunner().invoke(app, [*args, "--model-spec", "tests.evals.test_run_workers:killed_always"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["failures"] == {"worker_died": 6} and "the worker process running this task died" in summary["never_answered"]
    stderr = " ".join(result.stderr.split())
    assert "error: the model never answered in 1 suite(s)" in stderr and "fewer --workers" in stderr
    run_eval(EvalJob(suites=[suite], model="oracle", out=str(tmp_path / "cand")))
    outcome = gate(tmp_path / "cand", base, GatePolicy(min_tasks=1))
    assert not outcome.passed
    assert any(r.startswith("bfcl:simple: the baseline run has no answer from its model: all 6 task trial(s)") for r in outcome.reasons)
    # worker deaths are no result of the model: the corrected model spec takes the folder over
    [fixed] = run_eval(EvalJob(suites=[suite], model="noop", out=str(base), workers=2))
    assert fixed["runs"] == 6 and "worker_died" not in fixed["failures"] and fixed["never_answered"] is None


def killed_once(**options: Any) -> NoopClient:
    """A model whose worker process is killed the first time it meets each task naming MARKER (a one-off out-of-memory
    kill), and answers it on the next command (the tasks it met are files in ``$EE_TEST_DEATHS``)."""
    return _KilledOnce()


class _KilledOnce(_InWorkers):
    model = "killed-once"

    def in_worker(self, conversation: str) -> None:
        met = Path(os.environ["EE_TEST_DEATHS"]) / str(abs(hash(conversation)))
        if MARKER in conversation and not met.exists():
            met.touch()
            _die()


def test_a_task_whose_worker_was_killed_once_runs_again_and_is_scored_on_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a one-off out-of-memory kill was that task's failure for good; the gate counted it as the model's, silently,
    and the same command never ran it again. Now the run exits 1 (via the unanswered warning), the gate refuses it until
    the same command has run those tasks again, and then they are scored on the model's answer."""
    from ee_middleware.evals.gate import GatePolicy, gate
    from ee_middleware.evals.report import unanswered_warning

    monkeypatch.setenv("EE_TEST_DEATHS", str(tmp_path))
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # the same hash() in every worker process
    job = _job(tmp_path, "killed_once")
    [first] = run_eval(job)
    assert first["failures"]["worker_died"] == first["worker_deaths"] == len(_killing())
    assert "the worker process running 4 task trial(s) died (bfcl:simple: 4" in " ".join(unanswered_warning([first]).split())
    _noop_run(job, tmp_path)
    [reason] = gate(tmp_path / "run", tmp_path / "noop", GatePolicy(min_tasks=1)).reasons
    assert reason.startswith("bfcl:simple: the worker process running 4 task trial(s) of the candidate run died")
    assert f"`ee eval run ... --out {tmp_path / 'run'}` again" in reason
    [again] = run_eval(job)
    assert again["failures"] == {"ast_decoder:decoder_failed": 12} and again["no_answer"] == 0
    outcome = gate(tmp_path / "run", tmp_path / "noop", GatePolicy(min_tasks=1))
    assert outcome.passed and not any("worker" in note for note in outcome.notes), outcome.reasons


def test_a_task_whose_worker_dies_on_the_rerun_too_counts_as_failed_and_the_gate_says_so(tmp_path: Path) -> None:
    from ee_middleware.evals.gate import GatePolicy, gate

    job = _job(tmp_path, "killed_on_marker")
    run_eval(job)
    run_eval(job)
    _noop_run(job, tmp_path)
    outcome = gate(tmp_path / "noop", tmp_path / "run", GatePolicy(min_tasks=1))
    assert outcome.passed, outcome.reasons  # noop fails those tasks too: no task moved
    [note] = [n for n in outcome.notes if "worker process" in n]
    assert note.startswith("the baseline run counts 4 task trial(s) as failed because the worker process running them died")
    assert "bfcl:simple: simple_python_0, simple_python_10, simple_python_11, simple_python_2" in note


class _WithHelper(TurnClient):
    """A model client that starts a helper process when built (a local server, an engine process), as some plug-ins do,
    and ends it on close(); it answers after ``$EE_TEST_SLEEP`` seconds."""

    model = "with-helper"

    def __init__(self) -> None:
        import subprocess
        import sys

        self.helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    def turn(self, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
        import time

        time.sleep(float(os.environ.get("EE_TEST_SLEEP", "0")))
        return None

    def close(self) -> None:
        self.helper.terminate()
        self.helper.wait()


def with_helper(**options: Any) -> NoopClient:
    """``tests.evals.test_run_workers:with_helper``."""
    return _WithHelper()


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_stopping_a_run_ends_the_processes_its_workers_model_clients_started(how: str, tmp_path: Path) -> None:
    """Before: workers ignored SIGINT (SIG_IGN, which every program they start inherits) and were ended by SIGTERM, which
    ran no clean-up: Ctrl-C, or SIGTERM to `ee eval run`, left each worker's helper process running."""
    import subprocess
    import sys
    import time
    import uuid

    mark = uuid.uuid4().hex
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, EE_TEST_MARK=mark, EE_TEST_SLEEP="0.2", PYTHONPATH=str(root))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "ee_middleware.cli", "eval", "run", "--suite", "bfcl:simple:40", "--workers", "2"]
    args += ["--model-spec", "tests.evals.test_run_workers:with_helper", "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(args, env=env, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def marked() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with_mark = False
            try:
                with_mark = process.pid != proc.pid and process.environ().get("EE_TEST_MARK") == mark
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            if with_mark:
                found.append(process)
        return found

    try:
        deadline = time.monotonic() + 60
        while len(read_journal(run / JOURNAL)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        helpers = [p for p in marked() if "time.sleep(600)" in " ".join(p.cmdline())]
        assert len(helpers) == 3, "the parent's client and each worker's started a helper"
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)  # the terminal sends it to the whole foreground process group
        else:
            proc.send_signal(signal.SIGTERM)  # a supervisor stops the command itself
        assert proc.wait(timeout=60) == 130, proc.stderr.read() if proc.stderr else ""
        time.sleep(1)
        left = marked()
        assert not left, f"left running: {[' '.join(p.cmdline()) for p in left]}"
    finally:
        for process in marked():
            process.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def hangs(**options: Any) -> NoopClient:
    """A model whose worker processes hang on every request, ignoring SIGTERM (a native library stuck)."""
    return _Hangs()


class _Hangs(_InWorkers):
    model = "hangs"

    def in_worker(self, conversation: str) -> None:
        import time

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (Path(os.environ["EE_TEST_HUNG"]) / str(os.getpid())).touch()
        time.sleep(600)


def test_a_stopped_run_ends_its_hung_workers_all_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outliving: Callable[[], set[int]]
) -> None:
    """Before: each busy worker was terminated and waited for in turn (5 s each), so stopping a run whose 3 workers hung
    in native code took 15 s; now all are ended together, within one wait."""
    import threading
    import time

    hung = tmp_path / "hung"
    hung.mkdir()
    monkeypatch.setenv("EE_TEST_HUNG", str(hung))
    stopped: list[float] = []

    def interrupt_when_all_hang() -> None:
        deadline = time.monotonic() + 60
        while len(list(hung.iterdir())) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    watcher = threading.Thread(target=interrupt_when_all_hang, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        run_eval(_job(tmp_path, "hangs", suite="bfcl:simple:6", workers=3))
    took = time.monotonic() - stopped[0]
    assert took < 8, f"stopping 3 hung workers took {took:.1f} s (each may take 5 s after SIGTERM before it is killed)"
    assert not outliving()


def test_a_ctrl_c_another_thread_took_still_stops_a_run_whose_workers_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outliving: Callable[[], set[int]]
) -> None:
    """The kernel may hand a process's Ctrl-C to any of its threads (the main thread already had a signal pending, under
    load). Only the main thread runs Python's handlers, and it waited for its workers' rows without a timeout: a Ctrl-C
    another thread took was acted on only when a row came, never while the workers hung (a CI run hung 300 s so). Here
    the main thread blocks SIGINT, so the kernel must give it to the watcher; the watcher kills the hung workers after
    20 s, which ended the wait before the fix."""
    import threading
    import time

    hung = tmp_path / "hung"
    hung.mkdir()
    monkeypatch.setenv("EE_TEST_HUNG", str(hung))
    stopped: list[float] = []

    def interrupt_when_all_hang() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # it starts with the main thread's mask
        deadline = time.monotonic() + 60
        while len(list(hung.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(20)
        for pid in (int(p.name) for p in hung.iterdir()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        watcher = threading.Thread(target=interrupt_when_all_hang, daemon=True)
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            run_eval(_job(tmp_path, "hangs", suite="bfcl:simple:4", workers=2))
        took = time.monotonic() - stopped[0]
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    assert took < 15, f"the Ctrl-C was acted on {took:.1f} s after it came (when the watcher killed the workers)"
    assert not outliving()


def killed_when_all_started(**options: Any) -> NoopClient:
    """A model whose worker processes each wait, on their first request, until ``$EE_TEST_WORKERS`` of them have one (so
    that no task is left to hand out), then are killed on the tasks naming MARKER."""
    return _KilledWhenAllStarted()


class _KilledWhenAllStarted(_InWorkers):
    model = "killed-when-all-started"

    def in_worker(self, conversation: str) -> None:
        import time

        started = Path(os.environ["EE_TEST_STARTED"])
        (started / str(os.getpid())).touch()
        while len(list(started.iterdir())) < int(os.environ["EE_TEST_WORKERS"]):
            time.sleep(0.01)
        if MARKER in conversation:
            _die()


def test_no_worker_process_is_started_after_a_death_when_no_task_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a new process (a full model load for a local: model) was started after each death, even with nothing left
    to run, only to be stopped. bfcl:simple:3 on 3 workers: simple_python_0 and simple_python_2 kill their worker once
    every task is running."""
    from ee_middleware.evals import runner

    (tmp_path / "started").mkdir()
    monkeypatch.setenv("EE_TEST_STARTED", str(tmp_path / "started"))
    monkeypatch.setenv("EE_TEST_WORKERS", "3")
    started: list[int] = []
    real = runner._ProcessSlot.__init__

    def counted(self: Any, *args: Any) -> None:  # the real worker process, counted
        started.append(1)
        real(self, *args)

    monkeypatch.setattr(runner._ProcessSlot, "__init__", counted)
    [summary] = run_eval(_job(tmp_path, "killed_when_all_started", suite="bfcl:simple:3", workers=3))
    assert summary["failures"] == {"worker_died": 2, "ast_decoder:decoder_failed": 1}
    assert len(started) == 3


def test_workers_score_every_task_as_one_process_does(tmp_path: Path) -> None:
    """Tasks are sent one ahead to each busy worker: every task still runs once, its row the same as in one process."""
    one = EvalJob(suites=["bfcl:simple:40", "bfcl:irrelevance:20"], model="oracle", out=str(tmp_path / "one"))
    run_eval(one)
    run_eval(one.model_copy(update={"out": str(tmp_path / "three"), "workers": 3}))

    def rows(name: str) -> list[tuple[Any, ...]]:
        return sorted((r["suite"], r["task_id"], r["trial"], r["success"], r["reason"]) for r in read_journal(tmp_path / name / JOURNAL))

    assert rows("three") == rows("one") and len(rows("one")) == 60


def test_a_single_task_left_runs_in_a_worker_process_so_its_death_does_not_end_the_command(tmp_path: Path) -> None:
    """Was (a sweep): with one task to run, the run ran it in its own process whatever --workers said: a task whose
    worker had died ran again there and, dying again, killed the command itself (exit 137, no results.parquet, every
    time), and a first run of a one-task suite had no protection at all."""
    [alone] = run_eval(_job(tmp_path / "one", "killed_on_marker", suite="bfcl:simple:1"))  # simple_python_0 names MARKER
    assert alone["worker_deaths"] == 1 and alone["failures"] == {"worker_died": 1}, alone
    job = _job(tmp_path, "killed_on_marker", suite="bfcl:simple:2")  # simple_python_1 does not
    [first] = run_eval(job)
    assert first["worker_deaths"] == 1 and first["no_answer"] == 1, first
    [again] = run_eval(job)  # simple_python_0 alone is left: its worker dies again, its failure now, and the command goes on
    assert again["failures"] == {"worker_died": 1, "ast_decoder:decoder_failed": 1} and again["no_answer"] == 0, again
    assert (tmp_path / "run" / "results.parquet").is_file()
