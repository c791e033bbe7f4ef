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


# Review r5: a span whose parent was not read joins only a run of its own thread, never the run of another (concurrent)
# graph invocation, and the innermost graph that holds it, a sub-agent's inside a tool too; in doubt it is left alone.

NESTED = Path(__file__).parent / "fixtures" / "nested_agent_openinference.jsonl"
SECOND = "Reserve Emma for member 9"


def _root(spans: list[dict[str, Any]]) -> dict[str, Any]:
    return next(s for s in spans if not s.get("parentSpanId"))


def _on_thread(span: dict[str, Any], thread: str) -> None:
    for attribute in span["attributes"]:
        if attribute["key"] == "session.id":
            attribute["value"] = {"stringValue": thread}
        elif attribute["key"] == "metadata":
            metadata = json.loads(attribute["value"]["stringValue"])
            metadata["thread_id"] = thread
            attribute["value"] = {"stringValue": json.dumps(metadata)}


def _concurrent(b_holds_a: bool = False, thread: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], dict]:
    """One trace: an app's span over both recorded runs at once (run B on thread t2 moved into run A's time, or, with
    ``b_holds_a``, its root holding A's), and the spans (A's, B's, the app's)."""
    first, second = _requests()
    a, b = _spans(first), _spans(second)
    root_a, root_b = _root(a), _root(b)
    shift = int(root_a["startTimeUnixNano"]) + 1000 - int(root_b["startTimeUnixNano"])
    for span in b:
        span["traceId"] = root_a["traceId"]
        span["startTimeUnixNano"] = str(int(span["startTimeUnixNano"]) + shift)
        span["endTimeUnixNano"] = str(int(span["endTimeUnixNano"]) + shift)
        if thread is not None:
            _on_thread(span, thread)
    if b_holds_a:
        root_b["startTimeUnixNano"] = str(int(root_a["startTimeUnixNano"]) - 5000)
        root_b["endTimeUnixNano"] = str(int(root_a["endTimeUnixNano"]) + 5000)
    outer = root_b if b_holds_a else root_a
    app = {
        "traceId": root_a["traceId"],
        "spanId": "aaaaaaaaaaaaaaaa",
        "name": "POST /chat",
        "kind": 2,
        "startTimeUnixNano": str(int(outer["startTimeUnixNano"]) - 1000),
        "endTimeUnixNano": str(int(outer["endTimeUnixNano"]) + 1000),
        "attributes": [],
        "status": {},
    }
    root_a["parentSpanId"] = root_b["parentSpanId"] = app["spanId"]
    return first, a + b + [app], {"a": root_a, "b": root_b, "app": app}


def _write(path: Path, request: dict[str, Any], spans: list[dict[str, Any]]) -> Path:
    out = json.loads(json.dumps(request))
    for n, ss in enumerate(ss for rs in out["resourceSpans"] for ss in rs["scopeSpans"]):
        ss["spans"] = spans if n == 0 else []
    path.write_text(json.dumps(out) + "\n")
    return path


@pytest.mark.parametrize("thread", [None, "t1"], ids=["other-thread", "same-thread"])
def test_a_concurrent_run_whose_root_comes_later_is_not_joined_to_the_run_that_holds_it(tmp_path, store, whole, thread):
    """Run B (thread t2, or t1 like A) inside run A's time, B's root and the app's span in a later file: B's node spans,
    whose parent is a graph's root, not a middle span, are B's run (interrupted), never A's steps; the later file never
    makes a completed mix of both."""
    request, spans, roots = _concurrent(thread=thread)
    later = {roots["b"]["spanId"], roots["app"]["spanId"]}
    first = _write(tmp_path / "part0.jsonl", request, [s for s in spans if s["spanId"] not in later])
    rest = _write(tmp_path / "part1.jsonl", request, [s for s in spans if s["spanId"] in later])
    report = ingest_files([first], store)
    assert report.problems == 0 and report.runs == 2, report.errors
    live = _live(store)
    [a] = live[FIRST]
    assert (a.status, a.error) == ("completed", None) and _decisions(a) == _decisions(whole)
    [b] = live[SECOND]
    assert b.status == "interrupted" and roots["b"]["spanId"] in (b.error or "")
    assert ("reserve_book", {"isbn": "978-1", "member_id": 9}, "no copies of Emma left") in _decisions(b)
    ingest_files([rest], store)
    for t in store.iter_trajectories():
        if t.task == FIRST:
            assert _decisions(t) == _decisions(whole)
        assert not (t.task == FIRST and any(d[0] == "reserve_book" and d[1]["member_id"] == 9 for d in _decisions(t)))


def test_a_concurrent_runs_lost_node_span_is_not_given_to_another_threads_run_inside_its_time(tmp_path, store, whole):
    """Every root read, run B (t2) holding run A (t1) in time, B lost its first ``model`` node span: B's model call is
    B's (or left alone), never A's first step."""
    request, spans, _ = _concurrent(b_holds_a=True)
    lost = next(s["spanId"] for s in spans if s["name"] == "model" and s["attributes"] and "t2" in json.dumps(s["attributes"]))
    path = _write(tmp_path / "f.jsonl", request, [s for s in spans if s["spanId"] != lost])
    report = ingest_files([path], store)
    assert report.problems == 0, report.errors
    [a] = _live(store)[FIRST]
    assert (a.status, a.error) == ("completed", None) and _decisions(a) == _decisions(whole)
    assert lost not in (a.error or "")


@pytest.fixture
def whole_outer(tmp_path) -> Trajectory:
    store = LocalExperienceStore(tmp_path / "whole_outer")
    ingest_files([NESTED], store)
    [outer] = [t for t in store.iter_trajectories() if t.task and t.task.startswith("Frag den Rechner")]
    assert outer.status == "completed"
    return outer


def _nested_files(tmp_path: Path, lost: set[str]) -> tuple[Path, Path]:
    requests = [json.loads(line) for line in NESTED.read_text().splitlines()]
    first, rest = tmp_path / "nested0.jsonl", tmp_path / "nested1.jsonl"
    first.write_text("\n".join(json.dumps(_with_spans(r, lambda s: s["spanId"] not in lost)) for r in requests) + "\n")
    held = [r for r in requests if any(s["spanId"] in lost for s in _spans(r))]
    rest.write_text("\n".join(json.dumps(_with_spans(r, lambda s: s["spanId"] in lost)) for r in held) + "\n")
    return first, rest


def _outer(store: LocalExperienceStore) -> list[Trajectory]:
    return _live(store).get("Frag den Rechner: 2.5 + 4", [])


def test_a_sub_agents_lost_node_span_leaves_its_step_out_of_the_outer_run(tmp_path, store, whole_outer):
    """The ``calc`` sub-graph (inside the outer graph's ``ask_calculator`` tool) lost its ``agent`` node span: its step
    ``add`` is the sub-agent's (the innermost graph that holds it), not the outer run's, whole and completed."""
    first, rest = _nested_files(tmp_path, {"1dbc5b04a55ebb77"})
    report = ingest_files([first], store)
    assert report.problems == 0, report.errors
    [outer] = _outer(store)
    assert (outer.status, outer.error) == ("completed", None) and _decisions(outer) == _decisions(whole_outer)
    report = ingest_files([rest], store)
    [outer] = _outer(store)
    assert (outer.status, outer.error) == ("completed", None) and _decisions(outer) == _decisions(whole_outer)
