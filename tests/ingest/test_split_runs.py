"""A run whose spans arrive in two ingests (the nightly job read the Collector's file while the run was still written, or
a rotated file holds its first spans) ends up stored whole: the later, more complete version replaces the partial one
(rejected as superseded, every decision on it kept in its history), and ingesting the files again adds nothing.

The fixtures are one real LangGraph run (create_react_agent, the calculator turn) as each instrumentation exported it,
one OTLP/JSON request per line as the Collector's file exporter writes them (the ingest sweep's recordings: OpenInference
0.1.80, OpenLLMetry 0.62.4, langsmith[otel] 0.15.1, OpenTelemetry's openai-v2 2.4b0 with LangGraph 1.2.24; one trace of
each cut out of the sweep's files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.export import decided_by_run
from ee_middleware.ingest import ingest_files

FIXTURES = Path(__file__).parent / "fixtures"
SUPERSEDED_BY = "ee traces ingest"  # who rejects a partial version (ee_middleware.ingest.service.SUPERSEDED_BY)

# (fixture, line the first file ends at): the first ingest stores a partial run (interrupted, or for LangSmith, which
# exports the graph's span first, a run that looks completed with one step of two)
CUTS = [
    ("rotation_openinference.jsonl", 2),  # the graph's and the node's spans not read: named after a span below the root
    ("rotation_openinference.jsonl", 10),  # two pieces of the run, under a node span and under the graph span
    ("rotation_openllmetry.jsonl", 10),
    ("rotation_openllmetry.jsonl", 15),  # all but the invoke_agent span: the workflow span below it looks like a whole run
    ("rotation_langsmith.jsonl", 6),
    ("rotation_langsmith.jsonl", 10),  # the root exported first: read as completed, with 1 step of 2
    ("rotation_openai_v2.jsonl", 2),  # the app's span not read yet: interrupted with 2 steps of 3
]


def _split(tmp_path: Path, fixture: str, cut: int) -> tuple[Path, Path]:
    lines = (FIXTURES / fixture).read_text(encoding="utf-8").splitlines(keepends=True)
    first, second = tmp_path / "spans-1.json", tmp_path / "spans-2.json"
    first.write_text("".join(lines[:cut]), encoding="utf-8")
    second.write_text("".join(lines[cut:]), encoding="utf-8")
    return first, second


def _current(store: Any) -> list[Any]:
    return [t for t in store.iter_trajectories() if t.approval.status != "rejected"]


@pytest.mark.parametrize(("fixture", "cut"), CUTS)
def test_a_run_split_across_two_ingests_is_stored_whole(tmp_path, store, fixture, cut):
    whole = ingest_files([FIXTURES / fixture], type(store)(tmp_path / "whole"))
    (expected,) = type(store)(tmp_path / "whole").iter_trajectories()
    assert whole.problems == 0, whole.errors
    first, second = _split(tmp_path, fixture, cut)
    night1 = ingest_files([first], store)
    partial = set(night1.ingested)
    assert partial and night1.problems == 0, night1.errors
    night2 = ingest_files([first, second], store)  # as the README's `ee traces ingest /data/otlp/*.json`
    assert night2.problems == 0, night2.errors
    (got,) = _current(store)
    assert (got.status, got.num_steps, got.messages) == (expected.status, expected.num_steps, expected.messages)
    assert [s.trajectory_id for s in got.steps] == [got.id] * got.num_steps
    assert set(night2.replaced) == partial, "each partial piece is superseded"
    for old in partial:
        kept = store.get(old)
        assert (kept.approval.status, kept.approval.by) == ("rejected", SUPERSEDED_BY)
        assert got.id in (kept.approval.reason or "")
    again = ingest_files([first, second], store)
    assert (len(again.ingested), again.replaced) == (0, []), "ingesting the files again adds nothing"
    assert [t.id for t in _current(store)] == [got.id]
    late = ingest_files([first], store)  # the first file alone again: a part of a run stored whole
    assert (len(late.ingested), [t.id for t in _current(store)]) == (0, [got.id])


def test_a_reviewers_decision_on_the_partial_run_carries_over_to_the_whole_one(tmp_path, store):
    first, second = _split(tmp_path, "rotation_openai_v2.jsonl", 2)
    (partial,) = ingest_files([first], store).ingested
    store.reject([partial], by="alice", reason="asks for the wrong city")
    night2 = ingest_files([first, second], store)
    (whole,) = night2.ingested
    got = store.get(whole)
    assert (got.approval.status, got.approval.by) == ("rejected", "alice")
    assert "asks for the wrong city" in got.approval.reason and partial in got.approval.reason
    history = store.approvals([partial])
    assert history["by"].to_list() == ["alice", SUPERSEDED_BY], "the reviewer's decision stays in the partial's history"
    assert any("alice" in note for note in night2.notes)


@pytest.mark.parametrize("rejected", ["shorter", "longer"])
def test_a_rejected_piece_of_a_run_is_not_overridden_by_an_approved_one(tmp_path, store, rejected):
    """The first file holds two pieces of the run (under a node span and under the graph span). A reviewer rejects one
    and approves the other. The whole run took the decision of the longer piece only: with the longer one approved, it
    was stored approved (trained on) though it holds the decision the reviewer rejected, and the rejection survived
    nowhere (the piece itself is rejected as superseded). Now a rejection of any piece carries over, naming the piece
    and its reason, and the note says the approval is not carried over; both decisions stay in the pieces' histories."""
    first, second = _split(tmp_path, "rotation_openinference.jsonl", 10)
    pieces = sorted((store.get(i) for i in ingest_files([first], store).ingested), key=lambda t: len(t.messages))
    assert [len(t.messages) for t in pieces] == [2, 4]
    bad, good = pieces if rejected == "shorter" else pieces[::-1]
    store.reject([bad.id], by="alice", reason="wrong city")
    store.approve([good.id], by="bob", reason="fine")
    night2 = ingest_files([first, second], store)
    assert night2.problems == 0, night2.errors
    (whole_id,) = night2.ingested
    whole = store.get(whole_id)
    assert (whole.approval.status, whole.approval.by) == ("rejected", "alice")
    assert "wrong city" in whole.approval.reason and bad.id in whole.approval.reason
    assert good.id in whole.approval.reason and "bob" in whole.approval.reason, "the approval not carried over is named"
    assert store.approvals([bad.id])["by"].to_list() == ["alice", SUPERSEDED_BY]
    assert store.approvals([good.id])["by"].to_list() == ["bob", SUPERSEDED_BY]
    [note] = [n for n in night2.notes if good.id in n]
    assert "not carried over" in note


