"""A conformance kit for experience stores: run it against any implementation.

from ee_middleware.testing import check_store
check_store(functools.partial(MyStore, tmp_path / "s"))   # or a spec: check_store("mystore:/tmp/s")

It exercises every member of :class:`~ee_middleware.store.protocol.ExperienceStore` the way capture,
``ee traces``, the replay job and dataset building use them: trajectories and approvals (with the
history, and overrides that need ``force`` and keep both decisions), id
resolution (exact ids, unique prefixes, ambiguous and unknown ones), rollouts and replay records
(idempotent by id, the latest replay record wins), compaction, ``info`` and ``close``. Then every field the product reads
(:func:`_check_every_field`): a trajectory, its rollouts and replay record with every optional field set (the thread, a
synthetic rollout and its source, a sandbox's failure, fidelity mismatches, a step's reasoning) come back whole from
``iter_trajectories()`` and ``get()``, and ``trajectories()``, ``steps()``, ``rollouts()`` and ``replays()`` give for them
what the embedded local store gives, column by column, with the types of :mod:`ee_middleware.store.tables` (checked
for every frame: a time is a datetime, not text). A store that passes it can stand in for the embedded local store
everywhere.

It also checks the metadata blobs the store keeps for redaction (the optional ``read_meta``/``write_meta`` of
:class:`~ee_middleware.store.protocol.KeepsMetadata`, or files in a local ``root`` folder): they round-trip exactly,
through another handle too, and ``exclusive=True`` writes only where nothing is yet, one winner among writers racing.
A store that keeps none passes with a :class:`~ee_middleware.store.metadata.MetadataNotKeptWarning` saying what
that loses.

Last comes the crash check (``check_store(..., crash=...)``, on by default). A child process opens the store with
``make_store`` and makes four calls: ``write()`` of a new trajectory, ``write_replay()`` of a record with its three
rollouts, ``write()`` of two larger ones, ``write_replay()`` of a record with two. A first run goes to the end and counts
the kill points on the way: right after each call that changes something outside the process (an ``open()`` for
writing, ``os.replace``/``os.rename``, ``os.remove``, ``os.mkdir``, ``os.truncate``, ``os.link``, ``sqlite3.connect``,
``socket.connect``, seen through an audit hook; a C function or method that writes, flushes or commits: ``write``,
``flush``, ``fsync``, ``commit``, ``execute``, ``send``..., seen through a profile function), and right after each
store call returns. Then one run per kill point (at most :data:`CRASH_MAX_KILLS`, spread over them; within
:data:`CRASH_BUDGET_S`), each with new ids, that sends itself SIGKILL there. After each run, a new handle in this
process must open and read the store without raising, show every trajectory whose ``write()`` returned (in that run,
every earlier one and before the check) exactly as written, keep every approval decision, and show no replay record of
the check without all of its rollouts. A failure names the promise, where the writer was killed (the call, and the
file), what a new handle showed, and the fix. The kill points are found, not timed, so a store fails or passes at the
same point on every run (unless what its writes do depends on the clock or chance).

What the crash check proves, for those calls on a handle in a fresh process: a process killed at any point where it
had changed something through Python loses nothing ``write()`` had returned for, leaves nothing unreadable, and never
makes a replay record visible before its rollouts. So it fails a store that rewrites a file in place (open for
writing, which empties it, then write), writes a replay's record before its rollouts, or holds writes in memory or in a
buffer when ``write()`` returns. What it does not prove: that what the kernel holds reaches the disk (machine crashes,
power loss: a missing ``fsync`` of a file, or of its folder after a rename, is not found, nor a write torn inside one
system call); crashes inside one native call (a C or Rust library writing a file in several steps, a database's own
commit: SQLite's journal keeps that safe), or in other threads and processes of the store's except where the calling
thread passes a kill point; other calls (``set_approval``, ``compact``, ``write_meta``), writers running at once with
the one killed, or stores on other machines (an object store's consistency). Replays that ``write_replay()`` returned
for may be lost (the protocol allows it: the next run makes them again); only their order is checked.

It needs ``fork()`` (Linux, macOS) and a factory the child process can import: a store spec, a module-level function
or class, ``functools.partial(MyStore, path)``, but not a lambda. Without them the check is skipped with a
:class:`CrashCheckWarning` saying why (``crash=True`` makes that an error; ``crash=False`` skips it quietly, for a store
that lives in one process's memory). It takes a few seconds: a fresh interpreter, then one forked writer per kill point.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import io
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ee_middleware.errors import ApprovalConflictError, TrajectoryNotFoundError
from ee_middleware.records import (
    Action,
    ApprovalEvent,
    Observation,
    ReplayRecord,
    Rollout,
    Step,
    SyntheticSource,
    ToolCall,
    Trajectory,
    utcnow,
)
from ee_middleware.store import metadata
from ee_middleware.store.approvals import decide
from ee_middleware.store.protocol import APPROVAL_COLUMNS
from ee_middleware.testing.messages import Said, broken, first_difference
from ee_middleware.testing.messages import shown as _shown

MakeStore = Callable[[], Any]

# Ids chosen for resolution: "traj-1b" is an exact id *and* a prefix of "traj-1b7"; "traj-0" is a
# unique prefix; "traj-1" and "traj-" are ambiguous.
A, B, C, D = "traj-0a", "traj-1b", "traj-1b7", "traj-2c"


_LOOKUP_SCHEMAS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up.",
            "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up (the second schema of the name).",
            "parameters": {"type": "object", "properties": {"i": {"type": "integer"}, "q": {"type": "string"}}},
        },
    },
]
"""The sample trajectory's tool schemas: ``lookup``, and the other schema it was offered with where it varies."""


