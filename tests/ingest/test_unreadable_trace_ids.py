"""A span whose traceId cannot be read costs its run, as a span with any other bad field does (sweep s17, F3).

The span is skipped either way; before, a model span that lost only its traceId left its run stored ``completed``
without that decision (and approved with ``--approve-by``, so trained on), while a bad start time of the same span
skipped the run, naming it. The span's own ids still tie it to its run: its parent is a span of the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from tests.ingest import library_agent

FIXTURE = Path(__file__).parent / "fixtures" / "openinference_library.jsonl"


def _with_first_model_span(tmp_path: Path, change: Any) -> Path:
    """The fixture with the first run's first model span (OpenInference's LLM span 'ScriptedLibrarian') changed."""
    lines = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    spans = [s for rs in lines[0]["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    models = sorted((s for s in spans if _kind(s) == "LLM"), key=lambda s: int(s["startTimeUnixNano"]))
    change(models[0])
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _kind(span: dict[str, Any]) -> str | None:
    return next((a["value"].get("stringValue") for a in span["attributes"] if a["key"] == "openinference.span.kind"), None)


def _set(key: str, value: Any) -> Any:
    def change(span: dict[str, Any]) -> None:
        span[key] = value

    return change


def _drop(key: str) -> Any:
    return lambda span: span.pop(key)


BAD_TRACE_IDS = {
    "missing": _drop("traceId"),
    "null": _set("traceId", None),
    "integer": _set("traceId", 12345),
    "short": _set("traceId", "ab" * 15),
    "not-hex": _set("traceId", "zz" * 16),
    "all-zero": _set("traceId", "0" * 32),
}


@pytest.mark.parametrize("bad", list(BAD_TRACE_IDS))
def test_a_model_span_without_a_readable_trace_id_skips_its_run_as_a_bad_start_time_does(tmp_path, bad):
    untraced = _with_first_model_span(tmp_path / "a", BAD_TRACE_IDS[bad])
    late = _with_first_model_span(tmp_path / "b", _set("startTimeUnixNano", "yesterday"))
    outcomes = []
    for name, path in (("untraced", untraced), ("late", late)):
        store = LocalExperienceStore(tmp_path / f"store-{name}")
        report = ingest_files([path], store, approve_by="nightly")
        outcomes.append(([t.task for t in store.iter_trajectories()], report.problems))
        assert any("run 'LangGraph' is incomplete: its span 'ScriptedLibrarian' could not be read" in e for e in report.errors), (
            report.errors
        )
    assert outcomes[0] == outcomes[1] == ([library_agent.TURNS[1]], 2)


def test_the_cli_names_the_run_and_exits_1(tmp_path):
    path = _with_first_model_span(tmp_path, _drop("traceId"))
    result = CliRunner().invoke(app, ["traces", "ingest", str(path), "--store", str(tmp_path / "s"), "--approve-by", "nightly", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ingested"] == 1 and report["problems"] == 2 and "is incomplete" in report["errors"][1]
