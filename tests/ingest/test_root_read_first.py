"""A run whose root span was read before some of its children, the files ingested one at a time, is one run, completed
once every span was read (sweep s17, F4).

Several processes or collectors exporting to rotated files, or batches arriving out of order, put a graph run's root
span in an earlier file than some of its children. Before, the first ingest stored the run as one ``interrupted``
trajectory per orphaned model call, each note naming an intermediate span (OpenInference's ``model`` node span) as the
missing root; the second merged them into a version that stayed ``interrupted`` ("the run never ended") although every
span had been read. A missing middle span in one file split a run the same way, its graph span read but ignored.

Now the spans under a graph run's span read (in its nodes, in its time) are its steps even where the node's span was
not read: one trajectory, ``interrupted``, whose note names the spans between the root and its steps as missing (not as
the root); a later ingest that reads them completes it, in either order, keeping an approval given in between.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware import LocalExperienceStore
from ee_middleware.ingest import ingest_files
from ee_middleware.records import Trajectory
from ee_middleware.store.approvals import decide
from tests.ingest import library_agent

FIXTURE = Path(__file__).parent / "fixtures" / "openinference_library.jsonl"
FIRST = library_agent.TURNS[0]


def _requests() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def _spans(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def _with_spans(request: dict[str, Any], keep: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(request))
    for rs in out["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = [s for s in ss["spans"] if keep(s)]
    return out


def _kind(span: dict[str, Any]) -> str | None:
    return next((a["value"].get("stringValue") for a in span["attributes"] if a["key"] == "openinference.span.kind"), None)


def _files(tmp_path: Path, *parts: Any) -> list[Path]:
    """The first run's trace split into files, each holding the spans ``part`` keeps (the second run's trace, whole, in
    the first file)."""
    first, second = _requests()
    paths = []
    for n, keep in enumerate(parts):
        path = tmp_path / f"part{n}.jsonl"
        lines = [_with_spans(first, keep)] + ([second] if n == 0 else [])
        path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        paths.append(path)
    return paths


def _node_spans(name: str) -> list[str]:
    return [s["spanId"] for s in _spans(_requests()[0]) if s["name"] == name]


def _root_and_calls(span: dict[str, Any]) -> bool:
    """The root, the first two model calls (whose ``model`` node spans are elsewhere) and the tools that ran."""
    if span["name"] in ("model", "tools"):
        return False
    if _kind(span) == "LLM":
        return span["parentSpanId"] in _node_spans("model")[:2]
    return True


def _rest(span: dict[str, Any]) -> bool:
    return not _root_and_calls(span)


def _decisions(t: Trajectory) -> list[Any]:
    return [
        (s.action.tool_call.name, s.action.tool_call.arguments, s.observation.content if s.observation else None)
        if s.action.tool_call
        else ("answer", s.action.content)
        for s in t.steps
    ]


def _live(store: LocalExperienceStore) -> dict[str | None, list[Trajectory]]:
    out: dict[str | None, list[Trajectory]] = {}
    for t in store.iter_trajectories():
        if t.approval.by != "ee traces ingest":  # a partial version superseded by a later ingest
            out.setdefault(t.task, []).append(t)
    return out


@pytest.fixture
def whole(tmp_path) -> Trajectory:
    store = LocalExperienceStore(tmp_path / "whole")
    ingest_files([FIXTURE], store)
    [trajectory] = _live(store)[FIRST]
    assert trajectory.status == "completed" and len(trajectory.steps) == 4
    return trajectory


def test_the_first_file_holds_one_run_whose_note_names_the_missing_intermediate_spans(tmp_path, store):
    first, _ = _files(tmp_path, _root_and_calls, _rest)
    report = ingest_files([first], store)
    assert report.problems == 0, report.errors
    [run] = _live(store)[FIRST]
    assert run.status == "interrupted"
    root = next(s["spanId"] for s in _spans(_requests()[0]) if "parentSpanId" not in s)
    assert run.error is not None and run.error.startswith(f"the run is incomplete: its root span 'LangGraph' ({root}) was read, but not ")
    for missing in [*_node_spans("model")[:2], *_node_spans("tools")]:
        assert missing in run.error
    assert "its root span (" not in run.error and "never ended" not in run.error
    [line] = [u for u in report.unfinished if FIRST in u or "'LangGraph'" in u]
    assert "is stored as interrupted" in line and "between it and its steps" in line


@pytest.mark.parametrize("order", ["root-first", "root-last"])
def test_a_later_ingest_of_the_rest_completes_the_run_and_keeps_the_approval(tmp_path, whole, order):
    first, rest = _files(tmp_path, _root_and_calls, _rest)
    files = [first, rest] if order == "root-first" else [rest, first]
    store = LocalExperienceStore(tmp_path / "store")
    ingest_files([files[0]], store)
    [partial] = _live(store)[FIRST]
    assert partial.status == "interrupted"
    decide(store, [partial.id], "approved", by="alice", reason="looks right")
    report = ingest_files([files[1]], store)
    assert report.problems == 0, report.errors
    [run] = _live(store)[FIRST]
    assert (run.status, run.error) == ("completed", None)
    assert _decisions(run) == _decisions(whole) and run.final_answer == whole.final_answer
    assert (run.approval.status, run.approval.by) == ("approved", "alice")
    assert partial.id in report.replaced and not report.unfinished
    assert any("hold every span of it between them" in n and "stored completed" in n for n in report.notes)
    again = ingest_files(files, store)
    assert again.ingested == [] and again.problems == 0


def test_three_files_complete_the_run_at_the_last_even_one_without_a_model_call(tmp_path, whole, store):
    """The root with the first calls, then the last call with its node's span, then the other node spans alone."""
    model_nodes = _node_spans("model")

    def last_call(span: dict[str, Any]) -> bool:
        return span["spanId"] == model_nodes[2] or span.get("parentSpanId") == model_nodes[2]

    def nodes(span: dict[str, Any]) -> bool:
        return _rest(span) and not last_call(span)

    files = _files(tmp_path, _root_and_calls, last_call, nodes)
    ingest_files([files[0]], store)
    report = ingest_files([files[1]], store)
    assert report.problems == 0, report.errors
    [run] = _live(store)[FIRST]
    assert run.status == "interrupted" and len(run.steps) == 4 and run.error is not None
    assert model_nodes[2] not in run.error and all(node in run.error for node in model_nodes[:2])
    report = ingest_files([files[2]], store)
    assert report.problems == 0, report.errors
    [run] = _live(store)[FIRST]
    assert (run.status, run.error) == ("completed", None) and _decisions(run) == _decisions(whole)
    assert any("no model call among them" in n for n in report.notes)
    assert ingest_files(files, store).ingested == []


def test_a_missing_middle_span_leaves_one_interrupted_run_not_one_per_model_call(tmp_path, store, whole):
    model_nodes = set(_node_spans("model"))
    [path] = _files(tmp_path, lambda span: span["spanId"] not in model_nodes)
    report = ingest_files([path], store)
    assert report.problems == 0 and report.runs == 2, report.errors
    [run] = _live(store)[FIRST]
    assert run.status == "interrupted" and _decisions(run) == _decisions(whole)
    assert run.error is not None and "was read, but not 3 span(s) between it and its steps" in run.error
    assert all(node in run.error for node in model_nodes)