def sample_trajectory(trajectory_id: str, *, steps: int = 2, app: str = "conformance", tool_variants: bool = False) -> Trajectory:
    """A small valid trajectory with tool-call steps and a final answer (with the model's reasoning before it,
    ``Action.reasoning``, and offered no tools, ``Step.tools == []``, which must round-trip too: an empty list is not
    ``None``, all of the trajectory's tools). With ``tool_variants``, its tool ``lookup`` was offered with two schemas
    (rewritten per call, schema 1.7): ``tools`` must keep both in their order, and each step its ``NAME#K`` reference."""
    start = utcnow()
    history: list[dict[str, Any]] = [{"role": "user", "content": f"task {trajectory_id} ✓ 日本"}]
    recorded = []
    for i in range(steps):
        call = ToolCall(id=f"call-{i}", name="lookup", arguments={"i": i, "q": "ü"})
        recorded.append(
            Step(
                trajectory_id=trajectory_id,
                index=i,
                decision_index=i,
                state=list(history),
                action=Action(kind="tool_call", tool_call=call),
                observation=Observation(content=f"result {i}"),
                latency_ms=1.5,
                model_latency_ms=2.0,
                tools=["lookup" if i % 2 == 0 else "lookup#1"] if tool_variants else None,
            )
        )
        history += [
            {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
            {"role": "tool", "tool_call_id": call.id, "content": f"result {i}"},
        ]
    recorded.append(
        Step(
            trajectory_id=trajectory_id,
            index=steps,
            decision_index=steps,
            state=list(history),
            action=Action(kind="answer", content="done", reasoning="Every lookup is done ✓"),
            tools=[],
        )
    )
    return Trajectory(
        id=trajectory_id,
        app=app,
        task=history[0]["content"],
        messages=[*history, {"role": "assistant", "content": "done"}],
        final_answer="done",
        started_at=start,
        ended_at=start + dt.timedelta(seconds=1),
        steps=recorded,
        tools=copy.deepcopy(_LOOKUP_SCHEMAS[: 2 if tool_variants else 1]),
        environment={"seed": 1},
    )


def sample_rollout(rollout_id: str, trajectory_id: str, step_index: int, branch_index: int, *, replay_id: str = "replay-1") -> Rollout:
    """A valid rollout: an alternative ``lookup`` call and its observation (every third one an error; at step 0 the
    sandbox's own time-out, ``Observation.sandbox_failure``, which must round-trip too)."""
    is_error = branch_index % 3 == 2
    failure = "timeout" if is_error and step_index == 0 else None
    return Rollout.model_validate(
        {
            "id": rollout_id,
            "replay_id": replay_id,
            "trajectory_id": trajectory_id,
            "step_index": step_index,
            "branch_index": branch_index,
            "action": Action(kind="tool_call", tool_call=ToolCall(id=f"alt-{branch_index}", name="lookup", arguments={"i": branch_index})),
            "proposer": {"policy": "mutate", "seed": 7, "settings": {"k": 3}},
            "observation": Observation(
                content=f"Error: no {branch_index}" if is_error else f"alt result {branch_index} ü",
                is_error=is_error,
                sandbox_failure=failure,
            ),
            "is_error": is_error,
            "sandbox": "conformance",
            "duration_ms": 0.25,
        }
    )


def sample_replay_record(
    trajectory_id: str, *, replay_id: str = "replay-1", status: str = "done", branches: int = 0, at: dt.datetime | None = None
) -> ReplayRecord:
    """A replay record for ``trajectory_id`` under ``replay_id``."""
    return ReplayRecord.model_validate(
        {
            "replay_id": replay_id,
            "trajectory_id": trajectory_id,
            "status": status,
            "reason": None if status == "done" else f"{status} on purpose",
            "policy": "mutate",
            "sandbox": "conformance",
            "k": 3,
            "seed": 7,
            "branches": branches,
            "details": {"rejected_by_reason": {"duplicate": 1}},
            "finished_at": at or utcnow(),
        }
    )


def check_store(make_store: MakeStore | str, *, crash: bool | None = None) -> None:
    """Assert the store protocol's behaviour. ``make_store`` must open the *same* store each call.

    Args:
        make_store: opens a handle on the store under test, the same store each call; or a store spec as
            ``--store`` takes it (``NAME:LOCATION``, ``package.module:factory``), opened with
            :func:`~ee_middleware.store.registry.open_store`.
        crash: whether to run the crash check last (see the module docstring). It runs the store's writes in a child
            process, which must build the store from ``make_store``, so ``make_store`` must pickle: a store spec, a
            module-level function or class, or ``functools.partial(MyStore, path)`` (not a lambda). ``None``
            (default): run it where it can run, else warn with a :class:`CrashCheckWarning` saying why; ``True``: the
            same, but a factory that does not pickle is a :class:`TypeError`, and any other reason it cannot run
            (a platform without ``fork()``, a child process that cannot import the factory) a failure
            (:class:`AssertionError`); ``False``: skip it (a store that lives in one process's memory, which no crash
            leaves anything of).

    Raises :class:`AssertionError` naming the first broken promise.
    """
    make_store = _store_factory(make_store)
    if crash:
        _crash_check_possible(make_store, required=True)
    store = make_store()
    _check_trajectories(store, make_store)
    _check_metadata(store, make_store)  # before approvals: decide() reads the store's redaction settings and salt
    _check_approvals(store)
    _check_id_resolution(store)
    _check_rollouts_and_replays(store, make_store)
    _check_compaction(store, make_store)
    _check_info_and_close(store, make_store)
    _check_every_field(make_store)
    if crash is not False:
        _check_crashes(make_store, required=bool(crash))


def _store_factory(make_store: MakeStore | str) -> MakeStore:
    """``make_store`` as a function that opens the store: a spec is opened as ``--store`` opens it."""
    if isinstance(make_store, str):
        from ee_middleware.store.registry import open_store

        return functools.partial(open_store, make_store)
    if not callable(make_store):
        raise TypeError(
            "check_store needs a function that opens the store under test (the same store each call), or a store spec "
            f"('NAME:LOCATION', 'package.module:factory'); got a {type(make_store).__name__}."
        )
    return make_store


# --- trajectories and approvals -----------------------------------------------------------------------


def _check_trajectories(store: Any, make_store: MakeStore) -> None:
    assert store.trajectories().height == 0, "a new store must be empty"
    assert store.rollouts().height == 0 and store.replays().height == 0, "a new store has no rollouts and no replay records"
    originals = [sample_trajectory(i, steps=n + 1, tool_variants=i == C) for n, i in enumerate((A, B, C))]
    written = store.write(originals)
    assert written == 3, f"write() returns how many trajectories it wrote: it returned {written!r} for 3"
    shown = store.trajectories()["id"].to_list()
    assert shown == [A, B, C], (
        f"trajectories come back in write order, on the handle that wrote them as soon as write() returns: write() returned "
        f"{written} for {[A, B, C]} but trajectories() on the same handle shows {_ids(shown)}"
    )
    shown = make_store().trajectories()["id"].to_list()
    assert shown == [A, B, C], (
        f"another handle sees a write as soon as write() returns: write() returned {written} for {[A, B, C]} but "
        f"trajectories() on a new handle shows {_ids(shown)}"
    )
    returned = store.get(C)
    assert returned == originals[2], (
        f"a trajectory must round-trip exactly: get({C!r}) differs from the trajectory written, at "
        f"{first_difference(originals[2], returned)}. Store every field as written, in order (steps by index), and build "
        "it back with the same types"
    )
    of_b = store.steps([B])
    assert of_b.height == 3, broken(
        f"steps([{B!r}])",
        _rows(of_b, "trajectory_id"),
        Said(f"the 3 steps of {B}"),
        "steps(ids) returns the steps of the given trajectories only",
        "Keep only the rows whose trajectory_id is among the ids given.",
    )
    every = store.steps()
    assert every.height == 2 + 3 + 4, broken(
        "steps()",
        _rows(every, "trajectory_id"),
        Said(f"9 rows (2, 3 and 4 steps of {A}, {B} and {C})"),
        "steps() without ids returns one row per step of every trajectory written",
        "Return each trajectory's Trajectory.steps, one row each, once per trajectory.",
    )
    again = store.write([originals[0]])
    assert again == 1, broken(
        f"write() of 1 trajectory written before ({A})",
        again,
        1,
        "write() returns how many trajectories it wrote, a repeat counted (reads drop it by id)",
        "Return the number of trajectories given and written.",
    )
    assert store.trajectories().height == 3, "writing a trajectory again must not duplicate it"
    assert store.steps().height == 9, "writing a trajectory again must not duplicate its steps"
    store.write([sample_trajectory(D, app="other-app")])
    of_app = store.trajectories(app="other-app")["id"].to_list()
    assert of_app == [D], broken(
        'trajectories(app="other-app")["id"]', of_app, [D], "trajectories(app=...) keeps that app's trajectories alone", "Filter on app."
    )
    shown = store.trajectories(app="conformance")["id"].to_list()
    assert shown == [A, B, C], broken(
        'trajectories(app="conformance")',
        shown,
        [A, B, C],
        f"trajectories(app=...) returns that app's trajectories only, oldest write first ({D} is of app 'other-app')",
        "Keep only the rows whose app is the one given.",
    )
    _expect_not_found(lambda: store.get("no-such-trajectory"), "get() of an unknown id")
    _expect_columns(store.trajectories(), "trajectories", *APPROVAL_COLUMNS)
    _expect_columns(store.steps(), "steps")


def _check_approvals(store: Any) -> None:
    store.set_approval([ApprovalEvent(trajectory_id=A, status="approved", by="alice", reason="good")])
    store.set_approval([ApprovalEvent(trajectory_id=B, status="rejected", by="bob")])
    done = f"set_approval() approved {A} and rejected {B}"
    _expect_status_filter(store, "approved", [A], done)
    _expect_status_filter(store, "rejected", [B], done)
    _expect_status_filter(store, "pending", [C, D], done)
    store.set_approval([ApprovalEvent(trajectory_id=A, status="rejected", by="carol", reason="changed my mind")])
    approval = store.get(A).approval
    assert (approval.status, approval.by, approval.reason) == ("rejected", "carol", "changed my mind"), "the latest decision wins"
    shown = [t.id for t in store.iter_trajectories(status="rejected")]
    assert shown == [A, B], broken(
        'iter_trajectories(status="rejected")',
        shown,
        [A, B],
        f"it yields the trajectories whose latest decision is 'rejected', oldest write first ({A} was approved, then "
        f"rejected by carol; {B} rejected by bob)",
        "Filter on each trajectory's current approval, the latest decision, not its first.",
    )
    store.approve([C], by="dana", reason="fine")
    store.reject([D], by="dana")
    for trajectory_id, status, how in ((C, "approved", "approve"), (D, "rejected", "reject")):
        got = store.get(trajectory_id).approval.status
        assert got == status, broken(
            f"get({trajectory_id!r}).approval.status after {how}([{trajectory_id!r}])",
            got,
            status,
            "get() returns the trajectory with its current approval, the latest decision recorded (by any handle)",
            "Read the decisions on each get(); a cache of get()'s records must not outlive a set_approval().",
        )
    store.approve([A], by="erin")
    shown = [t.id for t in store.iter_trajectories(status="approved")]
    assert shown == [A, C], broken(
        'iter_trajectories(status="approved")',
        shown,
        [A, C],
        f"approve([{A!r}]) overturns its rejection: the latest decision wins, and the trajectories come oldest write first",
        "Filter on each trajectory's latest decision.",
    )
    _expect_not_found(
        lambda: store.set_approval([ApprovalEvent(trajectory_id="nope", status="approved", by="x")]), "approving an unknown id"
    )
    _expect_not_found(
        lambda: store.set_approval(
            [ApprovalEvent(trajectory_id=B, status="approved", by="x"), ApprovalEvent(trajectory_id="nope", status="approved", by="x")]
        ),
        "a batch of decisions with an unknown id",
    )
    assert store.get(B).approval.status == "rejected", "a batch with an unknown id must record none of its decisions"
    _check_approval_history(store)


def _check_approval_history(store: Any) -> None:
    history = store.approvals([A])
    _expect_columns(history, "approvals")
    decisions = list(zip(history["trajectory_id"].to_list(), history["status"].to_list(), strict=True))
    wanted = [(A, "approved"), (A, "rejected"), (A, "approved")]
    assert decisions == wanted, broken(
        f"approvals([{A!r}]) as (trajectory_id, status)",
        decisions,
        wanted,
        f"approvals(ids) keeps every decision on those trajectories alone, oldest first ({A} was approved by alice, rejected "
        "by carol, approved by erin)",
        "Filter on trajectory_id, and keep every decision in the order of the time it was made.",
    )
    assert history["by"].to_list() == ["alice", "carol", "erin"], broken(
        f"approvals([{A!r}])['by']",
        history["by"].to_list(),
        ["alice", "carol", "erin"],
        "approvals() keeps each decision as given, with who made it, oldest first",
        "Store each ApprovalEvent's by with its decision.",
    )
    assert history["overrides_status"].to_list() == [None, None, "rejected"], (
        "approve() of a rejected trajectory records the decision it overturned (overrides_*)"
    )
    assert (history["overrides_by"][2], history["overrides_reason"][2]) == ("carol", "changed my mind"), "both decisions are kept"
    assert store.approvals().height == 3 + 1 + 1 + 1, "approvals() without ids returns every decision"
    try:
        decide(store, [B], "approved", by="mallory")
    except ApprovalConflictError:
        pass
    else:
        raise AssertionError("approving a rejected trajectory without force must raise ApprovalConflictError")
    assert store.get(B).approval.status == "rejected" and store.approvals([B]).height == 1, "a refused override records nothing"
    decide(store, ["traj-2"], "approved", by="dana", reason="on second thought", force=True)
    last = store.approvals([D]).row(-1, named=True)
    assert (last["status"], last["overrides_status"], last["overrides_by"]) == ("approved", "rejected", "dana"), (
        "a forced override is stored with both decisions"
    )
    reason = store.get(D).approval.reason
    assert reason == "on second thought", broken(
        f"get({D!r}).approval.reason after decide(..., reason='on second thought', force=True)",
        reason,
        "on second thought",
        "get()'s approval is the latest decision, with its reason (a forced override too)",
        "Give get() every field of the latest decision.",
    )
    # decisions come by the time they were made, not the order they were written (another handle's clock, a repair's
    # decision stamped at its start): two written last, made before every other decision on D, the later-made first
    now = dt.datetime.now(dt.UTC)
    store.set_approval([ApprovalEvent(trajectory_id=D, status="rejected", by="late-clock", at=now - dt.timedelta(hours=1))])
    store.set_approval([ApprovalEvent(trajectory_id=D, status="approved", by="early-clock", at=now - dt.timedelta(hours=2))])
    first_two = store.approvals([D])["by"].to_list()[:2]
    assert first_two == ["early-clock", "late-clock"], broken(
        f"approvals([{D!r}])['by'][:2]",
        first_two,
        ["early-clock", "late-clock"],
        "approvals() comes oldest decision first by the time each was made (two decisions written last, made hours before "
        "the others, early-clock's an hour before late-clock's)",
        "Sort the decisions by their time (at), not by when they were written.",
    )
    current = store.get(D).approval
    assert (current.status, current.by) == ("approved", "dana"), broken(
        f"get({D!r}).approval as (status, by)",
        (current.status, current.by),
        ("approved", "dana"),
        "the current decision is the latest made (dana's), whatever the order decisions were written in",
        "Take the decision with the latest time as the current one.",
    )


def _check_id_resolution(store: Any) -> None:
    assert _must(lambda: store.resolve_id(B), "resolve_id() of an exact id") == B, (
        "an exact id resolves to itself, even when it prefixes another id"
    )
    resolved = _must(lambda: store.resolve_id(C), "resolve_id() of an exact id")
    assert resolved == C, broken(
        f"resolve_id({C!r})",
        resolved,
        C,
        "an exact id resolves to itself",
        "Return an id that exists as it is, before looking for prefixes.",
    )
    assert _must(lambda: store.resolve_id("traj-0"), "resolve_id() of a unique prefix") == A, "a unique prefix resolves to its id"
    assert _must(lambda: store.get("traj-0"), "get() of a unique prefix").id == A, "get() accepts a unique prefix"
    for ambiguous in ("traj-1", "traj-"):
        _expect_not_found(lambda p=ambiguous: store.resolve_id(p), f"resolve_id({ambiguous!r}), a prefix of several ids")
    for unknown in ("zzz", "", "traj-0a-longer"):
        _expect_not_found(lambda u=unknown: store.resolve_id(u), f"resolve_id({unknown!r}), which matches no id")
    listed = _must(lambda: store.steps([A]), "steps() of a list of one id")["trajectory_id"].to_list()
    one = _must(lambda: store.steps(A), "steps() of one id given as a string")["trajectory_id"].to_list()
    assert one == listed and listed, broken(
        f"steps({A!r})",
        sorted(set(one)),
        [A],
        "one id given as a string is that id, as a list of it is (not a sequence of one-character ids)",
        "Read the ids with ee_middleware.store.protocol.id_list (approve, reject, approvals, steps, rollouts).",
    )


# --- rollouts and replay records ------------------------------------------------------------------------


def _check_rollouts_and_replays(store: Any, make_store: MakeStore) -> None:
    b_rollouts = [sample_rollout(f"ro-b-{s}-{k}", B, s, k) for s, k in ((1, 0), (0, 2), (0, 0), (0, 1))]
    c_rollouts = [sample_rollout(f"ro-c-0-{k}", C, 0, k) for k in range(2)]
    earlier = utcnow() - dt.timedelta(minutes=5)
    store.write_replay(sample_replay_record(C, status="failed", at=earlier))
    store.write_replay(sample_replay_record(C, branches=2), c_rollouts)
    store.write_replay(sample_replay_record(B, branches=4), b_rollouts)
    store.write_replay(sample_replay_record(A, status="skipped"))
    ordered = sorted(b_rollouts, key=lambda r: (r.step_index, r.branch_index)) + c_rollouts
    frame = store.rollouts()
    _expect_columns(frame, "rollouts")
    missing = sorted({r.id for r in ordered} - set(frame["id"].to_list()))
    assert not missing, (
        f"every rollout write_replay() was given is stored: rollouts() lacks {missing} of the {len(ordered)} written "
        "with their replay records"
    )
    assert frame["id"].to_list() == [r.id for r in ordered], (
        f"rollouts come back ordered by trajectory, step and branch: expected {[r.id for r in ordered]}, "
        f"rollouts() shows {_ids(frame['id'].to_list())}"
    )
    shown = make_store().rollouts()["id"].to_list()
    assert len(shown) == 6, (
        f"another handle sees rollouts as soon as write_replay() returns: wrote {sorted(r.id for r in ordered)}, "
        f"rollouts() on a new handle shows {_ids(shown)}"
    )
    iterated = list(store.iter_rollouts())
    assert iterated == ordered, (
        "rollouts must round-trip exactly, in the order of rollouts(): iter_rollouts() differs from the rollouts written, "
        f"at {first_difference(ordered, iterated)}"
    )
    assert store.rollouts([C])["id"].to_list() == [r.id for r in c_rollouts], "rollouts(ids) filters by trajectory"
    shown = store.rollouts([D])["id"].to_list()
    assert not shown, broken(
        f"rollouts([{D!r}])",
        shown,
        [],
        f"rollouts(ids) returns the rollouts of those trajectories only, and {D} has none",
        "Keep only the rows whose trajectory_id is among the ids given.",
    )
    shown = [r.id for r in store.iter_rollouts([B], replay_id="replay-1")]
    assert shown == [r.id for r in ordered[:4]], broken(
        f'iter_rollouts([{B!r}], replay_id="replay-1")',
        shown,
        [r.id for r in ordered[:4]],
        "iter_rollouts() yields the rollouts of those trajectories and that replay, in the order of rollouts()",
        "Pass the ids and replay_id on to rollouts() and read its rows in order.",
    )
    other = store.rollouts(replay_id="replay-2")["id"].to_list()
    assert other == [], broken(
        'rollouts(replay_id="replay-2")["id"]',
        other,
        [],
        "rollouts(replay_id=...) keeps that replay configuration's rollouts alone (none was written under replay-2)",
        "Filter on replay_id.",
    )

    replays = store.replays()
    _expect_columns(replays, "replays")
    latest = dict(zip(replays["trajectory_id"].to_list(), replays["status"].to_list(), strict=True))
    assert replays.height == 3 and latest == {A: "skipped", B: "done", C: "done"}, (
        f"replays() keeps one record per (replay_id, trajectory), the latest: got {latest}"
    )

    store.write_replay(sample_replay_record(B, branches=4), b_rollouts)  # a retried batch
    assert store.rollouts().height == 6, "writing the same rollouts again (same ids) must not duplicate them"
    assert store.replays().height == 3, "writing a replay record again must not add a row"

    other = sample_rollout("ro-b-0-0-r2", B, 0, 0, replay_id="replay-2")
    store.write_replay(sample_replay_record(B, replay_id="replay-2", branches=1), [other])
    replays = store.replays()
    kept = sorted(zip(replays["replay_id"].to_list(), replays["trajectory_id"].to_list(), strict=True))
    wanted = sorted([("replay-1", A), ("replay-1", B), ("replay-1", C), ("replay-2", B)])
    assert kept == wanted, broken(
        "replays() (as sorted (replay_id, trajectory_id) pairs)",
        kept,
        wanted,
        f"replays() keeps the latest record per (replay_id, trajectory): {B}'s record under replay-2 is one more, not a "
        "replacement of its replay-1 record",
        "Keep one record per (replay_id, trajectory_id) pair, not per trajectory.",
    )
    shown = store.replays(replay_id="replay-2")["trajectory_id"].to_list()
    assert shown == [B], broken(
        'replays(replay_id="replay-2")["trajectory_id"]',
        shown,
        [B],
        "replays(replay_id=...) returns the records of that replay only",
        "Keep only the rows whose replay_id is the one given.",
    )
    shown = store.rollouts(replay_id="replay-2")["id"].to_list()
    assert shown == [other.id], broken(
        'rollouts(replay_id="replay-2")',
        shown,
        [other.id],
        "rollouts(replay_id=...) returns the rollouts of that replay only",
        "Keep only the rows whose replay_id is the one given.",
    )
    shown = store.rollouts([B])["id"].to_list()
    wanted = [r.id for r in sorted([*b_rollouts, other], key=lambda r: (r.step_index, r.branch_index))]
    assert len(shown) == 5, broken(
        f"rollouts([{B!r}])",
        shown,
        wanted,
        f"rollouts(ids) without replay_id returns the rollouts of every replay: {B} has 4 under replay-1 and 1 under replay-2",
        "Filter by the ids given only; a rollout is one by its id, whatever its replay.",
    )
    _check_get_rollout(store, b_rollouts)


def _check_get_rollout(store: Any, b_rollouts: list[Rollout]) -> None:
    by_id = {r.id: r for r in b_rollouts}
    returned = _must(lambda: store.get_rollout("ro-b-1-0"), "get_rollout() of an id")
    assert returned == by_id["ro-b-1-0"], (
        f"get_rollout() must round-trip a rollout exactly: get_rollout('ro-b-1-0') differs from the rollout written, at "
        f"{first_difference(by_id['ro-b-1-0'], returned)}"
    )
    for given, wanted, promise in (
        ("ro-b-1", "ro-b-1-0", "get_rollout() accepts a unique prefix"),
        ("ro-b-0-0", "ro-b-0-0", "get_rollout() of an exact id gives that rollout"),
    ):
        got = _must(lambda g=given: store.get_rollout(g), f"{promise}: get_rollout({given!r})").id
        assert got == wanted, broken(
            f"get_rollout({given!r}).id", got, wanted, promise, "Match the id exactly first, then a prefix that fits one id only."
        )
    _expect_not_found(lambda: store.get_rollout("ro-b-0-"), "get_rollout() of a prefix of several ids")
    _expect_not_found(lambda: store.get_rollout("no-such-rollout"), "get_rollout() of an unknown id")


# --- metadata blobs (the redaction settings and the pseudonym salt) ------------------------------------


META, SALT = "ee-conformance.json", "ee-conformance.key"
SECOND = b"\x00\xff binary \n" * 50
"""What :func:`_check_metadata` leaves in the blob ``META`` (compaction must keep it)."""


def _check_metadata(store: Any, make_store: MakeStore) -> None:
    if not metadata.keeps_metadata(store):
        warnings.warn(
            f"{type(store).__name__} keeps no metadata blobs (it has no read_meta()/write_meta() methods and no local root "
            "folder), so it cannot keep the redaction settings (redaction.json) and the pseudonym salt (redaction.key) "
            "capture records with: recording into it with redaction rules beyond the defaults or a redact_fn is refused, "
            "pseudonyms differ in each process, and replay counts every observation capture redacted with a pseudonym as a "
            "fidelity mismatch. Add read_meta(name) -> bytes | None and write_meta(name, data, *, exclusive=False) -> bool "
            "(ee_middleware.store.protocol.KeepsMetadata).",
            metadata.MetadataNotKeptWarning,
            stacklevel=3,
        )
        return
    how = "read_meta()/write_meta()" if metadata.has_meta_methods(store) else "files in its root folder"

    def read(handle: Any, name: str) -> bytes | None:
        return _must(lambda: metadata.read_meta(handle, name), f"reading the metadata blob {name!r} ({how})")

    def write(handle: Any, name: str, data: bytes, *, exclusive: bool = False) -> bool:
        return _must(lambda: metadata.write_meta(handle, name, data, exclusive=exclusive), f"writing the metadata blob {name!r} ({how})")

    assert read(store, META) is None, f"reading a metadata blob never written must give None ({how})"
    first = b'{"format": "ee-conformance", "v": 1, "text": "\xc3\xbc"}\n'
    assert write(store, META, first) is True, "write_meta() without exclusive returns True"
    assert read(store, META) == first, f"a metadata blob must round-trip exactly ({how})"
    assert read(make_store(), META) == first, f"another handle reads a metadata blob as soon as write_meta() returns ({how})"
    write(store, META, SECOND)
    assert read(make_store(), META) == SECOND, f"writing a metadata blob again replaces it, and any bytes round-trip exactly ({how})"
    assert write(store, META, b"not this", exclusive=True) is False, (
        f"write_meta(..., exclusive=True) of a blob that exists must return False ({how})"
    )
    assert read(make_store(), META) == SECOND, f"write_meta(..., exclusive=True) must leave a blob that exists as it was ({how})"
    _check_exclusive_race(make_store, write, read)


def _check_exclusive_race(make_store: MakeStore, write: Callable[..., bool], read: Callable[[Any, str], bytes | None]) -> None:
    """Writers on their own handles creating one blob at once (processes agreeing on one salt): one wins, all read its value."""
    handles = [make_store() for _ in range(6)]
    barrier = threading.Barrier(len(handles))
    won: list[bool | BaseException] = [False] * len(handles)

    def create(n: int) -> None:
        barrier.wait()
        try:
            won[n] = write(handles[n], SALT, f"salt-{n}\n".encode(), exclusive=True)
        except BaseException as exc:  # noqa: BLE001 - reported below, naming the writer
            won[n] = exc

    threads = [threading.Thread(target=create, args=(n,)) for n in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [w for w in won if isinstance(w, BaseException)]
    if failed:
        raise AssertionError(f"{failed[0]}") from failed[0]
    winners = [n for n, w in enumerate(won) if w is True]
    assert len(winners) == 1, (
        f"of writers creating one blob at once with write_meta(..., exclusive=True), exactly one must win (return True): "
        f"{len(winners)} did, so processes starting at once would each use another pseudonym salt"
    )
    kept = read(make_store(), SALT)
    assert kept == f"salt-{winners[0]}\n".encode(), f"the blob the winning exclusive write created must be kept: got {kept!r}"
    assert {read(h, SALT) for h in handles} == {kept}, "every handle reads the winner's blob"


# --- upkeep -------------------------------------------------------------------------------------------


def _check_compaction(store: Any, make_store: MakeStore) -> None:
    before = _snapshot(store)
    store.compact()
    reopened = make_store()
    assert _snapshot(reopened) == before, "compaction must not change what is read"
    for call, read in (
        (f"get({B!r})", lambda handle: handle.get(B)),
        ("get_rollout('ro-c-0-1')", lambda handle: handle.get_rollout("ro-c-0-1")),
    ):
        got, kept = read(reopened), read(store)
        assert got == kept, broken(
            f"{call} on a new handle after compact()",
            Said(f"a record differing in {_fields_differ(got, kept)}"),
            Said(f"the record {call} gives on the handle that compacted"),
            "compaction never changes what is read",
            "Fold pending writes into the long-term form without changing any field (types, time zones, empty lists).",
        )
    store.compact()
    assert _snapshot(make_store()) == before, "compacting again must not change what is read"
    if metadata.keeps_metadata(store):
        assert metadata.read_meta(make_store(), META) == SECOND, "compaction must keep the metadata blobs"


def _check_info_and_close(store: Any, make_store: MakeStore) -> None:
    info = store.info()
    assert isinstance(info, dict) and "root" in info, broken(
        "info()", info, {"root": "..."}, "info() is a dict with at least 'root' (where the store is)", "Return a dict naming the root."
    )
    assert info.get("trajectories") == 4, f"info()['trajectories'] counts trajectories: got {info.get('trajectories')!r}"
    before = _snapshot(store)
    store.write([sample_trajectory("after-close", steps=1)])
    store.close()
    store.close()  # idempotent
    reopened = make_store()
    assert reopened.trajectories()["id"].to_list()[-1] == "after-close", "what a handle wrote before close() stays readable"
    assert _snapshot(reopened)[2:] == before[2:], "close() must not change rollouts or replay records"


def _snapshot(store: Any) -> tuple[Any, ...]:
    """Everything a caller reads, in comparable form."""
    return (
        store.trajectories().to_dicts(),
        store.steps().to_dicts(),
        store.rollouts().to_dicts(),
        sorted(store.replays().to_dicts(), key=lambda r: (r["replay_id"], r["trajectory_id"])),
        store.approvals().to_dicts(),
    )


def _rows(frame: Any, key: str) -> str:
    """A frame as a failure shows it: how many rows, and how many of each value of ``key``."""
    try:
        values = frame[key].to_list()
    except Exception:  # noqa: BLE001 - a frame without the column: its size says enough
        return Said(f"{getattr(frame, 'height', '?')} rows")
    counts = {v: values.count(v) for v in dict.fromkeys(values)}
    return Said(f"{len(values)} rows (by {key}: {_shown(counts)})")


def _fields_differ(got: Any, wanted: Any) -> str:
    """The fields of two records (pydantic models) that differ, as a failure names them."""
    names = getattr(type(wanted), "model_fields", None)
    if not names or type(got) is not type(wanted):
        return f"its type ({type(got).__name__}, not {type(wanted).__name__})"
    differ = [n for n in names if getattr(got, n, None) != getattr(wanted, n, None)]
    return ", ".join(differ)[:160] or "none of its fields"


def _expect_status_filter(store: Any, status: str, wanted: list[str], done: str) -> None:
    """``trajectories(status=status)`` shows ``wanted``; a failure tells a filter not applied from decisions not kept."""
    shown = store.trajectories(status=status)["id"].to_list()
    if shown == wanted:
        return
    try:
        table = store.trajectories()
        current = dict(zip(table["id"].to_list(), table["approval"].to_list(), strict=True))
    except Exception:  # noqa: BLE001 - only for the message
        current = None
    if current is not None and [i for i, s in current.items() if s == status] == wanted:
        fix = (
            f"trajectories() without a filter shows the decisions ({_shown(current)}), so status= is not applied: keep "
            f"only the rows whose approval is {status!r}."
        )
    else:
        fix = (
            f"trajectories() without a filter shows the approvals {_shown(current)}: set_approval() must record each "
            "decision where every handle reads it (the latest per trajectory wins)."
        )
    raise AssertionError(
        broken(
            f"trajectories(status={status!r})",
            shown,
            wanted,
            f"it returns the trajectories whose latest decision is {status!r}, oldest write first (after {done})",
            fix,
        )
    )


def _ids(ids: Sequence[str]) -> str:
    """Ids as a failure shows them: the list, or ``nothing``."""
    return repr(list(ids)) if ids else "nothing"


def _must(call: Callable[[], Any], what: str) -> Any:
    try:
        return call()
    except Exception as exc:
        raise AssertionError(f"{what} must work, but raised {type(exc).__name__}: {exc}") from exc


def _expect_not_found(call: Callable[[], Any], what: str) -> None:
    try:
        result = call()
    except TrajectoryNotFoundError:
        return
    raise AssertionError(f"{what} must raise TrajectoryNotFoundError, got {result!r}")


def _expect_columns(frame: Any, table: str, *extra: str) -> None:
    from ee_middleware.store.tables import APPROVAL_SCHEMA, REPLAY_SCHEMA, ROLLOUT_SCHEMA, STEP_SCHEMA, TRAJECTORY_SCHEMA

    schema = {
        "trajectories": TRAJECTORY_SCHEMA,
        "steps": STEP_SCHEMA,
        "rollouts": ROLLOUT_SCHEMA,
        "replays": REPLAY_SCHEMA,
        "approvals": APPROVAL_SCHEMA,
    }[table]
    missing = [c for c in [*schema, *extra] if c not in frame.columns]
    assert not missing, f"{table} frames must have the columns of ee_middleware.store.tables; missing {missing}"
    wrong = [f"{c} is {frame.schema[c]}, not {kind}" for c, kind in schema.items() if not _same_kind(frame.schema[c], kind)]
    assert not wrong, (
        f"{table} frames must have the types of ee_middleware.store.tables, which the product reads them as: {'; '.join(wrong)}. "
        "Build the frame with those types (a SQL round trip gives times back as text: parse them)."
    )


# --- crashes: the store's writes in a child process, killed at every point where they change something --------------


class CrashCheckWarning(UserWarning):
    """:func:`check_store`'s crash check did not run, or did not reach every kill point: the message says why, and how to
    make it run."""


CRASH_REPLAY_ID = "ee-conformance-crash"
"""The ``replay_id`` of the replay records and rollouts the crash check writes."""
CRASH_MAX_KILLS = 120
"""The most kill points the crash check tries; a store whose writes pass more is killed at as many spread over them."""
CRASH_BUDGET_S = 20.0
"""Kit time the crash check may take; the kill points it has not reached by then are skipped, with a
:class:`CrashCheckWarning`."""
CRASH_ROUND_TIMEOUT_S = 60
"""How long the child process may take for one round of writes before the crash check gives up on it."""
CRASH_START_TIMEOUT_S = 120
"""How long the crash check waits for its child process to start (a fresh interpreter importing the store's module)."""

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CHANGING_EVENTS = frozenset(
    {
        "os.rename",  # os.rename and os.replace
        "os.remove",  # os.remove and os.unlink
        "os.rmdir",
        "os.mkdir",
        "os.truncate",  # os.truncate and os.ftruncate
        "os.link",
        "os.symlink",
        "os.chmod",
        "os.utime",
        "shutil.copyfile",
        "shutil.copytree",
        "shutil.move",
        "shutil.rmtree",
        "sqlite3.connect",
        "socket.connect",
        "socket.sendto",
        "socket.sendmsg",
    }
)
"""Audit events (:func:`sys.addaudithook`) of calls that change something outside the process: a kill point follows each."""
_EVENT_NAMES = {"os.rename": "os.rename/os.replace", "os.remove": "os.remove/os.unlink", "os.truncate": "os.truncate/os.ftruncate"}
"""How a failure names the calls behind an audit event (several calls raise the same one)."""
_WRITING_CALLS = frozenset(
    {
        "write",
        "writelines",
        "writev",
        "pwrite",
        "pwritev",
        "flush",
        "fsync",
        "fdatasync",
        "sync",
        "sendfile",
        "copy_file_range",
        "commit",
        "execute",
        "executemany",
        "executescript",
        "send",
        "sendall",
        "sendto",
        "sendmsg",
    }
)
"""Names of C functions and methods that write (a file, a database, a socket), which raise no audit event: a kill point
follows each (on anything but an in-memory buffer or container)."""
_WRITING_PREFIXES = ("write_", "sink_", "put_", "upload")
_IN_MEMORY = (io.StringIO, io.BytesIO, str, bytes, bytearray, memoryview, list, dict, set)


@dataclass(frozen=True)
class _CrashOp:
    """One call the crash check's child process makes: ``write(trajectories)``, or ``write_replay(record, rollouts)``."""

    label: str
    trajectories: tuple[Trajectory, ...] = ()
    record: ReplayRecord | None = None
    rollouts: tuple[Rollout, ...] = ()

    def run(self, store: Any) -> None:
        if self.record is None:
            store.write(list(self.trajectories))
        else:
            store.write_replay(self.record, list(self.rollouts))


def _crash_plan(round_no: int) -> list[_CrashOp]:
    """The calls of one round: new trajectories (one, then a batch of two larger ones), each followed by its replay."""
    first = sample_trajectory(f"crash-{round_no:03d}-a")
    batch = (sample_trajectory(f"crash-{round_no:03d}-b", steps=6), sample_trajectory(f"crash-{round_no:03d}-c", steps=6))

    def replay(trajectory: Trajectory, branches: int) -> _CrashOp:
        rollouts = tuple(sample_rollout(f"{trajectory.id}-ro-{k}", trajectory.id, 0, k, replay_id=CRASH_REPLAY_ID) for k in range(branches))
        record = sample_replay_record(trajectory.id, replay_id=CRASH_REPLAY_ID, branches=branches)
        return _CrashOp(f"write_replay(the record of {trajectory.id} and its {branches} rollouts)", record=record, rollouts=rollouts)

    return [
        _CrashOp(f"write([{first.id}])", (first,)),
        replay(first, 3),
        _CrashOp(f"write([{batch[0].id}, {batch[1].id}])", batch),
        replay(batch[0], 2),
    ]


def _crash_check_possible(make_store: MakeStore, *, required: bool, stacklevel: int = 5) -> bool:
    """Whether the crash check can run with ``make_store``; if not, a warning, or (``required``) a :class:`TypeError` for a
    factory another process cannot import and an :class:`AssertionError` for a platform without ``fork()`` (no fault of
    the factory)."""
    reason = None
    if not hasattr(os, "fork"):
        if required:
            _crash_check_not_run("this platform has no fork()", required=True)
        reason = "this platform has no fork()"
    else:
        try:
            pickle.dumps(make_store)
        except Exception as exc:  # noqa: BLE001 - any failure to pickle: told below
            reason = (
                f"make_store does not pickle ({type(exc).__name__}: {exc}), so the child process the crash check writes from "
                "cannot build the store with it. Pass functools.partial(MyStore, path), a module-level function, or a store "
                "spec ('NAME:LOCATION', 'package.module:factory') instead of a lambda or a function defined inside another"
            )
    if reason is None:
        return True
    if required:
        raise TypeError(f"check_store(..., crash=True) needs a factory another process can import: {reason}.")
    _crash_check_not_run(reason, required=False, stacklevel=stacklevel)
    return False


def _crash_check_not_run(reason: str, *, required: bool, stacklevel: int = 4) -> None:
    """Why the crash check did not run: a failure (``required``), else a :class:`CrashCheckWarning` at ``stacklevel``."""
    if required:
        raise AssertionError(f"check_store's crash check could not run: {reason}.")
    warnings.warn(
        f"check_store's crash check did not run: {reason}. It checks that a writer killed mid-write loses nothing written "
        "before and never leaves a replay record without its rollouts; everything else was checked. "
        "check_store(..., crash=False) skips it without this warning.",
        CrashCheckWarning,
        stacklevel=stacklevel,
    )


class _CrashCheckStuck(Exception):
    """The crash check's child process did not answer: the check is inconclusive, not failed."""


def _check_crashes(make_store: MakeStore, *, required: bool) -> None:
    """The crash check (see the module docstring): a first round of writes runs to its end and counts the kill points;
    then one round per kill point, each killed there; after each, a new handle must read what was written before."""
    if not _crash_check_possible(make_store, required=required):
        return
    started = time.monotonic()
    try:
        child = _CrashChild(make_store)
    except _CrashCheckStuck as exc:
        _crash_check_not_run(str(exc), required=required)
        return
    except Exception as exc:  # noqa: BLE001 - inconclusive: said in a warning (or a failure when required)
        _crash_check_not_run(f"its child process could not start ({type(exc).__name__}: {exc})", required=required)
        return
    try:
        ledger = _CrashLedger.of(make_store)
        first = child.round(None, _crash_plan(0))
        ledger.verify(make_store, first)
        total = first.points
        targets = _spread(total, CRASH_MAX_KILLS)
        for round_no, kill_at in enumerate(targets, start=1):
            if time.monotonic() - started > CRASH_BUDGET_S:
                warnings.warn(
                    f"check_store's crash check killed the store's writer at {round_no - 1} of its {len(targets)} kill points in "
                    f"the {CRASH_BUDGET_S:.0f} s it may take, and skipped the rest: the store's writes are slow for it "
                    "(ee_middleware.testing.store_conformance.CRASH_BUDGET_S sets the time).",
                    CrashCheckWarning,
                    stacklevel=3,
                )
                break
            ledger.verify(make_store, child.round(kill_at, _crash_plan(round_no), total=total))
    except _CrashCheckStuck as exc:
        _crash_check_not_run(str(exc), required=required)
    finally:
        child.close()


def _spread(total: int, most: int) -> list[int]:
    """Kill points 1..``total``; at most ``most`` of them, spread evenly, the first and the last kept."""
    if total <= most:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / (most - 1)) for i in range(most)})


