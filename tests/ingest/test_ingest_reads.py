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

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore

FIXTURES = Path(__file__).parent / "fixtures"


class _ReadsRecorded(LocalExperienceStore):
    """The local store, noting its whole-table reads and which runs' whole rows it was asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.whole_reads: list[Collection[str]] = []
        self.rows_read: list[set[str]] = []

    def _load(self, names: Collection[str] = ("trajectories",)) -> Any:
        self.whole_reads.append(tuple(names))
        return super()._load(names)

    def trajectory_index(self, columns: Sequence[str], *, ids: Any = None, **kwargs: Any) -> Any:
        if "messages_json" in columns:  # the whole rows
            assert ids is not None, "every stored run's whole row was read"
            self.rows_read.append(set([ids] if isinstance(ids, str) else ids))
        return super().trajectory_index(columns, ids=ids, **kwargs)


def _traces_of(path: Path) -> set[str]:
    return {
        span["traceId"]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    }


def test_an_ingest_reads_the_whole_rows_of_the_runs_stored_in_its_own_traces_alone(tmp_path: Path) -> None:
    first, second = FIXTURES / "adk_shop.jsonl", FIXTURES / "langsmith_langgraph.jsonl"
    assert not _traces_of(first) & _traces_of(second)
    store = _ReadsRecorded(tmp_path / "store")
    assert ingest_files([first], store).runs > 0
    stored_first = {row["id"] for row in store.trajectories().iter_rows(named=True)}

    store.whole_reads.clear()
    report = ingest_files([second], store)
    assert report.ingested and not report.problems, report.errors
    assert not [names for names in store.whole_reads if "trajectories" in names]
    assert store.rows_read == []  # none of its traces had a run stored: no conversation read

    again = ingest_files([first], store)
    assert again.ingested == [] and again.already_stored, again.notes  # (found stored: from their rows and steps)
    assert not [names for names in store.whole_reads if "trajectories" in names]
    assert set().union(*store.rows_read) == stored_first  # the runs of the traces read again, not the second file's


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
