"""Waiting in tests for a process to end, where its parent, not the test, reaps it."""

from __future__ import annotations

import time

import psutil


def ended(pid: int, within_s: float, *, poll_s: float = 0.05) -> bool:
    """Whether process ``pid`` ends within ``within_s``: it is gone, or a zombie (ended, its parent yet to reap it:
    ``psutil.Process.wait`` on a process that is not this one's child waits until its pid is gone, the whole bound)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