@dataclass
class _CrashRound:
    """What one round's child process did: the calls that returned, where it was killed (if it was), and an error."""

    plan: list[_CrashOp]
    returned: list[int]
    points: int
    killed: dict[str, Any] | None
    error: dict[str, Any] | None
    total: int | None

    @classmethod
    def of(cls, plan: list[_CrashOp], result: dict[str, Any], total: int | None) -> _CrashRound:
        messages = result["messages"]
        killed = next((m for m in messages if "killed" in m), None)
        finished = next((m["finished"] for m in messages if "finished" in m), None)
        error = next((m for m in messages if "error" in m), None)
        points = finished if finished is not None else (killed or {}).get("point", 0)
        if killed is None and finished is None and error is None:
            raise _CrashCheckStuck(
                f"its child process ended without a word ({result['how']}) while writing"
                + (", and did not finish in time" if result["hung"] else "")
            )
        return cls(plan, [m["ack"] for m in messages if "ack" in m], points, killed, error, total)

    @property
    def written(self) -> list[Trajectory]:
        """The trajectories of the ``write()`` calls that returned."""
        return [t for n in self.returned for t in self.plan[n].trajectories]

    def where(self) -> str:
        """How the child process ended, for a failure."""
        if self.killed is None:
            return "ended (os._exit(), no close()) once its last write had returned, as if killed there"
        of = f"of {self.total}" if self.total else "of its"
        at = f"(kill point {self.killed['point']} {of}, {len(self.returned)} of its {len(self.plan)} calls returned)"
        if self.killed.get("between"):
            return f"killed right after {self.killed['killed']} {at}"
        doing = "make_store()" if self.killed["op"] < 0 else self.plan[self.killed["op"]].label
        return f"killed during {doing}, right after {self.killed['killed']} {at}"


