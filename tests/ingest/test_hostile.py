"""Hostile OTLP files fail alone: one clear problem each, the good file beside them is ingested.

Each case was found by an adversarial review (issue 10, item 6) and failed before ingest checked the
OTLP shapes: a RecursionError that stopped the whole command, a file that was not OTLP read as
"0 problems", a malformed message stored as an empty one, a status ignored, one line per byte of junk.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.service import MAX_LISTED_PER_FILE
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write


def _genai_spans(trace: str) -> list[dict[str, Any]]:
    spans = copy.deepcopy(GENAI_FILE)
    for span in spans:
        span["traceId"] = trace
    return spans


def _set_attr(span: dict[str, Any], key: str, value: Any) -> None:
    for item in span["attributes"]:
        if item["key"] == key:
            item["value"] = {"stringValue": json.dumps(value)}


def _ingest_beside_good(tmp_path: Path, store: LocalExperienceStore, name: str, content: str | bytes) -> Any:
    bad = tmp_path / name
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    good = _write(tmp_path / "good.jsonl", _request(GENAI_FILE))
    report = ingest_files([bad, good], store)
    stored = list(store.iter_trajectories())
    assert [t.task for t in stored] == ["Refund invoice 7"], f"the good file must be ingested alone: {report.errors}"
    return report


def _nested_kvlist(depth: int) -> str:
    return '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth + '{"stringValue": "leaf"}' + "}]}}" * depth


def test_100000_nested_brackets_are_one_problem_and_the_good_file_is_ingested(tmp_path, store):
    report = _ingest_beside_good(tmp_path, store, "deep.json", "[" * 100_000)
    assert report.problems == 1
    assert "deep.json" in report.errors[0] and "nested too deeply" in report.errors[0]


def test_a_key_value_list_nested_400_deep_is_one_problem(tmp_path, store):
    deep = copy.deepcopy(GENAI_FILE[0])
    deep.update(traceId="9" * 32, attributes="@DEEP@")
    text = json.dumps(_request([deep])).replace('"@DEEP@"', '[{"key": "deep", "value": ' + _nested_kvlist(400) + "}]")
    report = _ingest_beside_good(tmp_path, store, "deep_kvlist.json", text)
    assert report.problems == 1 and "nested too deeply" in report.errors[0]


def test_a_span_nesting_values_too_deep_for_its_check_costs_that_span_only(tmp_path, store):
    """Parsable JSON (100 kvlists deep) that the span check refuses: the other spans of the file are read."""
    deep = {**copy.deepcopy(GENAI_FILE[0]), "traceId": "9" * 32, "attributes": "@DEEP@"}
    text = json.dumps(_request([deep, *GENAI_FILE])).replace('"@DEEP@"', '[{"key": "deep", "value": ' + _nested_kvlist(100) + "}]")
    (tmp_path / "deep_span.json").write_text(text)
    report = ingest_files([tmp_path / "deep_span.json"], store)
    assert report.problems == 1
    assert "spans[0] ('invoke_agent billing'): values nest more than 64 levels deep" in report.errors[0]
    assert [t.task for t in store.iter_trajectories()] == ["Refund invoice 7"]


def test_resource_spans_that_is_not_a_list_is_a_problem(tmp_path, store):
    report = _ingest_beside_good(tmp_path, store, "x.json", json.dumps({"resourceSpans": "x"}))
    assert report.problems == 1
    assert "resourceSpans: input should be a valid list (found a string of 1 character)" in report.errors[0]


def test_spans_that_is_not_a_list_is_a_problem(tmp_path, store):
    report = _ingest_beside_good(tmp_path, store, "x.json", json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": "x"}]}]}))
    assert report.problems == 1 and "resourceSpans[0].scopeSpans[0].spans: input should be a valid list" in report.errors[0]


def test_message_parts_that_are_not_a_list_are_a_problem_not_an_empty_message(tmp_path, store):
    spans = _genai_spans("8" * 32)
    _set_attr(spans[1], "gen_ai.input.messages", [{"role": "user", "parts": "not-a-list"}])
    report = _ingest_beside_good(tmp_path, store, "parts.json", json.dumps(_request(spans)))
    assert report.problems == 1
    assert "span a000000000000002 ('chat gpt-x'): gen_ai.input.messages[0].parts: input should be a valid list" in report.errors[0]
    assert "run 'invoke_agent billing' skipped" in report.errors[0]


def test_a_tool_call_part_without_a_name_is_a_problem(tmp_path, store):
    spans = _genai_spans("8" * 32)
    _set_attr(spans[1], "gen_ai.output.messages", [{"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "arguments": {}}]}])
    report = _ingest_beside_good(tmp_path, store, "parts.json", json.dumps(_request(spans)))
    assert report.problems == 1 and "gen_ai.output.messages[0].parts[0].name: field required" in report.errors[0]


def test_duplicate_span_ids_name_the_duplicate(tmp_path, store):
    spans = _genai_spans("7" * 32)
    spans[2]["spanId"] = spans[1]["spanId"]  # the tool span reuses the model span's id
    report = _ingest_beside_good(tmp_path, store, "dup.json", json.dumps(_request(spans)))
    assert report.problems == 1
    assert "span id a000000000000002 is used by two different spans ('chat gpt-x' and 'execute_tool refund')" in report.errors[0]
    assert "no model span" not in report.errors[0]


def test_an_exactly_repeated_span_counts_once(tmp_path, store):
    """A collector retry can write the same span twice: not a problem, and the run is stored once."""
    spans = _genai_spans("7" * 32)
    report = ingest_files([_write(tmp_path / "t.json", _request([*spans, copy.deepcopy(spans[2])]))], store)
    assert (report.problems, report.repeated_spans, len(report.ingested)) == (0, 1, 1)
    assert len(next(store.iter_trajectories()).steps) == 2


@pytest.mark.parametrize("status", ["ERROR", 2, {"code": "2"}, {"code": 7}])
def test_a_malformed_status_is_a_problem_and_its_run_is_not_stored_without_it(tmp_path, store, status):
    spans = _genai_spans("6" * 32)
    spans[0]["status"] = status  # the run's root: stored without it, the run would read as completed
    report = _ingest_beside_good(tmp_path, store, "status.json", json.dumps(_request(spans)))
    assert "spans[0] ('invoke_agent billing'): status" in report.errors[0]
    assert "run 'chat gpt-x' is incomplete: its span 'invoke_agent billing' could not be read" in report.errors[1]
    assert report.problems == 2


def test_status_codes_as_enum_names_are_read(tmp_path, store):
    spans = _genai_spans("6" * 32)
    spans[0]["status"] = {"code": "STATUS_CODE_ERROR", "message": "agent crashed"}
    report = ingest_files([_write(tmp_path / "t.json", _request(spans))], store)
    assert report.problems == 0
    t = next(store.iter_trajectories())
    assert (t.status, t.error) == ("error", "agent crashed")


def test_binary_junk_is_one_problem_not_one_per_line(tmp_path, store):
    junk = random.Random(0).randbytes(200_000)
    report = _ingest_beside_good(tmp_path, store, "junk.bin", junk)
    assert report.problems == 1 and "junk.bin: not a text file" in report.errors[0]


def test_text_that_is_not_json_is_one_problem(tmp_path, store):
    lines = "\n".join(f"line {i}: this is a log, not OTLP" for i in range(5000))
    report = _ingest_beside_good(tmp_path, store, "log.txt", lines)
    assert report.problems == 1 and "log.txt: not valid JSON" in report.errors[0]


def test_many_bad_lines_are_listed_up_to_a_cap_and_counted(tmp_path, store):
    text = json.dumps(_request(GENAI_FILE)) + "\n" + "{broken\n" * 5000  # a JSON Lines file: its good line is read
    report = _ingest_beside_good(tmp_path, store, "lines.jsonl", text)
    assert report.problems == 5000
    assert len(report.errors) == MAX_LISTED_PER_FILE + 1
    assert report.errors[-1].endswith(f"{5000 - MAX_LISTED_PER_FILE} more problem(s) in this file not listed (5000 in all).")


@pytest.mark.parametrize("loop", ["self", "pair"])
def test_parent_links_that_loop_are_a_problem(tmp_path, store, loop):
    spans = _genai_spans("5" * 32)
    spans[0]["parentSpanId"] = spans[0]["spanId"] if loop == "self" else spans[1]["spanId"]
    report = _ingest_beside_good(tmp_path, store, "loop.json", json.dumps(_request(spans)))
    assert report.problems == 1 and "parentSpanId links form a loop" in report.errors[0]


def test_the_cli_ingests_the_good_file_and_exits_1_with_one_line_per_bad_file(tmp_path):
    bad = {
        "deep.json": "[" * 100_000,
        "x.json": json.dumps({"resourceSpans": "x"}),
        "junk.bin": random.Random(1).randbytes(200_000),
        "empty.json": "",
    }
    paths = []
    for name, content in bad.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        paths.append(str(path))
    good = _write(tmp_path / "good.jsonl", _request(GENAI_FILE))
    result = CliRunner().invoke(app, ["traces", "ingest", *paths, str(good), "--store", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["ingested"], report["problems"], len(report["errors"])) == (1, 4, 4)
    for name, error in zip(bad, report["errors"], strict=True):
        assert name in error
