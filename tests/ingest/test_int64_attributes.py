"""A run whose spans carry an integer the store cannot keep in 64 bits (a tool span's ``ee.observation.truncated_chars``
of 2**64, written as a string or a float, or one that capping the observation takes past 2**63 - 1) is skipped with a
problem naming the trace, the run, the field and the range; the other runs of the file are stored. Before, it was
reported ingested, and the store then skipped it on every read (every plain read failed on it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware._limits import INT64_MAX, INT64_MIN
from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write

OTHER_TRACE = "6c9f000798038103d269b633813fc60d"


def _spans(truncated: dict[str, Any] | None, trace: str | None = None) -> list[dict[str, Any]]:
    spans = copy.deepcopy(GENAI_FILE)
    if truncated is not None:
        spans[2]["attributes"].append({"key": "ee.observation.truncated_chars", "value": truncated})  # the tool span
    if trace is not None:
        for span in spans:
            span["traceId"] = trace
    return spans


@pytest.mark.parametrize(
    ("value", "stored_as"),
    [
        ({"stringValue": "18446744073709551616"}, "18446744073709551616"),
        ({"doubleValue": 1e30}, str(int(1e30))),
        ({"stringValue": str(INT64_MIN - 1)}, str(INT64_MIN - 1)),
    ],
)
def test_a_run_with_an_integer_outside_64_bits_is_skipped_and_named(tmp_path: Path, value: dict[str, Any], stored_as: str) -> None:
    file = _write(tmp_path / "t.jsonl", _request(_spans(value)), _request(_spans(None, OTHER_TRACE)))
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([file], store)
    assert len(report.ingested) == 1 and report.problems == 1, report.as_dict()
    (problem,) = report.errors
    assert GENAI_FILE[0]["traceId"] in problem and "'invoke_agent billing'" in problem, problem
    assert f"steps[0].observation.truncated_chars {stored_as}" in problem and "64-bit integer range" in problem, problem
    assert "run skipped" in problem, problem
    fresh = LocalExperienceStore(store.root)
    assert fresh.trajectories()["id"].to_list() == report.ingested  # read whole, no record skipped
    assert next(fresh.iter_trajectories()).trace_id == OTHER_TRACE


def test_an_observation_capped_past_64_bits_is_skipped_too(tmp_path: Path) -> None:
    # intValue is bounded to 64 bits by OTLP itself; the cut made when the observation is capped (at 200,000 characters)
    # adds to it
    spans = _spans({"intValue": str(INT64_MAX)})
    answer = spans[3]["attributes"]
    (given,) = [a for a in answer if a["key"] == "gen_ai.input.messages"]
    messages = json.loads(given["value"]["stringValue"])
    messages[2]["parts"][0]["response"] = "x" * 200_010  # the tool message the model was given: the observation
    given["value"]["stringValue"] = json.dumps(messages)
    file = _write(tmp_path / "t.jsonl", _request(spans))
    report = ingest_files([file], LocalExperienceStore(tmp_path / "store"))
    assert report.ingested == [] and report.problems == 1, report.as_dict()
    assert f"truncated_chars {INT64_MAX + 10}" in report.errors[0], report.errors


def test_ee_traces_ingest_says_which_run_it_skipped(tmp_path: Path) -> None:
    file = _write(tmp_path / "t.jsonl", _request(_spans({"stringValue": "18446744073709551616"})), _request(_spans(None, OTHER_TRACE)))
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["traces", "ingest", str(file), "--store", str(store), "--json"])
    report = json.loads(result.stdout)
    assert report["ingested"] == 1 and report["problems"] == 1, result.output
    assert "truncated_chars 18446744073709551616" in report["errors"][0], report["errors"]
    listed = CliRunner().invoke(app, ["traces", "list", "--store", str(store), "--json"])
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == 1, listed.output


@pytest.mark.parametrize("text", [str(INT64_MAX), str(INT64_MIN), "9999999999999999999", str(INT64_MIN - 1), "-9999999999999999999"])
def test_an_otlp_int_value_is_read_within_64_bits_only(text: str) -> None:
    # a guard of the bound itself: 19 digits pass the digit count the string is checked with first
    from pydantic import ValidationError

    from ee_middleware.ingest.otlp_schema import AnyValue

    if INT64_MIN <= int(text) <= INT64_MAX:
        assert AnyValue.model_validate({"intValue": text}).to_python() == int(text)
    else:
        with pytest.raises(ValidationError):
            AnyValue.model_validate({"intValue": text})