_REWRITE_ADVICE = (
    "The usual cause: rewriting a file in place (open(path, 'w') empties it before the new content is written), or keeping "
    "writes in memory or in a buffer not yet flushed when write() returns. Write the new content to a temporary file in the "
    "same folder, flush and fsync it, then os.replace() it over the old one (or only ever append), before write() returns."
)


@dataclass
class _CrashLedger:
    """What must survive a crash: every trajectory whose ``write()`` returned (and those written before the check), the
    approval decisions made before it; and which rollouts each replay record the check wrote needs."""

    durable: dict[str, None]
    approvals: int
    rollouts_of: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, make_store: MakeStore) -> _CrashLedger:
        handle = make_store()
        try:
            ids = handle.trajectories()["id"].to_list()
            return cls(dict.fromkeys(ids), handle.approvals().height, {})
        finally:
            _close_quietly(handle)

    def verify(self, make_store: MakeStore, crashed: _CrashRound) -> None:
        if crashed.error is not None:
            doing = "make_store()" if crashed.error["op"] < 0 else crashed.plan[crashed.error["op"]].label
            raise AssertionError(
                f"in the crash check's child process (a new handle from make_store() in another process, writing new "
                f"trajectories and replays), {doing} raised {crashed.error['error']}; a store must work from several processes "
                f"(a store in one process's memory cannot: check_store(..., crash=False)).\n{crashed.error['traceback']}"
            )
        written = crashed.written
        self.durable.update(dict.fromkeys(t.id for t in written))
        for op in crashed.plan:
            if op.record is not None:
                self.rollouts_of[op.record.trajectory_id] = tuple(r.id for r in op.rollouts)
        where = f"after a child process writing to the store was {crashed.where()}"
        seen = _read_after_crash(make_store, written, where)
        lost = [i for i in self.durable if i not in seen.ids]
        if lost:
            if crashed.killed is None:
                raise AssertionError(
                    f"a store must hold what write() returned for, not only after close(): write() returned in another process "
                    f"for {_ids(lost[:8])}, which then {crashed.where().replace('ended', 'ended without a crash')}, but a new "
                    f"handle here shows {_ids(seen.ids[-8:]) if seen.ids else 'nothing'}"
                    f"{' (the last 8)' if len(seen.ids) > 8 else ''}. {_REWRITE_ADVICE} (A store that lives in one process's memory "
                    "cannot pass this: check_store(..., crash=False).)"
                )
            raise AssertionError(
                f"a crash must leave everything written before it readable (write() 'durably appends'): {where}, a new handle "
                f"shows {len(seen.ids)} trajectories but not {_ids(lost[:8])}{f' and {len(lost) - 8} more' if len(lost) > 8 else ''}, "
                f"though write() had returned for them. {_REWRITE_ADVICE}"
            )
        changed = [t.id for t in written if seen.got[t.id] != t]
        assert not changed, f"{where}, get() of {_ids(changed)} does not give back what write() wrote"
        assert seen.approvals >= self.approvals, (
            f"a crash must leave everything written before it readable: {where}, approvals() shows {seen.approvals} decisions, "
            f"{self.approvals} before. {_REWRITE_ADVICE}"
        )
        for record in seen.replays:
            needed = self.rollouts_of.get(record["trajectory_id"], ())
            have = [r for r in needed if r in seen.rollouts]
            assert len(have) == len(needed), (
                f"a replay record must become visible no earlier than its rollouts (ExperienceStore.write_replay), so that a "
                f"replay resuming after a crash redoes the trajectory: {where}, replays() shows the record of "
                f"{record['trajectory_id']} (status {record['status']!r}, {record['branches']} branches) but rollouts() shows "
                f"{len(have)} of its {len(needed)} rollouts, so a resumed replay would count {record['trajectory_id']} as done "
                "and never make them. Write the rollouts first and the record last (or both in one atomic write)."
            )


