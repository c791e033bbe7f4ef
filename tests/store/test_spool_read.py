"""A store read from its spool gives exactly what the same store gives compacted into Parquet.

Trajectories only in the spool are rebuilt from their decoded records (ee_middleware.store.spool_cache), the others
from table rows; a store handle keeps its decoded segments between reads. These tests read real stores both ways
and compare everything, types included, and check that the kept segments never show stale or shared data.
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ee_middleware.errors import IncompleteReadWarning, StoreCorruptionWarning
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore, local, spool, spool_cache
from ee_middleware.store.local import _rebuilt
from ee_middleware.store.rows import TrajectoryRows
from ee_middleware.store.spool_cache import round_trips
from ee_middleware.store.tables import _loads
from ee_middleware.testing.store_conformance import sample_trajectory


def _same(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` are equal values of equal types all the way down (pydantic models field by field)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, BaseModel):
        assert a.model_fields_set == b.model_fields_set, where
        for name in type(a).model_fields:
            _same(getattr(a, name), getattr(b, name), f"{where}.{name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert json.dumps(a) == json.dumps(b), f"{where}: {a!r} != {b!r}"  # NaN equals NaN here
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
        if hasattr(a, "tzinfo"):
            assert a.isoformat() == b.isoformat() and a.tzinfo == b.tzinfo, where


def _everything(path: Path) -> dict[str, Any]:
    """Every way of reading trajectories, each on a fresh handle (so each one decodes the spool itself)."""
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["iter"] = list(LocalExperienceStore(path, create=False).iter_trajectories())
        store = LocalExperienceStore(path, create=False)
        out["job"] = [store.trajectories(status="approved"), store.replays(), list(store.iter_trajectories(status="approved"))]
        out["again"] = list(store.iter_trajectories())  # the same handle, after its records were handed over
        out["get"] = [LocalExperienceStore(path, create=False).get(t.id) for t in out["iter"]]
        store = LocalExperienceStore(path, create=False)
        out["steps_first"] = [store.steps(), list(store.iter_trajectories()), store.steps()]
        out["trajectories"] = LocalExperienceStore(path, create=False).trajectories()
        # as a replay job ships them to its workers: pickled, then built there
        shipped = [pickle.loads(pickle.dumps(t)) for t in LocalExperienceStore(path, create=False).iter_trajectory_rows()]
        out["rows_shipped"] = sum(type(t) is TrajectoryRows for t in shipped)
        out["rows"] = [t.build() if type(t) is TrajectoryRows else t for t in shipped]
    out["warnings"] = sorted(str(w.message).split(" in /")[0] for w in caught if issubclass(w.category, IncompleteReadWarning))
    return out


def _assert_read_alike(spooled: dict[str, Any], compacted: dict[str, Any]) -> None:
    assert spooled.keys() == compacted.keys()
    for key in spooled:
        a, b = spooled[key], compacted[key]
        if key in ("warnings", "rows_shipped"):
            continue
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if isinstance(x, list):  # trajectories
                assert [t.id for t in x] == [t.id for t in y], f"{key}[{i}]"
                for t, u in zip(x, y, strict=True):
                    _same(t, u, f"{key}[{i}] {t.id}")
                    assert t.model_dump_json() == u.model_dump_json()
                    assert t == u
            elif isinstance(x, Trajectory):
                _same(x, y, f"{key}[{i}]")
            else:  # frames
                assert x.schema == y.schema, f"{key}[{i}]"
                assert x.rows() == y.rows() or repr(x.rows()) == repr(y.rows()), f"{key}[{i}]"  # NaN: compared by repr


def _compacted_copy(path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "compacted"
    shutil.copytree(path, copy)
    store = LocalExperienceStore(copy, create=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert store.compact() >= 1
    assert spool.list_segments(copy / "spool") == []
    return copy


@pytest.fixture(params=["cached", "beyond-the-cache"])
def cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Reads with the segments kept decoded by the store handle, and with none kept (a spool larger than the cache: each
    record decoded again from its line where a read needs it)."""
    if request.param == "beyond-the-cache":
        monkeypatch.setattr(spool_cache, "CACHE_BYTES", 0)
    return str(request.param)


