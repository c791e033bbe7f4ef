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
- The handler writes nothing itself: it hands the work to a thread of its own, and waits for it with a time limit. The
  signal may arrive while the main thread holds one of capture's locks, which that thread then waits on in vain until
  the limit, never for ever. The main thread never gets back from the handler (the process ends in it), so the thread
  must be running before the signal: a thread started from the handler does not begin until the main thread lets go of
  :mod:`threading`'s own lock, which it holds while it starts a thread itself, and the runs were lost. So it is started
  when the process's first run starts (:func:`ready_to_write`, on the run's thread, before the run is in flight), while
  the handler is capture's; not when the handler is installed, nor in a forked process before it records: a process
  that never records (one that only builds its agents, a forked child that execs or exits at once, ``subprocess``'s
  ``preexec_fn``) gets no thread, and Python 3.12+ does not warn at its ``os.fork`` that it is multi-threaded. A
  process where no run started has nothing to write: there the handler only ends it. Where ``threading`` is green
  (gevent, eventlet, see below) that thread is not started ahead (its blocking wait would stop every green thread): the
  handler starts one. So does it where the app's own handler calls capture's after replacing it (capture's was not the
  installed one when the runs started).
- A Python handler runs only when the main thread next runs Python code. A SIGTERM that comes just before the main
  thread blocks in C (taken by another thread, or between a lock's last signal check and its wait) leaves that thread
  blocked with the handler pending, where at the default the signal ends the process from any thread. A
  ``multiprocessing`` worker is stopped that way: one idle in its task queue's lock when a ``Pool``'s ``terminate``
  sent it SIGTERM never ended, and the pool's ``with`` block waited on it for ever. So in a process ``multiprocessing``
  forked (``Process``, ``Pool``, ``ProcessPoolExecutor`` with the fork start method) where SIGTERM is capture's and the
  process has no signal wakeup fd of its own (:func:`signal.set_wakeup_fd`), capture sets one and watches it on a
  thread: a SIGTERM whose handler has not started within :data:`NUDGE_AFTER_S` is sent again to the main thread alone
  (``pthread_kill``), which interrupts its wait, and the handler runs. Not in the app's own process, where the wakeup
  fd is the app's to set (Trio warns when it finds one taken; a daemonizer that closes every file would leave signal
  bytes written into a file that reuses the number), nor where gevent or eventlet patched ``threading`` (the watcher's
  blocking read would stop every green thread).
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
import multiprocessing.util
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable

from ee_middleware._lifetime import process_hooks
from ee_middleware.capture.offload import in_capture_process

logger = logging.getLogger("ee_middleware.capture")

FLUSH_S = 5.0
"""At most this long, from SIGTERM, for the runs in flight to be ended and every recorder's runs written."""

SWITCH = "EE_CAPTURE_SIGTERM"
"""``EE_CAPTURE_SIGTERM=0`` (or false, no, off): never install the handler in this process (on by default)."""

TERMINATED = "terminated: SIGTERM"
"""The ``error`` of a run that was in flight when SIGTERM came (its status is ``interrupted``)."""

NUDGE_AFTER_S = 0.2
"""A SIGTERM whose handler has not started this long after it came is sent again to the main thread (then after twice
as long, up to :data:`NUDGES` times: a main thread busy in a long C call runs the handler when the call returns)."""

NUDGES = 4

NUDGE_SETTLE_S = 0.5
"""After a repeat, a SIGTERM within this long is taken for it (the handler runs once for both), not for a second one."""

_decided_in: int | None = None  # the process whose main thread decided, once: installed, or left the app's handler
_flush: Callable[[float, str], None] | None = None
_resume: Callable[[], None] | None = None
_stopping = False
_nudge_pending = False  # the watcher sent SIGTERM to the main thread; a handler run it causes during the flush is no second SIGTERM
_wakeup: tuple[int, int] | None = None  # (read end, write end) of the pipe of this process's wakeup fd, where capture set it
_ran_in: int | None = None  # the process where a run started (not its parent's before a fork): it has runs to write


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
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not signal.SIG_DFL:
            if _uvicorns(handler):
                logger.warning(UVICORN_OWNS_SIGTERM)
            return False  # the app's (or its server's), or ignored: theirs to keep
        _flush, _resume = flush, resume
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter
        return False
    if _ran_in == os.getpid():  # a recorder built on another thread recorded before this one installed the handler
        _start_writer()
    return True