@dataclass
class _Seen:
    ids: list[str]
    got: dict[str, Trajectory]
    approvals: int
    replays: list[dict[str, Any]]
    rollouts: set[str]


def _read_after_crash(make_store: MakeStore, written: list[Trajectory], where: str) -> _Seen:
    """Everything the crash check compares, read through a new handle; a call that raises is the failure."""
    doing = "make_store()"
    handle = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a store may warn about what a killed writer left; only what it reads counts
        try:
            handle = make_store()
            doing = "trajectories()"
            ids = handle.trajectories()["id"].to_list()
            doing = "get()"
            got = {t.id: handle.get(t.id) for t in written if t.id in ids}
            doing = "approvals()"
            approvals = handle.approvals().height
            doing = f"replays(replay_id={CRASH_REPLAY_ID!r})"
            replays = handle.replays(replay_id=CRASH_REPLAY_ID).to_dicts()
            doing = f"rollouts(replay_id={CRASH_REPLAY_ID!r})"
            rollouts = set(handle.rollouts(replay_id=CRASH_REPLAY_ID)["id"].to_list())
        except Exception as exc:
            raise AssertionError(
                f"a crash must leave everything written before it readable: {where}, {doing} on a new handle raised "
                f"{type(exc).__name__}: {exc}. {_REWRITE_ADVICE}"
            ) from exc
        finally:
            if handle is not None:
                _close_quietly(handle)
    return _Seen(ids, got, approvals, replays, rollouts)


