"""A background thread that finishes spans: serialises payloads, redacts them, ends the span.

The agent's thread only notes times and hands the raw objects here, so span creation, JSON
encoding, redaction and every span processor's ``on_end`` (ours and the user's exporters) run off
that thread.

Python threads share one interpreter lock, so background work still competes with the agent for
the CPU. The finisher therefore works while no recorded run is in flight (an agent waiting on its
model counts as in flight only on its own thread; the lock is free then) and none has been for
``idle_grace_s``, and otherwise only when
the oldest job has waited ``max_delay_s`` or ``max_backlog`` jobs are queued. Memory and latency
stay bounded; in a busy loop the work is done in batches instead of interleaved with every step.

The end of a run does not wake the finisher: in a loop of back-to-back runs it would wake at every
run's end only to go back to sleep, and each wake takes the interpreter lock from the agent. While
runs are in flight the finisher looks again every ``idle_poll_s`` instead, so work left when the
runs stop starts within ``idle_poll_s + idle_grace_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

logger = logging.getLogger("ee_middleware.capture")

Job = Callable[[], None]


class SpanFinisher:
    """Runs jobs in order on one daemon thread; :meth:`flush` waits until all are done."""

    def __init__(
        self,
        on_error: Callable[[str, BaseException], None],
        *,
        max_delay_s: float = 2.0,
        max_backlog: int = 20_000,
        idle_grace_s: float = 0.005,
        idle_poll_s: float = 0.05,
        name: str = "ee-span-finisher",
    ) -> None:
        self._jobs: deque[tuple[float, Job]] = deque()
        self._cond = threading.Condition()
        self._outstanding = 0
        self._active_runs = 0
        self._flushing = 0
        self._draining = False  # set when the backlog bound is hit: work until the queue is empty
        self._on_error = on_error
        self._max_delay = max_delay_s
        self._max_backlog = max_backlog
        self._idle_grace = idle_grace_s
        self._idle_poll = idle_poll_s
        self._idle_since = 0.0  # when the last run in flight ended
        self._name = name
        self._thread: threading.Thread | None = None
        self._closed = False
        self.forced = 0
        """Jobs run while runs were in flight because the deferral or backlog bound was reached:
        sustained load (``offload="auto"`` moves capture to a process then)."""

    def run_started(self) -> None:
        with self._cond:
            self._active_runs += 1

    def run_ended(self) -> None:
        with self._cond:
            self._active_runs -= 1
            if self._active_runs == 0:
                self._idle_since = time.monotonic()  # no notify: the finisher polls (module docstring)

    def submit(self, job: Job) -> None:
        """Queue ``job``; never blocks beyond a short lock."""
        with self._cond:
            self._outstanding += 1
            self._jobs.append((time.monotonic(), job))
            self._ensure_thread()
            # the finisher waits without a timeout only on an empty queue: wake it for the first job
            # (it then keeps its own time), when no run is in flight, or at the backlog bound
            if self._active_runs == 0 or len(self._jobs) == 1 or len(self._jobs) >= self._max_backlog:
                self._cond.notify()

    def start(self) -> None:
        """Start the thread now, not with the first job (where capture's SIGTERM handler is the process's, whose flush
        cannot start one: see :meth:`~ee_middleware.capture.processor.ExperienceSpanProcessor.start_writer`)."""
        with self._cond:
            if not self._closed:
                self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Process everything queued now, whatever runs are in flight, and wait for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._outstanding:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def forget_after_fork(self) -> None:
        """In a process forked from this one's: the queued jobs are the parent's runs (it writes them) and the thread
        and lock are the parent's (the lock may have been held by a thread that does not exist here). Start empty."""
        self._cond = threading.Condition()
        self._jobs.clear()
        self._outstanding = self._active_runs = self._flushing = 0
        self._draining = False
        self._thread = None

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _next(self) -> Job | None:
        """Wait until a job may run (see the module docstring); ``None`` once closed and empty."""
        with self._cond:
            while True:
                if not self._jobs:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if len(self._jobs) >= self._max_backlog:
                    self._draining = True
                now = time.monotonic()
                waited = now - self._jobs[0][0]
                # a loop of back-to-back runs leaves gaps of microseconds between them: start only
                # once no run has been in flight for idle_grace_s, not in every such gap
                idle_for = now - self._idle_since if self._active_runs == 0 else -1.0
                if idle_for >= self._idle_grace or self._flushing or self._draining or waited >= self._max_delay:
                    if idle_for < self._idle_grace and not self._flushing:
                        self.forced += 1
                    job = self._jobs.popleft()[1]
                    self._draining = self._draining and bool(self._jobs)
                    return job
                self._cond.wait(min(self._max_delay - waited, self._idle_grace - idle_for if idle_for >= 0 else self._idle_poll))

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - capture must never take the thread down
                self._on_error(f"could not finish a span: {exc!r}", exc)
            finally:
                with self._cond:
                    self._outstanding -= 1
                    if not self._outstanding:
                        self._cond.notify_all()
