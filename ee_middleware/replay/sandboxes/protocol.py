"""The sandbox protocol: a tool environment that can be rebuilt, branched and rewound.

Replay executes alternative tool calls only inside a sandbox. A sandbox is reset to a trajectory's
environment reference (the world at step 0), executes tool calls against that world, and can take
a snapshot of the world and restore it, so that every alternative branches from exactly the
recorded state and no branch's side effects leak into another branch or into the next expert step.

A sandbox may also offer ``state_digest()`` (:class:`StatefulSandbox`): a short string that is equal
exactly when two worlds are in the same state. The ``traces:`` eval suite compares it between the
candidate agent's run and the expert's replayed calls; :func:`state_digest` asks for it with a clear
error when a sandbox has none.

Writing one for an app's own tools takes a small class; see :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox`
for the usual way (a world object plus tool functions) and ``docs/sandboxes.md`` for a walk-through.

Optional: ``refusal_hint(tool_name) -> str | None``, asked (on a freshly built sandbox, without a
reset) for each tool the replay refused, says why and how to allow it; ``ee replay run`` prints it
instead of its generic advice, and a trajectory skipped because its expert calls such a tool gives it
as the reason. The BFCL sandbox uses it for the tools it refuses because they reach the network, the
Python sandbox for tools that take the graph's state, store or runtime (LangChain's injected arguments).

Optional: ``acts_outside_world(tool_name) -> bool``, true for a tool the sandbox does not provide because it acts only
outside the world it rebuilds (it pages on-call, sends an e-mail): replay leaves the expert's calls of it unexecuted, their
recorded results standing for them, and branches from every state. The expert's call of any other tool the sandbox does
not cover skips the trajectory (it may change the world; except at the last tool-call step). Default: false for every
tool; :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox` and
:class:`~ee_middleware.replay.sandboxes.mcp.McpSandbox` (and its config file) take ``outside_world_tools``; read it with
:func:`acts_outside_world`.

Optional: ``worker_modules``, a sequence of module names a replay job's worker processes would import on first use
(backends the sandbox loads lazily, their heavy dependencies): the job's fork server imports them once, before it forks
each worker, so no worker pays for them (see ``docs/replay-scaling.md``). A module that cannot be imported there is
skipped, with a warning; the worker then imports it itself, and reports what fails. The BFCL sandbox names its backends.

Optional: ``check_offered_tools(tools)``, given a trajectory's recorded tool schemas after each reset and before
anything of it runs, raises :class:`~ee_middleware.errors.SandboxError` when the sandbox would call a tool in a way
those schemas show is wrong (the Python sandbox: a production tool listed where a function of the world goes).
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from ee_middleware.errors import SandboxError
from ee_middleware.records import Observation

if TYPE_CHECKING:
    from ee_middleware.records import ToolCall


@runtime_checkable
class Sandbox(Protocol):
    """A rebuildable, branchable tool environment.

    ``kind`` names the sandbox in rollout records (``python``, ``subprocess``, ``bfcl``, ...).
    """

    kind: str

    def covers(self, tool_name: str) -> bool:
        """Whether this sandbox can execute ``tool_name`` (the replay never calls any other tool).

        Asked after :meth:`reset`; the answer may depend on the environment.
        """
        ...

    def reset(self, environment: dict[str, Any] | None) -> None:
        """Rebuild the world at step 0 from a trajectory's environment reference.

        Raise :class:`~ee_middleware.errors.EnvironmentUnavailableError` (with the reason) when the
        reference is missing or cannot be rebuilt; the trajectory is then skipped.
        """
        ...

    def execute(self, call: ToolCall) -> Observation:
        """Run one tool call against the current world and return what the tool returned.

        A tool's own failure (bad arguments, an exception, a time-out) is an observation with
        ``is_error=True``, never an exception: the model must see it, and the replay goes on.
        """
        ...

    def snapshot(self) -> Any:
        """An opaque copy of the current world, for :meth:`restore`."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Put the world back exactly as it was when ``snapshot`` was taken (repeatable)."""
        ...

    def close(self) -> None:
        """Release processes, files or connections held by the sandbox.

        Idempotent. Afterwards :meth:`execute`, :meth:`snapshot` and :meth:`restore` raise
        :class:`~ee_middleware.errors.SandboxError`; whether :meth:`reset` makes the sandbox usable
        again is up to the sandbox. :func:`ee_middleware.testing.check_sandbox` checks all of this.
        """
        ...


@runtime_checkable
class StatefulSandbox(Sandbox, Protocol):
    """A sandbox that can say which state its world is in (optional; the eval suites need it)."""

    def state_digest(self) -> str:
        """A digest of the current world: equal for equal states (also across processes and
        sandboxes of the same kind), different after a call that changed the world, and back to
        the old value after :meth:`restore`. Reading tools must not change it.

        :func:`ee_middleware.replay.sandboxes.digest.digest_of` digests any data or object world
        (public attributes, as BFCL's state checker compares them). Raises
        :class:`~ee_middleware.errors.SandboxError` when closed or before :meth:`reset`.
        """
        ...


