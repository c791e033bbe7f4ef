"""A conformance kit for experience stores: run it against any implementation.

from ee_middleware.testing import check_store
check_store(lambda: MyStore(tmp_path / "s"))

It exercises every member of :class:`~ee_middleware.store.protocol.ExperienceStore` the way capture,
``ee traces``, the replay job and dataset building use them: trajectories and approvals (with the
history, and overrides that need ``force`` and keep both decisions), id
resolution (exact ids, unique prefixes, ambiguous and unknown ones), rollouts and replay records
(idempotent by id, the latest replay record wins), compaction, ``info`` and ``close``. A store that
passes it can stand in for the embedded local store everywhere.

It also checks the metadata blobs the store keeps for redaction (the optional ``read_meta``/``write_meta`` of
:class:`~ee_middleware.store.protocol.KeepsMetadata`, or files in a local ``root`` folder): they round-trip exactly,
through another handle too, and ``exclusive=True`` writes only where nothing is yet, one winner among writers racing.
A store that keeps none passes with a :class:`~ee_middleware.store.metadata.MetadataNotKeptWarning` saying what
that loses.
"""

from __future__ import annotations

import datetime as dt
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ee_middleware.errors import ApprovalConflictError, TrajectoryNotFoundError
from ee_middleware.records import Action, ApprovalEvent, Observation, ReplayRecord, Rollout, Step, ToolCall, Trajectory, utcnow
from ee_middleware.store import metadata
from ee_middleware.store.approvals import decide

MakeStore = Callable[[], Any]

# Ids chosen for resolution: "traj-1b" is an exact id *and* a prefix of "traj-1b7"; "traj-0" is a
# unique prefix; "traj-1" and "traj-" are ambiguous.
A, B, C, D = "traj-0a", "traj-1b", "traj-1b7", "traj-2c"


def sample_trajectory(trajectory_id: str, *, steps: int = 2, app: str = "conformance") -> Trajectory:
    """A small valid trajectory with tool-call steps and a final answer (with the model's reasoning before it,
    ``Action.reasoning``, and offered no tools, ``Step.tools == []``, which must round-trip too: an empty list is not
    ``None``, all of the trajectory's tools)."""
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
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look up.",
                    "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}},
                },
            }
        ],
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


def check_store(make_store: MakeStore) -> None:
    """Assert the store protocol's behaviour. ``make_store`` must open the *same* store each call.

    Raises :class:`AssertionError` naming the first broken promise.
    """
    store = make_store()
    _check_trajectories(store, make_store)
    _check_approvals(store)
    _check_id_resolution(store)
    _check_rollouts_and_replays(store, make_store)
    _check_metadata(store, make_store)
    _check_compaction(store, make_store)
    _check_info_and_close(store, make_store)


# --- trajectories and approvals -----------------------------------------------------------------------


def _check_trajectories(store: Any, make_store: MakeStore) -> None:
    assert store.trajectories().height == 0, "a new store must be empty"
    assert store.rollouts().height == 0 and store.replays().height == 0, "a new store has no rollouts and no replay records"
    originals = [sample_trajectory(i, steps=n + 1) for n, i in enumerate((A, B, C))]
    assert store.write(originals) == 3
    assert store.trajectories()["id"].to_list() == [A, B, C], "trajectories come back in write order"
    assert make_store().trajectories()["id"].to_list() == [A, B, C], "another handle sees a write as soon as write() returns"
    assert store.get(C) == originals[2], "a trajectory must round-trip exactly"
    assert store.steps([B]).height == 3 and store.steps().height == 2 + 3 + 4
    assert store.write([originals[0]]) == 1
    assert store.trajectories().height == 3, "writing a trajectory again must not duplicate it"
    assert store.steps().height == 9, "writing a trajectory again must not duplicate its steps"
    store.write([sample_trajectory(D, app="other-app")])
    assert store.trajectories(app="other-app")["id"].to_list() == [D], "trajectories(app=...) filters by app"
    assert store.trajectories(app="conformance").height == 3
    _expect_not_found(lambda: store.get("no-such-trajectory"), "get() of an unknown id")
    _expect_columns(store.trajectories(), "trajectories", "approval", "approval_by", "approval_at", "approval_reason")
    _expect_columns(store.steps(), "steps")


