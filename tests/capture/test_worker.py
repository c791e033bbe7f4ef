"""The span finisher defers work while runs are in flight, within its bounds."""

from __future__ import annotations

import threading

from ee_middleware.capture.worker import SpanFinisher


def _finisher(**kwargs):
    errors: list[str] = []
    return SpanFinisher(lambda message, exc: errors.append(message), **kwargs), errors


def test_work_waits_while_a_run_is_in_flight_and_runs_when_it_ends():
    finisher, _ = _finisher(max_delay_s=60)
    done = threading.Event()
    finisher.run_started()
    finisher.submit(done.set)
    assert not done.wait(0.2), "deferred while the run is in flight"
    finisher.run_ended()
    assert done.wait(5)


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
    aged, _ = _finisher(max_delay_s=0.05)
    aged.run_started()
    late = threading.Event()
    aged.submit(late.set)
    assert late.wait(5), "a job older than max_delay_s runs even while runs are in flight"


def test_a_failing_job_is_reported_and_the_next_still_runs():
    finisher, errors = _finisher()
    after = threading.Event()
    finisher.submit(lambda: 1 / 0)
    finisher.submit(after.set)
    assert after.wait(5) and finisher.flush(5)
    assert len(errors) == 1 and "ZeroDivisionError" in errors[0]
