"""In-process sandboxes: a Python world object plus tool functions, snapshotted by deep copy.

This is the usual way to give replay an app's own tools. The world is whatever object your tools
read and change (a dict, a dataclass, a fake database); every tool is a function that receives it
as its first argument. Branching from any recorded state is exact because a snapshot is a deep
copy of the world (pickled once; each restore unpickles a fresh copy, or deep-copies worlds that
do not pickle); for small worlds a restore takes microseconds. One thing no copy keeps is a set's
iteration order (it follows the set's hash table, which a copy rebuilds): a tool that lists a set
unsorted may answer in another order after a restore, which the fidelity error then says
(docs/sandboxes.md).

Worlds made of plain dicts and lists (a database of users, orders and products) are journaled
instead (see :mod:`ee_middleware.replay.sandboxes.journal`): each write records the value it
overwrites, a snapshot is a position in that journal, and a restore undoes only what the calls
since wrote -- nothing at all after a read-only call -- however large the world is.

>>> def build(environment):                                   # doctest: +SKIP
...     return {"stock": dict(environment["stock"])}
>>> def order_item(world, item: str, quantity: int = 1):      # doctest: +SKIP
...     world["stock"][item] -= quantity
...     return f"ordered {quantity} {item}"
>>> sandbox = PythonSandbox(build, tools={"order_item": order_item})  # doctest: +SKIP

Tools that only read (a search API, a price lookup) and need no world may be listed in
``read_only_tools``: they are then called directly, as they are in production. Any tool that is
not listed is never executed by replay (see :mod:`ee_middleware.replay.safety`).

A LangChain tool function's injected parameters (see :mod:`ee_middleware.replay.sandboxes.injected`)
are handled as LangGraph's ``ToolNode`` would where replay can: an ``InjectedToolCallId`` gets the
call's id. A tool that takes the graph's state, store or runtime is refused (:meth:`PythonSandbox.refusal_hint`
says which parameter and how to allow it), never called without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import inspect
import json
import logging
import pickle
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from ee_middleware._lifetime import awaiting_with_signal_checks, result_with_signal_checks
from ee_middleware.errors import EnvironmentUnavailableError, SandboxError
from ee_middleware.messages import content_to_text, kept_as_tool_content
from ee_middleware.records import Observation, ToolCall, ToolSchema, tool_schema_name
from ee_middleware.replay.sandboxes.digest import Unencodable, digest_of
from ee_middleware.replay.sandboxes.injected import CALL_ID, injected_parameters, refusal_reason
from ee_middleware.replay.sandboxes.journal import JDict, JList, Journal, JournalSnapshot, NotJournalable, adopt
from ee_middleware.replay.sandboxes.langchain_tool import (
    argument_schema,
    call_function,
    call_tool,
    filled_by_langchain,
    filled_parameters,
    first_parameter,
    is_langchain_tool,
    offered_arguments,
    on_world,
    tool_injected_parameters,
    validated_arguments,
    wrapped_function,
)

WorldBuilder = Callable[[dict[str, Any] | None], Any]
WorldTool = Callable[..., Any]


class WorldSnapshot:
    """An immutable copy of a world. Pickled bytes when the world pickles (a restore is then one
    ``pickle.loads``, several times faster than ``copy.deepcopy``), else a deep copy."""

    __slots__ = ("_copy", "_data", "_kind")

    def __init__(self, world: Any, *, kind: str = "python") -> None:
        self._kind = kind
        self._data: bytes | None
        try:
            self._data = pickle.dumps(world, protocol=pickle.HIGHEST_PROTOCOL)
            self._copy = None
        except Exception:  # noqa: BLE001 - locks, lambdas, open files: fall back to deepcopy
            self._data = None
            try:
                self._copy = copy.deepcopy(world)
            except Exception as exc:  # a connection, socket or file: say where it is and what to do
                raise SandboxError(_uncopyable_message(kind, world, exc)) from exc

    def same_bytes(self, other: WorldSnapshot) -> bool:
        """Whether both are pickled and their bytes are the same (then so are the worlds they copied)."""
        return self._data is not None and self._data == other._data

    def __getstate__(self) -> tuple[bytes | None, Any, str]:
        """Pickled (a subprocess sandbox sends its snapshots out as bytes): a deep-copied world must pickle too."""
        if self._data is None:
            try:
                pickle.dumps(self._copy, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # say where the part that does not pickle is, and what to do
                path, culprit = _failing_part(self._copy, "world", _pickles)
                raise SandboxError(
                    f"{self._kind} sandbox's world cannot be pickled, which a subprocess sandbox (--isolation subprocess) needs "
                    f"to send its snapshots out of the child: {path} is a {_type_name(culprit)} ({type(exc).__name__}: {exc}). "
                    "In process such a world is deep-copied instead. Keep lambdas, local functions, locks, connections and files "
                    "out of the world (module-level functions pickle by name), or give the world's class __getstate__/__setstate__ "
                    "(docs/sandboxes.md)."
                ) from exc
        return self._data, self._copy, self._kind

    def __setstate__(self, state: tuple[bytes | None, Any, str]) -> None:
        self._data, self._copy, self._kind = state

    def materialize(self) -> Any:
        """A fresh, independent copy of the world as it was at snapshot time."""
        if self._data is not None:
            return pickle.loads(self._data)
        return copy.deepcopy(self._copy)

    @property
    def pickled(self) -> bool:
        return self._data is not None


def _uncopyable_message(kind: str, world: Any, exc: BaseException) -> str:
    path, culprit = _failing_part(world, "world", _deep_copies)
    return (
        f"{kind} sandbox cannot snapshot its world: {path} is a {_type_name(culprit)}, which can be neither pickled nor "
        f"deep-copied ({type(exc).__name__}: {exc}). Keep the world plain data (dicts, lists, dataclasses) and open "
        "connections, files and sockets inside the tools, or give the world's class __getstate__/__setstate__ that save "
        "and rebuild that part (docs/sandboxes.md: the retail example pickles its SQLite database as bytes)."
    )


def _deep_copies(value: Any) -> None:
    copy.deepcopy(value)


def _pickles(value: Any) -> None:
    pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _failing_part(value: Any, path: str, check: Callable[[Any], None], seen: set[int] | None = None, depth: int = 0) -> tuple[str, Any]:
    """The innermost part of ``value`` (and its path) that ``check`` fails on; ``value`` itself when no part is to blame.

    Only for error messages: it checks parts again, level by level.
    """
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 32:
        return path, value
    seen.add(id(value))
    if isinstance(value, Mapping):
        parts: Any = ((f"{path}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        parts = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
        parts = ((f"{path}.{k}", v) for k, v in vars(value).items())
    else:
        return path, value
    for where, part in parts:
        try:
            check(part)
        except Exception:  # noqa: BLE001 - this part is (or holds) the culprit
            return _failing_part(part, where, check, seen, depth + 1)
    return path, value


def format_result(value: Any) -> str:
    """A tool's return value as the text a model sees, by LangChain's rule for a tool's ``ToolMessage``: strings as they
    are, content blocks (text, images, ...) as capture stores them (:func:`~ee_middleware.messages.content_to_text`: an
    image as its placeholder, never its bytes), JSON for any other value that has one (``True`` is ``true``, ``None`` is
    ``null``), else ``str(value)`` (a datetime, a Decimal, a pydantic model, a dict holding a date)."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and kept_as_tool_content(list(value)):  # LangChain makes a tuple of blocks a list
        value = list(value)
    if kept_as_tool_content(value):  # LangGraph keeps such a list as the ToolMessage's content, and capture its text
        return content_to_text(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except Exception:  # noqa: BLE001 - as langchain_core's tools: anything JSON refuses (a date, a cycle) is its str()
        return str(value)


_TASK_END_WAIT_S = 2.0
"""How long closing a sandbox waits for the tasks left on its loop (a tool's, after a stop) to end once cancelled: the
time their ``finally`` blocks get (an async client's graceful ``aclose()``)."""

_CLOSE_MARGIN_S = 0.25
"""How much longer than :data:`_TASK_END_WAIT_S` :meth:`PythonSandbox.close` waits for a loop's ending (cancelling,
shutting async generators down, closing the loop) before it returns, leaving a clean-up that blocks to the loop's thread."""

_LIVENESS_CHECK_S = 1.0
"""How often a call waiting on the sandbox's loop thread checks that the thread still runs (so it never waits forever)."""

_log = logging.getLogger(__name__)


def _same_plain_data(first: Any, second: Any) -> bool:
    """Whether two worlds of dicts, lists and immutable values hold the same data (as ``==`` says, dicts in any order), also
    where their parts refer back to each other (``==`` recurses without end there) and where a float is NaN in both."""
    pending, seen = [(first, second)], set()
    while pending:
        a, b = pending.pop()
        if a is b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            if (id(a), id(b)) in seen:
                continue
            seen.add((id(a), id(b)))
            if a.keys() != b.keys():
                return False
            pending.extend((value, b[key]) for key, value in a.items())
        elif isinstance(a, list) and isinstance(b, list):
            if (id(a), id(b)) in seen:
                continue
            seen.add((id(a), id(b)))
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif isinstance(a, tuple) and isinstance(b, tuple) and type(a) is type(b):
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif isinstance(a, (dict, list)) or isinstance(b, (dict, list)) or not _same_value(a, b):
            return False
    return True


def _same_value(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and a != a and b != b))  # (NaN: in both)


