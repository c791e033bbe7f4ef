"""Runs a process was still recording when SIGTERM stopped it are written before it ends.

Service managers stop a process with SIGTERM: Kubernetes, systemd, ``docker stop``, gunicorn's arbiter, uvicorn's
supervisor (``--workers``). Left at its default, the signal ends the process at once, without its exit hooks, so the runs
capture was still finishing (deferred on its background threads, queued for the capture process) were lost, and so were
the runs in flight. uvicorn handles SIGTERM itself, shuts down gracefully, then puts back the handler that was there
when it started and raises SIGTERM again: with the default one the process dies the same way.

So when a recorder is first built in a process's main thread and SIGTERM is at its default (``SIG_DFL``), capture
installs a handler (:func:`flush_on_sigterm`). On SIGTERM it ends the runs still in flight as ``interrupted`` (``error``
``terminated: SIGTERM``; a run ending meanwhile on another thread waits, so that no caller gets an answer that is not
written), waits at most :data:`FLUSH_S` for every live recorder of this process to write what it holds, then puts the
default back and raises SIGTERM again: the process still ends killed by SIGTERM (the exit status a
supervisor expects). A second SIGTERM while it waits ends the process at once. (A SIGTERM that comes while the
process's own exit flush runs, as a multiprocessing ``Pool`` sends to workers that are ending, is held until that flush
ends instead: see ``recorder._flush_at_exit``.)

- A handler the app installed (before the first recorder, or after it: it replaces this one) is never replaced: such an
  app opts out, and flushes in its own shutdown (``agent.flush()`` in a Starlette/FastAPI lifespan). So is a server
  that imports the app after installing its own handler (``uvicorn --workers N`` and ``--reload`` import it in each
  worker inside ``serve()``; ``uvicorn app:app`` loads it before): there the server's handler is the app's, and only
  the app's shutdown can flush.
- The handler does its waiting on a thread of its own, with a time limit: the signal may arrive while the main thread
  holds one of capture's locks, which that thread then waits on in vain until the limit, never for ever.
- In a forked process (``multiprocessing``'s fork, ``os.fork``; gunicorn's workers install handlers of their own) the
  inherited handler acts for that process: its recorders and its runs (the parent's queued work and runs in flight are
  the parent's, forgotten at the fork).
- A capture process (:func:`~ee_middleware.capture.offload.in_capture_process`) never installs it: it handles SIGTERM
  itself (its parent is gone), and the recorders the app's modules build there record nothing.
- Windows: none is installed (there SIGTERM is not how a process is stopped: ``TerminateProcess`` runs no handler).
- ``EE_CAPTURE_SIGTERM=0`` (:data:`SWITCH`) switches it off for the process (a misspelt value is refused, as for the
  other on/off variables).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from ee_middleware.capture.offload import in_capture_process

logger = logging.getLogger("ee_middleware.capture")

FLUSH_S = 5.0
"""At most this long, from SIGTERM, for the runs in flight to be ended and every recorder's runs written."""

SWITCH = "EE_CAPTURE_SIGTERM"
"""``EE_CAPTURE_SIGTERM=0`` (or false, no, off): never install the handler in this process (on by default)."""

TERMINATED = "terminated: SIGTERM"
"""The ``error`` of a run that was in flight when SIGTERM came (its status is ``interrupted``)."""

_decided_in: int | None = None  # the process whose main thread decided, once: installed, or left the app's handler
_flush: Callable[[float, str], None] | None = None
_resume: Callable[[], None] | None = None
_stopping = False


def flush_on_sigterm(flush: Callable[[float, str], None], resume: Callable[[], None]) -> bool:
    """Install the SIGTERM handler that calls ``flush(seconds, reason)`` on a thread of its own (see the module
    docstring), once per process, from its main thread, where SIGTERM is at its default; returns whether it was
    installed now. ``resume()`` is called if the process goes on after the signal was raised again (it was blocked)."""
    global _decided_in, _flush, _resume
    if os.name == "nt" or not hasattr(signal, "SIGTERM") or in_capture_process():
        return False
    from ee_middleware.capture.config import env_flag

    if env_flag(SWITCH) is False:
        return False  # switched off for the process
    if threading.current_thread() is not threading.main_thread() or _decided_in == os.getpid():
        return False  # only the main thread can install it; a later recorder's thread may be the main one
    _decided_in = os.getpid()
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False  # the app's (or its server's), or ignored: theirs to keep
        _flush, _resume = flush, resume
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter
        return False
    return True


def _on_sigterm(signum: int, frame: object) -> None:
    global _stopping
    if not _stopping and _flush is not None:  # a second SIGTERM while this one waits: end now
        _stopping = True
        worker = threading.Thread(target=_flush_quietly, args=(_flush,), name="ee-capture-sigterm-flush", daemon=True)
        try:
            worker.start()
            worker.join(FLUSH_S)
        except RuntimeError:  # no new thread at interpreter shutdown: nothing more can be written
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)  # ends the process here, unless this thread blocks SIGTERM
    _stopping = False
    if _resume is not None:
        _resume()


def _flush_quietly(flush: Callable[[float, str], None]) -> None:
    try:
        flush(FLUSH_S, TERMINATED)
    except Exception:  # the process ends either way
        logger.exception("ee-middleware: writing recorded runs at SIGTERM failed")


def _after_fork_in_child() -> None:
    global _stopping
    _stopping = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