def test_bfcl_experts_read_from_the_spool_equal_the_same_store_compacted(bfcl_store_path: Path, tmp_path: Path, cache: str):
    store = LocalExperienceStore(bfcl_store_path, create=False)
    ids = store.trajectories()["id"].to_list()
    assert len(ids) >= 4 and spool.list_segments(bfcl_store_path / "spool")
    store.reject([ids[0]], by="reviewer", reason="wrong tool")  # decisions in the spool: the current approval differs
    store.approve([ids[1]], by="reviewer", reason="fine")
    store.close()
    spooled = _everything(bfcl_store_path)
    assert len(spooled["iter"]) == len(ids) and sum(len(t.steps) for t in spooled["iter"]) > 10
    assert spooled["iter"][0].approval.status == "rejected" and spooled["iter"][0].approval.reason == "wrong tool"
    compacted = _everything(_compacted_copy(bfcl_store_path, tmp_path))
    _assert_read_alike(spooled, compacted)
    assert compacted["rows_shipped"] == len(ids), "read from Parquet parts, every trajectory comes as its rows"
    for read in (spooled, compacted):
        _assert_read_alike({"rows": read["rows"]}, {"rows": read["iter"]})


def _trajectory_line(t: Trajectory, edit: Any = None, text: Any = None) -> bytes:
    data = {"kind": "trajectory", "data": t.model_dump(mode="json")}
    if edit is not None:
        edit(data["data"])
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")) if text is None else text(data)
    return spool.frame_line(payload.encode())


USER = '"role": "user"'
"""Where a message starts, in ``json.dumps``'s default spacing: numbers are put there."""


def _state(**extra: Any) -> Any:
    def edit(data: dict[str, Any]) -> None:
        data["steps"][0]["state"][0].update(extra)

    return edit


def _sparse(data: dict[str, Any]) -> None:
    first, last = data["steps"][0], data["steps"][-1]
    del first["latency_ms"], first["action"]["content"], first["action"]["tool_call"]["arguments"], first["observation"]["is_error"]
    del last["observation"], last["model_latency_ms"]


