"""Imported first by a replay job's fork server: puts the job's ``sys.path`` in place before the server imports the rest.

multiprocessing starts a fork server as ``python -c ...`` and passes it the parent's ``sys.path``, which
``multiprocessing.forkserver.main`` applies before its preload only from CPython 3.12.8 and 3.13.1 on (gh-117378).
Before, the preload imports with ``python -c``'s own path, the current directory first: a job run from a folder holding
a module of a preloaded name (a checkout, a ``resource.py``) had its workers run that folder's code, and a module found
only through the job's own path was skipped. This module reads the path ``main`` was given from its frame and applies
it; where ``main`` applies it itself, it finds the same path. Nothing else is imported here, so what it runs before the
path is in place is this package's light ``__init__`` alone.
"""

from __future__ import annotations

import sys


def _apply_server_path() -> bool:
    """Set ``sys.path`` to the ``sys_path`` that ``multiprocessing.forkserver.main`` was called with; ``False`` when
    this is not imported under it (a plain import: nothing changes)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            path = frame.f_locals.get("sys_path")
            if isinstance(path, list) and all(isinstance(entry, str) for entry in path):
                sys.path[:] = path
                return True
            return False
        frame = frame.f_back
    return False


APPLIED = _apply_server_path()
"""Whether this import put a fork server's ``sys.path`` in place."""
