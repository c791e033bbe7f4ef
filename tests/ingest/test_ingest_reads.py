"""What an ingest reads of the store it writes to: every stored run's id, trace and decision, but the whole rows (the
conversations, most of a store) only of the runs stored in the traces it reads, which may be versions of its runs.

Defect (ingest-at-scale sweep): it read the store's whole trajectories table, so its memory grew with the store: one
small file ingested into a store of 10,000 runs of 15 KB each peaked at 343 MB (110 MB now; 98 MB into an empty store).
Real OTLP files, a real local store."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore

FIXTURES = Path(__file__).parent / "fixtures"


class _Reads:
    """What the local store read: its whole-table reads, and which runs' whole rows it was asked for."""

    def __init__(self) -> None:
        self.whole_reads: list[Collection[str]] = []
        self.rows_read: list[set[str]] = []


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> _Reads:
    """The local store's reads, noted (patched on the class itself: a subclass with a read of its own reads otherwise)."""
    noted = _Reads()
    load, index = LocalExperienceStore._load, LocalExperienceStore.trajectory_index

    def _load(self: LocalExperienceStore, names: Collection[str] = ("trajectories",)) -> Any:
        noted.whole_reads.append(tuple(names))
        return load(self, names)

    def trajectory_index(self: LocalExperienceStore, columns: Sequence[str], *, ids: Any = None, **kwargs: Any) -> Any:
        if "messages_json" in columns:  # the whole rows
            assert ids is not None, "every stored run's whole row was read"
            noted.rows_read.append(set([ids] if isinstance(ids, str) else ids))
        return index(self, columns, ids=ids, **kwargs)

    monkeypatch.setattr(LocalExperienceStore, "_load", _load)
    monkeypatch.setattr(LocalExperienceStore, "trajectory_index", trajectory_index)
    return noted


def _traces_of(path: Path) -> set[str]:
    return {
        span["traceId"]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    }


def test_an_ingest_reads_the_whole_rows_of_the_runs_stored_in_its_own_traces_alone(tmp_path: Path, reads: _Reads) -> None:
    first, second = FIXTURES / "adk_shop.jsonl", FIXTURES / "langsmith_langgraph.jsonl"
    assert not _traces_of(first) & _traces_of(second)
    store = LocalExperienceStore(tmp_path / "store")
    assert ingest_files([first], store).runs > 0
    stored_first = {row["id"] for row in store.trajectories().iter_rows(named=True)}

    reads.whole_reads.clear()
    report = ingest_files([second], store)
    assert report.ingested and not report.problems, report.errors
    assert not [names for names in reads.whole_reads if "trajectories" in names]
    assert reads.rows_read == []  # none of its traces had a run stored: no conversation read

    again = ingest_files([first], store)
    assert again.ingested == [] and again.already_stored, again.notes  # (found stored: from their rows and steps)
    assert not [names for names in reads.whole_reads if "trajectories" in names]
    assert set().union(*reads.rows_read) == stored_first  # the runs of the traces read again, not the second file's


def test_the_runs_an_ingest_stores_are_the_same_with_a_store_of_other_runs(tmp_path: Path) -> None:
    """The stored versions it finds, and so what it stores, do not depend on the other traces' runs it no longer reads."""
    file = FIXTURES / "rotation_openai_v2.jsonl"
    lines = file.read_text(encoding="utf-8").splitlines()
    (tmp_path / "first.json").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    (tmp_path / "later.json").write_text("\n".join(lines[2:]) + "\n", encoding="utf-8")
    stored = []
    for name, others in (("alone", []), ("among-others", [FIXTURES / "adk_shop.jsonl", FIXTURES / "langsmith_langgraph.jsonl"])):
        store = LocalExperienceStore(tmp_path / name)
        if others:
            ingest_files(others, store)
        before = {t.id for t in store.iter_trajectories()}
        ingest_files([tmp_path / "first.json"], store)
        report = ingest_files([tmp_path / "later.json"], store)
        assert report.replaced, report.notes  # the first half's run, completed by the later file
        stored.append(sorted((t.id, t.num_steps, t.approval.status, t.status) for t in store.iter_trajectories() if t.id not in before))
    assert stored[0] == stored[1]


class _OldIndex(LocalExperienceStore):
    """A subclass with the ``trajectory_index`` of before ``ids`` (review: ingesting into it raised TypeError)."""

    def trajectory_index(self, columns: Any, *, status: Any = None, app: Any = None) -> Any:
        return super().trajectory_index(columns, status=status, app=app)


class _Audited(LocalExperienceStore):
    """A subclass with a ``trajectories`` of its own (an audit line, a filter): every read goes through it."""

    reads = 0

    def trajectories(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return super().trajectories(*args, **kwargs)


def test_subclasses_with_their_own_reads_ingest_as_the_local_store_does(tmp_path: Path) -> None:
    file = FIXTURES / "adk_shop.jsonl"
    runs = {}
    for name, kind in (("local", LocalExperienceStore), ("old-index", _OldIndex), ("audited", _Audited)):
        store = kind(tmp_path / name)
        first = ingest_files([file], store)
        if isinstance(store, _Audited):
            store.reads = 0
        again = ingest_files([file], store)
        assert (len(again.ingested), len(again.already_stored), again.problems) == (0, len(first.ingested), 0), (name, again.notes)
        if isinstance(store, _Audited):
            assert store.reads == 1  # its table read once, for the stored runs' index and their rows alike (was: twice)
        runs[name] = sorted((t.id, t.num_steps, t.status) for t in store.iter_trajectories())
    assert runs["old-index"] == runs["local"] == runs["audited"]


CALLS = FIXTURES / "openai_v2_no_app_span.jsonl"
"""Model calls each a trace of its own (no span around a run): runs read by their messages (bare calls)."""


def test_joining_bare_calls_reads_the_rows_of_stored_bare_call_runs_alone(tmp_path: Path, reads: _Reads) -> None:
    """The stored runs a run of bare calls may go on with (or that go on with it) are those of bare calls of its app:
    only their whole rows are read, not those of another app's runs or of runs with a thread."""
    lines = CALLS.read_text(encoding="utf-8").splitlines(keepends=True)
    first, second = tmp_path / "calls-1.json", tmp_path / "calls-2.json"
    first.write_text("".join(lines[:3]), encoding="utf-8")
    second.write_text("".join(lines[3:]), encoding="utf-8")
    whole = LocalExperienceStore(tmp_path / "whole")
    ingest_files([CALLS], whole)
    store = LocalExperienceStore(tmp_path / "store")
    ingest_files([FIXTURES / "adk_shop.jsonl", FIXTURES / "langsmith_langgraph.jsonl"], store)
    others = {t.id for t in store.iter_trajectories()}
    ingest_files([first], store)
    bare = {t.id for t in store.iter_trajectories()} - others
    reads.rows_read.clear()
    report = ingest_files([second], store)
    assert report.problems == 0 and report.replaced, report.notes  # the runs its first calls began, completed
    read = set().union(*reads.rows_read)
    assert read and read <= bare, (read - bare, bare)

    def runs(s: LocalExperienceStore) -> list[tuple[Any, ...]]:
        live = [t for t in s.iter_trajectories() if t.id not in others and t.approval.status != "rejected"]
        return sorted(((t.status, t.task, t.messages, t.num_steps) for t in live), key=repr)

    assert runs(store) == runs(whole)