def test_awkward_records_read_from_the_spool_equal_the_same_store_compacted(store_path: Path, tmp_path: Path, monkeypatch, cache: str):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("in-parts")])
    store.compact()
    lines = [
        _trajectory_line(sample_trajectory("plain")),
        _trajectory_line(sample_trajectory("nan"), _state(x=float("nan"), y=[float("inf"), -0.0])),
        # numbers too large for a float (not written by json, but valid JSON): read as infinities
        _trajectory_line(sample_trajectory("huge-exp"), text=lambda d: json.dumps(d).replace(USER, f'"big": 1E400, {USER}', 1)),
        _trajectory_line(sample_trajectory("huge-digits"), text=lambda d: json.dumps(d).replace(USER, f'"big": {"1" * 320}.5, {USER}', 1)),
        _trajectory_line(sample_trajectory("big-int"), _state(n=10**40, m=-(2**63) - 1, f=5e-324, g=1e16)),
        _trajectory_line(sample_trajectory("escapes"), text=lambda d: json.dumps(d, ensure_ascii=True)),  # \\uXXXX for every non-ASCII
        _trajectory_line(sample_trajectory("lone"), _state(s="a\ud800b"), text=lambda d: json.dumps(d, ensure_ascii=True)),
        _trajectory_line(sample_trajectory("deep"), _state(deep=json.loads("[" * 250 + "]" * 250))),
        _trajectory_line(sample_trajectory("int-latency"), lambda d: d["steps"][0].update(latency_ms=3, model_latency_ms=None)),
        _trajectory_line(sample_trajectory("no-env"), lambda d: d.update(environment={}, tools=[], messages=[])),
        _trajectory_line(
            sample_trajectory("answer-with-call"),
            lambda d: d["steps"][-1]["action"].update(tool_call={"id": "c", "name": "x", "arguments": {"a": 1}}),
        ),
        _trajectory_line(sample_trajectory("offset-time"), lambda d: d.update(started_at="2026-01-02T03:04:05.123456+02:00")),
        _trajectory_line(sample_trajectory("naive-time"), lambda d: d.update(ended_at="2026-01-02T03:04:05")),
        _trajectory_line(sample_trajectory("unsorted"), lambda d: d["steps"].reverse()),
        _trajectory_line(sample_trajectory("sparse"), _sparse),  # fields left to their defaults: the rebuilt step sets them
        _trajectory_line(sample_trajectory("twice")),
        _trajectory_line(sample_trajectory("twice", steps=4)),  # repeated id: the first record wins, steps merge by index
        _trajectory_line(sample_trajectory("dup-index"), lambda d: d["steps"][1].update(index=0)),
        _trajectory_line(sample_trajectory("foreign"), lambda d: d["steps"][0].update(trajectory_id="plain")),
        _trajectory_line(sample_trajectory("in-parts", steps=3)),  # also in a Parquet part, which wins
        _trajectory_line(sample_trajectory("bad"), lambda d: d.pop("app")),  # does not fit the schema: skipped
        # a write cut short, then the next record on its line (an earlier version's full disk): that record is read
        _trajectory_line(sample_trajectory("cut"))[:40] + _trajectory_line(sample_trajectory("salvaged"))[:-1] + b"\n",
    ]
    writer = spool.SpoolWriter(store_path / "spool", fsync=False)
    writer.append_lines(lines)
    writer.seal()
    with pytest.warns(IncompleteReadWarning, match="does not fit the schema|checksum mismatch"):
        store.approve(["plain", "nan"], by="r")
    store.close()
    rebuilt: list[str] = []  # which trajectories were rebuilt from their records, not from rows
    monkeypatch.setattr(local, "_rebuilt", lambda row, t: rebuilt.append(t.id) or _rebuilt(row, t))
    spooled = _everything(store_path)
    from_records = {"sparse", "big-int", "escapes", "int-latency", "no-env", "answer-with-call", "offset-time", "naive-time", "unsorted"}
    assert set(rebuilt) == from_records  # not "plain": a step of "foreign" carries its id; not "salvaged": not exact
    ids = [t.id for t in spooled["iter"]]
    assert ids[0] == "in-parts" and {"plain", "nan", "huge-exp", "lone", "deep", "twice", "foreign", "salvaged"} <= set(ids)
    assert "bad" not in ids and "cut" not in ids
    assert spooled["warnings"] and all(("does not fit the schema" in w or w == "Skipped a damaged record") for w in spooled["warnings"])
    compacted = _everything(_compacted_copy(store_path, tmp_path))
    _assert_read_alike(spooled, compacted)


def test_round_trips_refuses_numbers_too_large_for_a_float():
    assert round_trips(b'{"a":[1.5e+30,1e-400,"e999",12345],"id":"3e123f"}')
    assert not round_trips(b'{"a":1.5e308}')  # finite, but three exponent digits are enough to take the row path
    for text in (b'{"a":1e400}', b'{"a":[1E+309]}', b'{"a":1.0e0309 }', b'{"a":' + b"9" * 310 + b".0}"):
        assert _loads(text.decode())["a"] in (float("inf"), [float("inf")]) and not round_trips(text)


