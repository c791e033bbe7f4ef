"""The child-process half of :class:`~ee_middleware.replay.sandboxes.isolated.SubprocessSandbox`.

Everything here runs in the spawned child: :func:`child_main` builds the inner sandbox (after the
memory limit is set), then serves the parent's requests until it closes the pipe or asks to close; a parent
that died meanwhile (its end of the pipe gone when a reply is sent) ends the child as quietly.
The parent half, with the time limits, restarts and snapshot bytes, is
:mod:`ee_middleware.replay.sandboxes.isolated`.

The pipe protocol, one request and one reply at a time:

- request (pickled: the parent is trusted): ``(op, args, drops)``: ``op`` is one of ``execute``,
  ``reset``, ``snapshot``, ``restore``, ``covers``, ``refusal_hint``, ``acts_outside_world``, ``check_offered_tools``, ``state_digest``, ``stats``
  or ``close``; ``drops`` are snapshot handles the parent no longer holds;
- reply (JSON, so that nothing the child sends can run code in the parent): one frame
  ``{"ok": value}`` (an observation as its fields), or ``{"ok": null, "blob": true}`` followed by
  one frame of raw bytes (a snapshot, pickled: only ever unpickled by a child), or
  ``{"err": {"module", "name", "qualname", "message", "summary"}}``.

The first reply, sent once the inner sandbox is built, is ``{"ok": {"kind": ..., "pid": ...}}``.

The child leads its own process group, so that the parent can kill it together with every process
its tools started; and when the parent dies (even by ``SIGKILL``), a watchdog kills that group.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ee_middleware._lifetime import die_with_parent, kill_process_group
from ee_middleware.errors import SandboxError
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.protocol import executed

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ee_middleware.replay.sandboxes.protocol import Sandbox

__all__ = ["ChildServer", "SandboxFactory", "child_main", "send_error", "send_reply"]

SandboxFactory = Callable[[], "Sandbox"]
"""A zero-argument picklable callable that builds the inner sandbox in the child."""

_MIN_HEADROOM = 32 * 2**20


def child_main(conn: Connection, factory: SandboxFactory, memory_mb: int | None, max_snapshots: int, parent_pid: int | None) -> None:
    """Entry point of the child process: build the inner sandbox, then serve requests until EOF or close.

    ``parent_pid``: the process whose death ends this one (``None``: the parent it has now).
    """
    # A spawned child inherits the signal mask of the thread that started it; make it a clean slate.
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what happens to the child (started with
    # SIGINT ignored already where the parent could: sigint_ignored_by_children).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Own process group: a kill on time-out also takes the processes a hung tool started.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    if memory_mb is not None:
        _one_malloc_arena()
    # Exit when the parent dies, even while a tool hangs (the pipe's EOF is only seen between calls),
    # and take the tools' own processes along.
    die_with_parent(os.getppid() if parent_pid is None else parent_pid, _kill_own_group)
    try:
        if memory_mb is not None:
            _limit_address_space(memory_mb)
        inner = factory()
        kind = str(getattr(inner, "kind", "") or type(inner).__name__)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises SandboxError
        send_error(conn, exc)
        conn.close()
        return
    closed = False
    try:
        send_reply(conn, {"kind": kind, "pid": os.getpid()})
        closed = _serve(conn, inner, ChildServer(inner, memory_mb, max_snapshots))
    except (BrokenPipeError, ConnectionResetError):
        # The parent's end of the pipe is gone (a replay job killed with SIGKILL while this child answered it): there is
        # no one to answer, so the child ends as on EOF, without a traceback on the stderr it shares with the job.
        pass
    conn.close()
    if not closed:  # the parent went away (killed, or its end closed): nobody kills this group after it, so it does
        _kill_own_group()


def _serve(conn: Connection, inner: Sandbox, server: ChildServer) -> bool:
    """Answer the parent's requests until EOF or close; a reply the parent can no longer receive raises
    ``BrokenPipeError`` (or ``ConnectionResetError``). ``True`` where the parent asked to close, ``False`` on EOF."""
    while True:
        try:
            op, args, drops = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return False
        for handle in drops:
            server.snapshots.pop(handle, None)
        if op == "close":
            try:
                inner.close()
            except BaseException as exc:  # noqa: BLE001 - the child ends either way
                send_error(conn, exc)
            else:
                send_reply(conn, None)
            return True
        try:
            value = server.handle(op, args)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            send_error(conn, exc)
            continue
        try:
            send_reply(conn, value)
        except MemoryError as exc:
            send_error(conn, exc)
        except (TypeError, ValueError) as exc:
            send_error(conn, SandboxError(f"the inner sandbox returned a value that cannot be sent as JSON for {op}(): {exc}"))


def send_reply(conn: Connection, value: Any) -> None:
    """Send one reply carrying ``value`` (see the module docstring); raises before sending anything if it does not encode."""
    if isinstance(value, bytes):
        conn.send_bytes(b'{"ok": null, "blob": true}')
        conn.send_bytes(value)
        return
    if isinstance(value, Observation):
        value = value.model_dump(mode="json")
    conn.send_bytes(json.dumps({"ok": value}).encode())


def _kill_own_group() -> None:
    if os.getpgid(0) == os.getpid():  # never the parent's group, should setpgid have failed
        kill_process_group(os.getpid())  # this process included
    os._exit(1)


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


def send_error(conn: Connection, exc: BaseException) -> None:
    """Send ``exc`` as an error reply: its class by name, its message and the end of its traceback."""
    try:
        error = {
            "module": type(exc).__module__,
            "name": type(exc).__name__,
            "qualname": type(exc).__qualname__,
            "message": str(exc),
            "summary": "".join(traceback.format_exception(exc)[-8:]),
        }
        conn.send_bytes(json.dumps({"err": error}).encode())
    except Exception:  # noqa: BLE001 - a message that cannot be built or sent: the parent sees the child die instead
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
            try:
                data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            except SandboxError:
                raise  # the snapshot explained itself (PythonSandbox's does)
            except Exception as exc:
                kind = getattr(self.inner, "kind", type(self.inner).__name__)
                raise SandboxError(
                    f"The {kind} sandbox's snapshot ({type(state).__name__}) cannot be pickled, which a subprocess sandbox "
                    f"(--isolation subprocess) needs to send it out of the child: {type(exc).__name__}: {exc}. "
                    "Make snapshot() return data that pickles."
                ) from exc
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
        if op == "refusal_hint":
            hint = getattr(self.inner, "refusal_hint", None)
            return hint(*args) if hint is not None else None
        if op == "acts_outside_world":
            from ee_middleware.replay.sandboxes.protocol import acts_outside_world

            return acts_outside_world(self.inner, *args)
        if op == "check_offered_tools":  # whether the inner sandbox checked them (it raises when they fail)
            check = getattr(self.inner, "check_offered_tools", None)
            if check is None:
                return False
            check(*args)
            return True
        if op == "stats":
            return {"snapshots": list(self.snapshots), "pid": os.getpid()}
        if op == "state_digest":
            from ee_middleware.replay.sandboxes.protocol import state_digest

            return state_digest(self.inner)
        raise SandboxError(f"unknown request {op!r}")

    def _keep(self, handle: int, state: Any) -> None:
        self.snapshots[handle] = state
        self.snapshots.move_to_end(handle)
        while len(self.snapshots) > self.max_snapshots:
            self.snapshots.popitem(last=False)

    def execute(self, call: ToolCall) -> Observation:
        """Run ``call``; tool failures (``MemoryError`` and ``SystemExit`` included) become error observations (a value
        other than an observation is the inner sandbox's bug: :func:`executed` raises it as :class:`SandboxError`). A
        :class:`PythonSandbox` makes a tool's exception its observation itself, with its ``format_error``, as in
        process; an exception another inner sandbox lets escape is written as the default ``format_error`` writes it."""
        try:
            result = executed(self.inner, call)
        except MemoryError:
            return Observation(content=self._memory_message(call.name), is_error=True, sandbox_failure="memory")
        except SandboxError:
            raise  # the sandbox itself failed (misuse, broken world): the parent raises it as in-process
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a tool included: the child must survive
            from ee_middleware.replay.sandboxes.python import format_exception

            return Observation(content=format_exception(exc), is_error=True)
        if result.is_error and self.memory_mb is not None and "MemoryError" in result.content:
            # The inner sandbox caught the MemoryError itself; still say which limit was hit.
            hint = self._memory_message(call.name)
            result = result.model_copy(update={"content": f"{result.content}\n{hint}", "sandbox_failure": "memory"})
        return result

    def _memory_message(self, tool: str) -> str:
        return (
            f"Error: tool '{tool}' hit the memory limit of the subprocess sandbox ({self.memory_mb} MB of address space, "
            "MemoryError). Raise it with ee replay run --memory-mb (memory_mb), or SubprocessSandbox(memory_mb=...) in code "
            "(None: no limit)."
        )
