"""A conformance kit for sandboxes: run it against any implementation of the sandbox protocol.

>>> from ee_middleware.records import ToolCall                               # doctest: +SKIP
>>> from ee_middleware.testing import check_sandbox                          # doctest: +SKIP
>>> check_sandbox(                                                           # doctest: +SKIP
...     make_sandbox,
...     environment={"stock": {"apple": 3}},
...     mutate=ToolCall(id="m", name="order_item", arguments={"item": "apple"}),
...     read=ToolCall(id="r", name="check_stock", arguments={"item": "apple"}),
... )

Tools differ from sandbox to sandbox, so the caller names two calls: ``mutate``, a call that
succeeds and changes the world, and ``read`` (one call or several), calls that change nothing and
whose observations show the change. The kit observes the world only through them, as replay does,
and checks what replay relies on (see :mod:`ee_middleware.replay.sandboxes.protocol`):

* ``covers``: true for the two tools once reset, false for a tool the sandbox does not have;
* ``acts_outside_world`` (optional; see :mod:`ee_middleware.replay.sandboxes.protocol`): false for every tool the kit
  knows of but those it is told the sandbox declares (``outside_world_tools``: tools that act only outside the world,
  whose expert calls replay leaves unexecuted), never true for a tool the sandbox covers; a declared tool is not
  covered and has a ``refusal_hint`` (before a reset, as ``ee replay run`` asks it, and after one). That is what keeps
  it from running: replay calls ``execute`` only for tools the sandbox covers. The kit never calls ``execute`` on a
  declared tool either (it would page someone, send an e-mail), and checks the declarations before it calls anything;
* snapshot/restore exactness: after ``restore(s)`` the reads show exactly what they showed when
  ``s`` was taken, for any snapshot, in any order, as often as asked;
* snapshots pickle (``subprocess_isolation``): under ``--isolation subprocess`` every snapshot leaves the sandbox's
  child process as a pickle, and an unpickled copy must restore the world exactly, in the same sandbox and in a second
  one from the factory after ``reset(environment)`` (as a restarted child restores it after a tool timeout, a crash or
  the memory limit): a snapshot must hold the world itself, not a key into a store of snapshots. The second sandbox is
  built once the first is closed, as a restarted child is built once the old one is gone (a factory that allows one
  open sandbox at a time, on a fixed port or behind a lock file, passes). By default it is built in this process only,
  which finds a key into the sandbox's own store but not one into a module-level or class-level store, which outlives
  the sandbox in this process; ``subprocess_isolation=True`` also builds it in a child process, a
  :class:`~ee_middleware.replay.sandboxes.isolated.SubprocessSandbox` as that isolation builds it, whose fresh
  interpreter has no such store (that costs about a second: a fresh interpreter importing the factory's module; a
  factory that does not pickle, or lives in an interactive ``__main__``, is checked in this process only). By default
  (as replay's default isolation runs the sandbox in process, where snapshots need not pickle) a sandbox failing it gets
  a :class:`SubprocessIsolationWarning`; ``subprocess_isolation=True`` makes it a failure, ``False`` skips it. A factory
  that hands back the sandbox under test fails either way: it must build a new, independent sandbox on each call;
* branch isolation: a mutating call made after a restore is gone after the next restore, and the
  same call from the same state gives the same observation;
* ``reset`` rebuilds step 0 whatever happened before, and never changes the environment it is given;
* error observations: an unknown tool and bad arguments give an ``Observation`` with
  ``is_error=True``, never an exception, and the sandbox keeps working;
* ``close``: idempotent; afterwards ``execute``, ``snapshot`` and ``restore`` raise
  :class:`~ee_middleware.errors.SandboxError`;
* ``state_digest`` (optional, checked when the sandbox has it or ``require_digest=True``): equal
  states give equal digests (in this sandbox and in a second one built the same way, once the first is closed), reading
  changes nothing, the mutating call changes it, and restore and reset bring the old one back.

A failure names the broken promise, what the read calls showed against what they should have
shown, and the usual cause: state kept outside the world (a module-level variable), a tool that
shows the clock, random numbers or fresh ids, or one that returns an object with no JSON form
(shown by its repr, with its memory address). When the reads differ after a restore because the
snapshot itself changed (a deep copy of it, taken earlier, still restores the world), it names
that instead: ``restore()`` handing the snapshot (or a shallow copy) to the world, so the next
branch writes into it, or ``snapshot()`` returning the live world (or a shallow copy), so the
world's later changes write into it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import re
import sys
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ee_middleware.errors import SandboxError, StateDigestUnavailableError
from ee_middleware.models.protocol import clip
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.fidelity import describe_mismatch
from ee_middleware.replay.sandboxes.protocol import Sandbox, acts_outside_world

UNKNOWN_TOOL = "ee_conformance_no_such_tool"
"""A tool name no sandbox has."""
UNEXPECTED_ARGUMENT = "ee_conformance_unexpected_argument"
"""An argument name no tool takes."""

OUTSIDE_STATE = (
    "If a tool keeps state outside the world (a module-level variable, a class attribute, a file, a service), "
    "no restore or reset puts it back: keep that state in the world."
)
NONDETERMINISM = (
    "A tool that shows the clock, random numbers or fresh ids (uuid) answers differently every time, and replay reports "
    "each such step as a fidelity error: take them from the world (a fixed time, a seeded random.Random built from the environment)."
)
RESTORE_MISSES = (
    "Either restore(snapshot) does not rebuild the world from the snapshot it is given (it must, from any snapshot, in "
    f"any order: not from the last one taken or restored, nor from a world it keeps aside), or: {OUTSIDE_STATE}"
)
"""The usual causes of a restore that does not give the world back, where the kit cannot tell which."""
BRANCHES_DIFFER = f"{NONDETERMINISM} Or: {OUTSIDE_STATE}"
"""The usual causes of one call answering differently from one snapshot, where the kit cannot tell which."""
RESTORE_SHARES_THE_SNAPSHOT = (
    "restore() hands the snapshot itself (or a shallow copy of it) to the world, so the next branch writes into the "
    "snapshot: a deep copy of it, taken before that branch, still restores the world, and the snapshot itself no longer "
    "does. Copy it deeply in restore() (copy.deepcopy(snapshot)), as snapshot() copies the world."
)
SNAPSHOT_SHARES_THE_WORLD = (
    "snapshot() returns the live world or a shallow copy of it, so the world's later changes write into the snapshot: a "
    "deep copy of it, taken when it was, still restores the world, and the snapshot itself no longer does. Copy the world "
    "deeply in snapshot() (copy.deepcopy), and the snapshot again in restore()."
)
LIVE_SNAPSHOT = (
    "snapshot() returned a {kind}, which can be neither deep-copied nor pickled ({error}): a live object, such as a "
    "connection or an open file. Either it is the world itself, so the world's later changes write into it, or restore() "
    "adopts it as the world, so the next branch does. Make snapshot() return the data (for sqlite3, "
    "connection.serialize()) and restore() build the world from a copy of it (deserialize() into a new connection)."
)
KEY_NOT_WORLD = (
    "The snapshot pickles, but its copy does not hold the world: it holds something that points at it (a path, an id, a "
    "connection's name, a key into the sandbox's own store of snapshots) rather than the data. Make snapshot() return the "
    "data itself."
)
_DEFAULT_REPR = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9a-fA-F]+>")
"""An object shown by Python's default repr, with its memory address."""