def test_a_handle_sees_appended_and_rewritten_records_and_warns_on_every_read(store_path: Path):
    reader = LocalExperienceStore(store_path)
    writer = spool.SpoolWriter(store_path / "spool", fsync=False)
    writer.append_lines([_trajectory_line(sample_trajectory("a"))])
    assert reader.trajectories()["id"].to_list() == ["a"]
    writer.append_lines([_trajectory_line(sample_trajectory("b"))])  # the live segment grew
    assert [t.id for t in reader.iter_trajectories()] == ["a", "b"]
    writer.seal()
    segment = spool.list_segments(store_path / "spool")[0]
    data = segment.read_bytes()
    segment.write_bytes(data.replace(b"task a", b"task c"))  # same length, other bytes (checksum now wrong)
    for _ in range(2):  # the damaged line is reported on every read, not only the first
        with pytest.warns(IncompleteReadWarning, match="checksum mismatch"):
            assert reader.trajectories()["id"].to_list() == ["b"]
    segment.write_bytes(data + data[:50])  # a torn last line after the whole ones
    for _ in range(2):
        with pytest.warns(StoreCorruptionWarning, match="half-written"):
            assert reader.trajectories()["id"].to_list() == ["a", "b"]


def test_trajectories_handed_out_are_the_callers_own(store: LocalExperienceStore):
    store.write([sample_trajectory("a")])
    first = next(store.iter_trajectories())
    first.steps[1].state[1]["tool_calls"][0]["function"]["name"] = "changed"
    first.steps[0].state.clear()
    again = next(store.iter_trajectories())
    assert again == sample_trajectory("a").model_copy(update={"started_at": again.started_at, "ended_at": again.ended_at})
    assert again.steps[1].state[1]["tool_calls"][0]["function"]["name"] == "lookup"
    assert store.steps()["state_json"].to_list()[0] != "[]"


def test_the_collector_is_back_as_it_was_after_decoding(store: LocalExperienceStore, monkeypatch):
    import gc

    store.write([sample_trajectory("a")])
    assert gc.isenabled()
    seen = []
    original = spool_cache.SpoolRows.__init__
    monkeypatch.setattr(spool_cache.SpoolRows, "__init__", lambda self, *a: seen.append(gc.isenabled()) or original(self, *a))
    assert LocalExperienceStore(store.root).trajectories()["id"].to_list() == ["a"]
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        LocalExperienceStore(store.root).trajectories()
        assert not gc.isenabled(), "a collector switched off by the caller stays off"
    finally:
        gc.enable()
    monkeypatch.setattr(spool_cache.SpoolRows, "__init__", lambda self, *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        LocalExperienceStore(store.root).trajectories()
    assert gc.isenabled()


def test_a_process_forked_while_a_thread_decodes_has_its_collector_on(store: LocalExperienceStore, monkeypatch):
    import gc
    import os
    import threading

    store.write([sample_trajectory("a")])
    decoding, forked = threading.Event(), threading.Event()
    original = spool_cache.SpoolRows.__init__

    def slow(self, *args):
        decoding.set()
        forked.wait(10)
        original(self, *args)

    monkeypatch.setattr(spool_cache.SpoolRows, "__init__", slow)
    reader = threading.Thread(target=lambda: LocalExperienceStore(store.root).trajectories())
    reader.start()
    assert decoding.wait(10) and not gc.isenabled()
    pid = os.fork()
    if pid == 0:  # the child: exit at once, with 0 when its collector is on
        os._exit(0 if gc.isenabled() else 1)
    forked.set()
    _, status = os.waitpid(pid, 0)
    reader.join(10)
    assert os.waitstatus_to_exitcode(status) == 0 and gc.isenabled()


def test_a_filtered_read_does_not_hold_the_trajectories_it_leaves_out(bfcl_store_path: Path, tmp_path: Path):
    import gc
    import uuid

    # ids of this test's own (other tests' objects may hold trajectories of the shared BFCL store)
    suffix = uuid.uuid4().hex
    copies = []
    for t in LocalExperienceStore(bfcl_store_path, create=False).iter_trajectories():
        new_id = f"{t.id}-{suffix}"
        copies.append(t.model_copy(update={"id": new_id, "steps": [s.model_copy(update={"trajectory_id": new_id}) for s in t.steps]}))
    store = LocalExperienceStore(tmp_path / "own")
    store.write(copies)
    ids = [t.id for t in copies]
    del copies
    store.reject(ids[1:], by="reviewer", reason="not needed")
    store.close()
    del store  # its own reads keep their decoded records (spool_cache.CACHE_BYTES)
    trajectories = LocalExperienceStore(tmp_path / "own", create=False).iter_trajectories(status="approved")
    first = next(trajectories)
    assert first.id == ids[0]
    gc.collect()
    held = [o.id for o in gc.get_objects() if type(o) is Trajectory and o.id in set(ids[1:])]
    assert held == [], "rejected trajectories stay in memory while the read goes on"
    assert list(trajectories) == []


def test_reads_of_a_spool_beyond_the_cache_hold_its_bytes_not_its_decoded_records(store_path: Path):
    """A spool larger than what a store handle keeps decoded (a day of traces not yet compacted) is decoded one record at a
    time: a read holds its bytes and its tables' rows, and decodes again only the records it returns. Each read held about
    ten times the spool's size in Python objects when every decoded record was kept until the read ended."""
    import tracemalloc

    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(f"{i:03d}-run", steps=8) for i in range(400)])
    store.close()
    size = sum(p.stat().st_size for p in spool.list_segments(store_path / "spool"))

    def held(read: Any) -> float:
        reader = LocalExperienceStore(store_path, create=False)
        reader._spool.max_bytes = 0  # none of it kept decoded between reads
        tracemalloc.start()
        try:
            answer = read(reader)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert answer
        return peak / size

    expected = [s.observation for s in sample_trajectory("007-run", steps=8).steps]
    assert held(lambda r: [s.observation for s in r.get("007-run").steps] == expected) < 3
    assert held(lambda r: r.get("007").id == "007-run") < 3  # a prefix: resolved in the same read
    assert held(lambda r: r.trajectory_index(["id"]).height == 400) < 3
    assert held(lambda r: sum(len(t.steps) for t in r.iter_trajectories()) == 400 * 9) < 3  # (8 tool calls and the answer)
    assert held(lambda r: r.steps(["007-run"]).height == 9) < 3


