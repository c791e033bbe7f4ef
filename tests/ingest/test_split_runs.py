"""A run whose spans arrive in two ingests (the nightly job read the Collector's file while the run was still written, or
a rotated file holds its first spans) ends up stored whole: the later, more complete version replaces the partial one
(rejected as superseded, every decision on it kept in its history), and ingesting the files again adds nothing.

The fixtures are one real LangGraph run (create_react_agent, the calculator turn) as each instrumentation exported it,
one OTLP/JSON request per line as the Collector's file exporter writes them (the ingest sweep's recordings: OpenInference
0.1.80, OpenLLMetry 0.62.4, langsmith[otel] 0.15.1, OpenTelemetry's openai-v2 2.4b0 with LangGraph 1.2.24; one trace of
each cut out of the sweep's files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.export import decided_by_run
from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import _request, _span, _write

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


# (fixture, cut, told) whose second file alone holds the run's last model call(s) and its root: a version that holds
# the whole history in its last call's input, but not the first file's model spans; ``told``: it holds the tool span of
# the first call, which it reads as a step (from that span and the later call's history), so it lacks no decision
LATER_HALVES = [
    ("rotation_openinference.jsonl", 2, True),
    ("rotation_openai_v2.jsonl", 2, False),
    # the later half alone took its first call's question ("Summarize that.") as the merged run's task (sweep H4)
    ("rotation_openllmetry_chained.jsonl", 1, False),
]


@pytest.mark.parametrize("order", ["first-half-first", "later-half-first"])
@pytest.mark.parametrize(("fixture", "cut", "told"), LATER_HALVES)
def test_a_run_whose_halves_are_ingested_each_alone_keeps_every_decision(tmp_path, store, fixture, cut, told, order):
    """Defect: the nightly job read the first file (the run's first model call and its tool) one night and only the new,
    rotated file (the last model call and the root span) the next. The later half holds more messages (its call's input
    is the whole history) but only its own decision, and it superseded the stored first half: the first decision (the
    tool call) survived only in a rejected trajectory, never trained on (openinference: 1 step of 2 live; openai-v2: 1 of
    3). Read the other way round, the first half was dropped as "a part of a run stored whole". Now a version supersedes
    a stored one only when it holds its decisions; otherwise they are merged: one live trajectory, the whole run's.
    A later half that read the first call's tool span holds that decision too (sweep H4, finding 5): read first, it is
    the run stored whole, and the first half read later adds nothing."""
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
    if told and order == "later-half-first":
        assert (night2.ingested, night2.replaced, night2.already_stored) == ([], [], night1.ingested)
    else:
        assert set(night2.replaced) == set(night1.ingested), "the stored half is superseded by the whole run"
    for old in night2.replaced:
        kept = store.get(old)
        assert (kept.approval.status, kept.approval.by) == ("rejected", SUPERSEDED_BY) and got.id in kept.approval.reason
    if not told:
        assert any("kept in the version stored now" in note for note in night2.notes), night2.notes
    for files in ([first, second], [first], [second]):  # read again, in any combination: nothing more
        again = ingest_files(files, store)
        assert (again.ingested, again.replaced, again.problems) == ([], [], 0), (files, again.notes)
    assert [t.id for t in _current(store)] == [got.id]


ROOT_LAST = [("rotation_openinference.jsonl", 14), ("rotation_openllmetry.jsonl", 14)]


@pytest.mark.parametrize(("fixture", "cut"), ROOT_LAST)
def test_a_run_whose_root_spans_alone_come_in_the_later_file_is_completed_by_them(tmp_path, store, fixture, cut):
    """The root ends last, so a rotated file may hold the graph's span (OpenInference) or the workflow and agent spans
    (OpenLLMetry) alone, the run's steps in the file read the night before and moved away. Before, the run stayed
    `interrupted` for good and the second ingest failed: "none of the 1 span(s) read is one ingest understands" (an
    OpenInference CHAIN span), "no model call among its 2 span(s) ... instrument the model client too" (OpenLLMetry)."""
    whole = type(store)(tmp_path / "whole")
    ingest_files([FIXTURES / fixture], whole)
    (expected,) = whole.iter_trajectories()
    first, second = _split(tmp_path, fixture, cut)
    night1 = ingest_files([first], store)
    (partial,) = _current(store)
    assert (night1.problems, partial.status) == (0, "interrupted"), night1.errors
    night2 = ingest_files([second], store)
    assert night2.problems == 0, night2.errors
    (got,) = _current(store)
    assert (got.status, got.error, _run_signature(got)) == ("completed", None, _run_signature(expected))
    assert (got.app, got.started_at, got.ended_at) == (expected.app, expected.started_at, expected.ended_at)
    assert [s.trajectory_id for s in got.steps] == [got.id] * got.num_steps
    assert night2.replaced == [partial.id]
    kept = store.get(partial.id)
    assert (kept.approval.status, kept.approval.by) == ("rejected", SUPERSEDED_BY) and got.id in kept.approval.reason
    for files in ([second], [first], [first, second]):  # read again, in any combination: nothing more
        again = ingest_files(files, store)
        assert (again.ingested, again.replaced, again.problems) == ([], [], 0), (files, again.notes, again.errors)
    assert [t.id for t in _current(store)] == [got.id]


def test_a_root_span_whose_run_was_not_ingested_is_not_a_run_and_says_so(tmp_path, store):
    """The graph's span alone, with nothing stored of its run: nothing to complete, one problem saying where the run's
    steps may be, not the claim that no span is one ingest understands (the span is OpenInference's)."""
    for fixture in ("rotation_openinference.jsonl", "rotation_openllmetry.jsonl"):
        _, second = _split(tmp_path, fixture, 14)
        report = ingest_files([second], store)
        assert (report.ingested, report.problems) == ([], 1)
        assert "ingest understands" not in report.errors[0] and "a rotated file may hold it alone" in report.errors[0], report.errors


def test_a_later_half_read_with_the_whole_run_stored_adds_nothing(tmp_path, store):
    """The whole run stored, its later half alone read again (its file ingested once more) holds no decision the
    stored run lacks: already stored, as before."""
    first, second = _split(tmp_path, "rotation_openai_v2.jsonl", 2)
    (whole,) = ingest_files([first, second], store).ingested
    again = ingest_files([second], store)
    assert (again.ingested, again.replaced, again.already_stored) == ([], [], [whole])


def _one_call_per_file(tmp_path: Path, calls: int) -> list[Path]:
    """A long OpenInference agent run of ``calls`` model calls (each after the first given the whole history before it)
    whose spans lie in as many files, one call each, the agent's span (the root: it ends last) in the last one, as a
    Collector rotating its file after each call writes them."""
    trace, agent_id = "7" * 32, "7000000000000001"
    history: dict[str, Any] = {
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "You count.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.content": "Count to the end.",
    }
    files = []
    for i in range(calls):
        attrs = {"openinference.span.kind": "LLM", "llm.model_name": "m", **history}
        out = "llm.output_messages.0.message"
        attrs[f"{out}.role"] = "assistant"
        if i < calls - 1:
            call = {"tool_call.id": f"c{i}", "tool_call.function.name": "step", "tool_call.function.arguments": json.dumps({"n": i})}
            attrs.update({f"{out}.tool_calls.0.{k}": v for k, v in call.items()})
            at = len(history) // 2
            history.update({f"llm.input_messages.{at}.message.role": "assistant"})
            history.update({f"llm.input_messages.{at}.message.tool_calls.0.{k}": v for k, v in call.items()})
            history.update(
                {
                    f"llm.input_messages.{at + 1}.message.role": "tool",
                    f"llm.input_messages.{at + 1}.message.tool_call_id": f"c{i}",
                    f"llm.input_messages.{at + 1}.message.content": f"done {i}",
                }
            )
        else:
            attrs[f"{out}.content"] = "All counted."
        spans = [_span(f"{0x7100 + i:016x}", "ChatCompletion", attrs, parent=agent_id, start=10 + 100 * i, end=60 + 100 * i, trace=trace)]
        if i == calls - 1:
            spans.append(
                _span(agent_id, "agent", {"openinference.span.kind": "AGENT", "input.value": "go"}, start=0, end=100 * calls, trace=trace)
            )
        files.append(_write(tmp_path / f"spans-{i:02d}.json", _request(spans)))
    return files


def test_a_long_run_read_one_file_per_ingest_newest_first_keeps_one_live_version(tmp_path, store):
    """Defect (ae9ad9f): each ingest merged one more decision into a version with the same messages, named v{c} and
    v{c}.0 to v{c}.7; the 10th such version reused an id already stored, which the supersede step then rejected: from the
    11th ingest on the run had no live trajectory at all (every version rejected), silently. Now every version gets an
    id never stored before, and every ingest leaves one live trajectory holding every decision read so far."""
    calls = 13
    files = _one_call_per_file(tmp_path, calls)
    whole = type(store)(tmp_path / "whole")
    ingest_files(files, whole)
    (expected,) = whole.iter_trajectories()
    assert expected.num_steps == calls
    stored: set[str] = set()
    for n, path in enumerate(reversed(files), start=1):
        report = ingest_files([path], store)
        assert report.problems == 0, report.errors
        (written,) = report.ingested
        assert written not in stored, f"ingest {n} stored its version under an id already stored"
        stored.add(written)
        (live,) = _current(store)
        assert (live.id, live.num_steps) == (written, n)
    assert _run_signature(live) == _run_signature(expected)
    again = ingest_files(files, store)
    assert (again.ingested, again.replaced, again.problems) == ([], [], 0), again.notes


def _spans_by_end(fixture: str) -> list[dict[str, Any]]:
    """Each span of ``fixture`` as a request of its own, in the order the spans ended (as an exporter writes them)."""
    requests = []
    for line in (FIXTURES / fixture).read_text(encoding="utf-8").splitlines():
        request = json.loads(line)
        for resource in request["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:
                    requests.append(
                        {
                            "resourceSpans": [
                                {
                                    "resource": resource.get("resource", {}),
                                    "scopeSpans": [{"scope": scope.get("scope", {}), "spans": [span]}],
                                }
                            ]
                        }
                    )
    return sorted(requests, key=lambda r: int(r["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["endTimeUnixNano"]))


def test_a_run_merged_from_a_piece_below_its_root_is_found_when_the_whole_file_is_read_again(tmp_path, store):
    """Defect (ae9ad9f): the later half (the root span's) stored first, then the first half, read as a run under a node
    span (its root not read: it looks ended), merged into a version named after a version of the piece's merge rather than
    the run's; reading the whole file again (`ee traces ingest /data/otlp/*.json` each night) did not find it as the same
    run and stored a second live copy with the same 3 decisions, both trained on. Now the merge is named after the version
    that read the run's root span, and reading the files again, in any combination, adds nothing."""
    requests = _spans_by_end("openinference_langgraph.jsonl")
    cut = 13  # the file rotated after the first model call's node and tools spans, inside the second call's node
    whole = _write(tmp_path / "whole.json", *requests)
    first, later = _write(tmp_path / "spans-1.json", *requests[:cut]), _write(tmp_path / "spans-2.json", *requests[cut:])
    reference = type(store)(tmp_path / "whole")
    ingest_files([whole], reference)
    expected = sorted((t.id, t.num_steps) for t in reference.iter_trajectories())
    ingest_files([later], store)
    night2 = ingest_files([first], store)
    assert night2.problems == 0, night2.errors
    assert sorted(t.num_steps for t in _current(store)) == [n for _, n in expected]
    live = sorted(t.id for t in _current(store))
    for files in ([whole], [first, later], [later], [first]):
        again = ingest_files(files, store)
        assert (again.ingested, again.replaced, again.problems) == ([], [], 0), (files, again.notes)
    assert sorted(t.id for t in _current(store)) == live


class _CountingStore(LocalExperienceStore):
    """The local store, counting its full reads (every table: what each get(), trajectories() or decide() costs)."""

    loads = 0

    def _load(self, *args: Any, **kwargs: Any) -> Any:
        self.loads += 1
        return super()._load(*args, **kwargs)


def _night2_reads(folder: Path, runs: int) -> int:
    """How many times the second night reads the whole store, merging ``runs`` runs whose first halves the first stored."""
    lines = (FIXTURES / "rotation_openai_v2.jsonl").read_text(encoding="utf-8").splitlines()
    trace = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
    first, later = [], []
    for n in range(1, runs + 1):
        copy = [line.replace(trace, f"{n:032x}") for line in lines]
        first += copy[:2]
        later += copy[2:]
    folder.mkdir()
    (folder / "spans-1.json").write_text("\n".join(first) + "\n", encoding="utf-8")
    (folder / "spans-2.json").write_text("\n".join(later) + "\n", encoding="utf-8")
    store = _CountingStore(folder / "store")
    ingest_files([folder / "spans-1.json"], store)
    store.loads = 0
    night2 = ingest_files([folder / "spans-2.json"], store)
    loads = store.loads
    assert (night2.problems, len(night2.ingested), len(night2.replaced)) == (0, runs, runs), night2.errors
    assert [t.num_steps for t in _current(store)] == [3] * runs
    return loads


def test_merging_runs_reads_the_store_as_often_for_one_run_as_for_several(tmp_path):
    """Defect (ae9ad9f): each merged run read the whole store again (store.get per stored version: every table), on top
    of the three reads of each superseded version's decide(): 800 stored runs, 5 merges: 8.6 s before ae9ad9f, 16.7 s
    after; 3000 runs, 10 merges: 82 s, then 226 s. Now the stored versions a night merges come from one read of the
    steps of the traces it reads, and the superseded ones are rejected in one decision: the reads do not grow with the
    runs merged."""
    one, several = _night2_reads(tmp_path / "one", 1), _night2_reads(tmp_path / "several", 6)
    assert several == one, f"{one} full reads of the store to merge 1 run, {several} to merge 6"


def test_an_approval_carried_over_to_a_merged_run_names_the_decisions_it_did_not_see(tmp_path, store):
    """The most complete version's approval carries over (the README's rule); the note now says which decisions of the
    run stored now the reviewer never saw, so that they can be reviewed."""
    first, second = _split(tmp_path, "rotation_openai_v2.jsonl", 2)
    (partial,) = ingest_files([first], store).ingested
    store.approve([partial], by="alice", reason="looks right")
    night2 = ingest_files([second], store)
    (whole,) = night2.ingested
    got = store.get(whole)
    assert (got.approval.status, got.approval.by) == ("approved", "alice")
    [note] = [n for n in night2.notes if "given without" in n]
    assert f"the approval of {partial} by alice is carried over to {whole}" in note
    assert "without 1 of its decisions (step 2 (the answer))" in note and f"ee traces show {whole}" in note


# (fixture, cut) where the first file ends with the run's last model span, its node span and the graph's root in the
# second: read alone, the first file holds two pieces of the run (the earlier nodes under the missing root, the last
# model call under its missing node span), each stored interrupted
NODE_AFTER_MODEL = [
    ("rotation_openinference_create_agent.jsonl", 5),  # [tool_call] and [answer]
    ("rotation_openllmetry_two_nodes.jsonl", 3),  # two model calls, no tools: [answer] and [answer]
]


@pytest.mark.parametrize(("fixture", "cut"), NODE_AFTER_MODEL)
def test_pieces_of_a_run_completed_by_the_same_later_spans_are_one_run(tmp_path, store, fixture, cut):
    """Defect (sweep H4, finding 2): the file rotated between the last model span and its graph node's span. The first
    ingest stored two pieces of the run; the second read the node's span and the graph's root (no model call) and
    completed each piece on its own: the last model call's piece as a `completed` run of one step, the other left
    `interrupted`: two live trajectories for one run, the first decision never in a completed one. Now the pieces those
    spans join under one root are merged into one run, stored as the run read whole is, both pieces superseded."""
    whole = type(store)(tmp_path / "whole")
    ingest_files([FIXTURES / fixture], whole)
    (expected,) = whole.iter_trajectories()
    first, second = _split(tmp_path, fixture, cut)
    night1 = ingest_files([first], store)
    assert (night1.problems, len(night1.ingested)) == (0, 2), night1.errors
    night2 = ingest_files([second], store)
    assert night2.problems == 0, night2.errors
    (got,) = _current(store)
    assert (got.status, got.error, _run_signature(got)) == ("completed", None, _run_signature(expected))
    assert decided_by_run(got) == decided_by_run(expected), "every decision of the run is taught"
    assert (got.app, got.started_at, got.ended_at) == (expected.app, expected.started_at, expected.ended_at)
    assert [s.trajectory_id for s in got.steps] == [got.id] * got.num_steps
    assert sorted(night2.replaced) == sorted(night1.ingested)
    for old in night2.replaced:
        kept = store.get(old)
        assert (kept.approval.status, kept.approval.by) == ("rejected", SUPERSEDED_BY) and got.id in kept.approval.reason
    for files in ([second], [first], [first, second]):  # read again, in any combination: nothing more
        again = ingest_files(files, store)
        assert (again.ingested, again.replaced, again.problems) == ([], [], 0), (files, again.notes, again.errors)
    assert [t.id for t in _current(store)] == [got.id]


TOOL_ERRORS = ["rotation_openinference_tool_error.jsonl", "rotation_openllmetry_tool_error.jsonl"]


@pytest.mark.parametrize("fixture", TOOL_ERRORS)
def test_a_later_part_read_alone_keeps_the_calls_its_tool_spans_ran(tmp_path, store, fixture):
    """Defect (sweep H4, finding 5): the later part of a rotated file read alone (the earlier one lost, or only today's
    file ingested), every span of the run but its first model span: the run was stored `completed`, with no note, with
    only its answer as a step, though its messages show the tool call and its tool span (with the tool's error) was
    read. Now the call is a step, read from the later model call's history and its tool span, as a resumed run's
    reviewed turn is, and a note names the model span not read: the run read whole, but for that call's model latency."""
    whole = type(store)(tmp_path / "whole")
    ingest_files([FIXTURES / fixture], whole)
    (expected,) = whole.iter_trajectories()
    _, later = _split(tmp_path, fixture, 1)
    report = ingest_files([later], store)
    assert report.problems == 0, report.errors
    (got,) = _current(store)
    assert (got.id, got.status, _run_signature(got)) == (expected.id, "completed", _run_signature(expected))
    assert [s.observation.is_error for s in got.steps if s.observation] == [True]
    (note,) = [n for n in report.notes if "is not among the spans read" in n]
    call = got.steps[0].action.tool_call
    assert f"{call.name} ({call.id})" in note


@pytest.mark.parametrize("fixture", TOOL_ERRORS)
def test_without_a_sign_of_a_missing_model_call_a_tool_call_before_the_first_model_call_is_no_step(tmp_path, store, fixture):
    """The later part of a file cut between the first model node's span and the tool's span, read alone: its spans show
    no model call missing (the node that made the call is in the other part), so the tool call before its first model
    span reads as an app's own (a node that writes a call to force a tool, as LangGraph's SQL agent does), as capture
    records it: no step, no note (and a cut there loses the tool's error flag when the parts are joined)."""
    _, second = _split(tmp_path, fixture, 2)
    report = ingest_files([second], store)
    assert report.problems == 0, report.errors
    (got,) = _current(store)
    assert [s.action.kind for s in got.steps] == ["answer"]
    assert not [n for n in report.notes if "is not among the spans read" in n]


@pytest.mark.parametrize("order", ["first-half-first", "later-half-first"])
@pytest.mark.parametrize("cut", [1, 3])  # (2: see the test above)
@pytest.mark.parametrize("fixture", TOOL_ERRORS)
def test_a_tool_error_survives_a_run_split_between_two_ingests(tmp_path, store, fixture, cut, order):
    """Defect (sweep H4, finding 4): the file rotated right after the run's first model span (or its node's span), the
    parts ingested one after the other in either order: the merged run's tool call observed the tool message of its
    messages, which carries no error flag (`is_error=False`), and the later part's tool span, which does, was no step of
    it. Now the later part reads the call from its tool span, with its error, and the merged run keeps the model's own
    step (from the earlier part, with its model latency) observing that span: the run read whole."""
    whole = type(store)(tmp_path / "whole")
    ingest_files([FIXTURES / fixture], whole)
    (expected,) = whole.iter_trajectories()
    first, second = _split(tmp_path, fixture, cut)
    for path in [first, second] if order == "first-half-first" else [second, first]:
        report = ingest_files([path], store)
        assert report.problems == 0, report.errors
    (got,) = _current(store)
    assert (got.status, _run_signature(got)) == ("completed", _run_signature(expected))
    assert [s.observation.is_error for s in got.steps if s.observation] == [True]
    if order == "first-half-first":
        assert [s.model_latency_ms for s in got.steps] == [s.model_latency_ms for s in expected.steps]
    for files in ([first, second], [first], [second]):  # read again, in any combination: nothing more
        again = ingest_files(files, store)
        assert (again.ingested, again.replaced, again.problems) == ([], [], 0), (files, again.notes, again.errors)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.jsonl")))
def test_no_run_read_whole_shows_a_model_call_missing(fixture):
    """Every real trace read whole: no run's spans say a model call was lost (review of b34b584: create_react_agent's
    prompt step, a span inside the model's node that ends before the model span, was taken for the node's own span, so
    nearly every such run was read as missing a call, and an app's own tool call before the first model call became a
    step)."""
    from collections import defaultdict

    from ee_middleware.ingest.otlp_json import read_otlp_json
    from ee_middleware.ingest.runs import group_runs, lost_model_calls

    traces = defaultdict(list)
    for span in read_otlp_json(FIXTURES / fixture).spans:
        traces[span.trace_id].append(span)
    assert not [trace_id for trace_id, spans in traces.items() for run in group_runs(trace_id, spans).runs if lost_model_calls(run)]


def test_an_apps_own_tool_call_before_the_first_model_call_is_no_step_in_a_run_read_whole(tmp_path, store):
    """The real create_react_agent trace (rotation_openinference.jsonl) without its first agent node's spans, as if a node
    of the app had written the first call (LangGraph's SQL agent does so to force a tool): read in one ingest, nothing
    missing, that call is no step of the model's, and no note says a model span is missing (review of b34b584: it was
    read as a step, with that note)."""
    first_agent_node = ("2475aa", "2b99ab", "fad1b7", "0f7f36", "0c3364", "ce5c5c")
    lines = []
    for line in (FIXTURES / "rotation_openinference.jsonl").read_text().splitlines():
        request = json.loads(line)
        for resource in request["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                scope["spans"] = [s for s in scope["spans"] if not s["spanId"].startswith(first_agent_node)]
        lines.append(json.dumps(request))
    forced = tmp_path / "forced.jsonl"
    forced.write_text("\n".join(lines) + "\n")
    report = ingest_files([forced], store)
    assert report.problems == 0, report.errors
    (got,) = _current(store)
    assert [s.action.kind for s in got.steps] == ["answer"]
    assert not [n for n in report.notes if "is not among the spans read" in n]