QUOTED_CHARS = 300
"""Observations up to this many characters are quoted whole in a failure; longer ones are shown where they part, with a
diff of the lines around it (as ``ee replay run`` shows a fidelity error): cutting both at the same length showed the
same first characters twice whenever they part further on."""


def _difference(first: str, second: str, first_name: str, second_name: str) -> str:
    """Where ``second`` parts from ``first``: the character, line and column (in ``first``), both lengths, and replay's
    short diff (:func:`~ee_middleware.replay.fidelity.describe_mismatch`, its ``recorded``/``sandbox`` headers named
    ``first_name``/``second_name``), each line indented."""
    mismatch = describe_mismatch(first, second)
    diff = mismatch["diff"].replace("--- recorded\n+++ sandbox", f"--- {first_name}\n+++ {second_name}", 1)
    return (
        f"at character {mismatch['position']} (line {mismatch['line']}, column {mismatch['column']}; {first_name} "
        f"{len(first)} characters, {second_name} {len(second)}):\n" + "\n".join(f"    {line}" for line in diff.splitlines())
    )


def _cause(texts: Iterable[str], usual: str) -> str:
    """The cause the observations of a failure point to: an object shown by its default repr, else ``usual``."""
    for text in texts:
        found = _DEFAULT_REPR.search(text)
        if found:
            return (
                f"The observation shows an object by its default repr ({found.group(0)}), whose address differs from call to "
                f"call: {found.group(1)} has no JSON form, so its text is str(value), as LangChain makes a tool's result. "
                "Make the tool return plain data (dicts, lists, strings, numbers; dict(row) for a sqlite3.Row)."
            )
    return usual


def check_sandbox(
    make_sandbox: Callable[[], Any] | str,
    *,
    environment: dict[str, Any] | None,
    mutate: ToolCall,
    read: ToolCall | Sequence[ToolCall],
    bad_calls: Sequence[ToolCall] | None = None,
    require_digest: bool = False,
    subprocess_isolation: bool | None = None,
    outside_world_tools: Iterable[str] = (),
) -> None:
    """Assert the sandbox protocol's behaviour on a sandbox from ``make_sandbox``.

    Args:
        make_sandbox: builds a new sandbox, independent of any other it built, on each call (the kit closes each, and
            builds a second one once the first is closed, as replay builds another after closing one that failed): not
            one shared instance (``functools.lru_cache``), nor sandboxes sharing what their ``close()`` closes (a client,
            a connection). Or a sandbox spec as ``ee replay run --sandbox`` takes it (``package.module:factory``,
            ``mcp:servers.json``), built as replay builds it.
        environment: an environment reference the sandbox can reset to.
        mutate: a call that succeeds from that environment and changes what ``read`` shows.
        read: one or more calls that change nothing and show the world.
        bad_calls: calls that must give error observations. Default: the ``mutate`` call with an
            argument no tool takes, which may instead be answered as ``mutate`` itself, its world changed alike (LangChain's
            tools drop an argument their function does not take, and so does a ``PythonSandbox``'s world function); then
            ``mutate`` without its arguments must be refused or answered otherwise (a sandbox that ignores arguments
            fails). Give a call with a wrong type or a missing argument to check how the sandbox refuses arguments. A call
            to an unknown tool is always checked too.
        require_digest: fail when the sandbox has no ``state_digest()`` (the eval suites need it).
        subprocess_isolation: whether it must work with ``ee replay run --isolation subprocess`` too: every snapshot
            pickles (it leaves the child process as bytes) and an unpickled copy restores the world exactly, in this
            sandbox and in a second one (see the module docstring). ``True``: a sandbox that does not is a failure, and
            the second sandbox is also built in a child process, as that isolation builds it (a factory that does not
            pickle, or that a fresh interpreter cannot import, is checked in this process only; the child imports the
            script that calls the kit, which therefore needs the ``if __name__ == "__main__":`` guard, as any script
            starting a :class:`~ee_middleware.replay.sandboxes.isolated.SubprocessSandbox` does); ``False``: not checked
            (a sandbox only ever replayed in process, whose snapshot may hold a connection or a lambda); ``None`` (default): as replay's default isolation needs
            (``[replay] isolation``, ``"none"``: in process), so a sandbox that does not gets a
            :class:`SubprocessIsolationWarning` saying why, and the check goes on.
        outside_world_tools: tools the sandbox declares to act only outside its world (``acts_outside_world``, e.g.
            ``PythonSandbox(outside_world_tools=...)``; one name or several): each must be declared, not covered and have
            a ``refusal_hint``. Replay calls only the tools a sandbox covers, so that is what keeps them from running;
            the kit never calls ``execute`` on them either. Whatever is given, no tool the kit knows of (these,
            ``mutate``'s, ``read``'s and an unknown one) may be both covered and declared (checked before the kit calls
            anything), and an unknown tool must not be declared.

    Raises :class:`AssertionError` naming the first broken promise.
    """
    if _in_a_starting_child():
        raise RuntimeError(CALLED_IN_A_STARTING_CHILD)
    reads = [read] if isinstance(read, ToolCall) else list(read)
    assert reads, "check_sandbox needs at least one read call"
    declared = sorted({outside_world_tools} if isinstance(outside_world_tools, str) else set(outside_world_tools))
    extra_argument = None
    if bad_calls is None:
        extra_argument = mutate.model_copy(update={"arguments": {**mutate.arguments, UNEXPECTED_ARGUMENT: 1}})
        bad_calls = [extra_argument]
    pristine = copy.deepcopy(environment)
    make_sandbox = _factory(make_sandbox)
    sandbox = make_sandbox()
    probe = _Probe(sandbox, environment, mutate, reads, make_sandbox)
    try:
        _check_shape(sandbox, mutate, reads)
        hints_before_reset = {name: _refusal_hint(sandbox, name) for name in declared}  # as ee replay run asks them
        sandbox.reset(environment)
        _check_outside_world(probe, declared, hints_before_reset)  # before any call: a declared tool given to call never runs
        probe.check_preconditions()
        probe.check_restore_is_exact()
        required = subprocess_isolation or (subprocess_isolation is None and _replay_isolates())
        if required:
            probe.check_snapshots_pickle()
        elif subprocess_isolation is None:
            _warn_unless_snapshots_pickle(probe, probe.check_snapshots_pickle)
        probe.check_branches_are_isolated()
        probe.check_reset_rebuilds_step_zero()
        digests = _has_digest(sandbox, environment)
        assert digests or not require_digest, (
            f"{type(sandbox).__name__} has no state_digest() (see ee_middleware.replay.sandboxes.protocol)"
        )
        digest_values = _check_state_digest(probe) if digests else None
        _check_error_observations(probe, [ToolCall(id="bad-unknown", name=UNKNOWN_TOOL, arguments={}), *bad_calls], extra_argument)
        assert environment == pristine, "the sandbox must never change the environment reference it was given"
        sandbox.close()
        # A second sandbox from the factory once this one is closed, as replay builds one after closing a sandbox that
        # failed, and as --isolation subprocess restarts its child once the old one is gone.
        if digest_values is not None:
            _check_digest_in_a_second_sandbox(probe, make_sandbox, *digest_values)
        if probe.pickled:  # the pickling check ran, and passed in this sandbox
            if required:
                probe.check_pickles_restore_in_a_second_sandbox(in_a_child=True)
            else:
                _warn_unless_snapshots_pickle(probe, probe.check_pickles_restore_in_a_second_sandbox)
        _check_close(sandbox, probe.start_snapshot, reads[0], digests)
    except (AssertionError, Warning):  # (a warning of the kit's that a caller turned into an error stays what it is)
        raise
    except Exception as exc:  # the sandbox raised where the protocol has it work (execute's failures are checked apart)
        said = _sandbox_raised(sandbox, exc)
        if said is None:
            raise
        raise AssertionError(said) from exc
    finally:
        try:
            sandbox.close()
        except Exception:  # noqa: BLE001 - already failing or already checked; only cleaning up
            pass