def test_a_lookup_on_a_shared_handle_never_reads_a_trajectory_another_thread_was_handed(store: LocalExperienceStore, monkeypatch):
    """(review) A lookup wrote its steps' rows from the kept trajectories without the segment's lock, while another thread's
    ``iter_trajectories`` was handed those very objects, which its caller may change: the lookup returned the change. The
    pause at the lookup's first step row stands for the lookup losing the interpreter lock there."""
    import threading

    store.write([sample_trajectory(f"t{i}", steps=3) for i in range(3)])
    store.trajectories()  # the segment decoded and kept, with its trajectories
    looking, changed = threading.Event(), threading.Event()
    original = spool_cache.step_row

    def paused_step_row(step: Any, encode: Any) -> Any:
        if threading.current_thread().name == "lookup" and not looking.is_set():
            looking.set()
            changed.wait(1.0)  # (the other thread waits on the segment's lock: this times out)
        return original(step, encode)

    monkeypatch.setattr(spool_cache, "step_row", paused_step_row)
    got: dict[str, Trajectory] = {}

    def change_what_iteration_hands_over() -> None:
        looking.wait(5)
        for t in store.iter_trajectories():
            for s in t.steps:
                if s.observation is not None:
                    s.observation.content = "changed by another caller"
        changed.set()

    lookup = threading.Thread(target=lambda: got.update(t=store.get("t0")), name="lookup")
    other = threading.Thread(target=change_what_iteration_hands_over)
    lookup.start()
    other.start()
    lookup.join(10)
    other.join(10)
    expected = [s.observation.content for s in sample_trajectory("t0", steps=3).steps if s.observation is not None]
    assert [s.observation.content for s in got["t"].steps if s.observation is not None] == expected