def _nothing() -> None:
    pass


_PAST_THE_JOURNAL = "heapq on a list, list.__init__ or dict.__init__ called on one, exec into a dict"

JOURNAL_AUDITED_CALLS = 1
JOURNAL_AUDIT_TRIES = 3
"""A journaled sandbox checks each tool's calls for writes its journal does not see until this many of them wrote the
world or succeeded, at most ``JOURNAL_AUDIT_TRIES`` calls (see :meth:`PythonSandbox._audit_journal`)."""

AUDIT_COPY_CHARS = 256_000
"""A world whose text (:func:`_world_text`) is at most this long is also copied before a call whose journal is checked,
so that a write the journal missed is recovered from (larger: the trajectory fails, naming the fix)."""


def _world_text(world: Any) -> str | None:
    """The world as the text its ``repr`` writes: dicts and lists write every item, keys in their order, at C speed, and
    tell apart what JSON would not (the key ``1`` from ``"1"``, a tuple from a list); ``None`` where it cannot be
    written (a ``__repr__`` that raises, nesting deeper than the recursion limit, an int past the digit limit) or where
    it does not say all (a part that refers back to a container it is in is written ``[...]`` or ``{...}``, whichever
    it is: text holding those marks): the check then compares pickled copies."""
    try:
        text = repr(world)
    except Exception:  # noqa: BLE001 - whatever a value's own __repr__ raises: the check compares copies instead
        return None
    return None if "...]" in text or "...}" in text else text


_TOOL_TASKS: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
"""The tasks the sandbox runs async tools in (named after the tool); any other task on its loop is one a tool started."""


async def _end_tasks_left(*, stop: threading.Event | None = None, moved: bool = False) -> None:
    """Cancel the tasks still on the running loop but this one (an async tool's, stopped by Ctrl-C while it awaited), wait
    up to :data:`_TASK_END_WAIT_S` for them to end (their ``finally`` blocks close what the tool opened), then shut its
    async generators down; with ``stop``, set it and stop the loop after (a loop run forever, which its own thread then
    closes: :func:`_run_then_close`). Dropped pending, a task's clean-up was left to the collector, with "Task was
    destroyed but it is pending!" on stderr. What a clean-up raised is logged (``moved``: it runs in another thread than
    the tool did), never left to asyncio's "Task exception was never retrieved"."""
    try:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_TASK_END_WAIT_S)
        _report_endings(tasks, moved=moved)
        await asyncio.get_running_loop().shutdown_asyncgens()
    finally:
        if stop is not None:
            stop.set()
            asyncio.get_running_loop().stop()


_MOVED_CLEAN_UP = (
    " It ran in a thread of the sandbox's own, not the one that ran the tool: after a stop, closing a sandbox whose "
    "caller runs no event loop ends the tools' tasks there, so that a clean-up that blocks cannot hang close(). Open "
    "thread-bound objects (a sqlite3 connection) with check_same_thread=False, or use an async client (aiosqlite)."
)

_NOT_ENDED = (
    "did not end within {wait:.0f} s of its cancellation and is dropped with the loop, its clean-up unfinished: it still "
    "awaited (a clean-up awaiting longer than that, or a CancelledError caught and not raised again). Let a tool's "
    "clean-up end within {wait:.0f} s (bound its awaits with asyncio.timeout), and raise CancelledError again after "
    "catching it."
)


def _report_endings(tasks: set[asyncio.Task[Any]], *, moved: bool) -> None:
    """Log how the tasks :func:`_end_tasks_left` cancelled ended, when not as a cancelled task does: one warning per tool
    (:data:`_TOOL_TASKS`, named after it); a task a tool started only when its tool's warning does not say it already (an
    exception the tool's task ended with too, as it does when it awaited that task; a task still running while the tool's
    is)."""
    tools = [task for task in tasks if task in _TOOL_TASKS]
    raised = {id(task.exception()) for task in tools if task.done() and not task.cancelled() and task.exception() is not None}
    tool_running = any(not task.done() for task in tools)
    for task in sorted(tasks, key=lambda t: t not in _TOOL_TASKS):  # the tools' own first
        what = f"Closing the python sandbox: {task.get_name()!r}, cancelled on the sandbox's event loop,"
        told = task not in _TOOL_TASKS and (tool_running if not task.done() else id(_exception(task)) in raised)
        if not task.done():  # still awaiting: dropped with the loop, said here once
            task._log_destroy_pending = False  # type: ignore[attr-defined]  # asyncio's own switch for a task dropped on purpose
            if not told:
                _log.warning("%s %s", what, _NOT_ENDED.format(wait=_TASK_END_WAIT_S))
        elif not task.cancelled() and task.exception() is not None and not told:  # exception(): retrieved, never asyncio's
            exc = task.exception()
            _log.warning("%s raised %s: %s in its clean-up.%s", what, type(exc).__name__, exc, _MOVED_CLEAN_UP if moved else "")


def _exception(task: asyncio.Task[Any]) -> BaseException | None:
    """A done task's exception (retrieved, so asyncio never logs it), ``None`` for a cancelled one."""
    return None if task.cancelled() else task.exception()