def _close_quietly(handle: Any) -> None:
    try:
        handle.close()
    except Exception:  # noqa: BLE001 - only letting go of a handle the check read through
        pass


_CHILD_MAIN = (
    "import sys; sys.path[:] = sys.argv[3:]; "
    "from ee_middleware.testing.store_conformance import _crash_child_main; _crash_child_main(int(sys.argv[1]), int(sys.argv[2]))"
)


class _CrashChild:
    """The crash check's child process: a fresh interpreter (so no thread of this process is copied into it, and no
    script's top level runs again) that loads the factory once, then forks one writer per round, so that a round costs a
    fork, not an interpreter."""

    def __init__(self, make_store: MakeStore) -> None:
        from multiprocessing.connection import Connection

        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        self._send = Connection(parent_writes, readable=False)
        self._recv = Connection(parent_reads, writable=False)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(child_reads), str(child_writes), *sys.path],
                pass_fds=(child_reads, child_writes),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: close() ends it with the writer it may have forked
            )
        except BaseException:
            self._send.close()
            self._recv.close()
            raise
        finally:
            os.close(child_reads)
            os.close(child_writes)
        try:
            self._send.send_bytes(pickle.dumps(make_store))
            hello = self._answer(CRASH_START_TIMEOUT_S, "to start")
        except BaseException:
            self.close()
            raise
        if "load_error" in hello:
            self.close()
            raise _CrashCheckStuck(
                f"its child process could not load make_store: {hello['load_error']} (a class or function of a script, or of "
                "a module not on sys.path: put it in a module the child process can import)"
            )

    def round(self, kill_at: int | None, plan: list[_CrashOp], *, total: int | None = None) -> _CrashRound:
        self._send.send((kill_at, plan))
        return _CrashRound.of(plan, self._answer(CRASH_ROUND_TIMEOUT_S + 30, "to write"), total)

    def _answer(self, timeout: float, doing: str) -> dict[str, Any]:
        if not self._recv.poll(timeout):
            raise _CrashCheckStuck(f"its child process took more than {timeout:.0f} s {doing}")
        try:
            answer: dict[str, Any] = self._recv.recv()
        except (EOFError, OSError) as exc:
            code = self._process.wait(5)
            raise _CrashCheckStuck(f"its child process ended (exit code {code}) {doing}") from exc
        return answer

    def close(self) -> None:
        try:
            self._send.send(None)
        except (OSError, ValueError):
            pass
        self._send.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)
        self._recv.close()


