"""The child-process half of :class:`~ee_middleware.replay.sandboxes.isolated.SubprocessSandbox`.

Everything here runs in the spawned child: :func:`child_main` builds the inner sandbox (after the
memory limit is set), then serves the parent's requests until it closes the pipe or asks to close.
The parent half, with the time limits, restarts and snapshot bytes, is
:mod:`ee_middleware.replay.sandboxes.isolated`.

The pipe protocol, one request and one reply at a time:

- request: ``(op, args, drops)``: ``op`` is one of ``execute``, ``reset``, ``snapshot``,
  ``restore``, ``covers``, ``stats`` or ``close``; ``drops`` are snapshot handles the parent no
  longer holds;
- reply: ``(OK, value)``, or ``(ERR, pickled exception or None, qualified name, name, message,
  traceback summary)``.

The first reply, sent once the inner sandbox is built, is ``(OK, {"kind": ..., "pid": ...})``.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ee_middleware.errors import SandboxError
from ee_middleware.records import Observation, ToolCall

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ee_middleware.replay.sandboxes.protocol import Sandbox

__all__ = ["ERR", "OK", "ChildServer", "SandboxFactory", "child_main"]

SandboxFactory = Callable[[], "Sandbox"]
"""A zero-argument picklable callable that builds the inner sandbox in the child."""

OK = "ok"
"""First item of a reply that carries a value."""
ERR = "err"
"""First item of a reply that carries an exception."""

_WATCHDOG_INTERVAL_S = 1.0
_MIN_HEADROOM = 32 * 2**20


def child_main(conn: Connection, factory: SandboxFactory, memory_mb: int | None, max_snapshots: int) -> None:
    """Entry point of the child process: build the inner sandbox, then serve requests until EOF or close."""
    # A spawned child inherits the signal mask of the thread that started it; make it a clean slate.
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what happens to the child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Own process group: a kill on time-out also takes the processes a hung tool started.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    if memory_mb is not None:
        _one_malloc_arena()
    _start_orphan_watchdog()
    try:
        if memory_mb is not None:
            _limit_address_space(memory_mb)
        inner = factory()
        kind = str(getattr(inner, "kind", "") or type(inner).__name__)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises SandboxError
        _send_error(conn, exc)
        conn.close()
        return
    conn.send((OK, {"kind": kind, "pid": os.getpid()}))
    server = ChildServer(inner, memory_mb, max_snapshots)
    while True:
        try:
            op, args, drops = conn.recv()
        except (EOFError, OSError):  # the parent went away
            break
        for handle in drops:
            server.snapshots.pop(handle, None)
        if op == "close":
            try:
                inner.close()
            except BaseException as exc:  # noqa: BLE001 - the child ends either way
                _send_error(conn, exc)
            else:
                conn.send((OK, None))
            break
        try:
            reply: tuple[Any, ...] = (OK, server.handle(op, args))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            _send_error(conn, exc)
            continue
        try:
            conn.send(reply)
        except MemoryError as exc:
            _send_error(conn, exc)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _send_error(conn, SandboxError(f"the inner sandbox returned a value that cannot be pickled for {op}(): {exc}"))
    conn.close()


def _limit_address_space(memory_mb: int) -> None:
    import resource

    limit = int(memory_mb) * 1024 * 1024
    in_use = _address_space_in_use()
    if in_use is not None and in_use + _MIN_HEADROOM > limit:
        raise SandboxError(
            f"memory_mb={memory_mb} leaves no room: the child process already uses {in_use // 2**20} MB of address space "
            f"before building the sandbox; give it at least {(in_use + _MIN_HEADROOM) // 2**20 + 1} MB plus what the tools need."
        )
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _address_space_in_use() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _one_malloc_arena() -> None:
    """Under RLIMIT_AS, glibc's per-thread malloc arenas (64 MiB of address space each) eat the budget."""
    try:
        import ctypes

        m_arena_max = -8
        ctypes.CDLL(None).mallopt(m_arena_max, 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _start_orphan_watchdog() -> None:
    """Exit when the parent dies, even while a tool hangs (the pipe's EOF is only seen between calls)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(_WATCHDOG_INTERVAL_S)
            if os.getppid() != parent:
                os._exit(1)

    previous = threading.stack_size(256 * 1024)  # it only sleeps; keep its address space small
    try:
        threading.Thread(target=watch, name="ee-sandbox-orphan-watchdog", daemon=True).start()
    finally:
        threading.stack_size(previous)


def _send_error(conn: Connection, exc: BaseException) -> None:
    try:
        payload: bytes | None = pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - some exceptions do not pickle; type and message still go back
        payload = None
    summary = "".join(traceback.format_exception(exc)[-8:])
    try:
        conn.send((ERR, payload, f"{type(exc).__module__}.{type(exc).__qualname__}", type(exc).__name__, str(exc), summary))
    except (OSError, MemoryError):
        pass


class ChildServer:
    """Holds the inner sandbox and the snapshots by handle (most recently used last)."""

    def __init__(self, inner: Any, memory_mb: int | None, max_snapshots: int) -> None:
        self.inner = inner
        self.memory_mb = memory_mb
        self.max_snapshots = max_snapshots
        self.snapshots: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def handle(self, op: str, args: tuple[Any, ...]) -> Any:
        """Answer one request other than ``close`` (see the module docstring); failures raise."""
        if op == "execute":
            return self.execute(*args)
        if op == "reset":
            self.snapshots.clear()
            self.inner.reset(*args)
            return None
        if op == "snapshot":
            (handle,) = args
            state = self.inner.snapshot()
            data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            self._keep(handle, state)
            return data
        if op == "restore":
            handle, data = args
            if handle in self.snapshots:
                self.snapshots.move_to_end(handle)
                state = self.snapshots[handle]
            elif data is None:
                return False  # evicted or from an earlier child: the parent sends the bytes
            else:
                state = pickle.loads(data)
                self._keep(handle, state)
            self.inner.restore(state)
            return True
        if op == "covers":
            return bool(self.inner.covers(*args))
        if op == "stats":
            return {"snapshots": list(self.snapshots), "pid": os.getpid()}
        raise SandboxError(f"unknown request {op!r}")

    def _keep(self, handle: int, state: Any) -> None:
        self.snapshots[handle] = state
        self.snapshots.move_to_end(handle)
        while len(self.snapshots) > self.max_snapshots:
            self.snapshots.popitem(last=False)

    def execute(self, call: ToolCall) -> Observation:
        """Run ``call``; tool failures (``MemoryError`` and ``SystemExit`` included) become error observations."""
        try:
            result = self.inner.execute(call)
        except MemoryError:
            return Observation(content=self._memory_message(call.name), is_error=True)
        except SandboxError:
            raise  # the sandbox itself failed (misuse, broken world): the parent raises it as in-process
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a tool included: the child must survive
            text = f"Error: {type(exc).__name__}: {exc}" if str(exc) else f"Error: {type(exc).__name__}"
            return Observation(content=text, is_error=True)
        if not isinstance(result, Observation):
            return Observation(
                content=f"Error: the inner sandbox returned {type(result).__name__} for tool '{call.name}', not an Observation.",
                is_error=True,
            )
        if result.is_error and self.memory_mb is not None and "MemoryError" in result.content:
            # The inner sandbox caught the MemoryError itself; still say which limit was hit.
            hint = self._memory_message(call.name)
            result = result.model_copy(update={"content": f"{result.content}\n{hint}"})
        return result

    def _memory_message(self, tool: str) -> str:
        return (
            f"Error: tool '{tool}' hit the memory limit of the subprocess sandbox ({self.memory_mb} MB of address space, "
            "MemoryError). Raise it with SubprocessSandbox(memory_mb=...) or pass memory_mb=None for no limit."
        )
