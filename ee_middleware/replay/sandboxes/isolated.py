"""Run any sandbox inside one long-lived child process, with a time limit and a memory limit.

Tools replayed with alternative arguments may hang, crash the interpreter or eat all memory.
:class:`SubprocessSandbox` wraps an inner sandbox (anything that satisfies
:class:`~ee_middleware.replay.sandboxes.protocol.Sandbox`) so that none of that can take the replay
job down: the inner sandbox lives in a child process started with ``spawn``, calls travel over a
:func:`multiprocessing.Pipe`, and

- a tool call that runs past ``timeout_s`` gets the child killed (``SIGKILL``) and restarted, and the
  call returns an error observation;
- a tool that crashes the child (segfault, ``os._exit``, a signal) returns an error observation naming
  the exit code or signal, and the child is restarted;
- a tool that allocates past ``memory_mb`` (an ``RLIMIT_AS`` limit on the child's whole address space,
  Python itself included) gets a ``MemoryError`` inside the child, which becomes an error observation
  saying how to raise the limit.

Those error observations describe the sandbox, not the tool's answer, so they carry
``Observation.sandbox_failure`` (``timeout``, ``crash`` or ``memory``): the rollout is stored with it and dataset
builders leave it out.

After a restart the world is rebuilt where replay expects it: the new child is reset to the last
environment and then restored to the **last snapshot taken or restored** (what replay branches from),
or left right after the last reset when there is none. Changes made after that snapshot are lost,
exactly as if the branch had been rewound.

>>> import functools                                                      # doctest: +SKIP
>>> sandbox = SubprocessSandbox(functools.partial(build_my_sandbox, "config.toml"), timeout_s=5)  # doctest: +SKIP
>>> with sandbox:                                                         # doctest: +SKIP
...     sandbox.reset(trajectory.environment)
...     start = sandbox.snapshot()
...     observation = sandbox.execute(call)

``factory`` must be picklable (a module-level function or a :func:`functools.partial` of one) and
importable in a fresh interpreter; the same holds for the inner sandbox's snapshots, environments
and tool calls, which the parent sends pickled. What comes back is JSON (observations, answers,
errors by class name and message) or opaque bytes (snapshots): the parent never unpickles anything
the child sends, so a tool cannot run code in the replay job through the pipe. Snapshots are kept
in the child by handle, so a restore sends a few bytes, not the world; each snapshot's pickled
bytes are also kept in the parent (fetched once, when it is taken) to rebuild it in a restarted
child, which is the only place they are unpickled.

The child leads its own process group: stopping it (on close, time-out or crash) kills the group,
so processes that tools started go too (unless they left the group with ``setsid``). When the
parent dies without closing it, even by ``SIGKILL``, the child notices within a second and kills
its group. In a :mod:`multiprocessing` worker, every open sandbox is closed when the worker exits.

This module is the parent half; what runs in the child (its request loop, the limits it sets on
itself, the snapshots it keeps) is :mod:`ee_middleware.replay.sandboxes.isolated_child`.

With the ``spawn`` start method the child re-imports the parent's ``__main__`` module under the name
``__mp_main__`` (standard :mod:`multiprocessing` behaviour), so scripts need the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import signal
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ee_middleware import errors
from ee_middleware._lifetime import kill_process_group, sigint_ignored_by_children
from ee_middleware.errors import EnvironmentUnavailableError, SandboxError
from ee_middleware.records import Observation, SandboxFailure, ToolCall, tool_schema_name
from ee_middleware.replay.sandboxes.isolated_child import SandboxFactory, child_main
from ee_middleware.replay.sandboxes.protocol import ClosedOnExit, open_sandboxes

if TYPE_CHECKING:
    from collections.abc import Iterable
    from multiprocessing.connection import Connection

    from ee_middleware.records import ToolSchema

__all__ = ["SubprocessSandbox", "SubprocessSnapshot", "kill_all_children"]

_KILL_WAIT_S = 5.0
_EXIT_POLL_S = 0.1


class _ChildDied(Exception):
    """The child exited or closed the pipe while the parent waited for an answer."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class _ChildTimedOut(Exception):
    """The child did not answer in time (it has been killed)."""