def _crash_child_main(from_parent: int, to_parent: int) -> None:
    """The child process's main: load the factory once, then one forked writer per round asked for, until told to stop
    (``None``) or this process's parent is gone."""
    from multiprocessing.connection import Connection

    recv, send = Connection(from_parent, writable=False), Connection(to_parent, readable=False)
    try:
        make_store = pickle.loads(recv.recv_bytes())
    except BaseException as exc:  # noqa: BLE001 - told to the parent, which warns or fails
        send.send({"load_error": f"{type(exc).__name__}: {exc}"})
        return
    send.send({"ready": True})
    while True:
        try:
            command = recv.recv()
        except (EOFError, OSError):
            return
        if command is None:
            return
        kill_at, plan = command
        send.send(_crash_round(make_store, kill_at, plan))


def _crash_round(make_store: MakeStore, kill_at: int | None, plan: list[_CrashOp]) -> dict[str, Any]:
    """Fork a writer that runs ``plan`` and kills itself at kill point ``kill_at``; what it said, and how it ended."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer
        try:
            os.close(read_fd)
            signal.alarm(CRASH_ROUND_TIMEOUT_S)  # its default action ends the process: never left behind
            _crash_writer(make_store, kill_at, plan, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    data = bytearray()
    status: int | None = None
    hung = False
    deadline = time.monotonic() + CRASH_ROUND_TIMEOUT_S + 10
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], 0.2)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if chunk:
                    data += chunk
                    continue
                break  # the writer is gone
            if status is not None:
                break  # gone, and a process it started holds the pipe open
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
            elif time.monotonic() > deadline and not hung:
                hung = True
                os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_fd)
        if status is None:
            _, status = os.waitpid(pid, 0)
    how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit code {os.waitstatus_to_exitcode(status)}"
    messages = [json.loads(line) for line in bytes(data).splitlines() if line.strip()]
    return {"messages": messages, "how": how, "hung": hung}


def _crash_writer(make_store: MakeStore, kill_at: int | None, plan: list[_CrashOp], report_fd: int) -> None:
    """The forked writer: open the store, make the calls of ``plan``, report each that returned; killed at ``kill_at``."""
    points = _KillPoints(kill_at, report_fd)
    points.install()
    try:
        store = make_store()
        points.point("make_store() returned", between=True)
        for n, op in enumerate(plan):
            points.op = n
            op.run(store)
            points.send({"ack": n})
            points.point(f"{op.label} returned", between=True)
    except BaseException as exc:  # noqa: BLE001 - told to the parent, which fails naming the call
        points.send({"error": f"{type(exc).__name__}: {exc}", "op": points.op, "traceback": traceback.format_exc(limit=-6)})
        return
    points.send({"finished": points.count})


class _KillPoints:
    """Where the writer may be killed: right after each call that changes something outside the process (an audit event
    of :data:`_CHANGING_EVENTS`, an ``open`` for writing, a C call of :data:`_WRITING_CALLS`), found with an audit hook
    and a profile function, and right after each store call returns. The writer counts them; at ``kill_at`` it tells the
    parent where it is and sends itself SIGKILL."""

    def __init__(self, kill_at: int | None, report_fd: int) -> None:
        self.kill_at = kill_at
        self.report_fd = report_fd
        self.count = 0
        self.op = -1
        self.pending: str | None = None
        self.quiet = False

    def install(self) -> None:
        sys.addaudithook(self._audit)
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if self.quiet:
            return
        if event == "open":
            if len(args) > 2 and isinstance(args[2], int) and args[2] & _WRITE_FLAGS:
                self.pending = f"open({_short(args[0])}, {args[1]!r})" if args[1] else f"os.open({_short(args[0])})"
        elif event in _CHANGING_EVENTS:
            self.pending = f"{_EVENT_NAMES.get(event, event)}({', '.join(_short(a) for a in args[:2])})"

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if self.quiet:
            return
        if event in ("c_return", "c_exception") and (what := _writing_call(arg)) is not None:
            self.pending = None
            self.point(what)
        elif self.pending is not None:
            what, self.pending = self.pending, None
            self.point(what)

    def point(self, what: str, *, between: bool = False) -> None:
        self.count += 1
        if self.count == self.kill_at:
            self.send({"killed": what, "op": self.op, "point": self.count, "between": between})
            os.kill(os.getpid(), signal.SIGKILL)

    def send(self, message: dict[str, Any]) -> None:
        self.quiet = True
        try:
            os.write(self.report_fd, json.dumps(message).encode() + b"\n")
        finally:
            self.quiet = False


def _writing_call(function: Any) -> str | None:
    """``function`` (a C function or method the profile function saw return) as a kill point's name, if it writes."""
    name = getattr(function, "__name__", None)
    if not isinstance(name, str) or not (name in _WRITING_CALLS or name.startswith(_WRITING_PREFIXES)):
        return None
    owner = getattr(function, "__self__", None)
    if isinstance(owner, _IN_MEMORY):
        return None
    if owner is None or isinstance(owner, types.ModuleType):
        module = getattr(owner, "__name__", None) or getattr(function, "__module__", None) or ""
        module = "os" if module in ("posix", "nt") else module
        return f"{module}.{name}()" if module else f"{name}()"
    path = getattr(owner, "name", None)
    return f"{type(owner).__name__}.{name}()" + (f" on {_short(path)}" if isinstance(path, (str, bytes, os.PathLike)) else "")