UVICORN_OWNS_SIGTERM = (
    "ee-middleware: uvicorn handles SIGTERM in this process (with --workers or --reload it imports the app after installing "
    "its handler), and after its graceful shutdown it ends the process at once: the runs capture still holds then are "
    "lost unless the app writes them in its lifespan shutdown (await asyncio.to_thread(agent.flush)); see the README, "
    "'Stopped with SIGTERM'. EE_CAPTURE_SIGTERM=0 says capture is to leave SIGTERM to the app, and silences this."
)
"""Said once per process where capture leaves SIGTERM to uvicorn's handler (a sweep lost 15 of 22 answered runs so)."""


def _uvicorns(handler: object) -> bool:
    """Whether ``handler`` (a signal handler) is uvicorn's (a method of its ``Server``), read without importing uvicorn."""
    owner = getattr(handler, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(handler, "__module__", None)
    return isinstance(module, str) and module.split(".", 1)[0] == "uvicorn"


def _on_sigterm(signum: int, frame: object) -> None:
    # takes no lock the interrupted main thread may hold (see the module docstring)
    global _stopping, _nudge_pending
    if _stopping and _nudge_pending:  # the watcher's repeat of the SIGTERM being handled, not a second one
        _nudge_pending = False
        return
    if not _stopping and _flush is not None:  # a second SIGTERM while this one waits: end now
        _stopping = True
        writer = _writer
        if sys.is_finalizing():  # its threads are gone: nothing more can be written
            pass
        elif writer is not None and writer.pid == os.getpid():
            writer.write(_flush, FLUSH_S)
        elif _ran_in != os.getpid() and _FIRST_LOAD:  # no run started in this process: nothing to write
            pass
        else:  # green threads (or a reloaded module, an app's handler that calls this one): a thread of its own, started now
            worker = threading.Thread(target=_flush_quietly, args=(_flush,), name=WRITER_THREAD_NAME, daemon=True)
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


WRITER_THREAD_NAME = "ee-capture-sigterm-flush"
"""The name of the thread that writes the runs at SIGTERM (:class:`_Writer`)."""


class _Writer:
    """The thread that writes the runs at SIGTERM, started before the signal comes, as the process's first run starts
    (not by the handler: a thread begins only once it has taken :mod:`threading`'s own lock, which the interrupted main
    thread may hold, and never lets go of). The handler hands the flush over with :meth:`queue.SimpleQueue.put` (reentrant, waits
    for nothing) and waits for it on a queue of its own, made there, which no other thread can hold. A daemon: idle, it
    keeps no process from exiting."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked process has no copy of the thread: it starts its own with its first run
        self._asked: queue.SimpleQueue[tuple[Callable[[float, str], None], queue.SimpleQueue[None]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=WRITER_THREAD_NAME, daemon=True).start()

    def write(self, flush: Callable[[float, str], None], seconds: float) -> None:
        """Have ``flush`` run on the thread, and wait at most ``seconds`` for it (safe in a signal handler; a signal
        handler that runs meanwhile, as a second SIGTERM's, interrupts the wait)."""
        done: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._asked.put((flush, done))
        try:
            done.get(timeout=seconds)
        except queue.Empty:  # still writing: the process ends all the same
            pass

    def _run(self) -> None:
        while True:
            flush, done = self._asked.get()
            try:
                _flush_quietly(flush)
            finally:
                done.put(None)


_writer: _Writer | None = None
_writer_lock = threading.Lock()  # two runs starting at once start one writer


def ready_to_write() -> bool:
    """Called as a run starts, on its thread, before the run is in flight: note that this process has runs to write at
    SIGTERM and start its :class:`_Writer`, once per process, where capture's handler has SIGTERM and ``threading`` is
    not green (see the module docstring). Returns whether the writer is running in this process: then the threads that
    write a run (the recorder's) must be running before the signal comes too."""
    global _ran_in
    pid = os.getpid()
    writer = _writer
    if writer is None or writer.pid != pid:
        with _writer_lock:
            if _writer is None or _writer.pid != pid:
                _start_writer()
        writer = _writer
    _ran_in = pid  # (after the writer started: a SIGTERM while the main thread starts it finds nothing to write, and ends)
    return writer is not None and writer.pid == pid


def _start_writer() -> None:
    """Start this process's :class:`_Writer`, where capture's handler has SIGTERM and ``threading`` is not green."""
    global _writer
    if _green_threads() or signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        return
    try:
        _writer = _Writer()
    except RuntimeError:  # no new thread at interpreter shutdown (or none to be had): the handler starts one
        _writer = None


def _watch_for_a_pending_handler() -> None:
    """Set this process's signal wakeup fd to a pipe capture watches, where the process has none and SIGTERM is
    capture's (see the module docstring); from the main thread."""
    global _wakeup
    try:
        reader, writer = os.pipe()
    except OSError:
        return
    try:
        os.set_blocking(writer, False)
        previous = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread or interpreter
        os.close(reader)
        os.close(writer)
        return
    if previous != -1:  # the process's own (asyncio's): its loop wakes on it; capture leaves it
        signal.set_wakeup_fd(previous)
        os.close(reader)
        os.close(writer)
        return
    _wakeup = (reader, writer)
    try:
        threading.Thread(target=_watch, args=(reader, threading.main_thread().ident), name="ee-capture-sigterm-watch", daemon=True).start()
    except RuntimeError:  # no new thread at interpreter shutdown
        pass


def _watch(reader: int, main_thread: int | None) -> None:
    """Read the signal numbers the wakeup fd gets; where one is SIGTERM and capture's handler has not started in time,
    send SIGTERM again to the main thread alone (its handler runs once for both)."""
    global _nudge_pending
    while True:
        try:
            numbers = os.read(reader, 512)
        except OSError:  # closed: a forked process's copy, or the process is ending
            return
        if not numbers:
            return
        if signal.SIGTERM not in numbers or main_thread is None:
            continue
        wait = NUDGE_AFTER_S
        for _ in range(NUDGES):
            deadline = time.monotonic() + wait
            while not _stopping and time.monotonic() < deadline:
                time.sleep(0.01)
            if _stopping or signal.getsignal(signal.SIGTERM) is not _on_sigterm:
                break  # started; or the app's handler (or the exit flush's) now has it
            _nudge_pending = True
            try:
                signal.pthread_kill(main_thread, signal.SIGTERM)
            except (OSError, ValueError):  # the main thread is gone
                return
            wait *= 2
        if _nudge_pending:  # delivered by now: handled with the SIGTERM it repeated, or waiting for the main thread
            time.sleep(NUDGE_SETTLE_S)
            _nudge_pending = False


def _after_fork_in_child() -> None:
    global _stopping, _nudge_pending, _wakeup, _writer, _writer_lock, _ran_in
    _stopping = _nudge_pending = False
    # the parent's writer is not in this process, nor are its runs: the child starts its own writer with its first run
    # (ready_to_write), not here: a child that execs or exits at once (preexec_fn, a daemonizer) starts no thread
    _writer = _ran_in = None
    _writer_lock = threading.Lock()  # it may have been held by a thread that does not exist here
    if _wakeup is None:
        return
    inherited, _wakeup = _wakeup, None  # shared with the parent: its watcher would read this process's signals
    try:
        current = signal.set_wakeup_fd(-1)
        if current != inherited[1]:
            signal.set_wakeup_fd(current)  # the process set one of its own since
    except ValueError:  # not the main thread here
        pass
    for end in inherited:
        os.close(end)


def _watch_in_multiprocessing_child(_: object) -> None:
    """In a process ``multiprocessing`` forked, after it cleared what the parent left: watch for a SIGTERM whose
    handler is pending (see the module docstring)."""
    if signal.getsignal(signal.SIGTERM) is _on_sigterm and not _green_threads():
        _watch_for_a_pending_handler()


def _green_threads() -> bool:
    """Whether gevent or eventlet patched ``threading`` (a blocking read on a thread would stop every green thread)."""
    for module_name, patched in (("gevent.monkey", "is_module_patched"), ("eventlet.patcher", "is_monkey_patched")):
        module = sys.modules.get(module_name)
        try:
            if module is not None and getattr(module, patched)("thread" if module_name.startswith("eventlet") else "threading"):
                return True
        except (AttributeError, TypeError):  # an unknown version's API: assume patched rather than freeze the process
            return True
    return False


# Registered once per process, as capture's recorder registers its own: a reload (importlib.reload; Jupyter's
# %autoreload, which clears these globals first) runs this module again, and each hook would run twice in a forked child.
# What was registered is kept outside these globals (_lifetime.process_hooks).
_HOOKS = process_hooks(__name__)
_FIRST_LOAD = not _HOOKS
_HOOKS["fork"] = True

if _FIRST_LOAD and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
    # keyed on this module, which multiprocessing holds weakly and sys.modules keeps alive (as capture's recorder does)
    multiprocessing.util.register_after_fork(sys.modules[__name__], _watch_in_multiprocessing_child)