class _BadReply(Exception):
    """The child sent something that is not a reply of the protocol (it has been killed)."""


class SubprocessSnapshot:
    """A snapshot taken by :class:`SubprocessSandbox`: a handle in the child plus the pickled world.

    Restoring sends only the handle; the bytes rebuild the snapshot in a restarted child or after
    the child dropped it. Dropping the last reference to this object frees it in the child.
    """

    __slots__ = ("__weakref__", "_owner", "data", "handle")

    def __init__(self, owner: str, handle: int, data: bytes) -> None:
        self._owner = owner
        self.handle = handle
        self.data = data
        """The inner sandbox's snapshot, pickled."""

    def __repr__(self) -> str:
        return f"SubprocessSnapshot(handle={self.handle}, {len(self.data)} bytes)"


def kill_all_children() -> None:
    """Kill every sandbox child of this process with its process group, at once and without asking.

    For a process that is about to end abruptly (a worker whose job died); a normal end closes them.
    """
    for sandbox in open_sandboxes():
        proc = getattr(sandbox, "_proc", None) if isinstance(sandbox, SubprocessSandbox) else None
        if proc is not None:
            kill_process_group(proc.pid)


class SubprocessSandbox(ClosedOnExit):
    """An inner sandbox run in one long-lived child process, with time, memory and crash isolation.

    Args:
        factory: zero-argument picklable callable returning the inner sandbox (a module-level function
            or a :func:`functools.partial`); it runs in the child, after the memory limit is set.
        timeout_s: how long one :meth:`execute` may run before the child is killed and restarted
            (``None``: no limit, crashes are still caught).
        memory_mb: ``RLIMIT_AS`` of the child in MiB: its whole address space, the Python interpreter
            and imports included (a bare child takes about 40 MiB, more with heavy imports). ``None``:
            no limit.
        control_timeout_s: limit for everything else (start, reset, snapshot, restore, covers, close);
            if one of those hangs, the child is killed and :class:`SandboxError` is raised.
        start_method: :mod:`multiprocessing` start method: ``spawn`` (default, a fresh interpreter)
            or ``forkserver``. ``fork`` works but copies the parent's threads and locks; avoid it.
        kind: the name stored in rollout records; default ``subprocess:<inner kind>``.
        max_snapshots: snapshots kept in the child; older ones are re-created from their bytes when
            restored.

    The child starts in the constructor (so :attr:`kind` is known and a broken factory fails early).
    After a time-out or crash the world is the last snapshot taken or restored, or the state right
    after the last :meth:`reset` when there is none. Not thread-safe beyond a lock that serializes calls.
    """

    def __init__(
        self,
        factory: SandboxFactory,
        *,
        timeout_s: float | None = 10.0,
        memory_mb: int | None = 1024,
        control_timeout_s: float = 60.0,
        start_method: str = "spawn",
        kind: str | None = None,
        max_snapshots: int = 32,
    ) -> None:
        if not callable(factory):
            raise SandboxError(f"SubprocessSandbox needs a callable factory that returns a sandbox, got {type(factory).__name__}.")
        # "0 < x < inf", not "x > 0": inf (and NaN) would pass, then overflow the first wait (or the child's limit)
        if timeout_s is not None and not 0 < timeout_s < math.inf:
            raise SandboxError(f"timeout_s must be a finite number of seconds > 0, or None for no limit, got {timeout_s!r}.")
        if memory_mb is not None and not 0 < memory_mb < math.inf:
            raise SandboxError(f"memory_mb must be a positive number of MiB, or None for no limit, got {memory_mb!r}.")
        if not 0 < control_timeout_s < math.inf:
            raise SandboxError(f"control_timeout_s must be a finite number of seconds > 0, got {control_timeout_s!r}.")
        if max_snapshots < 1:
            raise SandboxError(f"max_snapshots must be at least 1, got {max_snapshots!r}.")
        try:
            self._ctx = multiprocessing.get_context(start_method)
        except ValueError as exc:
            raise SandboxError(f"Unknown start_method {start_method!r}: {exc}") from None
        self._factory = factory
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.control_timeout_s = control_timeout_s
        self.start_method = start_method
        self.max_snapshots = max_snapshots
        self._kind = kind
        self._inner_kind: str | None = None
        self._id = uuid.uuid4().hex
        self._lock = threading.RLock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._exit_fd: int | None = None
        self._closed = False
        self._needs_recovery = False
        self._has_environment = False
        self._environment: bytes | None = None
        self._recovery: SubprocessSnapshot | None = None
        self._covers: dict[str, bool] = {}
        self._offered_checked: set[tuple[Any, ...]] | None = set()  # see check_offered_tools
        self._handles = itertools.count(1)
        self._dropped: collections.deque[int] = collections.deque()
        self._starts = 0
        self._close_at_exit()
        try:
            self._start_child()
        except BaseException:
            self.close()
            raise

    # -- public API ---------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``subprocess:<inner kind>``, or the ``kind`` given to the constructor."""
        if self._kind is not None:
            return self._kind
        return f"subprocess:{self._inner_kind}" if self._inner_kind else "subprocess"

    @property
    def pid(self) -> int | None:
        """The child's process id (``None`` when closed or between a failure and the next restart)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def restarts(self) -> int:
        """How many times a new child was started after the first one (time-outs, crashes, hung calls)."""
        return max(self._starts - 1, 0)

    def covers(self, tool_name: str) -> bool:
        """Whether the inner sandbox executes ``tool_name`` (asked once per name and reset, then cached).

        The cache is dropped on every :meth:`reset`: what a sandbox covers may depend on the
        environment (BFCL's tools are those of the entry's involved classes).
        """
        cached = self._covers.get(tool_name)
        if cached is None:
            with self._lock:
                self._check_open()
                cached = bool(self._control("covers", tool_name))
                self._covers[tool_name] = cached
        return cached

    def refusal_hint(self, tool_name: str) -> str | None:
        """The inner sandbox's reason for refusing ``tool_name`` (``None`` when it gives none)."""
        with self._lock:
            self._check_open()
            hint = self._control("refusal_hint", tool_name)
        return str(hint) if hint else None

    def acts_outside_world(self, tool_name: str) -> bool:
        """Whether the inner sandbox declares ``tool_name`` to act only outside its world (false when it has no such method)."""
        with self._lock:
            self._check_open()
            return bool(self._control("acts_outside_world", tool_name))

    def check_offered_tools(self, tools: Iterable[ToolSchema]) -> None:
        """The inner sandbox's ``check_offered_tools`` (see :meth:`PythonSandbox.check_offered_tools
        <ee_middleware.replay.sandboxes.python.PythonSandbox.check_offered_tools>`), run in the child: each tool's name and
        argument names are sent, once per set the inner sandbox passed; nothing when it has no such check."""
        if self._offered_checked is None:
            return
        offered = tuple(sorted((name, tuple(sorted(_argument_names(schema)))) for schema in tools if (name := tool_schema_name(schema))))
        if offered in self._offered_checked:
            return
        schemas = [{"name": name, "parameters": {"properties": {key: {} for key in arguments}}} for name, arguments in offered]
        with self._lock:
            self._check_open()
            checked = self._control("check_offered_tools", schemas)
        if checked:
            self._offered_checked.add(offered)
        else:
            self._offered_checked = None  # the inner sandbox has no such check

    def reset(self, environment: dict[str, Any] | None) -> None:
        """Reset the inner sandbox to ``environment``; drops every snapshot held in the child.

        Raises :class:`EnvironmentUnavailableError` as the inner sandbox raised it (same class and
        message), and :class:`SandboxError` for anything else that failed or hung.
        """
        try:
            env_bytes = pickle.dumps(environment, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SandboxError(f"The environment cannot be sent to the subprocess sandbox (it must pickle): {exc}") from exc
        with self._lock:
            self._check_open()
            # A reset rebuilds the world anyway: after a failure, a fresh child is enough.
            if self._needs_recovery or self._proc is None:
                self._start_child()
            self._recovery = None
            self._has_environment = False
            self._covers.clear()
            self._control("reset", environment, recover=False)
            self._environment = env_bytes
            self._has_environment = True

    def execute(self, call: ToolCall) -> Observation:
        """Run ``call`` in the child; time-outs, crashes and memory exhaustion become error observations.

        Raises :class:`SandboxError` only when the sandbox itself is broken: the inner sandbox raised
        one, or the world could not be rebuilt after a restart.
        """
        with self._lock:
            self._check_open()
            if self._needs_recovery:
                self._recover()
            started = time.monotonic()
            failure: SandboxFailure
            try:
                return self._request("execute", (call,), self.timeout_s)
            except _ChildTimedOut:
                elapsed = time.monotonic() - started
                failure, problem = "timeout", f"timed out after {_seconds(self.timeout_s or elapsed)} s in the subprocess sandbox"
                advice = (
                    " If the tool is only slow, raise the limit: ee replay run --tool-timeout (tool_timeout_s), "
                    "SubprocessSandbox(timeout_s=...) in code."
                )
            except _ChildDied as died:
                failure, problem = "crash", f"crashed the subprocess sandbox ({died.how})"
                advice = ""
                if self.memory_mb is not None and "signal" in died.how:
                    advice = f" If it ran out of memory, the limit is memory_mb={self.memory_mb}."
            where = self._recovery_description()
            try:
                self._recover()
            except SandboxError as exc:
                raise SandboxError(f"Tool '{call.name}' {problem}, and the world could not be rebuilt afterwards: {exc}") from exc
            return Observation(
                content=f"Error: tool '{call.name}' {problem}; the sandbox was restarted and the world restored to {where}.{advice}",
                is_error=True,
                sandbox_failure=failure,
            )

    def snapshot(self) -> SubprocessSnapshot:
        """Snapshot the inner world: kept in the child by handle, pickled bytes kept in the returned object.

        The snapshot becomes the point the world returns to after a time-out or crash.
        """
        with self._lock:
            self._check_open()
            handle = next(self._handles)
            data = self._control("snapshot", handle)
            snap = SubprocessSnapshot(self._id, handle, data)
            weakref.finalize(snap, self._dropped.append, handle)
            self._recovery = snap
            return snap

    def restore(self, snapshot: SubprocessSnapshot) -> None:
        """Put the inner world back to ``snapshot`` (cheap: the child keeps it; rebuilt from bytes if not).

        The snapshot becomes the point the world returns to after a time-out or crash.
        """
        if not isinstance(snapshot, SubprocessSnapshot):
            raise SandboxError(
                f"SubprocessSandbox.restore() needs a snapshot from SubprocessSandbox.snapshot(), got {type(snapshot).__name__}."
            )
        with self._lock:
            self._check_open()
            self._restore(snapshot)
            self._recovery = snapshot

    def state_digest(self) -> str:
        """The inner sandbox's ``state_digest()``, asked in the child (:class:`StateDigestUnavailableError` when it has none)."""
        with self._lock:
            self._check_open()
            return str(self._control("state_digest"))

    def close(self) -> None:
        """Close the inner sandbox and end the child (killed if it does not exit in time). Idempotent."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # the constructor failed before the lock existed
            return
        with lock:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None and self._proc is not None and not self._needs_recovery:
                try:
                    self._request("close", (), min(self.control_timeout_s, _KILL_WAIT_S))
                except (_ChildDied, _ChildTimedOut, SandboxError):
                    pass
            self._stop_child(grace_s=0.5)  # after "close" it exits by itself
            self._not_at_exit()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self.pid}"
        return f"SubprocessSandbox(kind={self.kind!r}, {state}, timeout_s={self.timeout_s}, memory_mb={self.memory_mb})"

    # -- internals ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("This SubprocessSandbox is closed; create a new one.")

    def _recovery_description(self) -> str:
        if self._recovery is not None:
            return "the last snapshot taken or restored"
        if self._has_environment:
            return "the state right after the last reset"
        return "a freshly built sandbox (no reset yet)"

    def _restore(self, snapshot: SubprocessSnapshot) -> None:
        if snapshot._owner == self._id:
            if not self._control("restore", snapshot.handle, None):
                self._control("restore", snapshot.handle, snapshot.data)
        else:
            # A snapshot of another SubprocessSandbox: its handle means nothing here, use a fresh one.
            self._control("restore", next(self._handles), snapshot.data)

    def _recover(self) -> None:
        """Start a fresh child and bring it to the last known world (see the class docstring)."""
        self._start_child()
        try:
            if self._has_environment:
                self._control("reset", pickle.loads(self._environment or pickle.dumps(None)), recover=False)
            if self._recovery is not None:
                self._control("restore", self._recovery.handle, self._recovery.data, recover=False)
        except EnvironmentUnavailableError as exc:
            self._needs_recovery = True
            raise SandboxError(f"the restarted sandbox could not be reset to the last environment: {exc}") from exc
        except SandboxError:
            self._needs_recovery = True
            raise

    def _start_child(self) -> None:
        self._stop_child()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # The process the child watches: this one, except under forkserver (its parent is the server).
        parent_pid = None if self.start_method == "forkserver" else os.getpid()
        proc = self._ctx.Process(
            target=child_main,
            args=(child_conn, self._factory, self.memory_mb, self.max_snapshots, parent_pid),
            name=f"ee-subprocess-sandbox-{self._id[:8]}",
            daemon=False,  # a daemonic child could not start processes of its own (some tools do)
        )
        # The child starts ignoring SIGINT (a Ctrl-C to the process group during its imports ended it with a traceback);
        # one meant for this process (a worker's stop signal) is held until the block ends, when the child is this
        # sandbox's to stop: raised before, it left the child running untracked, and the worker's exit waited on it.
        with sigint_ignored_by_children():
            try:
                proc.start()
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                parent_conn.close()
                child_conn.close()
                self._needs_recovery = True
                raise SandboxError(
                    f"The SubprocessSandbox factory cannot be sent to the child process ({exc}); "
                    "use a module-level function or a functools.partial of one, not a lambda or a local function."
                ) from exc
            finally:
                child_conn.close()  # only the child holds its end now, so its death shows as EOF here
            self._proc, self._conn, self._exit_fd = proc, parent_conn, _open_exit_fd(proc.pid)
        self._dropped.clear()  # a new child holds no handles
        self._starts += 1
        try:
            hello = self._receive("start", self.control_timeout_s)
        except _ChildTimedOut:
            self._needs_recovery = True
            raise SandboxError(
                f"The subprocess sandbox did not start within {_seconds(self.control_timeout_s)} s (control_timeout_s)."
            ) from None
        except _ChildDied as died:
            self._needs_recovery = True
            raise SandboxError(f"The subprocess sandbox exited while starting ({died.how}).") from None
        except SandboxError as exc:
            self._needs_recovery = True
            self._stop_child(grace_s=_KILL_WAIT_S)  # it reported the error and is exiting; reap it
            hint = ""
            if self.memory_mb is not None and "MemoryError" in str(exc):
                hint = f" The memory limit (memory_mb={self.memory_mb}) may be too low to even build it."
            raise SandboxError(f"The inner sandbox could not be built in the child process: {exc}{hint}") from None
        if not isinstance(hello, dict) or not isinstance(hello.get("kind"), str):
            self._needs_recovery = True
            self._stop_child()
            raise SandboxError(f"The subprocess sandbox child started with an unexpected greeting: {hello!r:.200}")
        self._inner_kind = hello["kind"]
        self._needs_recovery = False

    def _stop_child(self, grace_s: float = 0.0) -> int | None:
        """End the child and every process of its group; its exit code (``None`` if it could not be reaped).

        ``grace_s``: how long to let it exit by itself first (after ``close``, or while it is dying).
        """
        proc, conn, exit_fd = self._proc, self._conn, self._exit_fd
        self._proc = self._conn = self._exit_fd = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        try:
            if grace_s > 0:
                _wait(proc, exit_fd, None, grace_s)
            # The child leads its own group (see isolated_child.child_main). Kill the group before
            # reaping the child: even when the child has exited, processes its tools started may
            # live on in it, and until the child is reaped its id cannot be reused.
            kill_process_group(proc.pid)
            proc.kill()  # should it have died before leading its group
            _wait(proc, exit_fd, None, _KILL_WAIT_S)
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
        code = proc.exitcode  # reaps it
        if code is not None:
            proc.close()
        return code

    def _control(self, op: str, *args: Any, recover: bool = True) -> Any:
        """A request other than execute: bounded by ``control_timeout_s``; failures raise SandboxError."""
        if recover and self._needs_recovery:
            self._recover()
        try:
            return self._request(op, args, self.control_timeout_s)
        except _ChildTimedOut:
            raise SandboxError(
                f"{op}() did not answer within {_seconds(self.control_timeout_s)} s (control_timeout_s) in the subprocess sandbox; "
                "the child was killed and is restarted on the next call."
            ) from None
        except _ChildDied as died:
            raise SandboxError(f"The subprocess sandbox died during {op}() ({died.how}); it is restarted on the next call.") from None

    def _request(self, op: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        conn = self._conn
        if conn is None:
            self._needs_recovery = True
            raise _ChildDied("no child process is running")
        drops = []
        while self._dropped:  # popleft, not clear(): a finalizer may append meanwhile
            drops.append(self._dropped.popleft())
        try:
            conn.send((op, args, drops))
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise self._died(f"{type(exc).__name__} while sending") from None
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SandboxError(f"The arguments of {op}() cannot be sent to the subprocess sandbox (they must pickle): {exc}") from exc
        except BaseException:
            self._desynchronized()
            raise
        try:
            return self._receive(op, timeout)
        except (_ChildDied, _ChildTimedOut, SandboxError):
            raise
        except BaseException:
            self._desynchronized()
            raise

    def _desynchronized(self) -> None:
        # Interrupted (KeyboardInterrupt, a signal handler's exception) between sending a request and
        # reading its whole answer: a late answer would be taken for the next call's. Start over.
        self._needs_recovery = True
        self._stop_child()

    def _wait_readable(self, timeout: float | None) -> None:
        """Wait for the child's next frame; raises if it times out or the child exits instead.

        Watches the child process itself, not the pipe's end of file: a process the tool forked may
        hold the pipe open after the child died, and that must read as a crash, not as a time-out.
        """
        conn, proc = self._conn, self._proc
        assert conn is not None and proc is not None
        outcome = _wait(proc, self._exit_fd, conn, timeout)
        if outcome == "readable":
            return
        if outcome == "exited":
            raise self._died("it exited without answering")
        self._needs_recovery = True
        self._stop_child()
        raise _ChildTimedOut

    def _read_frame(self, timeout: float | None) -> bytes:
        self._wait_readable(timeout)
        assert self._conn is not None
        try:
            return self._conn.recv_bytes()
        except (EOFError, OSError):
            raise self._died("the pipe closed") from None

    def _receive(self, op: str, timeout: float | None) -> Any:
        """The child's reply to ``op``, decoded (JSON, never unpickled); its error reply raised."""
        frame = self._read_frame(timeout)
        try:
            reply = json.loads(frame)
            if not isinstance(reply, dict):
                raise _BadReply(f"a JSON {type(reply).__name__}, not an object")
            if "err" in reply:
                raise _child_error(reply["err"])
            value = reply["ok"]
            if reply.get("blob"):
                value = self._read_frame(self.control_timeout_s)
            if op == "execute":
                value = Observation.model_validate(value)
            return value
        except (ValueError, KeyError, TypeError, ValidationError, _BadReply) as exc:
            # Not the protocol: the child (or a tool writing to the pipe) cannot be trusted any more.
            self._needs_recovery = True
            self._stop_child()
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise _ChildDied(f"the child answered {op}() with {len(frame)} bytes that are not a reply ({detail}) and was killed") from None

    def _died(self, detail: str) -> _ChildDied:
        self._needs_recovery = True
        code = self._stop_child(grace_s=_KILL_WAIT_S)
        return _ChildDied(_describe_exit(code, detail))


def _argument_names(schema: Any) -> list[str]:
    """The argument names a tool schema (OpenAI's form, or a bare function) lists."""
    function = schema.get("function", schema) if isinstance(schema, dict) else None
    parameters = function.get("parameters") if isinstance(function, dict) else None
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    return [str(name) for name in properties] if isinstance(properties, dict) else []


def _open_exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when process ``pid`` exits (a Linux pidfd); ``None`` where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait(proc: Any, exit_fd: int | None, conn: Connection | None, timeout: float | None) -> str:
    """Wait until ``conn`` is readable, ``proc`` has exited, or ``timeout`` passed: ``readable``, ``exited`` or ``timeout``.

    Not ``proc.sentinel`` (or ``join``): that is a pipe too, which the child's own children inherit.
    Without a pidfd, the exit is polled every :data:`_EXIT_POLL_S`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        watched: list[Any] = [] if conn is None else [conn]
        if exit_fd is not None:
            watched.append(exit_fd)
            step = remaining
        else:
            step = _EXIT_POLL_S if remaining is None else min(remaining, _EXIT_POLL_S)
        if watched:
            try:
                ready = multiprocessing.connection.wait(watched, step)
            except OSError:
                ready = watched[:1]  # a closed pipe: the read that follows reports how the child died
        else:
            time.sleep(step or 0.0)
            ready = []
        if conn is not None and conn in ready:
            return "readable"
        exited = exit_fd in ready if exit_fd is not None else proc.exitcode is not None
        if exited:
            return "exited"
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"


def _child_error(error: Any) -> SandboxError:
    """The exception an error reply stands for: ``SandboxError`` and its kin as themselves, anything else as ``SandboxError``."""
    if not isinstance(error, dict):
        raise _BadReply(f"an error that is a {type(error).__name__}, not an object")
    module, name = str(error.get("module", "")), str(error.get("name", "Exception"))
    message, summary = str(error.get("message", "")), str(error.get("summary", ""))
    known = getattr(errors, name, None) if module == errors.__name__ else None
    if isinstance(known, type) and issubclass(known, SandboxError):  # EnvironmentUnavailableError included: same class, same message
        exc = known(message)
        exc.add_note(f"in the subprocess sandbox child:\n{summary.rstrip()}")
        return exc
    text = f"{name}: {message}" if message else name
    return SandboxError(f"{text}\nin the subprocess sandbox child ({module}.{error.get('qualname', name)}):\n{summary.rstrip()}")


def _describe_exit(code: int | None, detail: str) -> str:
    if code is None:
        return f"the child stopped answering: {detail}"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the child was killed by signal {name}"
    return f"the child exited with code {code}"


def _seconds(value: float) -> str:
    return f"{value:g}"
