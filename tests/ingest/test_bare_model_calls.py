"""Model calls traced each in a trace of its own, with nothing around them, are joined into the runs they make.

OpenTelemetry's OpenAI v2 instrumentation alone, with no span of the app around ``graph.invoke``, writes every model call
of a LangGraph agent as a trace of one ``chat`` span: no agent span, no tool spans, no thread. Each call became a
trajectory of its own (4 runs gave 9, each ``completed`` or ``interrupted`` by its single decision; a call's tool results
were in no step, though the next call's history holds them), with no word in the report. A call whose history is an
earlier call's history, its reply and the results of the tools that reply asked for goes on with it: the calls of one
run are one trajectory, its observations read from the next call's history, as with the app's span around the run. A
new user message after an answer (the thread's next turn) starts a run of its own.

Fixtures: the ingest sweep's real recording (``fixtures/openai_v2_no_app_span.meta.json``), and the second of its turns
recorded with the app's span around the run (``rotation_openai_v2.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.store.approvals import decide
from tests.ingest.test_instrumentations import _steps

FIXTURES = Path(__file__).parent / "fixtures"
CALLS = FIXTURES / "openai_v2_no_app_span.jsonl"
META = json.loads((FIXTURES / "openai_v2_no_app_span.meta.json").read_text(encoding="utf-8"))
SUPERSEDED_BY = "ee traces ingest"  # who rejects a partial version (ee_middleware.ingest.service.SUPERSEDED_BY)


def _runs(store: Any) -> list[Any]:
    return sorted((t for t in store.iter_trajectories() if t.approval.status != "rejected"), key=lambda t: t.started_at)


def _step_fields(trajectory: Any) -> list[dict[str, Any]]:
    return [s.model_dump(exclude={"trajectory_id", "latency_ms", "model_latency_ms"}) for s in trajectory.steps]


def test_calls_without_a_span_around_them_make_one_trajectory_per_run(store):
    report = ingest_files([CALLS], store)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 4, 4), report.errors
    runs = _runs(store)
    assert [t.task for t in runs] == META["turns"]
    assert [t.status for t in runs] == ["completed"] * 4
    weather, booking, tokyo, calc = runs
    assert [(s.action.tool_call.name if s.action.tool_call else s.action.content) for s in weather.steps] == [
        "get_weather",
        "search_hotels",
        "In Zürich ist es sonnig (22 °C). Günstigstes Hotel: H-1 für 97 CHF.",
    ]
    assert weather.steps[0].observation.content == "Zürich: sonnig, 22 °C ☀"
    hotels = json.loads(weather.steps[1].observation.content)  # the whole hotel list the model was given
    assert len(weather.steps[1].observation.content) > 8000 and [h["id"] for h in hotels] == [f"H-{i}" for i in range(1, 25)]
    assert _steps(booking) == [
        (
            "book_room",
            {"hotel_id": "H-7", "nights": 3},
            "Error: ValueError('Hotel H-7 ist ausgebucht — 満室 (fully booked)')\n Please fix your mistakes.",
            False,
        ),
        ("book_room", {"hotel_id": "H-2", "nights": 3}, "Gebucht: H-2, 3 Nächte, Bestätigung #ZRH-37", False),
        ("answer", "H-7 war ausgebucht; ich habe H-2 für 3 Nächte gebucht (#ZRH-37)."),
    ]
    assert _steps(tokyo) == [("get_weather", {"city": "東京"}, "東京: 雨、18 °C ☔", False), ("answer", "In 東京 regnet es, 18 °C ☔.")]
    assert _steps(calc) == [("add", {"a": 2.5, "b": 4}, "6.5", False), ("answer", "2.5 + 4 = 6.5")]
    assert calc.model == "calc-model" and {t.model for t in runs[:3]} == {"travel-model"}
    (note,) = report.notes
    assert "9 model call(s) were each a trace of its own" in note and "4 run(s)" in note and "start_as_current_span" in note


def test_a_run_joined_from_its_calls_is_the_run_traced_under_the_apps_span(tmp_path, store):
    """The booking turn, joined from its three traces, has the messages and steps (states, actions, observations, tools)
    of the same turn recorded with the app's span ``handle_turn`` around the run."""
    ingest_files([CALLS], store)
    booking = _runs(store)[1]
    spanned = type(store)(tmp_path / "spanned")
    assert ingest_files([FIXTURES / "rotation_openai_v2.jsonl"], spanned).problems == 0
    (expected,) = spanned.iter_trajectories()
    assert (booking.task, booking.messages, booking.tools) == (expected.task, expected.messages, expected.tools)
    assert _step_fields(booking) == _step_fields(expected)


