"""Peak resident memory of one stage: this process's, and its child processes' (workers, servers).

``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is no measure of the children: Linux carries a process's
high-water mark across ``exec``, so every child started from a large job process reports at least
the job's size at the moment it was started. :class:`PeakMemory` instead samples, every
``interval_s`` while the stage runs,

- this process's resident memory; where the process's high-water mark (``VmHWM``) rose during the
  stage, that new mark is the stage's exact peak (it was set during the stage). The mark is never
  reset: a program that runs a job in-process keeps its own peak readings;
- the descendants started during the stage (children, their children, ...), keeping the largest sum
  of their proportional set sizes (PSS, ``/proc/PID/smaps_rollup``: pages shared with this process
  or with each other are divided among the sharers, so forked workers are not counted N times the
  parent's size). A process already running when the stage began (a server an earlier stage
  started) is counted by the stage that started it.

A peak shorter than the interval between two samples can be missed where no high-water mark shows
it, so the figures are lower bounds. Without ``/proc`` (not Linux) ``self`` is ``ru_maxrss`` so far.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from types import TracebackType

_PROC = Path("/proc")
_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / (1 << 20) if hasattr(os, "sysconf") else 4096 / (1 << 20)


def _status_mib(pid: int | str, field: str) -> float | None:
    """A ``kB`` field of ``/proc/PID/status`` in MiB; ``None`` if the process is gone or has none."""
    try:
        with open(_PROC / str(pid) / "status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _proportional_mib(pid: int) -> float | None:
    """``pid``'s proportional set size (MiB); its resident size where the kernel has no ``smaps_rollup``."""
    try:
        with open(_PROC / str(pid) / "smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return _resident_mib(pid) if (_PROC / str(pid)).exists() else None
    except (OSError, ValueError, IndexError):
        return None
    return None


def _resident_mib(pid: int) -> float | None:
    try:
        return int((_PROC / str(pid) / "statm").read_text().split()[1]) * _PAGE_MIB
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's ``children`` file; else a scan of ``/proc``)."""
    tasks = _PROC / str(pid) / "task"
    found: list[int] = []
    try:
        for task in tasks.iterdir():
            found.extend(int(p) for p in (task / "children").read_text().split())
        return found
    except FileNotFoundError:
        if not tasks.exists():
            return []  # the process is gone
    except (OSError, ValueError):
        pass
    return _children_by_scan(pid)


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.append(child)
                todo.append(child)
    return seen


def process_peak_mib() -> float:
    """This process's peak resident memory so far (MiB): ``VmHWM``, else ``ru_maxrss``."""
    own = _status_mib("self", "VmHWM:")
    return own if own is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Context manager: the peak resident memory (MiB) of this process and of its descendants while it is open.

    ::

        with PeakMemory() as memory:
            run_stage()
        memory.result()  # {"self": 812.4, "children": 2310.0}
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self._pid = os.getpid()
        self._mark_at_start = 0.0
        self._mark_at_end: float | None = None
        self._self_peak = 0.0
        self._children_peak = 0.0
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def per_stage(self) -> bool:
        """Whether ``self`` is this stage's own peak (``/proc`` could be read), not the process's so far."""
        return self._thread is not None

    def __enter__(self) -> PeakMemory:
        if _PROC.is_dir():
            self._mark_at_start = process_peak_mib()
            self._before = set(descendants(self._pid))
            self._sample()
            self._thread = threading.Thread(target=self._watch, name="ee-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._sample()  # whatever is still alive at the end
        self._mark_at_end = process_peak_mib()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        own = _resident_mib(self._pid)
        if own is not None:
            self._self_peak = max(self._self_peak, own)
        total = sum(filter(None, (_proportional_mib(pid) for pid in descendants(self._pid) if pid not in self._before)))
        self._children_peak = max(self._children_peak, total)

    def result(self) -> dict[str, float]:
        """``{"self": MiB, "children": MiB}``, rounded to 0.1 MiB (read while open: so far)."""
        mark = self._mark_at_end if self._mark_at_end is not None else process_peak_mib()
        if not self.per_stage:
            own = mark
        elif mark > self._mark_at_start:
            own = mark  # the process's high-water mark rose during the stage: the stage set it
        else:
            own = self._self_peak
        return {"self": round(own, 1), "children": round(self._children_peak, 1)}
