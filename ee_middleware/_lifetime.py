"""Processes that end with the process that started them.

A replay job's worker processes and sandbox children, and capture's offload process, must not
outlive their parent, however it ends: a ``SIGKILL`` of the parent runs none of its clean-up code. Two mechanisms, both armed by the process
that must die (see :func:`die_with_parent`):

- on Linux, a parent-death signal (``prctl(PR_SET_PDEATHSIG)``): the kernel sends it the moment the
  parent goes away;
- everywhere, a watchdog thread that checks :func:`os.getppid` every second and calls
  ``on_orphaned`` once the parent is gone (the fallback where there is no ``prctl``, and the way to
  run clean-up code, which a ``SIGKILL`` from the kernel never gives a chance to).

And the other way round, a process told to end (``SIGTERM``, ``SIGHUP``) runs its clean-up as on Ctrl-C
(:func:`termination_as_interrupt`); and one that waits in its main thread for an event loop or another thread wakes
often enough to take such a stop (:func:`awaiting_with_signal_checks`, :func:`result_with_signal_checks`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "awaiting_with_signal_checks",
    "die_with_parent",
    "kill_process_group",
    "parent_death_preexec",
    "process_hooks",
    "result_with_signal_checks",
    "second_signal_ends",
    "set_parent_death_signal",
    "stopping_signal",
    "termination_as_interrupt",
    "wait_for_group_end",
]

WATCHDOG_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1

# kept through a reload of this module too (importlib.reload runs it again in the same globals)
_PROCESS_HOOKS: dict[str, dict[str, Any]] = globals().get("_PROCESS_HOOKS", {})


def process_hooks(module: str) -> dict[str, Any]:
    """What the module named ``module`` registered as this process's hooks (``os.register_at_fork``, ``atexit``,
    ``multiprocessing``), for it to fill in: empty on its first load. Kept here, not in that module's globals, which a
    reload of it loses: IPython's ``%autoreload`` clears the module's ``__dict__`` before reloading it, and hooks
    registered again on each reload would run once per load (in every forked child, and at exit)."""
    return _PROCESS_HOOKS.setdefault(module, {})


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


GROUP_WATCHDOG_GRACE_S = 15.0
"""How long a group watchdog (:func:`start_group_watchdog`) waits after its SIGTERM before it SIGKILLs the group."""

SHARED_MEMORY_LOOK_S = 1.0
SHARED_MEMORY_EARLY_S = 300.0
SHARED_MEMORY_LATER_LOOK_S = 30.0
"""A group watchdog notes the shared memory the group holds every :data:`SHARED_MEMORY_LOOK_S` for its first
:data:`SHARED_MEMORY_EARLY_S` (a server makes it as it starts), every :data:`SHARED_MEMORY_LATER_LOOK_S` after that
(reading ``/proc`` costs a few milliseconds for a vLLM server's processes)."""


def start_group_watchdog(
    pgid: int,
    *,
    grace_s: float = GROUP_WATCHDOG_GRACE_S,
    shared_memory_before: dict[str, tuple[int, int]] | None = None,
    remove_folder: str | None = None,
) -> Any:
    """Start a small process that ends process group ``pgid`` when this process goes away, however it ends (a SIGKILL
    too): SIGTERM to the whole group, then SIGKILL after ``grace_s``, and it removes the shared memory in /dev/shm the
    group left (:mod:`ee_middleware._shared_memory`). It exits by itself once the group is gone.

    For a child started in a group of its own (``start_new_session``: a model server) whose own children must not
    outlive this process: the parent-death signal reaches only the direct child, which may not end its children (a
    wrapper script does not). The watchdog gets the parent-death signal (Linux) and watches :func:`os.getppid` as well;
    it runs in a session of its own, so a Ctrl-C in the terminal does not end it before this process's clean-up has run.
    The caller ends it (SIGKILL) once it has stopped the group itself. ``shared_memory_before``: the files in /dev/shm
    before the group started (:func:`~ee_middleware._shared_memory.shared_memory_files`), never removed (default: those
    when the watchdog starts). ``remove_folder``: a folder of the group's own (its sockets), removed once the group has
    ended. Returns its :class:`subprocess.Popen`."""
    import subprocess

    code = "from ee_middleware._lifetime import _watch_group; _watch_group()"
    watchdog = subprocess.Popen(
        [sys.executable, "-c", code, str(os.getpid()), str(pgid), repr(float(grace_s)), *([remove_folder] if remove_folder else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        # SIGURG, ignored by default: a parent that dies before the watchdog's handler is in (its interpreter starting,
        # ~0.1 s) does not kill the watchdog with it; the parent-pid check below sees that death at the first look
        preexec_fn=parent_death_preexec(signal.SIGURG),
    )
    with watchdog.stdin:  # type: ignore[union-attr]  # (read whole at its start: a pipe's buffer holds thousands of names)
        watchdog.stdin.write(json.dumps(shared_memory_before).encode())  # type: ignore[union-attr]
    return watchdog


def _watch_group() -> None:
    """The group watchdog's main (see :func:`start_group_watchdog`; arguments: parent pid, group id, grace seconds, and
    the folder to remove, if any)."""
    parent, pgid, grace_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    folder = sys.argv[4] if len(sys.argv) > 4 else None
    orphaned = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGURG, lambda *_: orphaned.set())  # the parent-death signal
    signal.signal(signal.SIGTERM, lambda *_: orphaned.set())  # a stop of everything (the group goes too)
    from ee_middleware._shared_memory import group_shared_memory, remove_orphaned_shared_memory, shared_memory_files

    given = json.loads(sys.stdin.buffer.read() or b"null")
    existed = {path: tuple(identity) for path, identity in given.items()} if isinstance(given, dict) else shared_memory_files()
    shared_memory: set[str] = set()
    started = next_look = time.monotonic()
    while not orphaned.wait(WATCHDOG_INTERVAL_S / 4) and os.getppid() == parent:
        if not _group_alive(pgid):  # the group ended (stopped by the parent, or by itself): nothing left to watch
            remove_orphaned_shared_memory(shared_memory, existed=existed)
            _remove_folder(folder)
            return
        if time.monotonic() >= next_look:
            shared_memory |= group_shared_memory(pgid)
            early = time.monotonic() - started < SHARED_MEMORY_EARLY_S
            next_look = time.monotonic() + (SHARED_MEMORY_LOOK_S if early else SHARED_MEMORY_LATER_LOOK_S)
    shared_memory |= group_shared_memory(pgid)
    kill_process_group(pgid, signal.SIGTERM)
    wait_for_group_end(pgid, grace_s, poll_s=0.1)
    kill_process_group(pgid, signal.SIGKILL)
    remove_orphaned_shared_memory(shared_memory, existed=existed)
    wait_for_group_end(pgid, grace_s, poll_s=0.1)  # (killed: gone in a moment; its sockets' folder is removed after)
    _remove_folder(folder)


def _remove_folder(folder: str | None) -> None:
    if folder is not None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def wait_for_group_end(pgid: int, timeout_s: float, *, poll_s: float = 0.05) -> bool:
    """Wait up to ``timeout_s`` for every process of group ``pgid`` to end; whether they did."""
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a process left (one this user may signal)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def sigint_ignored_by_children(*, hold: bool = True) -> Iterator[None]:
    """A process started in this block (a fork server, a sandbox's child) ignores SIGINT from its first instruction: an
    ignored signal stays ignored across ``exec``, and Python then installs no ``KeyboardInterrupt`` for it, so a Ctrl-C
    to the process group during the child's imports is dropped there instead of ending it with a traceback on the
    terminal (the parent decides what a Ctrl-C does to its children). A no-op outside the main thread (only it can set
    handlers).

    ``hold``: this process loses no SIGINT meanwhile: it is blocked in this thread for the block (a blocked signal is
    held, not ignored) and one that came is delivered to its own handler once that is back. The child starts with it
    blocked too (a signal mask is inherited): only for a child that clears its mask itself (a sandbox's child does); a
    fork server's workers would never get their stop signal (``hold=False``: a SIGINT within the block is lost)."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None:  # (also: a handler not set from Python, which cannot be put back)
        yield
        return
    held = hold and hasattr(signal, "pthread_sigmask")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if held else None
    try:
        # (ignoring a signal drops one pending: one that came already is let through, unignored)
        ignore = not held or signal.SIGINT not in signal.sigpending()
        if ignore:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            if ignore:
                signal.signal(signal.SIGINT, previous)
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, a Kubernetes pod stopped, ``kill``) and SIGHUP (a closed terminal) end the command the
    way Ctrl-C does (``KeyboardInterrupt('SIGTERM')``, exit 130), so its clean-up runs: a server's process group is
    stopped, a job's run and stage say they were stopped, and its report is written. Left to their defaults they end the
    process at once. A no-op outside the main thread (only it can install handlers).

    Only a signal left at its default is taken: one the command was started ignoring stays ignored (``nohup`` ignores
    SIGHUP, so that closing the terminal does not stop the command), as does one a caller handles itself. After the
    first, both are ignored until the clean-up is over: a supervisor that sends SIGTERM again does not cut it short
    (except where the clean-up waits on other processes and says how to end that at once: :func:`second_signal_ends`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is signal.SIG_DFL]

    def interrupt(signum: int, _frame: object) -> None:
        for sig in taken:
            signal.signal(sig, signal.SIG_IGN)  # the clean-up now running is not interrupted again
            _SILENCED.add(sig)
        _STOPPED_BY[:] = [signal.Signals(signum).name]
        if _HOLDING[0]:  # raised when the native import under way is done (interrupts_held)
            _HELD.append(signal.Signals(signum).name)
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    _INTERRUPTING.add(interrupt)
    previous = {sig: signal.signal(sig, interrupt) for sig in taken}
    try:
        yield
    except Exception as exc:
        # an error raised once a signal stopped the command (one a library made of the interrupt on its way out, as
        # transformers' lazy imports do: "Could not import module 'LlamaConfig'"; a clean-up that failed because of
        # it) is that stop, the error as its cause: told as an error, a supervisor's stop blamed a base model, exit 1.
        # Not an exit the command chose (click's, with its exit_code: it said what it kept, or failed first).
        stop = stop_for(exc)
        if stop is None:
            raise
        raise stop from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
            _SILENCED.discard(sig)
        _INTERRUPTING.discard(interrupt)
        if taken:
            _STOPPED_BY.clear()


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold a Ctrl-C, SIGTERM or SIGHUP that comes while the block runs (an import of torch or transformers: native code
    that calls back into Python) and raise it, as ``KeyboardInterrupt``, when the block ends. Raised inside it, the
    interrupt crossed pybind11 and aborted the process (exit 134, a page of native stack, the run left "running") or
    came out as an ImportError that named the base model as broken. Only in the main thread, for the handlers Python and
    :func:`termination_as_interrupt` install (one the caller installed itself is left alone); nested blocks raise at the
    outermost's end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hold_ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def held(signum: int, _frame: object) -> None:
        _HELD.append(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGINT, held) if hold_ctrl_c else None
    _HOLDING[0] += 1
    try:
        yield
    finally:
        _HOLDING[0] -= 1
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if not _HOLDING[0] and _HELD:
            name = _HELD[0]
            _HELD.clear()
            raise KeyboardInterrupt(*(() if name == "SIGINT" else (name,)))  # (a Ctrl-C's carries no text, as Python's)


_HOLDING = [0]
"""How many :func:`interrupts_held` blocks are open (in the main thread)."""

_HELD: list[str] = []
"""The signals that came while a block of :func:`interrupts_held` was open, first first."""


SIGNAL_CHECK_S = 0.2
"""How often a command's main thread, while it waits on its workers, wakes to run the signal handlers. Only the main
thread runs them, and the kernel may deliver a signal (a Ctrl-C to the process group, a SIGTERM) to another of the
process's threads (a library's native threads: polars's, tqdm's monitor); a blocking wait of the main thread is then
not woken, and the signal is acted on only when the wait ends, never while the workers hang."""


_SILENCED: set[int] = set()
"""The signals :func:`termination_as_interrupt` ignores because a first one stopped the command (its clean-up runs)."""

_INTERRUPTING: set[Callable[[int, object], None]] = set()
"""The handlers :func:`termination_as_interrupt` has in place (a SIGTERM after a first Ctrl-C still has one)."""


def stopping_signal() -> str | None:
    """The name of the SIGTERM or SIGHUP that stopped the command (taken by :func:`termination_as_interrupt`), else
    ``None`` (a Ctrl-C, or none): a ``KeyboardInterrupt`` raised again without its argument (Ray's ``ray.wait`` does)
    does not tell."""
    return _STOPPED_BY[0] if _STOPPED_BY else None


def interrupt_name(exc: KeyboardInterrupt) -> str:
    """What stopped a command that met ``exc``, for its ``interrupted:`` line: the SIGTERM or SIGHUP
    :func:`termination_as_interrupt` took, else the interrupt's own text, else a Ctrl-C's ``SIGINT (Ctrl-C)``."""
    return stopping_signal() or str(exc) or "SIGINT (Ctrl-C)"


def stop_for(exc: BaseException) -> KeyboardInterrupt | None:
    """The stop an error stands for when it was raised once a SIGTERM or SIGHUP stopped the command (one a library made
    of the interrupt on its way out, as transformers' lazy imports do: "Could not import module 'LlamaConfig'"; a
    clean-up that failed because of it): ``KeyboardInterrupt(signal name)``, to raise ``from exc`` (told as an error, a
    supervisor's stop blamed a base model, exit 1). ``None`` where no signal stopped the command, for what is no error
    (``KeyboardInterrupt``, ``SystemExit``), and for an exit the command chose (one with an ``exit_code``, as click's:
    it said what it kept, or failed first). The one rule of :func:`termination_as_interrupt`, the CLI and ``ee improve``."""
    if not _STOPPED_BY or not isinstance(exc, Exception) or getattr(exc, "exit_code", None) is not None:
        return None
    return KeyboardInterrupt(_STOPPED_BY[0])


_STOPPED_BY: list[str] = []
"""The name of the signal :func:`termination_as_interrupt` took, once one came (see :func:`stopping_signal`)."""


@contextmanager
def second_signal_ends(end_now: Callable[[], None], *, first: Callable[[], None] | None = None) -> Iterator[None]:
    """While a clean-up waits on other processes (a replay job stopping its workers), a second Ctrl-C, SIGTERM or SIGHUP
    calls ``end_now``, which must end that wait at once (kill the processes waited on), instead of being ignored
    (SIGTERM and SIGHUP after a first one, see :func:`termination_as_interrupt`) or raising ``KeyboardInterrupt`` in the
    middle of the clean-up (Ctrl-C). A signal the command was started ignoring (``nohup``'s SIGHUP), or that a caller
    handles itself, stays as it is. A no-op outside the main thread (only it can install handlers).

    ``first``: the block is a normal end that no signal has stopped yet (a job waiting for its workers to close their
    sandboxes). The first signal then calls ``first`` (tell the processes to stop, and let them finish their clean-up)
    instead of ``end_now``, and is delivered as it would have been (``KeyboardInterrupt``: the command says it was
    stopped and exits 130) once the block is over, so that a stop is never lost. Only a further one calls ``end_now``.
    A signal already taken before the block (one :func:`termination_as_interrupt` now ignores) counts as that first.

    ``first`` and ``end_now`` run on a thread of the block's own, never in the signal handler: Python runs the handler
    on the main thread between two of its bytecodes, maybe inside a lock they take (the stop event the block's code is
    setting), which the handler would then wait for forever. They must return quickly (set an event, signal
    processes); one asked for but not yet started when the block ends is not run (the wait it would end is over), one
    still running is waited for up to :data:`HANDOFF_JOIN_S`, and an error they raise is raised once the block is over
    (when the block itself raised none)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [
        sig
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if sig in _SILENCED or signal.getsignal(sig) is signal.default_int_handler or signal.getsignal(sig) in _INTERRUPTING
    ]
    if not taken:
        yield
        return
    came: list[tuple[int, Any]] = []  # the first signal, held back until the block is over
    handoff = _Handoff()

    def end(signum: int, frame: Any) -> None:
        # takes no lock (see _Handoff.ask): the main thread it interrupts may hold any
        if first is None or came or signum in _SILENCED or _SILENCED & set(taken):
            handoff.ask(end_now)
            return
        came.append((signum, frame))
        handoff.ask(first)

    previous: dict[int, Any] = {}
    try:
        for sig in taken:
            previous[sig] = signal.signal(sig, end)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        error = handoff.close()
    if error is not None:  # (not when the block raised: that error is what ends the command)
        if came:
            error.add_note(f"(raised while the command stopped on {signal.Signals(came[0][0]).name})")
        raise error
    if came:
        signum, frame = came[0]
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)  # raises KeyboardInterrupt (termination_as_interrupt's, with the signal's name)
        raise KeyboardInterrupt(signal.Signals(signum).name)


HANDOFF_JOIN_S = 5.0
"""How long the end of a :func:`second_signal_ends` block waits for a ``first`` or ``end_now`` still running (they
signal processes and set events: milliseconds). Past that the block ends all the same, and the call finishes on its
daemon thread (it holds no exit up) rather than keep the command from ending (one waiting for a lock that the caller of
the block still holds would never finish)."""

HANDOFF_THREAD_NAME = "ee-second-signal"
"""The name of the thread that runs a :func:`second_signal_ends` block's ``first`` and ``end_now``."""


class _Handoff:
    """A thread that runs what :func:`second_signal_ends`'s signal handler asks for, one call after the other.

    Started with the block, by the main thread, not from the handler: starting a thread takes :mod:`threading`'s own
    locks, which the interrupted main thread may hold (while it starts one). The handler hands a call over with
    :meth:`queue.SimpleQueue.put`, which is reentrant (made for ``__del__`` methods and handlers) and waits for nothing.
    A daemon thread: the block ends it (:meth:`close`), and should one of its calls hang, it does not keep the
    interpreter from exiting."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._open = True
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=HANDOFF_THREAD_NAME, daemon=True)
        self._thread.start()

    def ask(self, call: Callable[[], None]) -> None:
        """Have ``call`` run on the thread (safe in a signal handler)."""
        self._calls.put(call)

    def close(self) -> BaseException | None:
        """Run nothing more (a call not started yet is dropped), wait up to :data:`HANDOFF_JOIN_S` for one still
        running, and return the first error a call raised (``None``: none did)."""
        self._open = False
        self._calls.put(None)
        deadline = time.monotonic() + HANDOFF_JOIN_S
        while self._thread.is_alive() and (left := deadline - time.monotonic()) > 0:
            self._thread.join(min(left, 0.2))  # wakes to run the handlers of signals the kernel gave another thread
        return self._error

    def _run(self) -> None:
        while (call := self._calls.get()) is not None and self._open:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - raised in the main thread once the block is over
                self._error = self._error or exc


SIGNAL_CHECK_S = 0.1
"""How often a main thread that waits (for an event loop's coroutine, for another thread's result) wakes to run a pending
signal handler: what a stop waits at most when its signal did not interrupt the wait (see
:func:`awaiting_with_signal_checks`)."""


async def awaiting_with_signal_checks(coroutine: Any) -> Any:
    """Await ``coroutine``, waking the running loop every :data:`SIGNAL_CHECK_S` meanwhile.

    Python runs a signal's handler (Ctrl-C's ``KeyboardInterrupt``, SIGTERM taken as one) only in the main thread, when it
    next runs Python code. A signal taken by another thread of the process, or arriving just before the loop enters
    ``select()``, does not interrupt that wait, so the handler ran only once the awaited call ended (a minute for an HTTP
    call's time-out). Each wake runs it instead; the awaited code's own task is untouched (the timer is the loop's)."""
    import asyncio  # (here: asyncio and ssl cost a replay worker's fork server about 20 ms to import)

    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def wake() -> None:
        nonlocal timer
        timer = loop.call_later(SIGNAL_CHECK_S, wake)

    wake()
    try:
        return await coroutine
    finally:
        if timer is not None:
            timer.cancel()


def result_with_signal_checks(future: concurrent.futures.Future[Any], timeout: float | None = None) -> Any:
    """``future.result(timeout)``; in the main thread it waits in steps of :data:`SIGNAL_CHECK_S`, so that a stop's
    handler runs within one (a lock's wait, like ``select()``'s, is not interrupted by a signal another thread took or
    one that came just before it: see :func:`awaiting_with_signal_checks`). ``TimeoutError`` once ``timeout`` has passed,
    as ``future.result`` raises it."""
    if threading.current_thread() is not threading.main_thread():
        return future.result(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = SIGNAL_CHECK_S if deadline is None else max(0.0, min(SIGNAL_CHECK_S, deadline - time.monotonic()))
        try:
            return future.result(step)
        except concurrent.futures.TimeoutError:
            if future.done():  # it ended just now, or its own result is a TimeoutError
                return future.result()
            if deadline is not None and time.monotonic() >= deadline:
                raise
