"""The OTLP shape checks (otlp_schema.py): the problem lines they give never quote a span's values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write

FIXTURE = Path(__file__).parent / "fixtures" / "openinference_langgraph.jsonl"
EMAIL, IBAN, PHONE = "anna.schmidt@kundenmail.de", "DE44500105175407324931", "+49 151 2345 6789"


def _spans(request: dict) -> list[dict]:
    return [span for resource in request["resourceSpans"] for scope in resource["scopeSpans"] for span in scope["spans"]]


def _damaged(tmp_path: Path) -> Path:
    """The real OpenInference recording with three spans damaged by a broken exporter or hand edit: a trace id that is
    an e-mail, a start time that is a phone number, an attribute whose object value is an IBAN."""
    requests = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    first, second, third = _spans(requests[0])[:3]
    first["traceId"] = EMAIL
    second["startTimeUnixNano"] = PHONE
    third["attributes"][0]["value"] = {"kvlistValue": IBAN}
    path = tmp_path / "damaged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def test_problem_lines_name_the_field_and_what_was_found_without_its_value(tmp_path: Path) -> None:
    """Defect: ``ee traces ingest`` printed "traceId 'anna.schmidt@...' is neither ..." and "(found the string
    'DE44500105175407324931')" to the terminal and in ``--json``: the values the store's redaction keeps out of the store
    went to CI logs. Problem lines now say what was found by its type and length."""
    damaged = _damaged(tmp_path)
    runner = CliRunner()
    printed = runner.invoke(app, ["traces", "ingest", str(damaged), "--store", str(tmp_path / "s")], env={"COLUMNS": "400"})
    as_json = runner.invoke(app, ["traces", "ingest", str(damaged), "--store", str(tmp_path / "s2"), "--json"])
    assert printed.exit_code == as_json.exit_code == 1, printed.output
    errors = json.loads(as_json.stdout)["errors"]
    joined = "\n".join(errors)
    assert "traceId (a string of 26 characters) is neither 32 hex digits nor base64 of 16 bytes" in joined
    assert "startTimeUnixNano: must be an unsigned integer (nanoseconds since the epoch) (found a string of 17 characters)" in joined
    assert "value.kvlistValue: input should be a valid dictionary or instance of KeyValueList (found a string of 22 characters)" in joined
    for value in (EMAIL, IBAN, PHONE):
        assert value not in printed.output and value not in as_json.output, value


def test_problem_lines_quote_a_spans_name_redacted(tmp_path: Path) -> None:
    """A span's name is quoted to say which span could not be read; an instrumentation may make it from the request
    (``GET /customers/anna.schmidt@...``): it went to the terminal and ``--json`` raw (a privacy sweep). It is quoted as
    the store would show it."""
    requests = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    span = _spans(requests[0])[1]
    span["name"] = f"GET /customers/{EMAIL}"
    span["startTimeUnixNano"] = "soon"
    path = tmp_path / "named.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    as_json = CliRunner().invoke(app, ["traces", "ingest", str(path), "--store", str(tmp_path / "s"), "--json"])
    errors = "\n".join(json.loads(as_json.stdout)["errors"])
    assert EMAIL not in as_json.output and "('GET /customers/[REDACTED:email" in errors, errors


@pytest.mark.parametrize("zeros", ["0000000000000000", "AAAAAAAAAAA="], ids=["hex", "base64"])
def test_a_root_whose_parent_span_id_is_all_zeros_is_a_root(tmp_path: Path, zeros: str) -> None:
    """Defect: older .NET and Java OTLP exporters, OpenCensus bridges and some converters write a root span's parent as
    the invalid span id (all zeros) instead of leaving it empty; ingest rejected that span and with it its whole run, so
    every run of such an exporter was lost (exit 1, nothing stored). All zeros there now means no parent, as the SDKs
    read it; the run is stored as it is with the field empty."""
    spans = [dict(span) for span in GENAI_FILE]
    spans[0]["parentSpanId"] = zeros
    report = ingest_files([_write(tmp_path / "zeros.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "zeros"))
    plain = ingest_files([_write(tmp_path / "plain.jsonl", _request(GENAI_FILE))], LocalExperienceStore(tmp_path / "plain"))
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    (got,) = LocalExperienceStore(tmp_path / "zeros").iter_trajectories()
    (expected,) = LocalExperienceStore(tmp_path / "plain").iter_trajectories()
    assert (got.id, got.status, got.messages, got.num_steps) == (expected.id, expected.status, expected.messages, expected.num_steps)
    assert plain.problems == 0


@pytest.mark.parametrize(("field", "zeros"), [("traceId", "0" * 32), ("spanId", "0" * 16), ("spanId", "AAAAAAAAAAA=")])
def test_an_all_zero_trace_or_span_id_stays_an_error(tmp_path: Path, field: str, zeros: str) -> None:
    """A span's own ids all zeros are invalid (OTLP): the span cannot be told apart or joined to its run."""
    spans = [dict(span) for span in GENAI_FILE]
    spans[2][field] = zeros
    report = ingest_files([_write(tmp_path / "bad.jsonl", _request(spans))], LocalExperienceStore(tmp_path / "s"))
    assert report.problems >= 1
    assert any(f"{field} is all zeros, which OTLP defines as invalid" in error for error in report.errors), report.errors


def test_protobuf_field_names_are_refused_saying_how_to_export_otlp_json(tmp_path: Path) -> None:
    """protobuf's MessageToJson(preserving_proto_field_name=True) writes resource_spans, scope_spans, ...: refused as a
    whole file, as the OTLP spec says, but the message said only which keys it found (a sweep); it says how to export."""
    path = tmp_path / "snake.json"
    path.write_text(json.dumps({"resource_spans": [{"scope_spans": [{"spans": []}]}]}) + "\n")
    report = ingest_files([path], LocalExperienceStore(tmp_path / "s"))
    assert any("lowerCamelCase" in e and "preserving_proto_field_name" in e for e in report.errors), report.errors
