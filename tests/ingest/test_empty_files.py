"""A file that holds no span is a problem whatever form its emptiness takes (sweep s17, F5): an empty file was one,
while ``[]`` (a list of no export request) and requests holding no span were read as 0 spans, 0 problems, exit 0, so a
mistaken export went unnoticed in a nightly ``ingest && improve``."""

from __future__ import annotations

import gzip
import json

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write

EXPECTED = "expected OTLP JSON"


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("", "the file is empty"),
        ("[]", "holds an empty JSON list ([]), no export request"),
        ("[]\n", "holds an empty JSON list ([]), no export request"),
        ("[\n  []\n]\n", "holds an empty JSON list ([]), no export request"),
        (json.dumps({"resourceSpans": []}), "holds 1 export request(s) with no span in them"),
        (json.dumps([{"resourceSpans": [{"scopeSpans": [{"spans": []}]}]}, {"resourceSpans": []}]), "holds 2 export request(s)"),
    ],
    ids=["empty", "list", "list-line", "nested-lists", "request", "requests"],
)
def test_a_file_without_spans_is_one_problem_naming_it_and_what_was_expected(tmp_path, store, content, said):
    path = tmp_path / "export.json"
    path.write_text(content)
    good = _write(tmp_path / "good.jsonl", _request(GENAI_FILE))
    report = ingest_files([path, good], store)
    assert report.problems == 1 and len(report.ingested) == 1, report.errors
    assert report.errors[0].startswith(f"{path}: ") and said in report.errors[0] and EXPECTED in report.errors[0]


def test_a_gzipped_empty_list_is_a_problem_too(tmp_path, store):
    path = tmp_path / "export.json.gz"
    path.write_bytes(gzip.compress(b"[]"))
    report = ingest_files([path], store)
    assert report.problems == 1 and "empty JSON list" in report.errors[0]


def test_a_file_whose_spans_were_all_bad_has_their_problems_only(tmp_path, store):
    spans = json.loads(json.dumps(GENAI_FILE))
    for span in spans:
        span["spanId"] = "short"
    report = ingest_files([_write(tmp_path / "bad.jsonl", _request(spans))], store)
    assert report.problems == len(spans) and not any("no span in them" in e for e in report.errors)


def test_the_cli_exits_1_on_an_empty_list_as_on_an_empty_file(tmp_path):
    for name, content in (("list.json", "[]"), ("empty.jsonl", "")):
        path = tmp_path / name
        path.write_text(content)
        result = CliRunner().invoke(app, ["traces", "ingest", str(path), "--store", str(tmp_path / "s"), "--json"])
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        assert report["problems"] == 1 and name in report["errors"][0], report
