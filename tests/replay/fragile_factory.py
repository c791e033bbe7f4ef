"""A sandbox factory whose module raises (not an ImportError) when a replay job's fork server preloads it, and imports
anywhere else (the job's process, the workers): it stands for a user's module that reads, as it is imported, what only
the application's own processes have (its command line, a setting its ``main`` made)."""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

from ee_middleware.bfcl.sandbox import BFCLSandbox


def _preloaded_by_a_fork_server() -> bool:
    """Imported inside ``multiprocessing.forkserver``'s code, by the server itself (a worker it forked has its name)."""
    if multiprocessing.current_process().name != "MainProcess":
        return False
    frame = sys._getframe()
    while frame is not None:
        if frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            return True
        frame = frame.f_back
    return False


if _preloaded_by_a_fork_server():
    raise RuntimeError("this module reads the application's command line")


def make_sandbox(**options: Any) -> BFCLSandbox:
    return BFCLSandbox(**options)
