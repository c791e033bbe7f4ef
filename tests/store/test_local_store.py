"""The embedded store: real Parquet files, a real spool, real processes killed mid-write."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.errors import IncompleteReadWarning, StoreCorruptionWarning, StoreError, TrajectoryNotFoundError
from ee_middleware.records import Step
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.store.spool import list_segments
from ee_middleware.testing import check_store
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[2]


def test_local_store_passes_the_conformance_kit(store_path: Path):
    check_store(functools.partial(LocalExperienceStore, store_path), crash=True)  # a writer killed at every kill point too


def test_records_are_readable_as_soon_as_written_and_after_compaction(store: LocalExperienceStore, store_path: Path):
    written = [sample_trajectory("a"), sample_trajectory("b")]
    store.write(written)
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["a", "b"]
    assert store.compact() == 1
    assert list_segments(store_path / "spool") == []
    parts = sorted(p.parent.name for p in store_path.glob("*/part-*.parquet"))
    assert parts == ["steps", "trajectories"]
    frame = pl.read_parquet(next((store_path / "trajectories").glob("part-*.parquet")))
    assert frame["id"].to_list() == ["a", "b"], "parts are plain Parquet any tool can read"
    assert store.get("b") == written[1]


def test_compaction_skips_segments_of_live_writers(store_path: Path):
    writer = LocalExperienceStore(store_path)
    writer.write([sample_trajectory("live")])
    other = LocalExperienceStore(store_path)
    assert other.compact() == 0, "a segment held by a running writer is not touched"
    assert other.trajectories()["id"].to_list() == ["live"]
    writer.close()
    assert other.compact() == 1


def test_many_parts_are_merged_and_the_merged_ones_deleted_after_a_grace_period(store_path: Path, monkeypatch):
    monkeypatch.setattr("ee_middleware.store.local.MAX_PARTS_BEFORE_MERGE", 3)
    store = LocalExperienceStore(store_path)
    for i in range(5):
        store.write([sample_trajectory(f"t{i}")])
        store.compact()
    info = store.info()
    assert info["parquet_parts"]["trajectories"] <= 3 and info["retired_parts"] > 0
    files = len(list((store_path / "trajectories").glob("part-*.parquet")))
    assert files > info["parquet_parts"]["trajectories"], "merged parts stay on disk for readers that picked them"
    assert store.trajectories()["id"].to_list() == [f"t{i}" for i in range(5)]
    monkeypatch.setattr("ee_middleware.store.manifest.RETIRED_PART_GRACE_S", 0.0)
    store.compact()
    live = store.info()["parquet_parts"]
    assert sum(live.values()) == len(list(store_path.glob("*/part-*.parquet"))), "retired parts are gone after their grace period"
    assert store.info()["retired_parts"] == 0
    assert store.trajectories()["id"].to_list() == [f"t{i}" for i in range(5)]
    assert store.steps().height == 5 * 3


def test_a_half_written_last_record_is_skipped_with_a_warning(store: LocalExperienceStore, store_path: Path):
    store.write([sample_trajectory("good")])
    segment = store._writer.segment
    store.close()
    with open(segment, "ab") as fh:  # what a crash in the middle of a write leaves behind
        fh.write(b'0badc0de {"kind": "trajectory", "data": {"id": "cut')
    with pytest.warns(StoreCorruptionWarning, match="half-written"):
        frame = LocalExperienceStore(store_path).trajectories()
    assert frame["id"].to_list() == ["good"]


def test_a_damaged_record_in_the_middle_is_skipped_and_the_segment_quarantined(store_path: Path):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    store.write([sample_trajectory("damaged")])
    store.write([sample_trajectory("after")])
    segment = store._writer.segment
    store.close()
    lines = segment.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"damaged", b"dXmaged")  # bit rot: the checksum no longer matches
    segment.write_bytes(b"\n".join(lines))
    with pytest.warns(StoreCorruptionWarning, match="checksum mismatch"):
        assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["before", "after"]
    with pytest.warns(
        StoreCorruptionWarning,
        match=rf"Moved the spool segment {segment.name} to .*quarantine.*1 damaged line\(s\) of one record or more \(line 2: checksum mismatch.*Its 2 whole record\(s\) are in the store's Parquet parts now; the damaged ones are lost",
    ):
        LocalExperienceStore(store_path).compact()
    assert [p.name for p in (store_path / "quarantine").iterdir()] == [segment.name]
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["before", "after"]


def test_an_unreadable_parquet_part_is_reported_and_the_rest_still_read(store: LocalExperienceStore, store_path: Path):
    store.write([sample_trajectory("kept")])
    store.compact()
    before = set(store_path.glob("trajectories/part-*.parquet"))
    store.write([sample_trajectory("damaged")])
    store.compact()
    (part,) = set(store_path.glob("trajectories/part-*.parquet")) - before
    part.write_bytes(part.read_bytes()[:100])  # truncated: a full disk, a bad copy
    store.write([sample_trajectory("spooled")])
    with pytest.warns(IncompleteReadWarning, match=f"unreadable Parquet part {part}.*ee store repair"):
        assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["kept", "spooled"]


def test_repair_reopens_the_replays_whose_rollouts_it_took_out(store: LocalExperienceStore, store_path: Path):
    """A reviewer's store: repair moved a damaged rollouts part to quarantine/, and the replay records stayed "done", so
    `ee replay run` said every trajectory was replayed while `ee datasets build` found no rollouts and said to run
    `ee replay run` first, which did nothing. Each replay that lost rollouts is now marked failed, saying why: the job
    replays it again; one that kept all of its rollouts stays done."""
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout

    store.write([sample_trajectory("kept"), sample_trajectory("lost")])
    store.approve(["kept", "lost"], by="reviewer")
    store.write_replay(sample_replay_record("kept", branches=2), [sample_rollout(f"k{b}", "kept", 0, b) for b in range(2)])
    store.compact()
    before = set(store_path.glob("rollouts/part-*.parquet"))
    store.write_replay(sample_replay_record("lost", branches=3), [sample_rollout(f"l{b}", "lost", b % 2, b) for b in range(3)])
    store.compact()
    (part,) = set(store_path.glob("rollouts/part-*.parquet")) - before
    part.write_bytes(part.read_bytes()[:100])
    report = LocalExperienceStore(store_path).repair()
    assert [p["moved_to"] for p in report["quarantined_parts"]] == [str(store_path / "quarantine" / "rollouts" / part.name)]
    assert report["replays_reopened"] == [{"replay_id": "replay-1", "trajectory_id": "lost", "had": 3, "left": 0}]
    reread = LocalExperienceStore(store_path)
    replays = {row["trajectory_id"]: row for row in reread.replays().iter_rows(named=True)}
    assert (replays["kept"]["status"], replays["lost"]["status"]) == ("done", "failed")
    assert "moved to quarantine/" in replays["lost"]["reason"]
    finished = reread.replays(replay_id="replay-1").filter(pl.col("status").is_in(["done", "skipped"]))  # as the job selects
    assert finished["trajectory_id"].to_list() == ["kept"]


@pytest.mark.parametrize("how", ["repair", "compact"])
def test_a_replay_that_loses_rollouts_with_a_damaged_spool_segment_is_reopened(store: LocalExperienceStore, store_path: Path, how: str):
    """A rollout's line damaged in a spool segment: repair or compaction moves the segment to quarantine/, the rollout is
    lost, and the replay (an attempt of its configuration: it stays one) is marked failed, to be replayed again (found by
    review: only lost Parquet parts reopened replays)."""
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout

    store.write([sample_trajectory("lost")])
    store.approve(["lost"], by="reviewer")
    store.compact()
    record = sample_replay_record("lost", branches=3)
    record.details.update(attempt_of="replay-0", attempt=2)
    store.write_replay(record, [sample_rollout(f"l{b}", "lost", b % 2, b) for b in range(3)])
    store.close()
    [segment] = [p for p in (store_path / "spool").iterdir() if p.suffix == ".jsonl" and p.stat().st_size]
    lines = segment.read_bytes().split(b"\n")
    damaged = next(i for i, line in enumerate(lines) if b'"l1"' in line)
    lines[damaged] = lines[damaged][:40] + b"\x00garbage" + lines[damaged][48:]
    segment.write_bytes(b"\n".join(lines))
    reread = LocalExperienceStore(store_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreCorruptionWarning)
        if how == "repair":
            assert reread.repair()["replays_reopened"] == [{"replay_id": "replay-1", "trajectory_id": "lost", "had": 3, "left": 2}]
        else:
            reread.compact()
    after = LocalExperienceStore(store_path)
    [row] = after.replays().iter_rows(named=True)
    assert (row["status"], after.rollouts().height) == ("failed", 2)
    assert "1 of its 3 rollouts were lost to the store (damaged records of a spool segment" in row["reason"]
    assert json.loads(row["details_json"]) == {"attempt_of": "replay-0", "attempt": 2}


WRITER = textwrap.dedent(
    """
    import sys
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing.store_conformance import sample_trajectory
    store = LocalExperienceStore(sys.argv[1])
    prefix = sys.argv[2]
    for i in range(int(sys.argv[3])):
        store.write([sample_trajectory(f"{prefix}-{i}", steps=40)])
        print(f"{prefix}-{i}", flush=True)
    """
)


def _writer(store_path: Path, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store_path), prefix, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_a_writer_killed_mid_write_loses_nothing_it_confirmed(store_path: Path):
    LocalExperienceStore(store_path)
    proc = _writer(store_path, "k", 100_000)
    confirmed = [proc.stdout.readline().strip() for _ in range(30)]
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read().split()
    proc.wait()
    confirmed += rest
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreCorruptionWarning)  # the last record may be cut short
        reader = LocalExperienceStore(store_path)
        ids = set(reader.trajectories()["id"].to_list())
        assert set(confirmed) <= ids
        reader.compact()
    assert set(confirmed) <= set(LocalExperienceStore(store_path).trajectories()["id"].to_list())


def test_many_processes_writing_at_once_lose_nothing(store_path: Path):
    LocalExperienceStore(store_path)
    procs = [_writer(store_path, f"p{n}", 25) for n in range(4)]
    compactor = LocalExperienceStore(store_path)
    while any(p.poll() is None for p in procs):
        compactor.compact()  # compaction racing the writers must not lose or duplicate anything
        time.sleep(0.01)
    assert all(p.returncode == 0 for p in procs)
    compactor.compact()
    frame = LocalExperienceStore(store_path).trajectories()
    assert frame.height == 100 and frame["id"].n_unique() == 100
    assert LocalExperienceStore(store_path).steps().height == 100 * 41


def test_opening_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(StoreError, match="No experience store"):
        LocalExperienceStore(tmp_path / "missing", create=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="non-empty folder"):
        LocalExperienceStore(tmp_path / "busy")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        LocalExperienceStore(tmp_path / "file")
    future = tmp_path / "future"
    LocalExperienceStore(future)
    (future / "ee-store.json").write_text(json.dumps({"format": "ee-experience-store", "schema_version": "9.0"}))
    with pytest.raises(StoreError, match="Upgrade ee-middleware"):
        LocalExperienceStore(future)
    (future / "ee-store.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        LocalExperienceStore(future)


def test_ids_resolve_from_unique_prefixes(store: LocalExperienceStore):
    store.write([sample_trajectory("abc123"), sample_trajectory("abd456")])
    assert store.get("abc").id == "abc123"
    with pytest.raises(TrajectoryNotFoundError, match="ambiguous"):
        store.get("ab")
    with pytest.raises(TrajectoryNotFoundError, match="ee traces list"):
        store.get("zzz")


def test_a_long_running_writer_seals_old_segments_for_compaction(store_path: Path):
    store = LocalExperienceStore(store_path)
    store._writer._max_age = 0.0  # every append is "old": sealed right after it is durable
    store.write([sample_trajectory("a")])
    store.write([sample_trajectory("b")])
    assert LocalExperienceStore(store_path).compact() == 2
    assert store.trajectories()["id"].to_list() == ["a", "b"]


def test_segment_and_part_names_sort_in_write_order_when_the_second_turns(monkeypatch: pytest.MonkeyPatch):
    # Two writes a moment apart, across a second boundary: names read from two clocks (seconds, then
    # nanoseconds) put the later one first; the store's read order and compaction follow the names.
    from ee_middleware.store import spool

    second = int(time.time())
    readings = iter([second * 10**9 + 999_999_999, (second + 1) * 10**9 + 1])
    monkeypatch.setattr(spool.time, "time_ns", lambda: next(readings))
    first, later = spool.sortable_stamp(), spool.sortable_stamp()
    assert first < later


def test_a_lone_surrogate_is_stored_as_a_replacement_character_not_refused(store: LocalExperienceStore, store_path: Path):
    """A tool that lists files decodes a non-UTF-8 name with surrogateescape ('caf\\udce9.txt'); JSON a tool received
    can hold a "\\ud800" escape. UTF-8 cannot encode either: the write raised UnicodeEncodeError and the trajectory
    (or the trajectory's rollouts) was lost."""
    from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall

    t = sample_trajectory("lone")
    t.steps[0].observation = t.steps[0].observation.model_copy(update={"content": "caf\udce9.txt \ud800"})
    assert store.write([t]) == 1
    rollout = Rollout(
        id="r0", replay_id="rp", trajectory_id="lone", step_index=0, branch_index=0,
        action=Action(kind="tool_call", tool_call=ToolCall(id="a", name="ls", arguments={"dir": "x\udcff"})),
        proposer=ProposerInfo(policy="mutate"), observation=Observation(content="caf\udce9.txt"), sandbox="s", duration_ms=1.0,
    )  # fmt: skip
    store.write_replay(
        ReplayRecord(replay_id="rp", trajectory_id="lone", status="done", policy="mutate", sandbox="s", k=1, seed=0), [rollout]
    )
    store.close()
    for reader in (LocalExperienceStore(store_path), LocalExperienceStore(store_path)):
        assert reader.get("lone").steps[0].observation.content == "caf\ufffd.txt \ufffd"
        (read,) = reader.iter_rollouts()
        assert (read.observation.content, read.action.tool_call.arguments) == ("caf\ufffd.txt", {"dir": "x\ufffd"})
        reader.compact()  # the second reader reads the Parquet parts


def test_a_store_in_a_folder_whose_name_is_not_utf8_compacts_and_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Linux names are bytes: a folder named in Latin-1 (b"caf\\xe9") is a valid place for a store. Polars cannot open
    such a path by name (it said "Object does not have a .write() method" and compaction failed with a TypeError)."""
    from ee_middleware.store import local

    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 2)
    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9/experience"))
    store = LocalExperienceStore(root)
    for name in ("a", "b", "c"):
        store.write([sample_trajectory(name)])
        store.close()
        store.compact()  # the third compaction merges the parts
    reader = LocalExperienceStore(root)
    assert reader.trajectories()["id"].to_list() == ["a", "b", "c"]
    assert reader.steps(["b"]).height == 3
    assert reader.scan("steps").filter(pl.col("trajectory_id") == "c").collect().height == 3
    assert reader.trajectory_index(["id"])["id"].to_list() == ["a", "b", "c"]
    assert reader.repair()["quarantined_parts"] == []
    other = LocalExperienceStore(tmp_path / "other")  # parts a user copies in under Latin-1 names are adopted too
    other.write([sample_trajectory("d")])
    other.compact()
    for table in ("trajectories", "steps"):
        (part,) = (other.root / table).glob("part-*.parquet")
        (root / table / os.fsdecode(b"part-copi\xe9.parquet")).write_bytes(part.read_bytes())
    reader.compact()
    assert LocalExperienceStore(root).trajectories()["id"].to_list() == ["a", "b", "c", "d"]
    assert LocalExperienceStore(root).steps().height == 12


def test_a_forked_child_closing_its_copy_of_the_store_leaves_the_parents_segment_live(store_path: Path):
    """A fork shares the parent's open segment and its lock: a worker that closed its inherited store released the
    parent's lock, compaction then folded and deleted the segment the parent still wrote to, and later records were lost."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before-fork")])
    pid = os.fork()
    if pid == 0:  # the worker: closes its copy (a multiprocessing worker's finally, a with block)
        try:
            store.close()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert spool.is_live(store._writer.segment), "the parent still writes to its segment"
    assert LocalExperienceStore(store_path).compact() == 0
    store.write([sample_trajectory("after-fork")])
    store.close()
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["before-fork", "after-fork"]


def test_compaction_keeps_what_a_newer_version_wrote(tmp_path: Path) -> None:
    """An app upgraded before the nightly job: its ee-middleware writes records with fields this version does not know
    (schema 1.4's Action.reasoning and Step.tools met a 1.3 install). Compaction warned 'does not fit the schema' and
    then deleted the segment, losing every such trajectory; and merging parts dropped the columns it does not know.
    Now such a segment stays in the spool (its readable records folded, reads dropping the repeats) and such a part is
    never merged, so a newer version reads them whole."""
    import pyarrow.parquet as pq

    from ee_middleware.store import spool as spool_module
    from ee_middleware.store.local import MAX_PARTS_BEFORE_MERGE
    from ee_middleware.store.manifest import read_manifest
    from ee_middleware.store.tables import TABLES
    from ee_middleware.testing.store_conformance import sample_trajectory

    store = LocalExperienceStore(tmp_path / "s")
    store.write([sample_trajectory("now")])
    segment = store._writer.segment
    store.close()
    newer = sample_trajectory("later").model_dump(mode="json")
    newer["schema_version"] = "1.9"
    newer["steps"][0]["action"]["plan"] = "a field from a newer schema"
    line = spool_module.encode_line({"kind": "trajectory", "data": newer})
    with open(segment, "ab") as fh:
        fh.write(line)
    before = segment.read_bytes()
    store = LocalExperienceStore(tmp_path / "s")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        store.compact()
        ids = store.trajectories()["id"].to_list()
    assert any("Kept the spool segment" in str(w.message) and "upgrade ee-middleware" in str(w.message) for w in said)
    assert segment.read_bytes() == before, "the segment stays, byte for byte"
    assert ids == ["now"], "the readable record is read once (folded and kept)"

    # A part a newer version wrote, with a column this one does not know, is never merged away.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the kept segment's record is still one this version cannot read
        i = 0
        while len(read_manifest(tmp_path / "s", TABLES).parts["trajectories"]) < MAX_PARTS_BEFORE_MERGE:
            store.write([sample_trajectory(f"t{i}")])
            store.compact()
            i += 1
        names = read_manifest(tmp_path / "s", TABLES).parts["trajectories"]
        future = tmp_path / "s" / "trajectories" / names[0]
        table = pq.read_table(future)
        pq.write_table(table.append_column("future", table.column(0)), future)
        store.write([sample_trajectory("last")])
        store.compact()  # one part too many: the parts are merged
        live = read_manifest(tmp_path / "s", TABLES).parts["trajectories"]
    assert future.name in live and "future" in pq.read_schema(future).names, "still live, with its column"
    assert len(live) == 2, "the other parts were merged into one"
    store.close()


def _awkward_trajectories() -> list:
    """Trajectories whose values pydantic's JSON and ``json.dumps`` could spell differently: small and large floats, NaN and
    infinities, big ints, non-ASCII, control characters, a lone surrogate, JSON inside strings, exponent-like text."""
    values = [
        {"x": 1e-05, "y": [1.5e-7, 1e16, 1e22, 0.1, -0.0, 123456.789]},
        {"n": 2**70, "text": 'café \u2028 \x00\x1f\x7f "quoted" \\ 😀', "json": '{"a": [1, 2]}'},
        {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")},
        {"looks_like": "1e-05 and 2e+16 and 0.00001", "ok": 0.0001},
        {"surrogate": "file-\udcff.txt"},
    ]
    out = []
    for i, value in enumerate(values):
        t = sample_trajectory(f"awkward-{i}")
        messages = [dict(m) for m in t.messages]
        messages[0]["extra"] = value
        out.append(t.model_copy(update={"messages": messages, "environment": value}))
    return out


def _long_trajectories() -> list:
    """Runs of 8 steps and more, whose steps ``spool.model_line_pieces`` encodes one by one: plain, with an awkward value in
    one step's state or in the run's own fields (that run then takes the json path whole), and with a step of a subclass
    of ``Step`` (that run is encoded in one piece, as its serializer encodes its steps)."""

    class NotedStep(Step):
        note: str = "kept by the subclass, dropped by the trajectory's serializer"

    plain = sample_trajectory("long-plain", steps=7)
    variants = sample_trajectory("long-variants", steps=30, tool_variants=True)
    in_a_step = sample_trajectory("long-awkward-step", steps=12)
    steps = list(in_a_step.steps)
    steps[5] = steps[5].model_copy(update={"state": [*steps[5].state, {"role": "user", "content": "x", "extra": {"x": 1e-05}}]})
    in_a_step = in_a_step.model_copy(update={"steps": steps})
    in_the_run = sample_trajectory("long-awkward-run", steps=9).model_copy(update={"environment": {"nan": float("nan"), "y": 1e22}})
    subclassed = sample_trajectory("long-subclassed", steps=9)
    subclassed = subclassed.model_copy(update={"steps": [NotedStep(**s.model_dump()) if s.index == 3 else s for s in subclassed.steps]})
    return [plain, variants, in_a_step, in_the_run, subclassed]


def _long_subclassed_trajectories() -> list:
    """Runs of 10 steps of ``Trajectory`` subclasses whose JSON is not the declared fields in order (review of the long
    runs' pieces: each was written with the plain class's pieces): a computed field, a serializer of the steps (one that
    leaves the states out, as a redacting subclass may), a model serializer, the steps excluded, extra fields, the steps
    written under another name."""
    from typing import Any

    from pydantic import ConfigDict, Field, computed_field, field_serializer, model_serializer

    from ee_middleware.records import Trajectory

    class WithComputed(Trajectory):
        @computed_field  # type: ignore[prop-decorator]
        @property
        def n_steps(self) -> int:
            return len(self.steps)

    class WithStepSerializer(Trajectory):
        @field_serializer("steps")
        def _steps(self, steps: list[Step]) -> list[Any]:
            return [s.model_dump(mode="json", exclude={"state"}) | {"state": []} for s in steps]

    class WithModelSerializer(Trajectory):
        @model_serializer(mode="wrap")
        def _all(self, handler: Any) -> Any:
            return handler(self) | {"schema": 2}

    class WithStepsExcluded(Trajectory):
        steps: list[Step] = Field(default_factory=list, exclude=True)

    class WithExtra(Trajectory):
        model_config = ConfigDict(extra="allow")

    class WithAlias(Trajectory):
        model_config = ConfigDict(serialize_by_alias=True)
        steps: list[Step] = Field(default_factory=list, serialization_alias="Steps")

    fields = sample_trajectory("subclassed", steps=9).model_dump()
    classes = (WithComputed, WithStepSerializer, WithModelSerializer, WithStepsExcluded, WithExtra, WithAlias)
    return [cls(**{**fields, "id": f"long-{cls.__name__}"}, **({"note": "x"} if cls is WithExtra else {})) for cls in classes]


@pytest.mark.parametrize("batch", ["awkward", "one_awkward", "plain", "long", "long_and_short", "long_subclassed"])
def test_trajectories_are_written_as_the_json_path_writes_them(tmp_path: Path, batch: str) -> None:
    """Trajectories are encoded by pydantic in one step (``spool.model_lines``), a long run's steps one by one
    (``spool.model_line_pieces``); the spool lines must be, byte for byte, those ``json.dumps`` writes of
    ``model_dump(mode="json")``, awkward values included (each then takes the json path)."""
    trajectories = {
        "awkward": _awkward_trajectories(),
        "one_awkward": [sample_trajectory("plain-0"), _awkward_trajectories()[0], sample_trajectory("plain-1")],
        "plain": [sample_trajectory(f"plain-{i}") for i in range(3)],
        "long": _long_trajectories(),
        "long_and_short": [sample_trajectory("short"), _long_trajectories()[0], _awkward_trajectories()[1]],
        "long_subclassed": _long_subclassed_trajectories(),
    }[batch]
    store = LocalExperienceStore(tmp_path / "store")
    assert store.write(trajectories) == len(trajectories)
    store.close()
    (segment,) = spool.list_segments(store.root / "spool")
    expected = b"".join(spool.encode_line({"kind": "trajectory", "data": t.model_dump(mode="json")}) for t in trajectories)
    assert segment.read_bytes() == expected
    if batch == "awkward":
        assert b"1e-05" in expected and b"\xef\xbf\xbd" in expected, "json's spelling, and the lone surrogate cleaned"
    if batch != "long_subclassed":  # (those write what a Trajectory does not read back: the subclass's business)
        assert [t.id for t in LocalExperienceStore(store.root).iter_trajectories()] == [t.id for t in trajectories]


def test_a_relative_store_path_stays_with_the_folder_it_named_after_the_process_changes_directory(tmp_path: Path, react_graph, monkeypatch):
    """Defect (deploy sweep 3): a store given as a relative path (the default ./experience, EE_STORE=experience) followed
    the working directory: after a daemon's chdir the next spool segment was opened under the new directory, a folder
    with no ee-store.json that no store read, and flush() still said True. The path is made absolute when the store is
    opened, so runs recorded (by a real LangGraph agent) after a chdir land in the store the app was given."""
    from ee_middleware import record_experience

    (tmp_path / "app").mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    agent = record_experience(react_graph, app="daemon", store="experience")
    assert agent.recorder.store.root == tmp_path / "app" / "experience"
    monkeypatch.chdir(tmp_path / "run")  # the daemon's working directory
    agent.invoke({"messages": [("user", "Do we have pears? If not, order 5.")]})
    assert agent.flush()
    agent.recorder.close()
    assert list((tmp_path / "run").iterdir()) == [], "nothing is written under the new working directory"
    stored = LocalExperienceStore(tmp_path / "app" / "experience")
    assert stored.trajectories()["app"].to_list() == ["daemon"]
    stored.close()


def test_status_all_reads_every_trajectory_and_an_unknown_status_is_refused(store: LocalExperienceStore):
    """'all' (what `ee traces list --status all` means) was read as an approval value and matched no row: every read
    with status='all' returned nothing, silently. It selects every trajectory; any other unknown word is refused."""
    from ee_middleware.errors import ConfigError
    from ee_middleware.records import ApprovalEvent

    store.write([sample_trajectory("a"), sample_trajectory("b")])
    store.set_approval([ApprovalEvent(trajectory_id="a", status="approved", by="alice")])
    assert store.trajectories(status="all")["id"].to_list() == ["a", "b"]
    assert [t.id for t in store.iter_trajectories(status="all")] == ["a", "b"]
    assert store.trajectory_index(["id"], status="all")["id"].to_list() == ["a", "b"]
    assert store.trajectories(status="approved")["id"].to_list() == ["a"]
    for read in (
        lambda: store.trajectories(status="aproved"),
        lambda: list(store.iter_trajectories(status="Approved")),
        lambda: store.trajectory_index(["id"], status="done"),
    ):
        with pytest.raises(ConfigError, match=r"is not an approval status: use one of pending, approved, rejected, or 'all'"):
            read()


def test_the_local_store_keeps_metadata_blobs_as_the_files_it_always_had(store: LocalExperienceStore, store_path: Path) -> None:
    """read_meta/write_meta (KeepsMetadata) of the local store are its redaction.json and redaction.key files: what capture
    and every later writer read through them is on disk as before, the salt owner-only and created once."""
    from ee_middleware.capture.redaction import SALT_FILE, RedactionRules, store_salt
    from ee_middleware.capture.store_redaction import REDACTION_FILE, StoreRedaction, record_store_redaction
    from ee_middleware.store.protocol import KeepsMetadata

    assert isinstance(store, KeepsMetadata) and store.read_meta(SALT_FILE) is None
    salt = store_salt(store)
    assert (
        store.read_meta(SALT_FILE) == (store_path / SALT_FILE).read_bytes() and bytes.fromhex(store.read_meta(SALT_FILE).decode()) == salt
    )
    assert (store_path / SALT_FILE).stat().st_mode & 0o777 == 0o600
    assert store.write_meta(SALT_FILE, b"00\n", exclusive=True) is False and store_salt(LocalExperienceStore(store_path)) == salt
    record_store_redaction(store, StoreRedaction(RedactionRules(patterns={"t": "TCK-1"})))
    assert json.loads((store_path / REDACTION_FILE).read_bytes())["rules"]["patterns"] == {"t": "TCK-1"}
    assert store.read_meta(REDACTION_FILE) == (store_path / REDACTION_FILE).read_bytes()
    for name in ("ee-store.json", "manifest.json", "spool", "trajectories", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError, match=r"metadata name|the store's own files"):
            store.write_meta(name, b"x")


def test_store_info_counts_the_records_by_the_schema_version_they_were_written_under(store_path: Path) -> None:
    """Before: `ee store info` said only the code's schema version (1.7) for a store holding 1.2 records."""
    from ee_middleware.records import SCHEMA_VERSION

    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("new-1"), sample_trajectory("new-2")])
    store.write([sample_trajectory("old-1").model_copy(update={"schema_version": "1.2"})])
    info = store.info()
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["records_schema_versions"] == {"1.2": 1, SCHEMA_VERSION: 2}
    store.close()
