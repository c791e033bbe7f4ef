"""Imported first by a replay job's fork server: puts the job's ``sys.path`` in place, then imports the rest of the
server's preload so that no module can stop the server.

multiprocessing starts a fork server as ``python -c ...`` and passes it the parent's ``sys.path``, which
``multiprocessing.forkserver.main`` applies before its preload only from CPython 3.12.8 and 3.13.1 on (gh-117378).
Before, the preload imports with ``python -c``'s own path: a module found only through the job's own path was skipped.
(The server starts with ``-P``, so the working directory is not on that path: see
:func:`ee_middleware.replay.executors._safe_path_for_children`.) This module reads the path ``main`` was given from
its frame and applies it; where ``main`` applies it itself, it finds the same path.

``main`` survives only an ``ImportError`` from a preloaded module: anything else (a user's module that reads
``sys.argv`` or a setting only the job's process has, as it is imported) ended the server, and the job with an
``EOFError``. So this module imports the rest of the preload itself, and puts its own name in the place of one that
raises (``main`` then imports nothing there), saying on stderr which and why: each worker imports it itself, as the
job's process did. Nothing else is imported before the path is in place but this package's light ``__init__``.
"""

from __future__ import annotations

import sys
from types import FrameType


def _forkserver_main() -> FrameType | None:
    """The frame of ``multiprocessing.forkserver.main`` that is importing this module, if any."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            return frame
        frame = frame.f_back
    return None


def _apply_server_path(frame: FrameType | None) -> bool:
    """Set ``sys.path`` to the ``sys_path`` that ``main`` was called with; ``False`` when there is none (a plain import)."""
    path = frame.f_locals.get("sys_path") if frame is not None else None
    if isinstance(path, list) and all(isinstance(entry, str) for entry in path):
        sys.path[:] = path
        return True
    return False


def _import_the_rest(frame: FrameType | None) -> list[str]:
    """Import the modules ``main`` is to preload after this one; the names of those that raised something other than
    ``ImportError`` (which ``main`` skips itself), each replaced in ``main``'s list by this module's name.

    The collector is off while they import and what they built is then frozen (:func:`gc.freeze`): it lives as long
    as the server and every worker forked from it, and collecting it only cost the server's start-up (about a
    quarter of its imports' CPU with BFCL's backends), which the job's first worker waits for."""
    import gc

    preload = frame.f_locals.get("preload") if frame is not None else None
    if not isinstance(preload, list) or __name__ not in preload:
        return []
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _import_after_this(preload)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def _import_after_this(preload: list[str]) -> list[str]:
    import importlib

    failed = []
    for index in range(preload.index(__name__) + 1, len(preload)):
        name = preload[index]
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        except BaseException as exc:  # noqa: BLE001 - the server must go on: each worker imports it again itself
            preload[index] = __name__
            failed.append(name)
            print(
                f"ee replay: the job's fork server could not import {name!r} ({type(exc).__name__}: {exc}); each worker imports it itself.",
                file=sys.stderr,
                flush=True,
            )
    return failed


def _remove_listener_if_orphaned(frame: FrameType | None) -> None:
    """In the fork server: at its exit, once the job's process is ending or gone (it then reads EOF and exits), remove its
    listening socket and the job's ``pymp-*`` folder that held it, if nothing else is left there (a SIGKILLed job left one
    in the temporary folder each time; a job that ends otherwise has removed them itself)."""
    import atexit
    import os
    import socket

    fd = frame.f_locals.get("listener_fd") if frame is not None else None
    if not isinstance(fd, int):
        return
    try:
        with socket.socket(socket.AF_UNIX, fileno=os.dup(fd)) as listener:
            address = listener.getsockname()
    except OSError:
        return
    if not isinstance(address, str) or not address.startswith("/"):  # (an abstract socket leaves no file)
        return
    server = os.getpid()

    def remove() -> None:
        # The server alone (a process forked from it inherits this hook: a tool's own fork ending with sys.exit). It exits
        # by itself only on EOF of its "alive" pipe, which the job's process alone holds open: the job is ending (its own
        # clean-up has removed the folder already) or killed (nothing else will). (Its parent is not asked: the pipe is
        # closed before a killed job's children are given another parent.)
        if os.getpid() != server:
            return
        try:
            os.unlink(address)
            folder = os.path.dirname(address)
            if os.path.basename(folder).startswith("pymp-"):
                os.rmdir(folder)  # (only when empty)
        except OSError:
            pass

    atexit.register(remove)


_main = _forkserver_main()
APPLIED = _apply_server_path(_main)
"""Whether this import put a fork server's ``sys.path`` in place."""
_remove_listener_if_orphaned(_main)
FAILED = _import_the_rest(_main)
"""The preloaded modules that raised as they were imported (left to the workers)."""
del _main
