"""The store conformance kit's crash check: a store that loses data or breaks "a replay record no earlier than its
rollouts" when its writer is killed fails, naming the promise and the fix; a correct one never does.

The stores are a user's own, as a platform engineer writes one from the protocol: the whole store in one JSON file.
:class:`JsonFileStore` replaces the file atomically (a temporary file, then ``os.replace``) and passes; the broken ones
differ from it in one realistic mistake each. They live in this module so that the kit's child process imports them
(``functools.partial(JsonFileStore, path)`` pickles by reference): the crash check needs an importable factory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import psutil
import pytest

from ee_middleware.errors import TrajectoryNotFoundError
from ee_middleware.records import Approval, ApprovalEvent, ReplayRecord, Rollout, Trajectory
from ee_middleware.store import tables as T
from ee_middleware.store.approvals import in_order_decided
from ee_middleware.store.protocol import ExperienceStore
from ee_middleware.testing import check_store
from ee_middleware.testing.store_conformance import CrashCheckWarning
from tests.store.sqlite_plugin import SqliteMetaStore

APPROVAL_COLUMNS = {"approval": pl.String(), "approval_by": pl.String(), "approval_at": T.UTC_TIME, "approval_reason": pl.String()}
EMPTY: dict[str, list[Any]] = {"trajectories": [], "approvals": [], "rollouts": [], "replays": []}


class JsonFileStore(ExperienceStore):
    """Every record in ``ROOT/store.json``, rewritten whole under a lock by each write: to a temporary file, fsynced,
    then ``os.replace``-d over the old one. Metadata blobs are files in ``ROOT`` (its ``root`` folder)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.file = self.root / "store.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _stored(self) -> dict[str, list[Any]]:
        """What the file holds."""
        return json.loads(self.file.read_text()) if self.file.exists() else {k: [] for k in EMPTY}

    def _load(self) -> dict[str, list[Any]]:
        """What reads show."""
        return self._stored()

    def _save(self, data: dict[str, list[Any]]) -> None:
        tmp = self.file.with_suffix(".tmp")
        with open(tmp, "w") as out:
            out.write(json.dumps(data))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.file)

    def _append(self, **tables: Iterable[Any]) -> None:
        with self._locked():
            data = self._stored()
            for name, rows in tables.items():
                data[name].extend(rows)
            self._save(data)

    # --- trajectories and approvals

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        rows = [t.model_dump(mode="json") for t in trajectories]
        self._append(trajectories=rows)
        return len(rows)

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        known = {t["id"] for t in self._load()["trajectories"]}
        if missing := [e.trajectory_id for e in events if e.trajectory_id not in known]:
            raise TrajectoryNotFoundError(f"unknown trajectories {missing}")
        self._append(approvals=[e.model_dump(mode="json") for e in events])

    def approvals(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        rows = [T.approval_row(ApprovalEvent.model_validate(raw)) for raw in self._load()["approvals"]]
        decided = in_order_decided(T.frame(rows, T.APPROVAL_SCHEMA))
        return decided if trajectory_ids is None else decided.filter(pl.col("trajectory_id").is_in(list(trajectory_ids)))

    def _trajectories(self) -> list[Trajectory]:
        data, found = self._load(), {}
        for raw in data["trajectories"]:
            found.setdefault(raw["id"], Trajectory.model_validate(raw))
        for row in self.approvals().iter_rows(named=True):
            if row["trajectory_id"] in found:
                approval = Approval(status=row["status"], by=row["by"], at=row["at"], reason=row["reason"])
                found[row["trajectory_id"]] = found[row["trajectory_id"]].model_copy(update={"approval": approval})
        return list(found.values())

    def trajectories(self, *, status: str | None = None, app: str | None = None) -> pl.DataFrame:
        rows = []
        for t in self._trajectories():
            if (status not in (None, "all") and t.approval.status != status) or (app is not None and t.app != app):
                continue
            a = t.approval
            rows.append(
                {**T.trajectory_row(t), "approval": a.status, "approval_by": a.by, "approval_at": a.at, "approval_reason": a.reason}
            )
        return T.frame(rows, {**T.TRAJECTORY_SCHEMA, **APPROVAL_COLUMNS})

    def steps(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        rows = [T.step_row(s) for t in self._trajectories() if trajectory_ids is None or t.id in trajectory_ids for s in t.steps]
        return T.frame(rows, T.STEP_SCHEMA)

    def resolve_id(self, id_or_prefix: str) -> str:
        ids = [t["id"] for t in self._load()["trajectories"]]
        if id_or_prefix in ids:
            return id_or_prefix
        matches = {i for i in ids if id_or_prefix and i.startswith(id_or_prefix)}
        if len(matches) != 1:
            raise TrajectoryNotFoundError(f"no single trajectory {id_or_prefix!r}")
        return matches.pop()

    def get(self, trajectory_id: str) -> Trajectory:
        full = self.resolve_id(trajectory_id)
        return next(t for t in self._trajectories() if t.id == full)

    def iter_trajectories(self, *, status: str | None = None) -> Iterator[Trajectory]:
        yield from (t for t in self._trajectories() if status in (None, "all") or t.approval.status == status)

    # --- replay

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        self._append(rollouts=[r.model_dump(mode="json") for r in rollouts], replays=[record.model_dump(mode="json")])

    def _rollouts(self) -> list[Rollout]:
        found: dict[str, Rollout] = {}
        for raw in self._load()["rollouts"]:
            found.setdefault(raw["id"], Rollout.model_validate(raw))
        return sorted(found.values(), key=lambda r: (r.trajectory_id, r.step_index, r.branch_index))

    def rollouts(self, trajectory_ids: Sequence[str] | None = None, *, replay_id: str | None = None) -> pl.DataFrame:
        rows = [
            T.rollout_row(r)
            for r in self._rollouts()
            if (trajectory_ids is None or r.trajectory_id in trajectory_ids) and replay_id in (None, r.replay_id)
        ]
        return T.frame(rows, T.ROLLOUT_SCHEMA)

    def replays(self, *, replay_id: str | None = None) -> pl.DataFrame:
        latest: dict[tuple[str, str], ReplayRecord] = {}
        for raw in self._load()["replays"]:
            record = ReplayRecord.model_validate(raw)
            latest[(record.replay_id, record.trajectory_id)] = record
        return T.frame([T.replay_row(r) for r in latest.values() if replay_id in (None, r.replay_id)], T.REPLAY_SCHEMA)

    def get_rollout(self, rollout_id: str) -> Rollout:
        rollouts = self._rollouts()
        found = [r for r in rollouts if r.id == rollout_id] or [r for r in rollouts if rollout_id and r.id.startswith(rollout_id)]
        if len(found) != 1:
            raise TrajectoryNotFoundError(f"no single rollout {rollout_id!r}")
        return found[0]

    # --- upkeep

    def compact(self) -> int:
        return 0

    def info(self) -> dict[str, Any]:
        return {"root": str(self.root), "trajectories": len(self._trajectories())}

    def close(self) -> None:
        pass


class RewritesInPlace(JsonFileStore):
    """Rewrites ``store.json`` in place: ``open(path, "w")`` truncates it, then the new content is written. A writer
    killed in between leaves an empty file, and every record is lost."""

    def _save(self, data: dict[str, list[Any]]) -> None:
        with open(self.file, "w") as out:
            out.write(json.dumps(data))


class RecordBeforeRollouts(JsonFileStore):
    """Writes a replay's record, then its rollouts, in two writes: a writer killed in between leaves the trajectory
    marked replayed with none of its rollouts, which a resumed replay never makes again."""

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        self._append(replays=[record.model_dump(mode="json")])
        self._append(rollouts=[r.model_dump(mode="json") for r in rollouts])


class BuffersUntilClose(JsonFileStore):
    """Keeps written trajectories in memory (every handle of the process reads them) and writes them to the file at
    ``close()``: a process killed before then loses what ``write()`` returned for."""

    pending: ClassVar[dict[str, list[Any]]] = {}

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        rows = [t.model_dump(mode="json") for t in trajectories]
        self.pending.setdefault(str(self.root), []).extend(rows)
        return len(rows)

    def _load(self) -> dict[str, list[Any]]:
        data = self._stored()
        data["trajectories"] += self.pending.get(str(self.root), [])
        return data

    def close(self) -> None:
        if rows := self.pending.pop(str(self.root), []):
            self._append(trajectories=rows)


class SavesOnClose(JsonFileStore):
    """Keeps written trajectories in memory until ``close()``: even the handle that wrote them does not show them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.pending: list[Trajectory] = []

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        batch = list(trajectories)
        self.pending += batch
        return len(batch)

    def close(self) -> None:
        if self.pending:
            super().write(self.pending)
            self.pending = []


# --- the tests


def _children() -> set[int]:
    """This process's children (multiprocessing's resource tracker aside)."""
    return {p.pid for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())}


@pytest.fixture
def no_child_left() -> Iterator[None]:
    before = _children()
    yield
    deadline = time.monotonic() + 10
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"


@pytest.mark.usefixtures("no_child_left")
def test_a_store_replaced_atomically_passes_the_crash_check(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrashCheckWarning)  # the crash check ran, at every kill point
        check_store(functools.partial(JsonFileStore, tmp_path / "store"), crash=True)


@pytest.mark.usefixtures("no_child_left")
def test_a_store_rewriting_its_file_in_place_fails_the_crash_check_naming_the_promise_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as failed:
        check_store(functools.partial(RewritesInPlace, tmp_path / "store"))
    message = str(failed.value)
    assert "a crash must leave everything written before it readable" in message
    assert "right after open(" in message and "store.json" in message, message  # where the writer was killed
    assert "JSONDecodeError" in message
    assert "temporary file" in message and "os.replace" in message


@pytest.mark.usefixtures("no_child_left")
def test_a_store_writing_the_replay_record_before_its_rollouts_fails_the_crash_check(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as failed:
        check_store(functools.partial(RecordBeforeRollouts, tmp_path / "store"))
    message = str(failed.value)
    assert "a replay record must become visible no earlier than its rollouts" in message
    assert "during write_replay(" in message and "right after os.rename/os.replace(" in message, message
    assert "shows 0 of its 3 rollouts" in message
    assert "rollouts first and the record last" in message


@pytest.mark.usefixtures("no_child_left")
def test_a_store_holding_writes_in_memory_until_close_fails_the_crash_check(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as failed:
        check_store(functools.partial(BuffersUntilClose, tmp_path / "store"))
    message = str(failed.value)
    assert "a store must hold what write() returned for, not only after close()" in message
    assert "crash-000-a" in message and "ended without a crash (os._exit(), no close())" in message, message


@pytest.mark.heavy
@pytest.mark.usefixtures("no_child_left")
@pytest.mark.parametrize("run", range(3))
def test_correct_stores_pass_the_crash_check_every_time(tmp_path: Path, run: int) -> None:
    """The embedded store (by its spec here; in the default run: tests/store/test_local_store.py), a SQLite plug-in and
    the JSON store."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrashCheckWarning)
        check_store(f"local:{tmp_path / 'local'}", crash=True)
        check_store(functools.partial(SqliteMetaStore, str(tmp_path / "experience.sqlite")), crash=True)
        check_store(functools.partial(JsonFileStore, tmp_path / "json"), crash=True)


def test_a_factory_the_child_cannot_import_skips_the_crash_check_saying_how_to_run_it(tmp_path: Path) -> None:
    with pytest.warns(CrashCheckWarning, match=r"did not run.*functools\.partial\(MyStore, path\)"):
        check_store(lambda: JsonFileStore(tmp_path / "lambda"))
    with pytest.raises(TypeError, match=r"crash=True\) needs a factory another process can import"):
        check_store(lambda: JsonFileStore(tmp_path / "required"), crash=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrashCheckWarning)
        check_store(lambda: JsonFileStore(tmp_path / "off"), crash=False)


def test_a_handle_that_does_not_see_its_own_writes_is_shown_what_it_returned(tmp_path: Path) -> None:
    with pytest.raises(
        AssertionError,
        match=r"write\(\) returned 3 for \['traj-0a', 'traj-1b', 'traj-1b7'\] but trajectories\(\) on the same handle shows nothing",
    ):
        check_store(functools.partial(SavesOnClose, tmp_path / "store"), crash=False)


def test_no_fork_simulated_by_removing_os_fork_fails_a_required_crash_check_and_warns_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platform without fork() (Windows; simulated here by removing ``os.fork``, the real thing cannot run on Linux) is
    no fault of the factory: with crash=True it is the failure the docstring promises (AssertionError, the reason named),
    not the TypeError kept for a factory another process cannot import; by default a CrashCheckWarning."""
    monkeypatch.delattr(os, "fork")
    factory = functools.partial(JsonFileStore, tmp_path / "store")
    with pytest.raises(AssertionError, match=r"crash check could not run: this platform has no fork\(\)"):
        check_store(factory, crash=True)
    with pytest.warns(CrashCheckWarning, match=r"did not run: this platform has no fork\(\)"):
        check_store(factory)
