"""The span finisher defers work while runs are in flight, within its bounds."""

from __future__ import annotations

import threading
import time

from ee_middleware.capture.worker import SpanFinisher


def _finisher(**kwargs):
    errors: list[str] = []
    return SpanFinisher(lambda message, exc: errors.append(message), **kwargs), errors


class _WatchedCondition(threading.Condition):
    """The finisher's condition variable, noting what the worker thread had done when it first waited."""

    def __init__(self, worker_name: str, job_done: threading.Event) -> None:
        super().__init__()
        self._worker_name = worker_name
        self._job_done = job_done
        self.worker_waited = threading.Event()
        self.job_done_before_wait: bool | None = None
        self.first_wait_timeout: float | None = None

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread().name == self._worker_name and not self.worker_waited.is_set():
            self.job_done_before_wait = self._job_done.is_set()
            self.first_wait_timeout = timeout
            self.worker_waited.set()
        return super().wait(timeout)


class _CountingCondition(threading.Condition):
    """Counts the worker thread's waits: each one after the first is a wake-up."""

    def __init__(self, worker_name: str) -> None:
        super().__init__()
        self._worker_name = worker_name
        self.worker_waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread().name == self._worker_name:
            self.worker_waits += 1
        return super().wait(timeout)


def test_work_waits_while_a_run_is_in_flight_and_runs_when_it_ends():
    finisher, _ = _finisher(max_delay_s=60, name="finisher-under-test")
    done = threading.Event()
    watched = _WatchedCondition("finisher-under-test", done)
    finisher._cond = watched  # before the first submit, which starts the worker thread
    finisher.run_started()
    finisher.submit(done.set)
    # The worker thread starts with the job queued; it must look at it and wait, bounded by max_delay_s.
    assert watched.worker_waited.wait(5), "the worker thread never waited"
    assert watched.job_done_before_wait is False, "the job ran while a run was in flight"
    assert watched.first_wait_timeout is not None and 0 < watched.first_wait_timeout <= 60
    assert not done.is_set(), "deferred while the run is in flight"
    finisher.run_ended()
    assert done.wait(5), "the job runs once the run has ended"


def test_back_to_back_runs_do_not_wake_the_finisher_and_the_work_runs_when_they_stop():
    finisher, _ = _finisher(max_delay_s=60, idle_poll_s=60, name="finisher-polled")
    counting = _CountingCondition("finisher-polled")
    finisher._cond = counting
    done = threading.Event()
    finisher.run_started()
    finisher.submit(done.set)
    deadline = time.monotonic() + 5
    while not counting.worker_waits and time.monotonic() < deadline:
        time.sleep(0.001)
    assert counting.worker_waits == 1, "the worker thread looked at the job and waited"
    for _ in range(200):  # a loop of back-to-back runs: each run's end used to wake the worker thread
        finisher.run_ended()
        finisher.run_started()
    finisher.run_ended()
    time.sleep(0.05)
    assert counting.worker_waits == 1 and not done.is_set(), "run ends do not wake the finisher"
    polled, _ = _finisher(max_delay_s=60, idle_poll_s=0.02)
    ran = threading.Event()
    polled.run_started()
    polled.submit(ran.set)
    polled.run_ended()
    assert ran.wait(5), "work left when the runs stop starts at the next poll"


def test_flush_and_backlog_and_age_bounds_force_the_work():
    finisher, _ = _finisher(max_delay_s=60, max_backlog=3)
    finisher.run_started()
    ran: list[int] = []
    finisher.submit(lambda: ran.append(1))
    assert finisher.flush(5) and ran == [1], "flush does everything queued, runs in flight or not"
    events = [threading.Event() for _ in range(3)]
    for e in events:
        finisher.submit(e.set)
    assert all(e.wait(5) for e in events), "a full backlog is processed"
    aged, _ = _finisher(max_delay_s=0.05, name="finisher-aged")
    counting = _CountingCondition("finisher-aged")
    aged._cond = counting
    aged.run_started()
    late = threading.Event()
    aged.submit(late.set)
    assert late.wait(5), "a job older than max_delay_s runs even while runs are in flight"
    assert aged.flush(5)
    waits = counting.worker_waits
    deadline = time.monotonic() + 5
    while counting.worker_waits == waits and time.monotonic() < deadline:
        time.sleep(0.001)  # until the worker thread waits on the empty queue, with no timeout
    later = threading.Event()
    aged.submit(later.set)
    assert later.wait(5), "a job queued while a run is in flight, after the queue emptied, still runs after max_delay_s"


def test_a_failing_job_is_reported_and_the_next_still_runs():
    finisher, errors = _finisher()
    after = threading.Event()
    finisher.submit(lambda: 1 / 0)
    finisher.submit(after.set)
    assert after.wait(5) and finisher.flush(5)
    assert len(errors) == 1 and "ZeroDivisionError" in errors[0]