def _run_to_end(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any], *, stop_on: tuple[type[BaseException], ...] = ()) -> Any:
    """``loop.run_until_complete(task)``, going on when an exception other than ``stop_on`` escapes the loop before
    ``task`` ended: asyncio lets ``SystemExit`` and ``KeyboardInterrupt`` (only those) out of its loop from whatever task
    raised them (a tool's inner task: ``asyncio.wait_for``, ``gather``, ``create_task``), and that task holds it, so
    whoever awaits it, ``task`` in the end, gets it. Stopped there, ``task`` would be left half run on the loop."""
    while True:
        try:
            return loop.run_until_complete(task)
        except stop_on:
            raise
        except Exception:  # the loop's own refusal (stopped, closed): as it is
            raise
        except BaseException:
            if task.done() or loop.is_closed():
                raise


def _run_then_close(loop: asyncio.AbstractEventLoop, ending: Any = None, stopped: threading.Event | None = None) -> None:
    """A sandbox loop's thread: run ``ending`` on ``loop`` to its end, or the loop forever when ``None`` (until
    :func:`_end_tasks_left` sets ``stopped`` and stops it), then close the loop, in this thread, whenever that is: after
    a clean-up that blocks too, long after :meth:`PythonSandbox.close` returned. An exception a tool's task lets out of
    the loop (see :func:`_run_to_end`) never ends the thread: the calls waiting on the loop would wait forever."""
    try:
        if ending is not None:
            try:
                _run_to_end(loop, loop.create_task(ending))
            except BaseException:  # noqa: BLE001 - the ending's own failure (a bug of it): said, and the loop closed still
                _log.warning("Closing the python sandbox's event loop failed.", exc_info=True)
            return
        while True:
            try:
                loop.run_forever()
            except Exception:  # noqa: BLE001 - the loop cannot run (a bug): closed below, a call waiting on it told so
                _log.warning("The python sandbox's event loop stopped.", exc_info=True)
                break
            except BaseException:  # noqa: BLE001 - a tool's task holds it (see _run_to_end): the loop goes on
                pass
            if stopped is None or stopped.is_set() or loop.is_closed():
                break
    finally:
        if not loop.is_closed():
            loop.close()


class _LoopThreadEnded(SandboxError):
    """The thread running the sandbox's event loop ended while a call awaited on it: the sandbox's failure, not the tool's."""


def _close_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread | None, stopped: threading.Event | None = None) -> None:
    """End the tasks left on ``loop`` (:func:`_end_tasks_left`) and close it, in bounded time (:data:`_TASK_END_WAIT_S` +
    :data:`_CLOSE_MARGIN_S`): a tool whose clean-up blocks (synchronous code in its ``finally``) keeps only the thread
    the loop runs in, a daemon, never the caller; that thread closes the loop once the clean-up ends. ``thread``: the
    thread ``loop`` runs forever in (a caller that runs a loop itself; :func:`_run_then_close`, until ``stopped``);
    ``None`` for a loop not running, whose clean-up then runs in a thread of its own for the same reason."""
    if thread is None:
        thread = threading.Thread(
            target=_run_then_close, args=(loop, _end_tasks_left(moved=True)), name="ee-sandbox-async-close", daemon=True
        )
        thread.start()
    else:
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(_end_tasks_left(stop=stopped or threading.Event())))
        except RuntimeError:  # closed already: its thread ended
            pass
    thread.join(timeout=_TASK_END_WAIT_S + _CLOSE_MARGIN_S)


def _result_while_running(future: concurrent.futures.Future[Any], thread: threading.Thread) -> Any:
    """``future``'s result (see :func:`result_with_signal_checks`), checking every :data:`_LIVENESS_CHECK_S` that
    ``thread``, which runs the loop ``future``'s coroutine is on, still runs: :class:`_LoopThreadEnded` if not."""
    while True:
        try:
            return result_with_signal_checks(future, _LIVENESS_CHECK_S)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine's own TimeoutError
                raise
            if not thread.is_alive() and not future.done():
                raise _LoopThreadEnded(
                    "The python sandbox's event loop thread ended while an async tool's call awaited on it, so the call "
                    "has no result. This is a bug of the sandbox: please report it with the tool's code; close the sandbox "
                    "and reset it to go on."
                ) from None


_CARRIED_OUT = (asyncio.CancelledError, concurrent.futures.CancelledError, SystemExit, KeyboardInterrupt)
"""What an async tool raises that :meth:`PythonSandbox._await` returns from the loop as a value, raised in the caller."""

_TOOL_FAILURES = (Exception, SystemExit, asyncio.CancelledError)
"""What a tool may raise that is its failure, an error observation: ``SystemExit`` too (a tool that wraps a command line:
argparse on bad arguments, ``sys.exit()``), and ``asyncio.CancelledError`` (an inner task of an async client cancelled;
see :meth:`PythonSandbox._failure` for the caller's own cancellation). ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM taken as
one) stops the replay job."""


