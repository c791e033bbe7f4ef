"""Peak resident memory of one stage: this process's, and its child processes' (workers, servers).

``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is no measure of the children: Linux carries a process's
high-water mark across ``exec``, so every child started from a large job process reports at least
the job's size at the moment it was started. :class:`PeakMemory` instead

- resets this process's high-water mark when the stage starts (``/proc/self/clear_refs``, Linux 4.0
  and later) and reads it (``VmHWM``) when the stage ends: the stage's own exact peak;
- samples the live descendants (children, their children, ...) every ``interval_s`` while the
  stage runs, and keeps the largest sum of their resident memory, never less than the largest
  single descendant's own high-water mark (``VmHWM``, which starts afresh at ``exec``). A peak
  shorter than the interval between two samples can be missed, so this is a lower bound.

Where ``/proc`` cannot be read (not Linux) it falls back to ``ru_maxrss`` so far, and says so.
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


class PeakMemory:
    """Context manager: the peak resident memory (MiB) of this process and of its descendants while it is open.

    ::

        with PeakMemory() as memory:
            run_stage()
        memory.result()  # {"self": 812.4, "children": 2310.0}
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.per_stage = False
        """Whether ``self`` is this stage's own peak (the high-water mark could be reset) or the process's so far."""
        self._pid = os.getpid()
        self._children_peak = 0.0
        self._child_hwm: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        try:
            (_PROC / "self" / "clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
            self.per_stage = True
        except OSError:
            self.per_stage = False
        if _PROC.is_dir():
            self._thread = threading.Thread(target=self._watch, name="ee-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()  # whatever is still alive at the end

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        total = 0.0
        for pid in descendants(self._pid):
            rss = _resident_mib(pid)
            if rss is None:
                continue
            total += rss
            hwm = _status_mib(pid, "VmHWM:")
            if hwm is not None and hwm > self._child_hwm.get(pid, 0.0):
                self._child_hwm[pid] = hwm
        self._children_peak = max(self._children_peak, total, max(self._child_hwm.values(), default=0.0))

    def result(self) -> dict[str, float]:
        """``{"self": MiB, "children": MiB}``, rounded to 0.1 MiB."""
        own = _status_mib("self", "VmHWM:")
        if own is None:
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"self": round(own, 1), "children": round(self._children_peak, 1)}
