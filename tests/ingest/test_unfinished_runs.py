"""Runs whose process died: their root span never ended, so it is either not in the file (an SDK exports a span when
it ends) or written without an end time (exporters that write spans as they start). Such a run is stored with the
steps its finished spans show, as ``interrupted`` with the reason, never as a run that completed; the report says so
per run, and the other runs of the file are ingested as they are."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write
from tests.ingest.test_instrumentations import FIRST_RUN_STEPS, _steps

FIXTURES = Path(__file__).parent / "fixtures"
DONE_TRACE = "6b8efff798038103d269b633813fc60c"


def _with_a_finished_run(spans: list[dict]) -> dict:
    finished = copy.deepcopy(GENAI_FILE)
    for span in finished:
        span["traceId"] = DONE_TRACE
    return _request([*spans, *finished])


def _by_trace(store) -> dict:
    return {t.trace_id: t for t in store.iter_trajectories()}


@pytest.mark.parametrize("end", ["missing", "0"])
def test_a_root_span_written_without_an_end_time_is_an_interrupted_run(tmp_path, store, end):
    """Hand-built (no instrumentation here writes unended spans): before, a missing end was read as the start
    (stored 'completed'), an end of 0 rejected the span and skipped the run ("endTimeUnixNano (0) is before ...")."""
    spans = copy.deepcopy(GENAI_FILE)
    if end == "missing":
        del spans[0]["endTimeUnixNano"]
    else:
        spans[0]["endTimeUnixNano"] = "0"
    report = ingest_files([_write(tmp_path / "died.jsonl", _with_a_finished_run(spans))], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    died, done = _by_trace(store)[GENAI_FILE[0]["traceId"]], _by_trace(store)[DONE_TRACE]
    assert (done.status, done.error) == ("completed", None)
    assert died.status == "interrupted" and "'invoke_agent billing' (a000000000000001) never ended" in died.error
    assert len(died.steps) == 2, "the steps its finished spans show are kept"
    assert len(report.unfinished) == 1 and "invoke_agent billing" in report.unfinished[0] and "interrupted" in report.unfinished[0]


def test_a_run_whose_root_span_was_never_exported_is_interrupted_with_the_steps_it_has(tmp_path, store):
    """Hand-built: the root span and the last model call never ended (not in the file). Before, the run was stored as
    'completed' (one step, no final answer)."""
    spans = copy.deepcopy(GENAI_FILE[1:3])
    report = ingest_files([_write(tmp_path / "died.jsonl", _with_a_finished_run(spans))], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    died = _by_trace(store)[GENAI_FILE[0]["traceId"]]
    assert died.status == "interrupted" and "a000000000000001" in died.error and "not among the spans read" in died.error
    assert (len(died.steps), died.final_answer) == (1, None)
    assert _by_trace(store)[DONE_TRACE].status == "completed"
    assert len(report.unfinished) == 1


def test_a_strands_agent_that_died_mid_run_is_interrupted(tmp_path, store):
    """The real Strands file, cut as a crash cuts it: the second run's agent span and its last cycle (and the model
    call in it) never ended, so they are not in the file. Before, it was stored as a completed run."""
    first, second = (json.loads(line) for line in (FIXTURES / "strands_shop.jsonl").read_text().splitlines())
    spans = [s for rs in second["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    cycles = sorted((s for s in spans if s["name"] == "execute_event_loop_cycle"), key=lambda s: int(s["startTimeUnixNano"]))
    gone = {cycles[-1]["spanId"]} | {s["spanId"] for s in spans if s["name"] == "invoke_agent Strands Agents"}
    gone |= {s["spanId"] for s in spans if s.get("parentSpanId") == cycles[-1]["spanId"]}
    for rs in second["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = [s for s in ss["spans"] if s["spanId"] not in gone]
    report = ingest_files([_write(tmp_path / "died.jsonl", first, second)], store)
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    done, died = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert (done.status, _steps(done)) == ("completed", FIRST_RUN_STEPS)
    assert died.status == "interrupted" and "never ended" in died.error
    assert [s[0] for s in _steps(died)] == ["check_stock", "order"] and died.final_answer is None


def test_the_cli_says_which_run_never_ended_and_exits_0(tmp_path):
    spans = copy.deepcopy(GENAI_FILE)
    del spans[0]["endTimeUnixNano"]
    path = _write(tmp_path / "died.jsonl", _with_a_finished_run(spans))
    result = CliRunner().invoke(app, ["traces", "ingest", str(path), "--store", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "2 ingested" in result.output and "note: Trace" in result.output and "stored as interrupted" in result.output


@pytest.mark.parametrize("unit", ["microseconds", "milliseconds"])
def test_span_times_written_in_micro_or_milliseconds_are_refused_naming_the_unit(tmp_path, store, unit):
    """Before: accepted as nanoseconds, a run of 1970-01-20 (microseconds) or 1970-01-01 (milliseconds) was stored; its
    held-out time rules, watermarks and listings all wrong. The other runs of the file are ingested as they are."""
    spans = copy.deepcopy(GENAI_FILE)
    divisor = 1000 if unit == "microseconds" else 1_000_000
    for span in spans:
        for key in ("startTimeUnixNano", "endTimeUnixNano"):
            span[key] = str(int(span[key]) // divisor)
    report = ingest_files([_write(tmp_path / "units.jsonl", _with_a_finished_run(spans))], store)
    assert [t.trace_id for t in store.iter_trajectories()] == [DONE_TRACE], "only the run in nanoseconds"
    said = " ".join(report.errors)
    assert f"read as nanoseconds: a time in {unit} (20" in said and "OTLP times are nanoseconds since 1970" in said, report.errors


def test_an_end_time_in_microseconds_is_refused_where_no_start_was_set(tmp_path, store):
    """(the note's Left list) With startTimeUnixNano 0 (unset), an end written in microseconds was not checked."""
    spans = copy.deepcopy(GENAI_FILE)
    for span in spans:
        span["startTimeUnixNano"] = "0"
        span["endTimeUnixNano"] = str(int(span["endTimeUnixNano"]) // 1000)
    report = ingest_files([_write(tmp_path / "ends.jsonl", _with_a_finished_run(spans))], store)
    assert [t.trace_id for t in store.iter_trajectories()] == [DONE_TRACE], "only the run in nanoseconds"
    said = " ".join(report.errors)
    assert "endTimeUnixNano (" in said and "read as nanoseconds: a time in microseconds (20" in said, report.errors