def _short(value: Any) -> str:
    text = repr(os.fspath(value) if isinstance(value, os.PathLike) else value)
    return text if len(text) <= 160 else f"{text[:157]}..."


# --- every field, as the product reads it --------------------------------------------------------------------------


E = "conformance-every-field"
"""The trajectory of :func:`_check_every_field`: every optional field of it, its steps, rollouts and replay record set."""


def full_sample_trajectory(trajectory_id: str = E) -> Trajectory:
    """:func:`sample_trajectory` with every optional field set that the product reads: the thread, model, trace, app
    version, status and error, a step's cut observation and malformed call."""
    base = sample_trajectory(trajectory_id, steps=2, tool_variants=True)
    steps = list(base.steps)
    first = steps[0]
    steps[0] = first.model_copy(
        update={
            "observation": Observation(content="result 0 (cut)", truncated_chars=1234),
            "action": Action(
                kind="tool_call", tool_call=first.action.tool_call.model_copy(update={"malformed": False}), reasoning="I look it up"
            ),
        }
    )
    return base.model_copy(
        update={
            "thread_id": "thread-7",
            "model": "conformance-model",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "app_version": "1.2.3",
            "status": "error",
            "error": "RuntimeError: the answer could not be sent",
            "steps": steps,
        }
    )


def full_sample_rollouts(trajectory_id: str = E, replay_id: str = "replay-every-field") -> list[Rollout]:
    """Rollouts with every optional field set: a sandbox failure, an observation cut, placeholders the sandbox could not
    restore, and one an experience model predicted (``synthetic`` with its source)."""
    plain = sample_rollout(f"{trajectory_id}-r0", trajectory_id, 0, 0, replay_id=replay_id)
    plain = plain.model_copy(update={"proposer": plain.proposer.model_copy(update={"model": "openai:http://vllm:8000/v1#policy"})})
    failed = sample_rollout(f"{trajectory_id}-r2", trajectory_id, 0, 2, replay_id=replay_id)  # the sandbox's time-out
    cut = plain.model_copy(
        update={
            "id": f"{trajectory_id}-r1",
            "branch_index": 1,
            "observation": Observation(content="alt result (cut)", truncated_chars=99),
            "unrestored": ["[REDACTED:email:0a1b2c3d]"],
        }
    )
    synthetic = plain.model_copy(
        update={
            "id": f"{trajectory_id}-r3",
            "branch_index": 3,
            "synthetic": True,
            "synthetic_source": SyntheticSource(
                model="openai:http://em:8000/v1#em", retrieved=["step:t:0"], reasoning="like t", reward=1.0
            ),
        }
    )
    return [plain, cut, failed, synthetic]


def full_sample_replay_record(trajectory_id: str = E, replay_id: str = "replay-every-field") -> ReplayRecord:
    """A replay record with every count set (fidelity mismatches, unrestorable steps, errors, states)."""
    return sample_replay_record(trajectory_id, replay_id=replay_id, branches=4).model_copy(
        update={
            "states": 2,
            "errors": 1,
            "rejected": 2,
            "refused": 1,
            "fidelity_mismatches": 1,
            "unrestorable": 1,
            "duration_s": 0.5,
            "reason": "1 step's world differed from the recorded one",
        }
    )


def _check_every_field(make_store: MakeStore) -> None:
    """What datasets, replay and ``ee traces`` read, field by field: ``iter_trajectories()`` and ``get()`` give the
    trajectory as written, and ``trajectories()``, ``steps()``, ``rollouts()`` and ``replays()`` give for it what the
    embedded local store gives, column by column, with the same kinds of types (a time is a datetime, not text). A store
    that drops a field the kit's other checks never set (``synthetic``, ``fidelity_mismatches``, a step's reasoning in
    ``steps()``) passed them, and datasets then trained on model-written observations or on a sandbox's failures."""
    import tempfile
    from pathlib import Path

    import polars as pl

    from ee_middleware.store.local import LocalExperienceStore

    trajectory, rollouts, record = full_sample_trajectory(), full_sample_rollouts(), full_sample_replay_record()
    store = make_store()
    try:
        store.write([trajectory])
        store.write_replay(record, rollouts)
        for how, read in (
            ("iter_trajectories()", lambda: [t for t in store.iter_trajectories() if t.id == E]),
            (f"get({E!r})", lambda: [store.get(E)]),
        ):
            got = read()
            assert got == [trajectory], broken(
                how,
                Said(f"a trajectory differing at {first_difference(trajectory, got[0])}")
                if len(got) == 1
                else Said(f"{len(got)} trajectories"),
                Said("the trajectory written, every field as written"),
                "every field round-trips (the thread groups a held-out split; the error and status say how the run ended)",
                "Store every field of Trajectory, Step, Action and Observation as written.",
            )
        with tempfile.TemporaryDirectory(prefix="ee-conformance-") as folder:
            reference = LocalExperienceStore(Path(folder) / "reference")
            try:
                reference.write([trajectory])
                reference.write_replay(record, rollouts)
                for table, read in (
                    ("trajectories()", lambda s: s.trajectories().filter(pl.col("id") == E)),
                    (f"steps([{E!r}])", lambda s: s.steps([E])),
                    ("rollouts()", lambda s: s.rollouts().filter(pl.col("trajectory_id") == E)),
                    ("replays()", lambda s: s.replays().filter(pl.col("trajectory_id") == E)),
                ):
                    _expect_same_frame(read(store), read(reference), table)
            finally:
                reference.close()
    finally:
        store.close()


_JSON_COLUMNS = ("state_json", "arguments_json")
"""Text columns of JSON besides those named ``*_json``: compared by what they decode to (a store may write JSON its way)."""


def _expect_same_frame(got: Any, wanted: Any, table: str) -> None:
    """``got`` (the store's frame) holds every column of ``wanted`` (the local store's, for the same records), with the
    same kind of type and the same values, row by row in ``wanted``'s key order."""
    import polars as pl

    from ee_middleware.store.tables import as_utc

    missing = [c for c in wanted.columns if c not in got.columns]
    assert not missing, f"{table} has no column {', '.join(missing)}: the product reads them (see ee_middleware.store.tables)"
    assert got.height == wanted.height, f"{table} gives {got.height} rows for the records of {E!r}, not {wanted.height}"
    key = [c for c in ("id", "index", "replay_id") if c in wanted.columns][:2]
    got, wanted = got.sort(key), wanted.sort(key)
    for column in wanted.columns:
        kind, expected = got.schema[column], wanted.schema[column]
        assert _same_kind(kind, expected), (
            f"{table} column {column!r} is {kind}, not {expected}: the product reads it as {expected} (ee_middleware.store.tables); "
            "build the frame with those types (a SQL round trip gives times back as text: parse them)"
        )
        mine, theirs = got[column].to_list(), wanted[column].to_list()
        if column.endswith("_json") or column in _JSON_COLUMNS:
            mine, theirs = [_decoded(v) for v in mine], [_decoded(v) for v in theirs]
        elif isinstance(expected, pl.Datetime):
            mine, theirs = [as_utc(v) for v in mine], [as_utc(v) for v in theirs]
        assert mine == theirs, broken(
            f"{table} column {column!r}",
            _shown(mine)[:300],
            _shown(theirs)[:300],
            "every column holds what was written (datasets and replay read these frames, not get())",
            "Store the field and give it back in the frame as written.",
        )


def _same_kind(kind: Any, expected: Any) -> bool:
    """Whether a column's type reads as ``expected``'s: the same type, a time in any zone (or none), any integer width; a
    column every value of which is null may have no type (``pl.DataFrame(rows)`` gives it ``Null``: it reads as empty)."""
    import polars as pl

    if kind == pl.Null:
        return True
    if isinstance(expected, pl.Datetime):
        return isinstance(kind, pl.Datetime)
    if expected.is_integer():
        return kind.is_integer()
    if expected.is_float():
        return kind.is_float() or kind.is_integer()
    return kind == expected or (kind == pl.Null)


def _decoded(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value