def _store_each_call_apart(tmp_path: Path, store: Any) -> None:
    """Each call of :data:`CALLS` stored as a trajectory of its own, as ingest stored every such call before (each read
    into a store of its own, then written to ``store``: an ingest now joins a call with the stored calls of its run)."""
    for n, line in enumerate(CALLS.read_text(encoding="utf-8").splitlines(keepends=True)):
        (tmp_path / f"call-{n}.json").write_text(line, encoding="utf-8")
        alone = type(store)(tmp_path / f"alone-{n}")
        assert ingest_files([tmp_path / f"call-{n}.json"], alone).problems == 0
        store.write(list(alone.iter_trajectories()))


def test_calls_read_in_several_ingests_are_stored_as_one_run_once_read_together(tmp_path, store):
    """Each call stored as a trajectory of its own (as ingest stored every such call before); read together
    later, the calls of a run are stored as one, and each single-call version is rejected as superseded by it. A
    reviewer's decision on one carries over; ingesting the calls again adds nothing."""
    _store_each_call_apart(tmp_path, store)
    singles = {t.id: t for t in store.iter_trajectories()}
    assert len(singles) == 9
    last_booking = next(t for t in singles.values() if t.final_answer and t.final_answer.startswith("H-7 war ausgebucht"))
    decide(store, [last_booking.id], "approved", by="reviewer", reason="good booking")
    report = ingest_files([CALLS], store)
    assert report.problems == 0, report.errors
    assert sorted(report.replaced) == sorted(singles)
    runs = _runs(store)
    assert [t.num_steps for t in runs] == [3, 3, 2, 2]
    booking = runs[1]
    assert (booking.approval.status, booking.approval.by) == ("approved", "reviewer")
    assert all((t.approval.status, t.approval.by) == ("rejected", SUPERSEDED_BY) for t in store.iter_trajectories() if t.id in singles)
    again = ingest_files([CALLS], store)
    assert (again.ingested, len(again.already_stored), again.replaced) == ([], 4, [])


def test_a_call_a_reviewer_rejected_keeps_the_run_joined_from_it_out_of_training(tmp_path, store):
    """Each call stored alone (as before): a reviewer rejects the one whose decision is book_room(H-7) (it failed) and approves the
    one holding the booking turn's final answer. Read together, the joined run took the decision of its longest part
    only: stored approved by the reviewer (so trained on) with the rejected book_room(H-7) step in it, and the rejection
    survived nowhere (that part became 'rejected by ee traces ingest, superseded'). Now the rejection carries over to
    the joined run, naming the part, its reason and the approval not carried over, also with --approve-by; both
    decisions stay in the parts' histories."""
    _store_each_call_apart(tmp_path, store)
    singles = list(store.iter_trajectories())
    h7 = next(t for t in singles if t.steps[-1].action.tool_call and t.steps[-1].action.tool_call.arguments.get("hotel_id") == "H-7")
    last = next(t for t in singles if t.final_answer and t.final_answer.startswith("H-7 war ausgebucht"))
    decide(store, [h7.id], "rejected", by="reviewer", reason="booked a full hotel: never do this")
    decide(store, [last.id], "approved", by="lead", reason="good final answer")
    report = ingest_files([CALLS], store, approve_by="ingest-bot")
    assert report.problems == 0, report.errors
    [booking] = [t for t in map(store.get, report.ingested) if t.task == META["turns"][1]]
    assert ("book_room", {"hotel_id": "H-7", "nights": 3}) in [
        (s.action.tool_call.name, s.action.tool_call.arguments) for s in booking.steps[:1]
    ]
    assert (booking.approval.status, booking.approval.by) == ("rejected", "reviewer")
    reason = booking.approval.reason
    assert "booked a full hotel: never do this" in reason and h7.id in reason
    assert last.id in reason and "lead" in reason, "the approval not carried over is named"
    assert store.approvals([h7.id])["by"].to_list() == ["reviewer", SUPERSEDED_BY]
    assert store.approvals([last.id])["by"].to_list() == ["lead", SUPERSEDED_BY]
    assert any(last.id in note and "not carried over" in note for note in report.notes)
    others = [t for t in map(store.get, report.ingested) if t.id != booking.id]
    assert [(t.approval.status, t.approval.by) for t in others] == [("approved", "ingest-bot")] * 3, "runs no reviewer decided on"