def _check_approvals(store: Any) -> None:
    store.set_approval([ApprovalEvent(trajectory_id=A, status="approved", by="alice", reason="good")])
    store.set_approval([ApprovalEvent(trajectory_id=B, status="rejected", by="bob")])
    assert store.trajectories(status="approved")["id"].to_list() == [A]
    assert store.trajectories(status="rejected")["id"].to_list() == [B]
    assert store.trajectories(status="pending")["id"].to_list() == [C, D]
    store.set_approval([ApprovalEvent(trajectory_id=A, status="rejected", by="carol", reason="changed my mind")])
    approval = store.get(A).approval
    assert (approval.status, approval.by, approval.reason) == ("rejected", "carol", "changed my mind"), "the latest decision wins"
    assert [t.id for t in store.iter_trajectories(status="rejected")] == [A, B]
    store.approve([C], by="dana", reason="fine")
    store.reject([D], by="dana")
    assert store.get(C).approval.status == "approved" and store.get(D).approval.status == "rejected"
    store.approve([A], by="erin")
    assert [t.id for t in store.iter_trajectories(status="approved")] == [A, C]
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
    assert history["status"].to_list() == ["approved", "rejected", "approved"], "approvals() keeps every decision, oldest first"
    assert history["by"].to_list() == ["alice", "carol", "erin"]
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
    assert store.get(D).approval.reason == "on second thought"


def _check_id_resolution(store: Any) -> None:
    assert _must(lambda: store.resolve_id(B), "resolve_id() of an exact id") == B, (
        "an exact id resolves to itself, even when it prefixes another id"
    )
    assert _must(lambda: store.resolve_id(C), "resolve_id() of an exact id") == C
    assert _must(lambda: store.resolve_id("traj-0"), "resolve_id() of a unique prefix") == A, "a unique prefix resolves to its id"
    assert _must(lambda: store.get("traj-0"), "get() of a unique prefix").id == A, "get() accepts a unique prefix"
    for ambiguous in ("traj-1", "traj-"):
        _expect_not_found(lambda p=ambiguous: store.resolve_id(p), f"resolve_id({ambiguous!r}), a prefix of several ids")
    for unknown in ("zzz", "", "traj-0a-longer"):
        _expect_not_found(lambda u=unknown: store.resolve_id(u), f"resolve_id({unknown!r}), which matches no id")


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
    assert frame["id"].to_list() == [r.id for r in ordered], "rollouts come back ordered by trajectory, step and branch"
    assert make_store().rollouts().height == 6, "another handle sees rollouts as soon as write_replay() returns"
    assert list(store.iter_rollouts()) == ordered, "rollouts must round-trip exactly, in the order of rollouts()"
    assert store.rollouts([C])["id"].to_list() == [r.id for r in c_rollouts], "rollouts(ids) filters by trajectory"
    assert store.rollouts([D]).height == 0
    assert [r.id for r in store.iter_rollouts([B], replay_id="replay-1")] == [r.id for r in ordered[:4]]
    assert store.rollouts(replay_id="replay-2").height == 0, "rollouts(replay_id=...) filters by replay configuration"

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
    assert store.replays().height == 4 and store.replays(replay_id="replay-2")["trajectory_id"].to_list() == [B]
    assert store.rollouts(replay_id="replay-2")["id"].to_list() == [other.id]
    assert store.rollouts([B]).height == 5
    _check_get_rollout(store, b_rollouts)


def _check_get_rollout(store: Any, b_rollouts: list[Rollout]) -> None:
    by_id = {r.id: r for r in b_rollouts}
    assert _must(lambda: store.get_rollout("ro-b-1-0"), "get_rollout() of an id") == by_id["ro-b-1-0"], (
        "get_rollout() must round-trip a rollout exactly"
    )
    assert _must(lambda: store.get_rollout("ro-b-1"), "get_rollout() accepts a unique prefix: get_rollout('ro-b-1')").id == "ro-b-1-0"
    assert _must(lambda: store.get_rollout("ro-b-0-0"), "get_rollout() of an exact id that prefixes no other").id == "ro-b-0-0"
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
    assert reopened.get(B) == store.get(B)
    assert reopened.get_rollout("ro-c-0-1") == store.get_rollout("ro-c-0-1")
    store.compact()
    assert _snapshot(make_store()) == before, "compacting again must not change what is read"
    if metadata.keeps_metadata(store):
        assert metadata.read_meta(make_store(), META) == SECOND, "compaction must keep the metadata blobs"


def _check_info_and_close(store: Any, make_store: MakeStore) -> None:
    info = store.info()
    assert isinstance(info, dict) and "root" in info, "info() is a dict with at least 'root'"
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
