"""Processes that end with the process that started them.

A replay job's worker processes and sandbox children, and capture's offload process, must not
outlive their parent, however it ends: a ``SIGKILL`` of the parent runs none of its clean-up code. Two mechanisms, both armed by the process
that must die (see :func:`die_with_parent`):

- on Linux, a parent-death signal (``prctl(PR_SET_PDEATHSIG)``): the kernel sends it the moment the
  parent goes away;
- everywhere, a watchdog thread that checks :func:`os.getppid` every second and calls
  ``on_orphaned`` once the parent is gone (the fallback where there is no ``prctl``, and the way to
  run clean-up code, which a ``SIGKILL`` from the kernel never gives a chance to).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["die_with_parent", "kill_process_group", "parent_death_preexec", "set_parent_death_signal"]

WATCHDOG_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: signal.Signals) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; ``False`` where that is not available.

    The signal is tied to the parent *thread* that started this process, so only arm it in
    processes started from a thread that lives as long as their parent (the main thread).
    """
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def parent_death_preexec(sig: signal.Signals) -> Callable[[], object] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that arms ``sig`` as the child's parent-death signal
    (see :func:`set_parent_death_signal`; ``None`` where that is not available). libc is loaded here, in
    the parent: the child, between fork and exec, only makes the one system call."""
    prctl = _prctl()
    if prctl is None:
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(
    parent_pid: int,
    on_orphaned: Callable[[], None],
    *,
    death_signal: signal.Signals | None = None,
    interval_s: float = WATCHDOG_INTERVAL_S,
) -> None:
    """Make this process end when ``parent_pid`` (its parent when it started) goes away.

    ``death_signal``: also arm the parent-death signal (Linux), for a process that has nothing to
    clean up itself. ``on_orphaned`` runs on the watchdog thread (or right away, when the parent is
    already gone) and must end the process, normally with :func:`os._exit`.
    """
    if death_signal is not None:
        set_parent_death_signal(death_signal)
    if os.getppid() != parent_pid:  # it died before the signal was armed
        on_orphaned()
        return

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent_pid:
                on_orphaned()
                return

    previous = threading.stack_size(256 * 1024)  # it only sleeps; keep its address space small
    try:
        threading.Thread(target=watch, name="ee-orphan-watchdog", daemon=True).start()
    finally:
        threading.stack_size(previous)


def kill_process_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal every process of group ``pgid``; nothing when the group is gone already."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