def refused(sandbox: Any, tool_name: str) -> Observation:
    """The answer to a call of ``tool_name``, which ``sandbox`` does not cover, where a loop must answer it (an eval's
    candidate, in a ``traces:`` suite): the tool is never executed, whatever the sandbox's :meth:`~Sandbox.execute` would
    do with it (the protocol promises a sandbox no such call). Says why where the sandbox tells (``refusal_hint``), as
    the BFCL sandbox answers such a call itself."""
    hint = getattr(sandbox, "refusal_hint", None)
    why = hint(tool_name) if callable(hint) else None
    if why:
        return Observation(content=f"Error: tool '{tool_name}' was not run: {why}", is_error=True)
    return Observation(content=f"Error: tool '{tool_name}' is not available in this sandbox.", is_error=True)


def executed(sandbox: Any, call: ToolCall) -> Observation:
    """``sandbox.execute(call)``, checked to be an :class:`~ee_middleware.records.Observation`: anything else is a bug in
    the sandbox, raised as :class:`~ee_middleware.errors.SandboxError` naming it (never stored as what the tool returned,
    which datasets would learn)."""
    result = sandbox.execute(call)
    if not isinstance(result, Observation):
        kind = type(sandbox)
        raise SandboxError(
            f"the sandbox {kind.__module__}.{kind.__qualname__} returned {type(result).__name__} from execute() for tool "
            f"{call.name!r}, not an Observation: a bug in the sandbox. Its execute() must return "
            "ee_middleware.records.Observation(content=..., is_error=...) (the Sandbox protocol; "
            "ee_middleware.testing.check_sandbox checks it)."
        )
    return result


def check_offered_tools(sandbox: Any, tools: Any) -> None:
    """The sandbox's optional ``check_offered_tools(tools)`` (see the module docstring), after a reset and before anything
    runs in it: replay gives a trajectory's recorded tool schemas, the eval suites the schemas their tasks offer."""
    check = getattr(sandbox, "check_offered_tools", None)
    if check is not None:
        check(list(tools or []))


def acts_outside_world(sandbox: Any, tool_name: str) -> bool:
    """The sandbox's optional ``acts_outside_world(tool_name)`` (see the module docstring); false without one."""
    method = getattr(sandbox, "acts_outside_world", None)
    return bool(method(tool_name)) if method is not None else False


def state_digest(sandbox: Any) -> str:
    """``sandbox.state_digest()``, or :class:`~ee_middleware.errors.StateDigestUnavailableError` saying how to add it."""
    method = getattr(sandbox, "state_digest", None)
    if not callable(method):
        from ee_middleware.errors import StateDigestUnavailableError

        raise StateDigestUnavailableError(
            f"The {getattr(sandbox, 'kind', type(sandbox).__name__)!r} sandbox has no state_digest(), which comparing final "
            "states needs. Add a state_digest() -> str method (see ee_middleware.replay.sandboxes.protocol.StatefulSandbox; "
            "ee_middleware.replay.sandboxes.digest.digest_of digests a world object), or build it on PythonSandbox, which has one."
        )
    return str(method())


class ClosedOnExit:
    """For a sandbox that owns processes (a child process, MCP servers): ``with sandbox:`` closes it on leaving the
    block, and a sandbox collected unclosed is closed then, never raising from the finalizer. It needs ``close()``.

    A sandbox that calls :meth:`_close_at_exit` (once it may own processes) is also closed when its process exits while
    it is open: at interpreter exit, and in a :mod:`multiprocessing` worker before the worker waits for its children
    (see :func:`close_open_sandboxes`)."""

    def close(self) -> None:
        raise NotImplementedError

    def _close_at_exit(self) -> None:
        _OPEN.add(self)
        _hook_exit()

    def _not_at_exit(self) -> None:
        """Closed for good: nothing is left to close at exit."""
        _OPEN.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


_OPEN: weakref.WeakSet[ClosedOnExit] = weakref.WeakSet()
_HOOKED_PID: int | None = None


def _forget_after_fork() -> None:
    """In a forked process: the sandboxes it inherited are its parent's (their processes, pipes and folders): it must
    never close them at its exit, only those it opens itself."""
    _OPEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def open_sandboxes() -> list[ClosedOnExit]:
    """The sandboxes of this process that may still own processes (see :meth:`ClosedOnExit._close_at_exit`)."""
    return list(_OPEN)


def close_open_sandboxes() -> None:
    """Close every sandbox of this process that may still own processes, best effort (at exit)."""
    for sandbox in open_sandboxes():
        try:
            sandbox.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _hook_exit() -> None:
    """Run :func:`close_open_sandboxes` when this process exits, once per process.

    At interpreter exit (``atexit``, registered after :mod:`multiprocessing`'s own exit hook, so it runs first: a hung
    child must be killed before multiprocessing joins it, or the interpreter would wait forever), and in a
    :mod:`multiprocessing` worker, which ends with ``os._exit`` and runs no ``atexit`` hook, only multiprocessing's exit
    function: it runs finalizers with a priority and then waits for every child process.
    """
    global _HOOKED_PID
    if os.getpid() == _HOOKED_PID:
        return
    import atexit
    import multiprocessing.util  # its exit hook is registered on import: ours, registered after it, runs before it

    if _HOOKED_PID is None:  # a forked process keeps its parent's atexit hooks
        atexit.register(close_open_sandboxes)
    _HOOKED_PID = os.getpid()
    multiprocessing.util.Finalize(None, close_open_sandboxes, exitpriority=100)
