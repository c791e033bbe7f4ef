"""A background thread that finishes spans: serialises payloads, redacts them, ends the span.

The agent's thread only starts spans and hands the raw objects here, so JSON encoding, redaction
and every span processor's ``on_end`` (ours and the user's exporters) run off that thread.
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

    def __init__(self, on_error: Callable[[str, BaseException], None], name: str = "ee-span-finisher") -> None:
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._outstanding = 0
        self._on_error = on_error
        self._name = name
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, job: Job) -> None:
        """Queue ``job``; never blocks beyond a short lock."""
        with self._cond:
            self._outstanding += 1
            self._jobs.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._outstanding:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - capture must never take the thread down
                self._on_error(f"could not finish a span: {exc!r}", exc)
            finally:
                with self._cond:
                    self._outstanding -= 1
                    if not self._outstanding:
                        self._cond.notify_all()
