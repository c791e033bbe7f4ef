"""The times capture gives its spans: the wall clock, read through the monotonic clock while runs are in flight.

A run's steps are ordered by their spans' start times. The wall clock can step backwards while a run is in flight (an
NTP correction, a virtual machine resumed, someone setting the date), and a step larger than the time between two of
the run's calls put a later call first: the run was stored with its steps out of order, and nothing said so. So capture
reads the wall clock once, when a run starts and no other is in flight (the anchor), and every time after that as the
anchor plus the monotonic time since: runs that overlap share one anchor and keep their order between them too, and the
next run started when none is in flight reads the wall clock again (a step is then taken in, between runs). A step
forward is taken in at the next run's start even while others are in flight: times that jump forward keep the order.
"""

from __future__ import annotations

import os
import threading
import time

from ee_middleware._lifetime import process_hooks

FORWARD_STEP_NS = 1_000_000_000
"""How far the wall clock may run ahead of a :class:`RunClock` with runs in flight before a run's start follows it."""


class RunClock:
    """Nanoseconds since the epoch that never go backwards while a run is in flight (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._anchor = (time.time_ns(), time.monotonic_ns())  # one tuple: read whole by now_ns, without the lock

    def now_ns(self) -> int:
        wall, monotonic = self._anchor
        return wall + time.monotonic_ns() - monotonic

    def run_started(self) -> None:
        """A run starts: the wall clock is read again where no other run is in flight, or where it is ahead of this clock
        by more than :data:`FORWARD_STEP_NS` (a forward step, a suspend the monotonic clock did not count: moving forward
        keeps every run's order, so a service that always has a run in flight follows the wall clock too)."""
        with self._lock:
            wall, monotonic = time.time_ns(), time.monotonic_ns()
            anchored_wall, anchored_monotonic = self._anchor
            if self._in_flight == 0 or wall > anchored_wall + monotonic - anchored_monotonic + FORWARD_STEP_NS:
                self._anchor = (wall, monotonic)
            self._in_flight += 1

    def run_ended(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def _after_fork_in_child(self) -> None:
        """A forked child continues none of the runs its parent's other threads had in flight."""
        self._lock = threading.Lock()
        self._in_flight = 0


CLOCK = RunClock()
now_ns = CLOCK.now_ns


def _after_fork_in_child() -> None:
    CLOCK._after_fork_in_child()  # (looked up at the call: after a reload, this module's clock)


# registered once per process, as capture's other fork hooks are (see the recorder module's comment on reloads)
if not process_hooks(__name__) and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
process_hooks(__name__)["fork"] = True
