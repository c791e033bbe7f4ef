"""Ingest creates (or touches) a store only when it writes a trajectory: a run that is found but cannot
be assembled leaves no store behind, and the command says why and exits non-zero."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.ingest.otlp_builders import GENAI_FILE, TRACE, _request, _write


def _without_messages() -> list[dict[str, Any]]:
    """The GenAI run with content capture off: found, but its model spans hold no messages."""
    spans = copy.deepcopy(GENAI_FILE)
    for span in spans:
        span["attributes"] = [a for a in span["attributes"] if a["key"] not in ("gen_ai.input.messages", "gen_ai.output.messages")]
    return spans


def _bad_tool_definitions() -> list[dict[str, Any]]:
    """The GenAI run whose first model span's tool definitions are not a list (assembly raises IngestError)."""
    spans = copy.deepcopy(GENAI_FILE)
    for attribute in spans[1]["attributes"]:
        if attribute["key"] == "gen_ai.tool.definitions":
            attribute["value"] = {"stringValue": json.dumps({"not": "a list"})}
    return spans


def _other_trace(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spans = copy.deepcopy(spans)
    for span in spans:
        span["traceId"] = TRACE[::-1]
    return spans


FAILING = {"no messages": _without_messages, "bad tool definitions": _bad_tool_definitions}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_a_run_that_cannot_be_assembled_creates_no_store(tmp_path: Path, case: str) -> None:
    file = _write(tmp_path / "run.jsonl", _request(FAILING[case]()))
    target = tmp_path / "new" / "store"
    report = ingest_files([file], str(target))
    assert (report.runs, report.ingested, report.problems) == (1, [], 1)
    assert not (tmp_path / "new").exists(), sorted(p.name for p in (tmp_path / "new").rglob("*"))

    result = CliRunner().invoke(app, ["traces", "ingest", str(file), "--store", str(target)])
    assert result.exit_code == 1, result.output
    assert ("carry no messages" if case == "no messages" else "tool") in result.output
    assert not (tmp_path / "new").exists()


def test_an_existing_store_is_not_touched_by_a_run_that_cannot_be_assembled(tmp_path: Path, store_path: Path) -> None:
    LocalExperienceStore(store_path).write([sample_trajectory("t-1")])
    before = sorted((p.relative_to(store_path), p.stat().st_mtime_ns) for p in store_path.rglob("*"))
    report = ingest_files([_write(tmp_path / "run.jsonl", _request(_without_messages()))], str(store_path))
    assert (report.ingested, report.problems) == ([], 1)
    assert sorted((p.relative_to(store_path), p.stat().st_mtime_ns) for p in store_path.rglob("*")) == before


def test_a_good_run_after_a_failing_one_is_written_redacted_with_the_stores_rules(tmp_path: Path, store_path: Path) -> None:
    file = _write(tmp_path / "runs.jsonl", _request(_without_messages()), _request(_other_trace(GENAI_FILE)))
    report = ingest_files([file], str(store_path))
    assert (report.runs, len(report.ingested), report.problems) == (2, 1, 1)
    store = LocalExperienceStore(store_path)
    [trajectory] = list(store.iter_trajectories())
    assert trajectory.task == "Refund invoice 7" and (store_path / "redaction.json").exists()