_WORLD_METHOD = re.compile(r"\.(snapshot|restore|reset)\(")


def _sandbox_raised(sandbox: Any, exc: Exception) -> str | None:
    """What :func:`check_sandbox` says of an exception the sandbox's ``snapshot()``, ``restore()`` or ``reset()``
    raised (the method read from the kit's line that called it): the method, the kit's check, and why replay needs it to
    work. ``None`` for any other exception (a factory's, a child process's, the kit's own), which goes on as it is."""
    here = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == __file__]
    called = _WORLD_METHOD.search(here[-1].line or "") if here else None
    if called is None:
        return None
    check = here[-1].name.lstrip("_").replace("_", " ")
    return (
        f"{type(sandbox).__name__}.{called.group(1)}() raised {type(exc).__name__}: {clip(str(exc), 2000)} (the kit's {check}). "
        "snapshot(), restore() and reset() must work on every world the sandbox's own calls make, and restore() on every "
        "snapshot it took (any number of times): replay fails each trajectory whose sandbox raises there (SandboxError)."
    )


def _factory(make_sandbox: Any) -> Callable[[], Any]:
    """``make_sandbox`` as a function that builds a fresh sandbox: a spec is built as replay builds it."""
    if isinstance(make_sandbox, str):
        from ee_middleware.replay.sandboxes.registry import sandbox_factory

        return sandbox_factory(make_sandbox)
    if not isinstance(make_sandbox, type) and isinstance(make_sandbox, Sandbox):
        raise TypeError(
            f"check_sandbox needs a function that builds a fresh sandbox (it builds more than one, and closes them), not a "
            f"{type(make_sandbox).__name__} already built: pass the factory itself, check_sandbox(make_sandbox, ...), or its "
            "spec 'package.module:factory'."
        )
    if not callable(make_sandbox):
        raise TypeError(
            "check_sandbox needs a function that builds a fresh sandbox, check_sandbox(make_sandbox, ...), or a sandbox spec "
            f"'package.module:factory'; got a {type(make_sandbox).__name__}."
        )
    return make_sandbox