def _run_signature(t: Any) -> tuple[Any, ...]:
    """What a run's trajectory holds (its id aside): messages, status, and each step's decision and observation."""
    steps = [(s.index, s.decision_index, len(s.state), s.action, s.observation, s.tools) for s in t.steps]
    return t.status, t.messages, t.final_answer, t.task, t.thread_id, t.tools, steps


# (fixture, cut) whose second file alone holds the run's last model call(s) and its root: a version that holds the
# whole history in its last call's input, but not the first file's decisions
LATER_HALVES = [("rotation_openinference.jsonl", 2), ("rotation_openai_v2.jsonl", 2)]


@pytest.mark.parametrize("order", ["first-half-first", "later-half-first"])
@pytest.mark.parametrize(("fixture", "cut"), LATER_HALVES)
def test_a_run_whose_halves_are_ingested_each_alone_keeps_every_decision(tmp_path, store, fixture, cut, order):
    """Defect: the nightly job read the first file (the run's first model call and its tool) one night and only the new,
    rotated file (the last model call and the root span) the next. The later half holds more messages (its call's input
    is the whole history) but only its own decision, and it superseded the stored first half: the first decision (the
    tool call) survived only in a rejected trajectory, never trained on (openinference: 1 step of 2 live; openai-v2: 1 of
    3). Read the other way round, the first half was dropped as "a part of a run stored whole". Now a version supersedes
    a stored one only when it holds its decisions; otherwise they are merged: one live trajectory, the whole run's."""
    whole = type(store)(tmp_path / "whole")
    ingest_files([FIXTURES / fixture], whole)
    (expected,) = whole.iter_trajectories()
    first, second = _split(tmp_path, fixture, cut)
    nights = [first, second] if order == "first-half-first" else [second, first]
    night1 = ingest_files([nights[0]], store)
    night2 = ingest_files([nights[1]], store)
    assert night1.problems == night2.problems == 0, night1.errors + night2.errors
    (got,) = _current(store)
    assert _run_signature(got) == _run_signature(expected)
    assert decided_by_run(got) == decided_by_run(expected), "every decision of the run is taught"
    assert [s.trajectory_id for s in got.steps] == [got.id] * got.num_steps
    assert set(night2.replaced) == set(night1.ingested), "the stored half is superseded by the whole run"
    for old in night2.replaced:
        kept = store.get(old)
        assert (kept.approval.status, kept.approval.by) == ("rejected", SUPERSEDED_BY) and got.id in kept.approval.reason
    assert any("kept in the version stored now" in note for note in night2.notes), night2.notes
    for files in ([first, second], [first], [second]):  # read again, in any combination: nothing more
        again = ingest_files(files, store)
        assert (again.ingested, again.replaced, again.problems) == ([], [], 0), (files, again.notes)
    assert [t.id for t in _current(store)] == [got.id]


def test_a_later_half_read_with_the_whole_run_stored_adds_nothing(tmp_path, store):
    """The whole run stored, its later half alone read again (its file ingested once more) holds no decision the
    stored run lacks: already stored, as before."""
    first, second = _split(tmp_path, "rotation_openai_v2.jsonl", 2)
    (whole,) = ingest_files([first, second], store).ingested
    again = ingest_files([second], store)
    assert (again.ingested, again.replaced, again.already_stored) == ([], [], [whole])