def _caller_is_cancelled() -> bool:
    """Whether the asyncio task calling the sandbox (a replay driven from async code) is being cancelled: a
    ``CancelledError`` then belongs to it, as asyncio's own ``timeout`` and ``TaskGroup`` tell them apart."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop runs in this thread: no task to cancel
        return False
    return task is not None and task.cancelling() > 0


def format_exception(exc: BaseException) -> str:
    """The error text an agent's tool node would show the model for ``exc``: ``Error: ValueError: ...``, or for arguments
    a LangChain tool's schema refused (LangGraph's ``ToolInvocationError``) its message, as ``create_agent`` shows it.
    Where the recorded call's exception ended the run (no model saw a text), replay compares the exception this text
    names instead (:func:`~ee_middleware.replay.fidelity.raised_as_recorded`)."""
    if type(exc).__name__ == "ToolInvocationError" and isinstance(getattr(exc, "message", None), str):
        return exc.message  # type: ignore[attr-defined]
    return f"Error: {type(exc).__name__}: {exc}" if str(exc) else f"Error: {type(exc).__name__}"


def _check_table(table: str, functions: Any) -> None:
    """Refuse a ``tools``/``read_only_tools`` that is no mapping of tool names to functions (the list a ``ToolNode`` or
    ``create_agent`` is given is the likely mistake), saying how to write it."""
    if isinstance(functions, Mapping):
        return
    if isinstance(functions, (list, tuple, set, frozenset)):
        named = all(isinstance(getattr(fn, "name", None), str) or hasattr(fn, "__name__") for fn in functions)
        fix = (
            f"e.g. {table}={{t.name: t for t in tools}} for LangChain tools, or {{f.__name__: f for f in functions}} for plain functions"
            if named
            else "e.g. {'lookup': lookup}"
        )
        raise SandboxError(
            f"PythonSandbox's {table} must map each tool's name to its function, not be a {type(functions).__name__}: {fix}."
        )
    raise SandboxError(f"PythonSandbox's {table} must map each tool's name to its function (a dict), not {type(functions).__name__}.")


def _check_callable(table: str, name: str, fn: Any) -> None:
    """A function, or a LangChain tool object (``@tool``); among world tools, one whose function takes the world first."""
    if table == "tools":
        problem = _not_a_world_tool(name, fn)
        if problem is not None:
            raise SandboxError(problem)
    if is_langchain_tool(fn) or callable(fn):
        return
    raise SandboxError(f"{table}[{name!r}] is a {type(fn).__name__}, not a function: give a function that takes the call's arguments.")


_WORLD_TOOL_FIX = (
    "A world tool's function takes the world first (a parameter with no default, never one the model or LangGraph gives), "
    "then the call's arguments. List a tool that needs no world in read_only_tools (it is then called as LangGraph's "
    "ToolNode calls it), or give a function that takes the world first (or the LangChain tool built over one: "
    "StructuredTool.from_function(fn, handle_tool_error=...), as production builds its tool over it with the world bound)."
)


def _not_a_world_tool(name: str, fn: Any) -> str | None:
    """Why ``fn``, listed in ``tools`` as ``name``, cannot be a world tool, decided from the function alone: its first
    parameter, which would get the world, has a default, is injected (LangGraph gives it: the call's id, the graph's
    state, the runtime), is one LangChain fills in, or is among the arguments of the tool's own schema (the model's).
    Such a function is a production tool's own: called, it would run with the world in that parameter. ``None`` when it
    can take the world (a plain function whose signature cannot be read is taken as it is)."""
    langchain = is_langchain_tool(fn)
    target = wrapped_function(fn) if langchain else fn
    what = f"tools[{name!r}] is a LangChain tool ({type(fn).__name__}) whose function" if langchain else f"tools[{name!r}]"
    first = first_parameter(target) if target is not None else None
    if first is None:
        if langchain:
            return f"{what} takes no parameter it could be given the world in, so it cannot be a world tool. {_WORLD_TOOL_FIX}"
        return None  # a builtin, or *args: called as it is (a function that takes no world fails with a TypeError)
    said = f"{what} takes {first.name!r} first, where a world tool takes the world"
    if first.default is not inspect.Parameter.empty:
        return (
            f"{said}, and {first.name!r} has a default ({first.default!r}): it is no world parameter but an optional "
            f"argument of a production tool, which a call that leaves it out would run with the world in it. {_WORLD_TOOL_FIX}"
        )
    injected = injected_parameters(target).get(first.name)
    if injected is not None:
        return (
            f"{said}, and {first.name!r} is injected ({injected}): LangGraph gives it, the model never does, so a production "
            f"tool's function would run with the world in it. {_WORLD_TOOL_FIX}"
        )
    if langchain:
        filled = filled_by_langchain(target, first.name)
        if filled is not None:
            return f"{said}, and LangChain gives {first.name!r} {filled}: it is no world parameter. {_WORLD_TOOL_FIX}"
        offered = offered_arguments(fn)
        if offered is not None and first.name in offered:
            return (
                f"{said}, and {first.name!r} is one of the model's arguments (the tool's args_schema lists it): it is a "
                f"production tool, which would run with the world in it. {_WORLD_TOOL_FIX}"
            )
    return None


def _misplaced_tool_message(name: str, world: str, *, where: str) -> str:
    """A function among world tools whose first parameter, meant for the world, is one the model gives (``where``: how
    that is known)."""
    return (
        f"tools[{name!r}] takes {world!r} first, where a world tool takes the world, and {world!r} is one of the model's "
        f"arguments ({where}): it is a production tool's own function, which would run with the world in {world!r}, so "
        f"replay does not call it. {_WORLD_TOOL_FIX}"
    )


class PythonSandbox:
    """A world object and tool functions ``tool(world, **arguments)``, snapshotted by deep copy.

    Args:
        build: ``environment -> world``: rebuild the world at step 0 from a trajectory's
            environment reference. Raise :class:`EnvironmentUnavailableError` (or any exception,
            which is wrapped) when it cannot.
        tools: tool name -> function taking the world first, then the call's arguments; or a LangChain tool object
            built over such a function (``StructuredTool.from_function(fn, handle_tool_error=True)``, as production
            builds its tool over it with the world bound), which then answers as that tool does: its
            ``handle_tool_error``, ``handle_validation_error``, ``response_format`` and argument validation, not
            ``format_error`` (see :func:`~ee_middleware.replay.sandboxes.langchain_tool.on_world`). A production tool
            (its function takes the model's arguments only) is refused here: :class:`SandboxError` when its first
            parameter has a default, is injected, is one LangChain fills in or is in the tool's own ``args_schema``;
            one whose first parameter is a required argument by :meth:`check_offered_tools` and at a call naming it.
        read_only_tools: tool name -> function taking only the call's arguments, for tools that
            read and never change anything (called directly, no world); or the LangChain tool object
            itself (``@tool``, ``StructuredTool``), then called as LangGraph's ``ToolNode`` calls it
            (its argument schema, ``response_format``, ``handle_tool_error``, a ``Command``'s message;
            see :mod:`~ee_middleware.replay.sandboxes.langchain_tool`).
        outside_world_tools: names of tools that act only outside the world (they page on-call, send an e-mail), never
            called: replay leaves the expert's calls of them unexecuted, their recorded results standing for them
            (:meth:`acts_outside_world`). The expert's call of a tool listed nowhere skips the trajectory.
        kind: the sandbox name stored in rollout records.
        format_result: turns a tool's return value into the observation text.
        is_error_result: marks returned values that are errors (for APIs that return
            ``{"error": ...}`` instead of raising).
        format_error: turns a tool's exception into the observation text.
        state: ``world -> data``: what :meth:`state_digest` digests (default: the world itself, see
            :func:`~ee_middleware.replay.sandboxes.digest.digest_of`). Give one when the world's
            own form is not canonical (a database whose bytes depend on the order of writes).
        journal: journal the writes of worlds made of plain dicts and lists, so that a restore
            undoes only them (the world's dicts and lists become their journaling subclasses).
            ``False``: every restore copies the whole world back.
        validate_arguments: check and convert a plain function's arguments against its signature as LangChain's
            ``@tool`` does (``"2"`` for an ``int`` is 2; a value it refuses is LangGraph's error message), which is what
            a LangGraph app's tool received, and give the parameters LangChain fills its values: ``callbacks`` a
            callback manager, ``config`` and ``run_manager`` their defaults (see
            :class:`~ee_middleware.replay.sandboxes.langchain_tool.FilledParameters`). ``False`` for tools the app called
            with the raw arguments (another framework, tau-bench-style domains): the function gets them as they are
            (only a parameter annotated ``RunnableConfig`` still gets the run's config).
    """

    def __init__(
        self,
        build: WorldBuilder,
        tools: Mapping[str, WorldTool],
        *,
        read_only_tools: Mapping[str, Callable[..., Any]] | None = None,
        outside_world_tools: Iterable[str] = (),
        kind: str = "python",
        format_result: Callable[[Any], str] = format_result,
        is_error_result: Callable[[Any], bool] | None = None,
        format_error: Callable[[BaseException], str] = format_exception,
        state: Callable[[Any], Any] | None = None,
        journal: bool = True,
        validate_arguments: bool = True,
    ) -> None:
        _check_table("tools", tools)
        if read_only_tools is not None:
            _check_table("read_only_tools", read_only_tools)
        overlap = set(tools) & set(read_only_tools or {})
        if overlap:
            raise SandboxError(f"Tools {sorted(overlap)} are listed both as world tools and as read-only tools; list each once.")
        if isinstance(outside_world_tools, str):
            outside_world_tools = [outside_world_tools]
        self._outside = frozenset(outside_world_tools)
        called = sorted(self._outside & (set(tools) | set(read_only_tools or {})))
        if called:
            raise SandboxError(
                f"Tools {called} are listed in outside_world_tools (never called) and among the tools the sandbox calls; list each once."
            )
        for table, functions in (("tools", tools), ("read_only_tools", read_only_tools or {})):
            for name, fn in functions.items():
                _check_callable(table, name, fn)
        self.kind = kind
        self._build = build
        self._tools = dict(tools)
        self._direct = dict(read_only_tools or {})
        # the parameter each world tool's function takes the world in (checked above: it is none the model or LangGraph
        # gives), where its signature says
        self._world_parameters = {
            name: first.name
            for name, fn in self._tools.items()
            if (target := wrapped_function(fn) if is_langchain_tool(fn) else fn) is not None
            and (first := first_parameter(target)) is not None
        }
        # world tools given as LangChain tool objects: copies whose function gets the current world first (see on_world)
        self._world_tools = {name: on_world(fn, lambda: self._world) for name, fn in self._tools.items() if is_langchain_tool(fn)}
        # parameters the model never sees: tool name -> parameter -> kind (the world tools' first parameter is the world)
        self._injected = {
            name: found
            for name, fn in self._tools.items()
            if (found := injected_parameters(wrapped_function(fn) if is_langchain_tool(fn) else fn, skip=1))  # type: ignore[arg-type]
        }
        self._injected |= {
            name: found
            for name, fn in self._direct.items()
            if (found := tool_injected_parameters(fn) if is_langchain_tool(fn) else injected_parameters(fn))
        }
        # plain functions' parameters LangChain's tool fills itself: the run's RunnableConfig, callbacks (tool objects fill their own)
        self._filled = {
            name: filled_parameters(fn, skip=skip)
            for table, skip in ((self._tools, 1), (self._direct, 0))
            for name, fn in table.items()
            if not is_langchain_tool(fn)
        }
        self._format_result = format_result
        self._is_error_result = is_error_result
        self._format_error = format_error
        self._state = state
        self._journaling = journal
        self._audited: dict[str, int] = {}  # tool -> its calls that wrote the world, checked whole (see _audit_journal)
        self._audit_tries: dict[str, int] = {}  # tool -> its calls checked
        # (journal, its position, the world's text there): the world's text at a journal state a check found, while the
        # journal is still at that position (Journal.position: entries are never reused, so it names the state)
        self._known_text: tuple[Journal, int, Any, str] | None = None
        self._journal: Journal | None = None
        self._world: Any = None
        self._ready = False
        self._closed = False
        self._loop: Any = None  # the event loop of async tools, made at the first one
        # their loop, its thread and the event that stops it, for callers inside a loop
        self._loop_thread: tuple[Any, threading.Thread, threading.Event] | None = None
        self._validate = validate_arguments
        self._schemas: dict[str, Any] = {}  # tool name -> the argument schema LangChain's @tool builds for it, or None
        self._arguments: dict[str, tuple[set[str], set[str]] | None] = {}  # see _arguments_taken
        self._parameters: dict[str, frozenset[str]] = {}  # see _parameter_names
        self._changed_warned: set[tuple[str, tuple[str, ...], tuple[str, ...]]] = set()  # see _warn_if_changed
        self._misspelt_warned: set[str] = set()  # see _warn_of_misspelt_outside_tools

    @property
    def world(self) -> Any:
        """The current world object (for tests and debugging)."""
        return self._world

    @property
    def tool_names(self) -> list[str]:
        return sorted([*self._tools, *self._direct])

    def covers(self, tool_name: str) -> bool:
        return (tool_name in self._tools or tool_name in self._direct) and self.refusal_hint(tool_name) is None

    def acts_outside_world(self, tool_name: str) -> bool:
        """Whether ``tool_name`` is one of ``outside_world_tools``: never called, the expert's recorded result standing for it."""
        return tool_name in self._outside

    def check_offered_tools(self, tools: Iterable[ToolSchema]) -> None:
        """Raise :class:`SandboxError` when a world tool's function takes first, where the world goes, a parameter that
        ``tools`` (the schemas the model was offered: a trajectory's recorded ones) list among the tool's arguments: it
        is the production tool's own function, which a call leaving that argument out (a call the model got wrong, as
        production refused it) would run with the world in it. The replay runner asks before it executes anything of a
        trajectory: this decides what the function alone cannot (a required first parameter, in a schema LangChain made
        from the function's signature)."""
        offered: list[str] = []
        for schema in tools:
            name = tool_schema_name(schema)
            if name is None:
                continue
            offered.append(name)
            function = schema.get("function", schema)
            parameters = function.get("parameters") if isinstance(function, dict) else None
            properties = parameters.get("properties") if isinstance(parameters, dict) else None
            world = self._world_parameters.get(name)
            if world is not None and isinstance(properties, dict) and world in properties:
                raise SandboxError(_misplaced_tool_message(str(name), world, where="the tool schema the model was offered lists it"))
            if isinstance(properties, dict):
                self._warn_if_changed(name, properties, parameters.get("required") if isinstance(parameters, dict) else None)
        self._warn_of_misspelt_outside_tools(offered)

    def _warn_if_changed(self, name: str, properties: dict[str, Any], required: Any) -> None:
        """Warn, once per tool and difference, where ``name``'s function here takes other arguments than the schema the
        model was offered: it requires one the schema never offered (every call the model made of it fails here), or
        the schema offers one it does not take (dropped from every call). The tool changed since the trajectory was
        recorded, and the calls proposed from the recording get errors production never gave, which datasets teach."""
        takes = self._arguments_taken(name)
        if takes is None:
            return
        accepted, needed = takes
        unasked = sorted(needed - set(properties))
        dropped = sorted(set(properties) - accepted)
        if not unasked and not dropped:
            return
        key = (name, tuple(unasked), tuple(dropped))
        if key in self._changed_warned:
            return
        self._changed_warned.add(key)
        parts = [f"requires {', '.join(unasked)}, which the recorded schema never offered" if unasked else ""]
        parts.append(f"does not take {', '.join(dropped)}, which the recorded schema offers (dropped from every call)" if dropped else "")
        _log.warning(
            "%s sandbox: tool %r here %s: the tool changed since these trajectories were recorded (recorded schema: %s; "
            "required: %s). Replayed calls of it get answers production never gave, and datasets would teach them: replay "
            "the trajectories recorded with the old tool with a sandbox of that version (ee replay run TRAJECTORY_ID... "
            "names them), or make the function take the recorded arguments.",
            self.kind,
            name,
            "; and ".join(part for part in parts if part),
            ", ".join(sorted(properties)) or "no arguments",
            ", ".join(str(r) for r in required) if isinstance(required, list) and required else "none",
        )

    def _arguments_taken(self, name: str) -> tuple[set[str], set[str]] | None:
        """The arguments the model may give tool ``name`` here, and those it must give, as its argument schema says
        (injected ones left out); ``None`` where the tool takes any (``**kwargs``, arguments not validated) or is not here."""
        if name in self._arguments:
            return self._arguments[name]
        fn = self._world_tools.get(name) or self._tools.get(
            name, self._direct.get(name)
        )  # (a world tool object: its copy without the world)
        model: Any = None
        if fn is None:
            return None
        if is_langchain_tool(fn):
            model = getattr(fn, "tool_call_schema", None)
        elif self._validate:
            model = self._schemas[name] if name in self._schemas else self._schema(name, fn, skip=1 if name in self._tools else 0)
        fields = getattr(model, "model_fields", None) if isinstance(model, type) else None
        found = None
        if isinstance(fields, dict):
            injected = self._injected.get(name, {})
            accepted = {field for field in fields if field not in injected}
            required = {field for field in accepted if fields[field].is_required()}
            if not is_langchain_tool(fn):  # parameters pydantic holds no field for (``_raw``) are passed on: taken too
                parameters = list(inspect.signature(fn).parameters.values())[1 if name in self._tools else 0 :]
                filled = self._filled[name].names
                unfielded = [p for p in parameters if p.name not in fields and p.name not in injected and p.name not in filled]
                accepted |= {p.name for p in unfielded}
                required |= {p.name for p in unfielded if p.default is inspect.Parameter.empty}
            found = (accepted, required)
        self._arguments[name] = found
        return found

    def _warn_of_misspelt_outside_tools(self, offered: list[str]) -> None:
        """Warn, once per name, of a name in ``outside_world_tools`` that no offered tool has where an offered tool the
        sandbox neither calls nor declares has one close to it (``send_emial`` for ``send_email``): the trajectories
        calling that tool are skipped, the declaration meant for it unused."""
        import difflib

        unprovided = [name for name in offered if name not in self._tools and name not in self._direct and name not in self._outside]
        for declared in sorted(self._outside - set(offered) - self._misspelt_warned):
            close = difflib.get_close_matches(declared, unprovided, n=1, cutoff=0.8)
            if close:
                self._misspelt_warned.add(declared)
                _log.warning(
                    "%s sandbox: outside_world_tools lists %r, which no recorded tool is named, and the trajectories offer %r, "
                    "which the sandbox neither calls nor declares (trajectories calling it are skipped): did you mean %r?",
                    self.kind,
                    declared,
                    close[0],
                    close[0],
                )

    def refusal_hint(self, tool_name: str) -> str | None:
        """Why a listed tool is not called (it takes the graph's state, store or runtime) and how to allow it, why a tool of
        ``outside_world_tools`` is not, or ``None``."""
        injected = self._injected.get(tool_name)
        if injected:
            return refusal_reason(tool_name, injected)
        if tool_name in self._outside:
            return f"{tool_name} is declared in outside_world_tools: it acts only outside the world, so replay never calls it"
        return None

    def reset(self, environment: dict[str, Any] | None) -> None:
        try:
            world = self._build(environment)
        except EnvironmentUnavailableError:
            raise
        except Exception as exc:  # say from what: a missing snapshot file is named by the environment, rarely by the error
            shown = quoted_environment(environment)
            raise EnvironmentUnavailableError(
                f"{self.kind} sandbox could not rebuild the world from the environment {shown}: {type(exc).__name__}: {exc}"
            ) from exc
        self._release()
        self._set_world(world)
        self._ready = True
        self._closed = False

    def execute(self, call: ToolCall) -> Observation:
        self._check_open()
        if not self._ready:
            raise SandboxError(f"{self.kind} sandbox: call reset(environment) before execute().")
        refused = self.refusal_hint(call.name)
        if refused is not None:
            return Observation(content=f"Error: replay does not call {refused}", is_error=True)
        direct = self._direct.get(call.name)
        if direct is not None and is_langchain_tool(direct):
            return self._invoke_langchain_tool(direct, call)
        arguments = self._with_injected(call)
        if direct is not None:
            return self._invoke(direct, arguments, name=call.name)
        tool = self._tools.get(call.name)
        if tool is None:
            return Observation(content=f"Error: tool '{call.name}' is not available in this sandbox.", is_error=True)
        if call.name in self._world_tools:
            world = self._world_parameters[call.name]
            if world in call.arguments:  # a second guard (see check_offered_tools): a production tool among world tools
                raise SandboxError(_misplaced_tool_message(call.name, world, where="this call gives it"))
            world_tool = self._world_tools[call.name]
            return self._checked(call.name, lambda calling: (calling(), self._invoke_langchain_tool(world_tool, call))[1])
        return self._checked(call.name, lambda calling: self._invoke(tool, arguments, self._world, name=call.name, calling=calling))

    def _checked(self, name: str, invoke: Callable[[Callable[[], None]], Observation]) -> Observation:
        """``invoke(calling)`` (a call of the world tool ``name``, which calls ``calling()`` just before the tool runs: not
        for arguments it refuses), its journal checked where the tool's calls are still checked (:meth:`_audit_journal`),
        its failure on the world ``None`` said to be the build's (:meth:`_without_a_world`)."""
        if self._world is None:
            return self._without_a_world(invoke(_nothing), name)
        journal = self._journal
        if journal is None or self._audited.get(name, 0) >= JOURNAL_AUDITED_CALLS or self._audit_tries.get(name, 0) >= JOURNAL_AUDIT_TRIES:
            return invoke(_nothing)
        noted: list[Any] = []

        def note_before() -> None:  # the world as the tool is given it
            known = self._known_text
            if known is not None and known[0] is journal and journal.at(known[1], known[2]):
                text: str | None = known[3]
            else:
                text = _world_text(self._world)
            copied = WorldSnapshot(self._world, kind=self.kind) if text is None or len(text) <= AUDIT_COPY_CHARS else None
            noted[:] = [(text, copied), len(journal.entries), journal.sealed]

        observation = invoke(note_before)
        if noted and self._journal is journal:
            before, mark, sealed = noted
            self._audit_journal(journal, before, mark, sealed, name, failed=observation.is_error)
        return observation

    def _without_a_world(self, observation: Observation, name: str) -> Observation:
        """A world tool's observation where ``build`` gave no world: a failure on ``None`` (``'NoneType' object ...``) is
        said to be the build's (a missing ``return``), not left as the tool's error on every call (every expert step a
        fidelity error); a world of ``None`` that the tools do not read (their state elsewhere) goes on as it is."""
        if not observation.is_error or "NoneType" not in observation.content:
            return observation
        built = getattr(self._build, "__qualname__", type(self._build).__name__)
        raise SandboxError(
            f"{self.kind} sandbox: tool {name!r} failed on the world None ({observation.content[:200]}): the build function "
            f"{built}() returned None. Return the world it builds (a missing `return`?)."
        )

    def _audit_journal(
        self, journal: Journal, before: tuple[str | None, WorldSnapshot | None], mark: int, sealed: int, name: str, *, failed: bool
    ) -> None:
        """Check that tool ``name``'s call just made wrote the world only where its journal saw (undoing the journal's
        entries since ``mark`` gives ``before`` back; then they are written again). A write made past the containers' own
        methods -- ``heapq`` on a list, ``list.__init__(l, ...)``, ``exec`` into a dict: C code that changes a list or
        dict in place -- is not journaled, so a restore would leave it and the next branch would see it: where the check
        finds one, the world is copied whole at each snapshot from now on (as with ``journal=False``) and a warning names
        the tool. Each tool's calls are checked until :data:`JOURNAL_AUDITED_CALLS` of them wrote the world or succeeded (a
        failed call that wrote nothing shows nothing of the tool), at most :data:`JOURNAL_AUDIT_TRIES`."""
        text, copied = before
        after = WorldSnapshot(self._world, kind=self.kind) if copied is not None else None  # the tool's world, exactly
        entries, redo = journal.entries[mark:], []
        journal.undo_to(mark, redo)
        try:
            if text is not None:  # a world its repr writes (the journal keeps every dict's order): the same text, the same data
                same = _world_text(self._world) == text
                if same:  # the next call checked from this state (the next branch from the same snapshot) need not write it
                    self._known_text = (journal, *journal.position(), text)  # (undone to mark: at it)
            else:  # as data: the same pickled bytes, else the same values (a NaN, parts that refer back to each other)
                assert copied is not None
                undone = WorldSnapshot(self._world, kind=self.kind)
                same = undone.same_bytes(copied) or _same_plain_data(undone.materialize(), copied.materialize())
        finally:
            journal.redo(redo, entries, sealed)
        self._audit_tries[name] = self._audit_tries.get(name, 0) + 1
        if same:
            if entries or not failed:  # (a failed call that wrote nothing shows nothing of the tool)
                self._audited[name] = self._audited.get(name, 0) + 1
            return
        lacking = [s for s in journal.live if s.copy is None and s.reachable(journal)]
        if (copied is None and lacking) or any(s.mark < mark for s in lacking):
            self._journaling = False  # (whole copies from the next reset on)
            raise SandboxError(
                f"{self.kind} sandbox: tool {name!r} writes the world past its dicts' and lists' own methods "
                f"({_PAST_THE_JOURNAL}), which the journal does not see, so the snapshots taken before it cannot be restored "
                "exactly and this trajectory is not replayed. Build the sandbox with PythonSandbox(..., journal=False) (this "
                "sandbox copies whole worlds from its next trajectory on)."
            )
        _log.warning(
            "%s sandbox: tool %r writes the world past its dicts' and lists' own methods (%s), which the journal does not "
            "see: the world is copied whole at each snapshot from now on, as PythonSandbox(..., journal=False) does.",
            self.kind,
            name,
            _PAST_THE_JOURNAL,
        )
        for snapshot in lacking:  # (at ``mark``: the world as it was before the call)
            snapshot.copy = copied
        current = after or WorldSnapshot(self._world, kind=self.kind)
        self._release()
        self._world, self._journaling = current.materialize(), False

    def _with_injected(self, call: ToolCall) -> dict[str, Any]:
        """The call's arguments with its id given to the parameters that take it (over any value the model wrote), as LangGraph does."""
        injected = self._injected.get(call.name)
        if not injected:
            return call.arguments
        return {**call.arguments, **{name: call.id for name, kind in injected.items() if kind == CALL_ID}}

    def _invoke(
        self, fn: Callable[..., Any], arguments: dict[str, Any], *world: Any, name: str, calling: Callable[[], None] | None = None
    ) -> Observation:
        """Call ``fn`` as LangChain's tool calls its function (``calling()`` first, once the arguments are valid)."""
        try:
            # A copy, so that the world never shares a list or dict with the caller's records.
            arguments = copy.deepcopy(arguments)
            schema = None
            if self._validate:
                schema = self._schemas[name] if name in self._schemas else self._schema(name, fn, skip=len(world))
            if schema is not None:  # as LangChain's tool gives them to its function
                parameters = self._parameter_names(name, fn, skip=len(world))
                arguments = validated_arguments(schema, name, arguments, self._injected.get(name, {}), parameters)
            filled = self._filled.get(name) or filled_parameters(fn, skip=len(world))
            if calling is not None:
                calling()
            # as LangChain's tool calls its function (LangChain's values over any the model wrote); an ``async def``
            # tool's result, not the coroutine
            value = call_function(fn, world, arguments, filled, partial(self._await, name=name), as_langchain=self._validate)
        except _TOOL_FAILURES as exc:  # a tool's failure is an observation, not a crash
            return self._failure(exc)
        return self._observation(value, is_error=False, name=name)

    def _failure(self, exc: BaseException) -> Observation:
        """The error observation of a tool's exception (one of :data:`_TOOL_FAILURES`); a ``CancelledError`` while the
        asyncio task calling the sandbox is itself being cancelled is that task's stop, never the tool's: raised again."""
        if isinstance(exc, asyncio.CancelledError) and _caller_is_cancelled():
            raise exc
        if isinstance(exc, _LoopThreadEnded):  # the sandbox's failure, not the tool's
            raise exc
        return Observation(content=self._format_error(exc), is_error=True)

    def _parameter_names(self, name: str, fn: Callable[..., Any], *, skip: int) -> frozenset[str]:
        """The names of ``fn``'s parameters after its first ``skip`` (the world), kept per tool."""
        names = self._parameters.get(name)
        if names is None:
            try:
                names = frozenset(list(inspect.signature(fn).parameters)[skip:])
            except (TypeError, ValueError):  # (a builtin without a signature: it has no schema either)
                names = frozenset()
            self._parameters[name] = names
        return names

    def _schema(self, name: str, fn: Callable[..., Any], *, skip: int) -> Any:
        self._schemas[name] = schema = argument_schema(name, fn, skip=skip)
        return schema

    def _invoke_langchain_tool(self, tool: Any, call: ToolCall) -> Observation:
        try:
            value, is_error = call_tool(tool, call.id, call.name, copy.deepcopy(call.arguments), partial(self._await, name=call.name))
        except _TOOL_FAILURES as exc:  # as _invoke: a tool's failure is an observation
            return self._failure(exc)
        return self._observation(value, is_error=is_error, name=call.name)

    def _observation(self, value: Any, *, is_error: bool, name: str) -> Observation:
        """The observation of tool ``name``'s return value (an error where ``is_error`` or ``is_error_result`` says so).
        A value the default ``format_result`` cannot write as text (a dict nested deeper than ``json.dumps`` and ``str``
        recurse, an int past Python's digit limit: LangChain's tool raises there too) is the tool's failure, an error
        observation, never a crash of the replay. An exception from the sandbox's own ``is_error_result`` or
        ``format_result`` is a bug of that function, never the tool's observation: :class:`SandboxError` naming it
        (the trajectory's replay fails, as it did before these ran inside a guard)."""
        if self._is_error_result is not None and not is_error:
            try:
                is_error = bool(self._is_error_result(value))
            except Exception as exc:  # re-raised below, naming the function
                raise self._callable_failed("is_error_result", name, value, exc) from exc
        if self._format_result is not format_result:
            try:
                return Observation(content=self._format_result(value), is_error=is_error)
            except Exception as exc:  # re-raised below, naming the function
                raise self._callable_failed("format_result", name, value, exc) from exc
        try:
            return Observation(content=format_result(value), is_error=is_error)
        except Exception as exc:  # noqa: BLE001 - json.dumps and str() both refused the value (a __str__ that raises): the
            # tool's failure, as LangGraph's ToolNode makes it an error message in production
            return Observation(content=self._format_error(exc), is_error=True)

    @staticmethod
    def _callable_failed(option: str, tool: str, value: Any, exc: Exception) -> SandboxError:
        """The error for the sandbox's own ``option`` function raising on tool ``tool``'s result ``value``."""
        return SandboxError(
            f"The sandbox's {option} raised {type(exc).__name__}: {exc} on tool {tool!r}'s result (a {type(value).__name__}); "
            f"fix {option} so that it takes every value the tool returns (a tool's failure belongs in the tool: raise "
            "there, and the sandbox stores it as an error observation)."
        )

    def _await(self, awaitable: Any, *, name: str | None = None) -> Any:
        """Run an async tool's awaitable to its end on this sandbox's own event loop, kept across calls as an app's loop
        is, so that a tool's cached client (bound to the loop it was made on) stays usable: the loop runs in this thread,
        or, when this thread already runs a loop (a notebook, an async service), in a thread of the sandbox's own that
        :meth:`close` stops.

        A ``CancelledError`` the awaitable raises (an inner task of its HTTP or database client cancelled; asyncio's, or
        ``concurrent.futures``' from a cancelled pool future's ``result()``) is raised here as it is, in either case (out of
        the loop's own thread asyncio would make the one the other: ``concurrent.futures.CancelledError`` for asyncio's,
        asyncio's for ``concurrent.futures``'). So are ``SystemExit`` and ``KeyboardInterrupt`` the awaitable raises
        (asyncio lets them out of the loop: in the sandbox's loop thread they ended the thread, and the call waited
        forever), from the awaited coroutine or from an inner task of the tool's (``asyncio.wait_for``, ``gather``: asyncio
        lets them out of the loop at once, then the awaiting code gets them; the loop goes on until it does, see
        :func:`_run_to_end`; a ``KeyboardInterrupt`` out of a loop run in the caller's thread propagates at once: it may be
        the job's stop). The task that
        runs it on the sandbox's loop is the sandbox's, named after tool ``name``: only code on that loop, the tool's, can
        cancel it. A stop of the replay job (Ctrl-C, or SIGTERM taken as one) reaches an awaiting tool as
        ``KeyboardInterrupt``, which propagates."""

        async def result() -> tuple[Any, BaseException | None]:
            task = asyncio.current_task()
            if task is not None:  # what closing the sandbox names it by, were it left running (after a stop)
                task.set_name(f"async tool {name or getattr(awaitable, '__qualname__', type(awaitable).__qualname__)}")
                _TOOL_TASKS.add(task)
            try:
                return await awaitable, None
            except _CARRIED_OUT as exc:  # carried out as it is (see above)
                return None, exc

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
            running = self._loop.create_task(awaiting_with_signal_checks(result()))
            value, carried = _run_to_end(self._loop, running, stop_on=(KeyboardInterrupt,))
        else:
            if self._loop_thread is None or not self._loop_thread[1].is_alive():
                loop, stopped = asyncio.new_event_loop(), threading.Event()
                thread = threading.Thread(target=_run_then_close, args=(loop, None, stopped), name="ee-sandbox-async", daemon=True)
                thread.start()
                self._loop_thread = (loop, thread, stopped)
            loop, thread, _ = self._loop_thread
            value, carried = _result_while_running(asyncio.run_coroutine_threadsafe(result(), loop), thread)
        if carried is not None:
            raise carried
        return value

    def snapshot(self) -> WorldSnapshot | JournalSnapshot:
        self._check_open()
        journal = self._journal
        if journal is not None:
            try:
                journal.seal()
                return JournalSnapshot(journal)
            except NotJournalable:  # a call stored something a journal cannot follow: copy whole worlds from now on
                current = WorldSnapshot(self._world, kind=self.kind)
                self._release()
                self._world, self._journal = current.materialize(), None
        return WorldSnapshot(self._world, kind=self.kind)

    def restore(self, snapshot: WorldSnapshot | JournalSnapshot) -> None:
        self._check_open()
        if isinstance(snapshot, JournalSnapshot):
            if snapshot.reachable(self._journal):
                self._undo_to(snapshot)
            else:
                copied = snapshot.copy
                if copied is None:
                    raise SandboxError(f"{self.kind} sandbox: this snapshot belongs to another sandbox; restore it there.")
                self._release()
                self._set_world(copied.materialize(), claim=True)
                if self._journal is not None:
                    snapshot.rebind(self._journal)
        else:
            world = snapshot.materialize()
            self._release()
            self._set_world(world, claim=True)
        self._ready = True

    def _set_world(self, world: Any, *, claim: bool = False) -> None:
        """Make ``world`` current, journaled when it is plain data (a fresh journal)."""
        self._journal = None
        self._world = world
        if self._journaling and type(world) in (dict, list, JDict, JList):
            journal = Journal()
            try:
                self._world = journal.world = adopt(world, journal, {}, claim=claim)
            except NotJournalable:
                return
            self._journal = journal

    def _undo_to(self, snapshot: JournalSnapshot) -> None:
        journal = self._journal
        assert journal is not None
        later = [s for s in journal.live if s.mark > snapshot.mark and s.copy is None and s.reachable(journal)]
        for other in sorted(later, key=lambda s: -s.mark):  # keep later snapshots restorable: copy them before undoing past them
            journal.undo_to(other.mark)
            other.copy = WorldSnapshot(self._world)
        journal.undo_to(snapshot.mark)

    def _release(self) -> None:
        """Before the journaled world is replaced: copy every snapshot still reachable through its journal."""
        journal = self._journal
        self._known_text = None
        if journal is None:
            return
        for other in sorted((s for s in journal.live if s.copy is None and s.reachable(journal)), key=lambda s: -s.mark):
            journal.undo_to(other.mark)
            other.copy = WorldSnapshot(self._world)
        journal.live.clear()
        journal.world = None
        self._journal = None

    def state_digest(self) -> str:
        """A digest of the world (of ``state(world)`` when given): JSON-canonical, or its pickled bytes."""
        self._check_open()
        if not self._ready:
            raise SandboxError(f"{self.kind} sandbox: call reset(environment) before state_digest().")
        view = self._state(self._world) if self._state is not None else self._world
        try:
            return digest_of(view)
        except Unencodable as exc:
            raise SandboxError(
                f"{self.kind} sandbox cannot digest its world: {exc}. Pass PythonSandbox(state=...) returning plain data."
            ) from exc

    def close(self) -> None:
        """Drop the world. Idempotent; afterwards only :meth:`reset` makes the sandbox usable again."""
        self._release()
        self._world = None
        self._ready = False
        self._closed = True
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            _close_loop(loop, None)
        running, self._loop_thread = self._loop_thread, None
        if running is not None:
            _close_loop(*running)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError(f"{self.kind} sandbox is closed; call reset(environment) to use it again.")


QUOTED_ENVIRONMENT_CHARS = 300
"""How much of the environment's JSON text a reason quotes at most (:func:`quoted_environment`)."""


def quoted_environment(environment: Any, limit: int = QUOTED_ENVIRONMENT_CHARS) -> str:
    """``environment`` as compact JSON for a reason (why a world could not be rebuilt), at most about ``limit``
    characters: cut before the string or number the limit falls in, never inside it, saying so.

    With the vault the environment is the restored, real one; the sandbox has no redactor, and the reason is redacted by
    the store's rules later (the replay runner's). A value cut in the middle is no longer one the rules take (``"(415)
    555-01``: 8 of a phone number's 10 digits were printed and stored); a value quoted whole is redacted whole."""
    text = json.dumps(environment, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text
    return text[: _whole_value_cut(text, limit)] + f"... (cut at {limit} characters, before a value, never inside one)"


def _whole_value_cut(text: str, limit: int) -> int:
    """Where to cut JSON ``text`` at ``limit`` characters or before: at ``limit``, or at the start of the string or bare
    token (a number, ``true``) that the cut would split."""
    token = -1  # where the string or bare token being read starts (-1: between tokens)
    in_string = False
    i = 0
    while i < limit:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string, token = False, -1
        elif c == '"':
            in_string, token = True, i
        elif c in " \t\n\r,:[]{}":
            token = -1
        elif token < 0:
            token = i
        i += 1
    if in_string or (token >= 0 and limit < len(text) and text[limit] not in " \t\n\r,:[]{}"):
        return token
    return limit