class _Probe:
    """One sandbox under test, observed through its read calls."""

    def __init__(
        self,
        sandbox: Any,
        environment: dict[str, Any] | None,
        mutate: ToolCall,
        reads: list[ToolCall],
        make_sandbox: Callable[[], Any] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.environment = environment
        self.mutate = mutate
        self.reads = reads
        self.make_sandbox = make_sandbox
        self.start: tuple[str, ...] = ()
        self.changed: tuple[str, ...] = ()
        self.mutated: Observation | None = None
        self.start_snapshot: Any = None
        self.pickled: list[_Pickled] = []
        """The snapshots :meth:`check_snapshots_pickle` pickled, once it passed in this sandbox."""

    def execute(self, call: ToolCall) -> Observation:
        given = (call.id, call.name, copy.deepcopy(call.arguments))
        try:
            observation = self.sandbox.execute(call)
        except Exception as exc:
            raise AssertionError(
                f"execute({call.name}) raised {type(exc).__name__}: {exc}; a tool's failure must be an error observation"
            ) from exc
        after = (call.id, call.name, call.arguments)
        assert after == given, (
            f"execute({call.name}) changed the call it was given: {clip(repr(given), 200)} became {clip(repr(after), 200)}. The replay "
            "stores each call as it was proposed, and the same call object is the expert's next step too: execute() must "
            "leave its call as it is (copy call.arguments before changing them)"
        )
        assert isinstance(observation, Observation), f"execute({call.name}) returned {type(observation).__name__}, not an Observation"
        return observation

    def observe(self) -> tuple[str, ...]:
        """What the read calls show now (each must succeed)."""
        seen = []
        for call in self.reads:
            observation = self.execute(call)
            assert not observation.is_error, f"the read call {call.name} failed: {observation.content!r}; pick a read call that works"
            seen.append(observation.content)
        return tuple(seen)

    def expect(self, expected: tuple[str, ...], promise: str, cause: str = RESTORE_MISSES) -> None:
        """The read calls show ``expected``, or fail with ``promise``, what they showed instead, and the usual ``cause``
        (or, when the snapshot itself changed, :meth:`shared_world_cause`'s)."""
        seen = self.observe()
        if seen != expected:
            differing = [(call, got, want) for call, got, want in zip(self.reads, seen, expected, strict=True) if got != want]
            diffs = any(max(len(got), len(want)) > QUOTED_CHARS for _, got, want in differing)  # (shown in lines)
            between = "\n" if diffs else "; "
            shown = between.join(_shown(call, got, want) for call, got, want in differing)
            ended = "\n" if diffs else ". "
            shared = self.shared_world_cause()
            if shared:
                raise _SharedWorld(f"{promise}: {shown}{ended}{shared}")
            raise AssertionError(f"{promise}: {shown}{ended}{_cause([t for _, *texts in differing for t in texts], cause)}")

    def shared_world_cause(self) -> str | None:
        """Why restores fail when it is the snapshot object that changed: :data:`SNAPSHOT_SHARES_THE_WORLD` when a snapshot
        changes as the world changes after it was taken, :data:`RESTORE_SHARES_THE_SNAPSHOT` when one changes during a
        branch from it, :data:`LIVE_SNAPSHOT` when it cannot be copied (a live object: either of the two, the kit cannot
        tell which); ``None`` for any other cause.

        Asked only once a check has failed (it resets the sandbox). Each experiment starts from a reset, takes a snapshot
        (and, for the branch, restores it), deep-copies it (or copies it through a pickle), makes the mutating call, then
        restores the copy and the snapshot: the copy must show the world as it was (else something else is wrong: state
        outside the world, a clock) and the snapshot itself no longer does."""
        try:
            for restore_first, cause in ((False, SNAPSHOT_SHARES_THE_WORLD), (True, RESTORE_SHARES_THE_SNAPSHOT)):
                self.sandbox.reset(copy.deepcopy(self.environment))  # a sandbox sharing the caller's gets no more calls on it
                before = self.observe()
                snapshot = self.sandbox.snapshot()
                if restore_first:
                    self.sandbox.restore(snapshot)  # the branch's world is what restore() made of it
                try:
                    kept = _copy_of(snapshot)
                except Exception as exc:  # noqa: BLE001 - whatever copying a live object raises
                    return LIVE_SNAPSHOT.format(kind=type(snapshot).__name__, error=f"{type(exc).__name__}: {exc}")
                self.execute(self.mutate)
                self.sandbox.restore(kept)
                if self.observe() != before:
                    return None
                self.sandbox.restore(snapshot)
                if self.observe() != before:
                    return cause
        except Exception:  # noqa: BLE001 - cannot tell: the check's own usual cause stands
            return None
        return None

    def check_preconditions(self) -> None:
        self.sandbox.reset(self.environment)
        for name in sorted({self.mutate.name, *(c.name for c in self.reads)}):
            assert self.sandbox.covers(name), _not_covered(self.sandbox, name)
        self.start = self.observe()
        self.expect(
            self.start,
            "reading twice shows different worlds: the read calls must not change anything and must answer alike",
            f"Pick read calls that change nothing. {NONDETERMINISM}",
        )
        self.start_snapshot = self.sandbox.snapshot()
        self.mutated = self.execute(self.mutate)
        assert not self.mutated.is_error, f"the mutating call {self.mutate.name} failed: {self.mutated.content!r}; pick one that works"
        self.changed = self.observe()
        assert self.changed != self.start, (
            f"the mutating call {self.mutate.name} changed nothing the read calls show; pick calls that show its effect"
        )

    def check_restore_is_exact(self) -> None:
        after = self.sandbox.snapshot()
        self.sandbox.restore(self.start_snapshot)
        self.expect(self.start, "restore() must put the world back exactly as it was when the snapshot was taken")
        self.sandbox.restore(self.start_snapshot)
        self.expect(self.start, "restoring the same snapshot again must give the same world")
        self.sandbox.restore(after)
        self.expect(self.changed, "restoring a later snapshot must give the world as it was then")
        self.sandbox.restore(self.start_snapshot)
        self.expect(self.start, "snapshots must be restorable in any order")

    def check_snapshots_pickle(self) -> None:
        """An unpickled copy of a snapshot restores the world in this sandbox, as under ``--isolation subprocess`` (the
        child sends each snapshot out as a pickle, and restores from it). Keeps the pickles for
        :meth:`check_pickles_restore_in_a_second_sandbox`, run once this sandbox is closed."""
        self.pickled = []
        self.sandbox.restore(self.start_snapshot)
        self.execute(self.mutate)
        after = self.sandbox.snapshot()
        pickled = []
        for snapshot, world, when in ((self.start_snapshot, self.start, "at step 0"), (after, self.changed, "after the mutating call")):
            data = _pickled(snapshot)
            _restore_copy(self, _unpickled(data, snapshot), world, f"taken {when} (as --isolation subprocess restores it)")
            pickled.append(_Pickled(data, world, when))
        self.sandbox.restore(self.start_snapshot)
        self.pickled = pickled

    def check_pickles_restore_in_a_second_sandbox(self, in_a_child: bool = False) -> None:
        """The snapshots :meth:`check_snapshots_pickle` pickled restore the world in a second sandbox from the factory after
        ``reset(environment)``, as in a child restarted after a tool timeout, a crash or the memory limit (a snapshot that
        is a key into the sandbox's own store finds nothing there). Run once the sandbox under test is closed, as the
        restarted child is built once the old one is gone (a factory that allows one open sandbox at a time passes).

        The second sandbox is built in this process; with ``in_a_child``, in a child process too, a
        :class:`~ee_middleware.replay.sandboxes.isolated.SubprocessSandbox` as ``--isolation subprocess`` builds it, whose
        modules start afresh, so a key into a module-level or class-level store finds nothing there either."""
        assert self.make_sandbox is not None
        where = (
            "in a fresh sandbox from the factory after reset(environment) (as --isolation subprocess restores it in a child "
            "restarted after a tool timeout, a crash or the memory limit),"
        )
        with _second_sandbox(self, self.make_sandbox, "the restarted-child check", SUBPROCESS_ONLY) as fresh:
            for kept in self.pickled:
                _restore_copy(fresh, pickle.loads(kept.data), kept.world, f"taken {kept.when}, {where}")
        if in_a_child:
            _restore_in_a_child(self, self.make_sandbox)

    def check_branches_are_isolated(self) -> None:
        self.sandbox.restore(self.start_snapshot)
        again = self.execute(self.mutate)  # branch 1
        assert self.mutated is not None
        if again.content != self.mutated.content:
            first, then = self.mutated.content, again.content
            shown = (
                f"gave {first!r}, then {then!r}. "
                if max(len(first), len(then)) <= QUOTED_CHARS
                else f"gave two answers that part {_difference(first, then, 'first', 'then')}\n"
            )
            shared = self.shared_world_cause()
            raise (_SharedWorld if shared else AssertionError)(
                f"the same call from the same snapshot must give the same observation: {_call_text(self.mutate)} {shown}"
                f"{shared or _cause([first, then], BRANCHES_DIFFER)}"
            )
        self.expect(self.changed, "the same call from the same snapshot must change the world the same way", BRANCHES_DIFFER)
        self.sandbox.restore(self.start_snapshot)  # branch 2
        self.expect(self.start, "a mutating call made in one branch must not be visible after restoring for the next")
        fresh = self.sandbox.snapshot()
        self.execute(self.mutate)
        self.execute(self.mutate)
        self.sandbox.restore(fresh)
        self.expect(self.start, "a snapshot must not change when the world changes after it is taken")

    def check_reset_rebuilds_step_zero(self) -> None:
        self.sandbox.restore(self.start_snapshot)
        self.execute(self.mutate)
        self.sandbox.reset(self.environment)
        self.expect(
            self.start,
            "reset() must rebuild the world at step 0, whatever happened before",
            f"reset must build a fresh world from the environment each time (not return a shared object). {OUTSIDE_STATE}",
        )
        for name in sorted({self.mutate.name, *(c.name for c in self.reads)}):
            assert self.sandbox.covers(name), f"covers({name!r}) must be true after a reset: the sandbox executes it"


SUBPROCESS_ONLY = (
    "A sandbox only ever replayed in process (never with --isolation subprocess) may skip this check: "
    "check_sandbox(..., subprocess_isolation=False)."
)


class _InProcessToo(AssertionError):
    """A failure found by the pickling check that breaks replay in process too: never only a
    :class:`SubprocessIsolationWarning`."""


class _SharedWorld(_InProcessToo):
    """A failure whose cause is a snapshot sharing the world (:meth:`_Probe.shared_world_cause`)."""


class _NotIndependent(_InProcessToo):
    """The factory handed back the sandbox under test (replay closes a sandbox that failed and builds another)."""


class _NoSecondSandbox(AssertionError):
    """The factory could not build a second sandbox, or it could not be reset (no fault of the snapshots)."""


NOT_INDEPENDENT = (
    "make_sandbox must build a new, independent sandbox on each call: it handed back the sandbox under test, which the "
    "kit has closed (replay, too, closes a sandbox that failed and builds another). Build one per call, not one "
    "cached (functools.lru_cache) or shared instance"
)
"""Why a factory that hands back the sandbox under test fails."""


class SubprocessIsolationWarning(UserWarning):
    """:func:`check_sandbox`'s default: the sandbox works in process (replay's default isolation) but its snapshots do
    not survive ``--isolation subprocess``."""


def _replay_isolates() -> bool:
    """Whether replay runs the sandbox in a child process by default (``[replay] isolation``)."""
    from ee_middleware.replay.config import ReplayConfig

    return ReplayConfig.model_fields["isolation"].default == "subprocess"


def _warn_unless_snapshots_pickle(probe: _Probe, check: Callable[[], None]) -> None:
    """A part of the pickling check, its failure told as a :class:`SubprocessIsolationWarning` (the other checks go on).
    A failure that breaks replay in process too (:class:`_InProcessToo`) is raised."""
    try:
        check()
    except _InProcessToo:
        raise
    except AssertionError as exc:
        reason = str(exc).replace(SUBPROCESS_ONLY, "").strip()
        advice = (
            ""
            if isinstance(exc, _NoSecondSandbox)
            else " To use it there, make snapshot() return data that pickles and holds the world itself (plain data, or a "
            "database's own bytes: sqlite3's Connection.serialize(), not the connection or a key)."
        )
        warnings.warn(
            f"{type(probe.sandbox).__name__} works with replay's default isolation (in process), but not with "
            f"`ee replay run --isolation subprocess` (nor [replay] isolation = 'subprocess'): {reason}{advice} "
            "check_sandbox(..., subprocess_isolation=True) makes this a failure; subprocess_isolation=False skips the check.",
            SubprocessIsolationWarning,
            stacklevel=3,
        )
        probe.pickled = []  # one warning: the second sandbox's part is not run
        try:
            probe.sandbox.restore(probe.start_snapshot)
        except Exception:  # noqa: BLE001 - the next check restores again and names what fails (closed: none follows)
            pass


def _restore_copy(probe: _Probe, copied: Any, world: tuple[str, ...], which: str) -> None:
    """Restore ``copied``, an unpickled copy of a snapshot (``which``: when it was taken, and where and how it is
    restored), in ``probe``'s sandbox; its reads must show ``world``."""
    try:
        probe.sandbox.restore(copied)
    except Exception as exc:
        raise AssertionError(
            f"restore() of an unpickled copy of the snapshot {which} raised {type(exc).__name__}: {exc}. A snapshot must hold "
            f"the world itself, not a key that only the sandbox's own copy of it finds. {SUBPROCESS_ONLY}"
        ) from exc
    probe.expect(world, f"restoring an unpickled copy of the snapshot {which} must put the world back as it was then", KEY_NOT_WORLD)


class _Pickled(NamedTuple):
    """A snapshot as ``--isolation subprocess`` sends it out of the sandbox's child: its pickle, with the world its
    reads showed (``world``) and when it was taken (``when``)."""

    data: bytes
    world: tuple[str, ...]
    when: str


@contextlib.contextmanager
def _second_sandbox(probe: _Probe, make_sandbox: Callable[[], Any], needed_by: str, skip: str) -> Iterator[_Probe]:
    """A second sandbox from the factory, reset to ``probe``'s environment, closed on leaving (never the sandbox under
    test). Built once the sandbox under test is closed. A factory that cannot build or reset it fails with
    :class:`_NoSecondSandbox` naming the cause, what needs it (``needed_by``) and how to skip that (``skip``); one that
    hands back the sandbox under test, with :class:`_NotIndependent`."""
    try:
        other = make_sandbox()
    except Exception as exc:
        raise _NoSecondSandbox(
            f"the factory could not build a second sandbox once the first was closed ({type(exc).__name__}: {exc}): "
            f"{needed_by} needs one. {skip}"
        ) from exc
    if other is probe.sandbox:
        raise _NotIndependent(f"{NOT_INDEPENDENT} ({needed_by} needs a second sandbox).")
    try:
        try:
            other.reset(probe.environment)
        except Exception as exc:
            raise _NoSecondSandbox(
                f"a second sandbox from the factory, built once the first was closed, could not be reset to the environment "
                f"({type(exc).__name__}: {exc}): {needed_by} needs one. make_sandbox must build a new, independent sandbox on "
                "each call: sandboxes that share what close() closes (a client, a connection) do not work after one is "
                f"closed, as replay closes a sandbox that failed and builds another. {skip}"
            ) from exc
        yield _Probe(other, probe.environment, probe.mutate, probe.reads)
    finally:
        try:
            other.close()
        except Exception:  # noqa: BLE001 - close is checked on the sandbox under test
            pass


CHILD_TIMEOUT_S = 60.0
"""How long one call may take in the child process the restarted-child check builds a sandbox in."""


def _restore_in_a_child(probe: _Probe, make_sandbox: Callable[[], Any]) -> None:
    """:meth:`_Probe.check_pickles_restore_in_a_second_sandbox` in a child process: the factory builds the sandbox in a
    :class:`~ee_middleware.replay.sandboxes.isolated.SubprocessSandbox` (a fresh interpreter, as ``--isolation
    subprocess`` starts its child), which gets each snapshot as its pickle only, as a restarted child does. Left out for
    a sandbox under test that is itself a ``SubprocessSandbox`` (its second sandbox was a fresh child already) and for a
    factory a fresh interpreter cannot rebuild (:func:`_rebuilt_elsewhere`)."""
    from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox, SubprocessSnapshot

    if isinstance(probe.sandbox, SubprocessSandbox) or not _rebuilt_elsewhere(make_sandbox):
        return
    try:
        child = SubprocessSandbox(make_sandbox, timeout_s=CHILD_TIMEOUT_S, memory_mb=None)
    except Exception as exc:
        raise _NoSecondSandbox(
            f"the factory could not build a sandbox in a child process ({_first_line(exc)}): the restarted-child check needs "
            "one, as --isolation subprocess builds it there (a script that runs the kit needs the `if __name__ == "
            "'__main__':` guard: the child imports it). " + SUBPROCESS_ONLY
        ) from exc
    where = "in a sandbox from the factory built in a child process after reset(environment) (as --isolation subprocess builds it),"
    try:
        try:
            child.reset(probe.environment)
        except Exception as exc:
            raise _NoSecondSandbox(
                f"a sandbox from the factory built in a child process could not be reset to the environment "
                f"({_first_line(exc)}): the restarted-child check needs one. {SUBPROCESS_ONLY}"
            ) from exc
        in_child = _Probe(child, probe.environment, probe.mutate, probe.reads)
        for kept in probe.pickled:
            try:
                child.restore(SubprocessSnapshot("ee-conformance-kit", 0, kept.data))  # another sandbox's: restored from bytes
            except Exception as exc:
                raise AssertionError(
                    f"restore() of an unpickled copy of the snapshot taken {kept.when}, {where} raised {_first_line(exc)}. A "
                    "snapshot must hold the world itself, not a key into a store in memory (the sandbox's own, or a "
                    "module-level or class-level one): a restarted child's store is empty. " + SUBPROCESS_ONLY
                ) from exc
            in_child.expect(
                kept.world,
                f"restoring an unpickled copy of the snapshot taken {kept.when}, {where} must put the world back as it was then",
                KEY_NOT_WORLD,
            )
    finally:
        child.close()


def _first_line(exc: BaseException) -> str:
    """A :class:`SandboxError`'s first line (a child's error, without the traceback a ``SubprocessSandbox`` adds to it);
    any other exception's class and message on one line."""
    if isinstance(exc, SandboxError):
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


CALLED_IN_A_STARTING_CHILD = (
    "check_sandbox was called while a child process imports the script that started it: the child a SubprocessSandbox "
    "runs in (such as the one check_sandbox(..., subprocess_isolation=True) builds a sandbox in) imports the parent's "
    "__main__, and this script runs its checks at its top level. Put them under `if __name__ == '__main__':`, so that "
    "the child does not run them again (and fill module-level state the check needs empty)."
)


def _in_a_starting_child() -> bool:
    """Whether this process is a child :mod:`multiprocessing` is still starting (``spawn``, ``forkserver``), importing
    the parent's ``__main__``: the flag multiprocessing itself reads to refuse starting a process then."""
    import multiprocessing

    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _rebuilt_elsewhere(factory: Callable[[], Any]) -> bool:
    """Whether a fresh interpreter can rebuild ``factory`` from its pickle: it pickles (not a lambda, not a local
    function), and names no function or class of an interactive ``__main__`` (a notebook, the REPL, ``python -c``),
    which the child cannot import. Replay builds a sandbox from its spec, which the kit cannot see from such a factory."""
    main = sys.modules.get("__main__")
    interactive = not getattr(main, "__file__", None) and getattr(getattr(main, "__spec__", None), "name", None) is None
    in_main: list[Any] = []

    class _Finder(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
                in_main.append(obj)
            return NotImplemented

    try:
        _Finder(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(factory)
    except Exception:  # noqa: BLE001 - any failure to pickle: not rebuilt elsewhere
        return False
    return not (interactive and in_main)


def _copy_of(snapshot: Any) -> Any:
    """A deep copy of ``snapshot``, else one through a pickle (raises when neither can be made)."""
    try:
        return copy.deepcopy(snapshot)
    except Exception:  # noqa: BLE001 - a connection, a lock: try its pickled form
        return pickle.loads(pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL))


def _pickled(snapshot: Any) -> bytes:
    """``snapshot`` pickled, as ``--isolation subprocess`` sends it out of the sandbox's child process."""
    try:
        return pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    except SandboxError as exc:  # the snapshot explained itself (PythonSandbox's names the part of the world to blame)
        raise AssertionError(
            f"snapshot() must return data that pickles, which --isolation subprocess needs: {exc} {SUBPROCESS_ONLY}"
        ) from exc
    except Exception as exc:
        raise AssertionError(
            f"the snapshot ({type(snapshot).__name__}) cannot be pickled, which --isolation subprocess needs (the snapshot leaves "
            f"the sandbox's child process as bytes): {type(exc).__name__}: {exc}. Make snapshot() return data that pickles "
            "(plain data, or a database's own bytes: sqlite3's Connection.serialize(), not the connection). "
            f"{SUBPROCESS_ONLY}"
        ) from exc


def _unpickled(data: bytes, snapshot: Any) -> Any:
    """``data``, the pickle of ``snapshot``, unpickled."""
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise AssertionError(
            f"the snapshot ({type(snapshot).__name__}) pickles but does not unpickle, which --isolation subprocess needs: "
            f"{type(exc).__name__}: {exc}. {SUBPROCESS_ONLY}"
        ) from exc


def _not_covered(sandbox: Any, name: str) -> str:
    """Why a call the kit was given cannot be checked: the sandbox does not cover its tool (with its refusal hint, if any)."""
    hint = getattr(sandbox, "refusal_hint", None)
    why = hint(name) if callable(hint) else None
    if why:
        return f"covers({name!r}) must be true after a reset, but the sandbox refuses it: {why}"
    return (
        f"covers({name!r}) must be true after a reset: the sandbox does not execute {name}, and replay never calls a tool its "
        f"sandbox does not cover; add {name} to the sandbox (PythonSandbox's tools), or name calls to tools it has (if it "
        "has it, covers() must not keep an answer it gave before the reset)"
    )


def _shown(call: ToolCall, got: str, want: str) -> str:
    """What a read call showed against what it should have: both quoted whole when short (:data:`QUOTED_CHARS`), else
    where they part (:func:`_difference`)."""
    if max(len(got), len(want)) <= QUOTED_CHARS:
        return f"{_call_text(call)} showed {got!r}, expected {want!r}"
    return f"{_call_text(call)} differs from what it should show {_difference(want, got, 'expected', 'showed')}"


def _call_text(call: ToolCall) -> str:
    return f"{call.name}({', '.join(f'{key}={value!r}' for key, value in call.arguments.items())})"


def _check_shape(sandbox: Any, mutate: ToolCall, reads: list[ToolCall]) -> None:
    assert isinstance(sandbox, Sandbox), f"{type(sandbox).__name__} lacks sandbox methods (see ee_middleware.replay.sandboxes.protocol)"
    assert isinstance(sandbox.kind, str) and sandbox.kind, "kind must be a non-empty string (it is stored in every rollout)"
    for name in sorted({mutate.name, *(c.name for c in reads)}):
        sandbox.covers(name)  # before any reset: the answer may depend on the environment, but a cached one must not stick
    assert not sandbox.covers(UNKNOWN_TOOL), f"covers({UNKNOWN_TOOL!r}) must be false: replay would send it unknown tools"


def _refusal_hint(sandbox: Any, name: str) -> Any:
    """The sandbox's ``refusal_hint(name)``, or ``None`` when it has no such method."""
    hint = getattr(sandbox, "refusal_hint", None)
    return hint(name) if callable(hint) else None


def _check_outside_world(probe: _Probe, declared: Sequence[str], hints_before_reset: dict[str, Any]) -> None:
    """After a reset, before any call: no tool the kit knows is both covered and declared outside the world; an unknown
    tool is not declared; each ``declared`` tool is declared, not covered and explained by ``refusal_hint`` (before the
    reset too). Replay calls ``execute`` only for a covered tool, so a declared one never runs there; the kit never calls
    it either (against a sandbox that ran it, it would page someone, send an e-mail)."""
    sandbox = probe.sandbox
    known = sorted({probe.mutate.name, *(c.name for c in probe.reads), *declared, UNKNOWN_TOOL})
    for name in known:
        if acts_outside_world(sandbox, name) and sandbox.covers(name):
            raise AssertionError(
                f"covers({name!r}) and acts_outside_world({name!r}) are both true: a tool the sandbox declares to act only "
                "outside its world is one replay never calls (the expert's recorded result stands for its calls), so it must "
                "not be covered; and a tool the sandbox executes acts on its world, so it must not be declared. List each tool "
                "once: among the sandbox's tools, or in outside_world_tools"
            )
    assert not acts_outside_world(sandbox, UNKNOWN_TOOL), (
        f"acts_outside_world({UNKNOWN_TOOL!r}) must be false: declare only the tools you name (they act only outside the "
        "world). A sandbox that declares every tool it lacks makes replay leave the expert's calls of a world tool it lost "
        "unexecuted, and every later branch starts from a world without their effect; undeclared, such a trajectory is "
        "skipped, its reason naming the tool"
    )
    for name in declared:
        assert acts_outside_world(sandbox, name), (
            f"acts_outside_world({name!r}) must be true: check_sandbox(..., outside_world_tools=...) names {name} as a tool the "
            "sandbox declares to act only outside its world, but "
            + (
                "the sandbox says it does not"
                if callable(getattr(sandbox, "acts_outside_world", None))
                else "the sandbox has no acts_outside_world(tool_name) method (PythonSandbox takes outside_world_tools=[...])"
            )
        )
        for hint, when in (
            (hints_before_reset.get(name), "before a reset, as ee replay run asks it"),
            (_refusal_hint(sandbox, name), "after a reset"),
        ):
            assert isinstance(hint, str) and hint.strip(), (
                f"refusal_hint({name!r}) must say why replay never calls it ({when}), got {hint!r}: ee replay run shows it for "
                "the proposals of the tool it refused, and without it advises declaring a tool that is declared already. "
                + (
                    "Return a reason naming how the tool is declared"
                    if callable(getattr(sandbox, "refusal_hint", None))
                    else "The sandbox has none: add a refusal_hint(tool_name) method"
                )
                + " (PythonSandbox and McpSandbox say it is declared in outside_world_tools)"
            )


def _check_error_observations(probe: _Probe, bad_calls: Sequence[ToolCall], extra_argument: ToolCall | None = None) -> None:
    """Each bad call gives an error observation that says what went wrong, and leaves the world working. The default bad
    call (``extra_argument``: ``mutate`` with an argument no tool takes) may instead be answered as ``mutate`` was, its
    world changed alike: the tool dropped the argument, as LangChain's tools do."""
    probe.sandbox.restore(probe.start_snapshot)
    for call in bad_calls:
        observation = probe.execute(call)
        if call is extra_argument and not observation.is_error:
            mutated = probe.mutated.content if probe.mutated is not None else None
            assert observation.content == mutated, (
                f"a call of {call.name} with an argument it does not take ({UNEXPECTED_ARGUMENT}) must give an error "
                "observation, or be answered as the call without it (LangChain's tools drop such an argument); it answered "
                f"{clip(observation.content, 200)!r}, and without it {clip(mutated or '', 200)!r}"
            )
            probe.expect(
                probe.changed,
                f"a call of {call.name} with an argument it does not take must change the world as the call without it",
                "The tool must drop an argument it does not take (as LangChain's tools do) or refuse the call.",
            )
            probe.sandbox.restore(probe.start_snapshot)
            _check_arguments_matter(probe, mutated)
            continue
        assert observation.is_error, f"a bad call to {call.name} with {call.arguments} must give an error observation, got {observation!r}"
        assert observation.content, f"the error observation of {call.name} must say what went wrong"
    probe.sandbox.restore(probe.start_snapshot)
    probe.expect(probe.start, "after bad calls the sandbox must still work and restore exactly")


def _check_arguments_matter(probe: _Probe, mutated: str | None) -> None:
    """Where the default bad call was answered as ``mutate`` (its extra argument dropped), ``mutate`` without its
    arguments must be refused or answered otherwise: a sandbox that ignores a call's arguments would answer every
    alternative call as the expert's, and pass the bad-call check all the same."""
    if not probe.mutate.arguments:
        return
    bare = probe.mutate.model_copy(update={"id": "bad-bare", "arguments": {}})
    observation = probe.execute(bare)
    probe.sandbox.restore(probe.start_snapshot)
    assert observation.is_error or observation.content != mutated, (
        f"{bare.name} answered the call without its arguments as the call with them ({clip(mutated or '', 200)!r}) and ignored "
        "an argument it does not take: the sandbox seems to ignore the call's arguments, so it would answer every "
        "alternative call as the expert's. If the tool's arguments are all optional and these are their defaults, give "
        "check_sandbox bad_calls=[...] that it refuses (a wrong type, a missing argument)."
    )


def _has_digest(sandbox: Any, environment: dict[str, Any] | None) -> bool:
    """Whether the sandbox offers a state digest (a wrapper may have the method and still say its inner sandbox has none)."""
    if not callable(getattr(sandbox, "state_digest", None)):
        return False
    sandbox.reset(environment)
    try:
        sandbox.state_digest()
    except StateDigestUnavailableError:
        return False
    except Exception:  # noqa: BLE001 - a broken digest is reported by the checks that follow
        return True
    return True


def _digest(sandbox: Any) -> str:
    try:
        value = sandbox.state_digest()
    except Exception as exc:
        raise AssertionError(f"state_digest() raised {type(exc).__name__}: {exc}") from exc
    assert isinstance(value, str) and value, f"state_digest() must return a non-empty string, got {value!r}"
    return value


def _check_state_digest(probe: _Probe) -> tuple[str, str]:
    """The state digest in the sandbox under test; its digests at step 0 and after the mutating call."""
    sandbox = probe.sandbox
    sandbox.reset(probe.environment)
    start = _digest(sandbox)
    assert _digest(sandbox) == start, "state_digest() must be the same when asked twice"
    probe.observe()
    assert _digest(sandbox) == start, "the read calls changed the state digest: reading must not change the state"
    probe.execute(probe.mutate)
    changed = _digest(sandbox)
    assert changed != start, f"the mutating call {probe.mutate.name} did not change the state digest"
    after = sandbox.snapshot()
    sandbox.restore(probe.start_snapshot)
    assert _digest(sandbox) == start, "restore() must bring the state digest back to its value when the snapshot was taken"
    sandbox.restore(after)
    assert _digest(sandbox) == changed, "restoring a later snapshot must give its state digest"
    sandbox.reset(probe.environment)
    assert _digest(sandbox) == start, "reset() must bring the state digest of step 0 back"
    return start, changed


def _check_digest_in_a_second_sandbox(probe: _Probe, make_sandbox: Callable[[], Any], start: str, changed: str) -> None:
    """A second sandbox from the factory (built once the sandbox under test is closed) gives the same digests: ``start``
    once reset, ``changed`` after the mutating call."""
    skip = "(Two sandboxes reset to the same environment must give the same digest: the eval suites compare them.)"
    with _second_sandbox(probe, make_sandbox, "the state digest check", skip) as other:
        assert _digest(other.sandbox) == start, "two sandboxes reset to the same environment must give the same state digest"
        other.execute(probe.mutate)
        assert _digest(other.sandbox) == changed, "the same call from the same state must give the same state digest in another sandbox"


def _check_close(sandbox: Any, snapshot: Any, read: ToolCall, digests: bool = False) -> None:
    """``sandbox``, closed once already: closing it again passes, and using it raises :class:`SandboxError`."""
    try:
        sandbox.close()
    except Exception as exc:
        raise AssertionError(f"close() must be idempotent; the second close raised {type(exc).__name__}: {exc}") from exc
    uses: list[tuple[str, Callable[[], Any]]] = [
        ("execute()", lambda: sandbox.execute(read)),
        ("snapshot()", sandbox.snapshot),
        ("restore()", lambda: sandbox.restore(snapshot)),
        *([("state_digest()", sandbox.state_digest)] if digests else []),
    ]
    for what, use in uses:
        try:
            result = use()
        except SandboxError:
            continue
        except Exception as exc:
            raise AssertionError(f"{what} after close() must raise SandboxError, not {type(exc).__name__}: {exc}") from exc
        raise AssertionError(f"{what} after close() must raise SandboxError, got {result!r}")