def test_a_run_whose_last_calls_are_read_later_is_completed_by_the_later_ingest(tmp_path, store):
    """The nightly ingest read the file while the booking turn was still written (its first two calls): stored as an
    interrupted run of two steps, replaced by the whole run once the file is read again."""
    lines = CALLS.read_text(encoding="utf-8").splitlines(keepends=True)
    first = tmp_path / "spans-1.json"
    first.write_text("".join(lines[:4]), encoding="utf-8")
    night1 = ingest_files([first], store)
    assert night1.problems == 0, night1.errors
    assert [(t.status, t.num_steps) for t in _runs(store)] == [("completed", 3), ("interrupted", 2)]
    night2 = ingest_files([first, CALLS], store)
    assert (night2.problems, len(night2.replaced), len(night2.already_stored)) == (0, 1, 1), night2.errors
    assert [(t.status, t.num_steps) for t in _runs(store)] == [("completed", 3), ("completed", 3), ("completed", 2), ("completed", 2)]


def _run_signature(trajectory: Any) -> tuple[Any, ...]:
    return (trajectory.status, trajectory.task, trajectory.messages, trajectory.final_answer, trajectory.tools, _step_fields(trajectory))


@pytest.mark.parametrize("order", ["oldest first", "newest first"])
def test_calls_ingested_one_per_ingest_are_joined_with_the_stored_calls_of_their_run(tmp_path, store, order):
    """Defect (sweep H4, finding 1): a Collector file rotated between two calls of a run, each file ingested alone, left
    the calls read in one ingest as a run of their own beside those of the other (an `interrupted` run of the first
    calls, a `completed` one of the rest that starts mid-way, nothing superseded): the runs were joined only among the
    calls read in one ingest. Now a run of bare calls read now is joined with the stored runs of bare calls of other
    traces that it goes on with (or that go on with it), as the calls read together are: each ingest leaves the runs read
    so far, and the last one the runs read whole, each once, named as they are; reading the calls again adds nothing."""
    whole = type(store)(tmp_path / "whole")
    ingest_files([CALLS], whole)
    expected = sorted((_run_signature(t) for t in _runs(whole)), key=repr)
    files = []
    for n, line in enumerate(CALLS.read_text(encoding="utf-8").splitlines(keepends=True)):
        files.append(tmp_path / f"call-{n}.json")
        files[-1].write_text(line, encoding="utf-8")
    for path in files if order == "oldest first" else files[::-1]:
        report = ingest_files([path], store)
        assert report.problems == 0, report.errors
    assert sorted((_run_signature(t) for t in _runs(store)), key=repr) == expected
    live = sorted(t.id for t in _runs(store))
    for again in ([CALLS], *([path] for path in files)):
        report = ingest_files(again, store)
        assert (report.ingested, report.replaced, report.problems) == ([], [], 0), (again, report.notes)
    assert sorted(t.id for t in _runs(store)) == live


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_run_of_bare_calls_split_between_two_ingests_is_stored_whole(tmp_path, store, cut):
    """The calls file rotated at every line, the two files ingested one after the other, in either order: the runs read
    whole, each once (sweep H4, finding 1)."""
    whole = type(store)(tmp_path / "whole")
    ingest_files([CALLS], whole)
    expected = sorted((_run_signature(t) for t in _runs(whole)), key=repr)
    lines = CALLS.read_text(encoding="utf-8").splitlines(keepends=True)
    first, second = tmp_path / "calls-1.json", tmp_path / "calls-2.json"
    first.write_text("".join(lines[:cut]), encoding="utf-8")
    second.write_text("".join(lines[cut:]), encoding="utf-8")
    for name, nights in (("in order", [first, second]), ("newest first", [second, first])):
        split = type(store)(tmp_path / name)
        for path in nights:
            report = ingest_files([path], split)
            assert report.problems == 0, (name, report.errors)
        assert sorted((_run_signature(t) for t in _runs(split)), key=repr) == expected, name
        report = ingest_files([CALLS], split)
        assert (report.ingested, report.replaced, report.problems) == ([], [], 0), (name, report.notes)
