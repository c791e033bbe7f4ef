"""One graph run is one trajectory, whichever instrumentation wrote it (issue 9, item 4).

The fixtures are real: ``fixtures/make_fixtures.py`` ran a real LangGraph ReAct graph (scripted chat
model, two tools, one that raises) for two user turns on one thread under the real
``openinference-instrumentation-langchain`` 0.1.80 (with and without its GenAI attributes) and
``opentelemetry-instrumentation-langchain`` 0.62.4 (OpenLLMetry), and wrote the spans with the OTel
SDK's OTLP encoder in the OTLP/JSON mapping. Before runs were grouped by graph, the OpenInference
files became 5 one-step trajectories without observations, and OpenLLMetry's ``create_agent``
span was reported as a problem.

``fixtures/make_vendor_fixtures.py`` ran the same graph under ``langsmith`` 0.15.1's OpenTelemetry
export, ``langfuse`` 5.0.4's LangChain callback handler and ``mlflow-tracing`` 3.17.2's LangChain autolog
exporting OTLP to a local collector (before their dialects were read, LangSmith's files were "model
spans carry no messages" problems, and Langfuse's and MLflow's were skipped without a problem, 0
trajectories), and under the official ``opentelemetry-instrumentation-openai-v2`` 2.4b0 with
``langchain-openai`` and a local OpenAI-compatible HTTP server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.records import Trajectory

FIXTURES = Path(__file__).parent / "fixtures"
INSTRUMENTATIONS = {
    "openinference": "openinference_langgraph.jsonl",
    "openinference-plain": "openinference_plain_langgraph.jsonl",
    "openllmetry": "openllmetry_langgraph.jsonl",
    "langsmith": "langsmith_langgraph.jsonl",
    "langfuse": "langfuse_langgraph.jsonl",
    "mlflow": "mlflow_langgraph.jsonl",
}
TURN_1, TURN_2 = json.loads((FIXTURES / "openinference_langgraph.meta.json").read_text())["turns"]
FIRST_RUN_STEPS = [
    ("check_stock", {"fruit": "pears"}, "0 pears in stock", False),
    ("order", {"fruit": "pears", "quantity": 5}, "ordered 5 pears", False),
    ("answer", "We had no pears, so I ordered 5."),
]


def _steps(t: Trajectory) -> list[tuple[Any, ...]]:
    out = []
    for step in t.steps:
        if step.action.kind == "answer":
            out.append(("answer", step.action.content))
        else:
            call, obs = step.action.tool_call, step.observation
            out.append((call.name, call.arguments, obs.content if obs else None, obs.is_error if obs else None))
    return out


def _ingest(store: Any, *paths: Path) -> tuple[Any, list[Trajectory]]:
    report = ingest_files(list(paths), store)
    return report, sorted(store.iter_trajectories(), key=lambda t: t.started_at)


@pytest.mark.parametrize("instrumentation", INSTRUMENTATIONS)
def test_each_graph_run_is_one_trajectory_with_all_its_steps(store, instrumentation):
    report, (first, second) = _ingest(store, FIXTURES / INSTRUMENTATIONS[instrumentation])
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert report.traces_without_runs == (1 if instrumentation == "openllmetry" else 0)  # its create_agent span
    assert (first.task, second.task) == (TURN_1, TURN_2), "each run's task is its own user turn, not the thread's first"
    assert _steps(first) == FIRST_RUN_STEPS
    check, order, answer = _steps(second)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and order[3] is True
    assert "the supplier takes at most 10 apples per order, not 50" in order[2]
    assert answer == ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order).")
    for t in (first, second):
        assert (t.status, t.thread_id, t.model, t.final_answer) == (
            "completed",
            "shop-thread-1",
            "scripted-shop-model",
            t.steps[-1].action.content,
        )
        assert [tool["function"]["name"] for tool in t.tools] == ["check_stock", "order"]
        assert [s.index for s in t.steps] == list(range(len(t.steps)))
    assert second.steps[0].state[-1] == {"role": "user", "content": TURN_2}, "the second turn's model saw the whole thread"
    assert second.steps[0].decision_index == second.steps[1].decision_index == 0, "two calls of one reply share a decision"


@pytest.mark.parametrize("instrumentation", INSTRUMENTATIONS)
def test_observations_come_from_the_tool_spans_when_no_later_model_call_shows_them(tmp_path, store, instrumentation):
    """Without the final model span, the last tool results are read from the tool spans (their
    ToolMessage dumps unwrapped, matched by tool call id), and the tool error from its status."""
    requests = [json.loads(line) for line in (FIXTURES / INSTRUMENTATIONS[instrumentation]).read_text().splitlines()]
    second = requests[1]
    spans = [s for rs in second["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    last_model = max((s for s in spans if _is_model_span(s)), key=lambda s: int(s["startTimeUnixNano"]))
    for rs in second["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = [s for s in ss["spans"] if s is not last_model and s.get("parentSpanId") != last_model["spanId"]]
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(second) + "\n")
    report, (trajectory,) = _ingest(store, path)
    assert report.problems == 0, report.errors
    check, order = _steps(trajectory)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and order[3] is True
    assert "at most 10 apples per order" in order[2]


def _is_model_span(span: dict[str, Any]) -> bool:
    attrs = {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}
    return (
        attrs.get("gen_ai.operation.name") == "chat"
        or attrs.get("openinference.span.kind") == "LLM"
        or attrs.get("langfuse.observation.type") == "generation"
        or attrs.get("mlflow.spanType") == '"CHAT_MODEL"'
    )


def test_two_graph_runs_under_one_request_span_stay_two_trajectories(tmp_path, store):
    """An app span (say an HTTP request) over two graph runs in one trace: still one trajectory per run."""
    requests = [json.loads(line) for line in (FIXTURES / INSTRUMENTATIONS["openinference"]).read_text().splitlines()]
    trace = None
    request_span = {"spanId": "f" * 16, "name": "POST /chat", "startTimeUnixNano": str(10**18), "endTimeUnixNano": str(2**62)}
    for request in requests:
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    trace = trace or span["traceId"]
                    span["traceId"] = trace
                    span.setdefault("parentSpanId", request_span["spanId"])  # each graph's root span
    merged = {"resourceSpans": [rs for r in requests for rs in r["resourceSpans"]]}
    merged["resourceSpans"][0]["scopeSpans"][0]["spans"].append({**request_span, "traceId": trace})
    path = tmp_path / "one_trace.jsonl"
    path.write_text(json.dumps(merged) + "\n")
    report, trajectories = _ingest(store, path)
    assert report.problems == 0 and len(trajectories) == 2, report.errors
    assert [t.task for t in trajectories] == [TURN_1, TURN_2]
    assert [len(t.steps) for t in trajectories] == [3, 3]


def test_ingesting_every_fixture_twice_adds_nothing(store):
    paths = [FIXTURES / name for name in INSTRUMENTATIONS.values()]
    first = ingest_files(paths, store)
    again = ingest_files(paths, store)
    assert (len(first.ingested), again.ingested, len(again.already_stored)) == (2 * len(paths), [], 2 * len(paths))


@pytest.mark.parametrize("instrumentation", ["openinference", "openinference-plain"])
def test_a_run_whose_graph_span_was_never_exported_is_still_one_trajectory(tmp_path, store, instrumentation):
    """A process that dies mid-run exports the node spans but never the graph's root span (it ends last)."""
    lines = []
    for line in (FIXTURES / INSTRUMENTATIONS[instrumentation]).read_text().splitlines():
        request = json.loads(line)
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                ss["spans"] = [s for s in ss["spans"] if s.get("parentSpanId")]  # drop the graph's root span
        lines.append(json.dumps(request))
    path = tmp_path / "no_root.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report, trajectories = _ingest(store, path)
    assert report.problems == 0 and len(trajectories) == 2, report.errors
    assert [len(t.steps) for t in trajectories] == [3, 3]
    assert [t.task for t in trajectories] == [TURN_1, TURN_2]
    assert trajectories[1].steps[1].observation.is_error
    # its root never ended: not a run that completed (see test_unfinished_runs.py)
    assert [t.status for t in trajectories] == ["interrupted"] * 2 and len(report.unfinished) == 2


def test_a_run_read_before_its_root_span_was_exported_is_not_stored_again_once_it_was(tmp_path, store):
    """A nightly ingest reads the collector's file while a run is still going: its steps' spans are there, its root not
    yet. The partial run was stored as interrupted under the id of its top span, and the next night's file, holding the
    whole run, stored it a second time under its root's id (datasets then learned its steps twice). Then the partial run
    was named after the root it lacks and the whole run, found 'already stored', was dropped (it stayed interrupted).
    Now the whole run replaces it: stored completed, the partial one rejected as superseded; a third ingest adds nothing."""
    lines = (FIXTURES / INSTRUMENTATIONS["openinference"]).read_text().splitlines()
    cut = []
    for line in lines:
        request = json.loads(line)
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                ss["spans"] = [s for s in ss["spans"] if s.get("parentSpanId")]  # the roots: not exported yet
        cut.append(json.dumps(request))
    night_1 = tmp_path / "night1.jsonl"
    night_1.write_text("\n".join(cut) + "\n")
    first = ingest_files([night_1], store)
    assert len(first.ingested) == 2 and len(first.unfinished) == 2, first.errors
    whole = ingest_files([FIXTURES / INSTRUMENTATIONS["openinference"]], store)
    assert (len(whole.ingested), sorted(whole.replaced)) == (2, sorted(first.ingested)), whole.errors
    current = [t for t in store.iter_trajectories() if t.approval.status == "pending"]
    assert {t.status for t in current} == {"completed"} and [len(t.steps) for t in current] == [3, 3]
    again = ingest_files([FIXTURES / INSTRUMENTATIONS["openinference"]], store)
    assert (again.ingested, len(again.already_stored)) == ([], 2)


def test_openai_v2_model_spans_alone_make_one_trajectory_per_turn(store):
    """The official OpenAI instrumentation (content as span attributes: SPAN_ONLY) traces model calls
    only, under the app's span per turn: the steps come from the model spans' messages. No tool span
    says the order failed, so its error text is the observation, not flagged as an error; no span
    names the thread or the tools."""
    report, (first, second) = _ingest(store, FIXTURES / "openai_v2_langgraph.jsonl")
    assert (report.problems, report.runs, len(report.ingested)) == (0, 2, 2), report.errors
    assert (first.task, second.task) == (TURN_1, TURN_2)
    assert _steps(first) == FIRST_RUN_STEPS
    check, order, answer = _steps(second)
    assert check == ("check_stock", {"fruit": "apples"}, "12 apples in stock", False)
    assert order[:2] == ("order", {"fruit": "apples", "quantity": 50}) and "at most 10 apples per order" in order[2]
    assert answer == ("answer", "We have 12 apples; the supplier refused 50 (at most 10 per order).")
    assert [(t.status, t.model) for t in (first, second)] == [("completed", "scripted-shop-model")] * 2


def test_openai_v2_with_capture_true_names_the_setting_that_puts_messages_on_spans(store):
    """Its current version reads CAPTURE_MESSAGE_CONTENT=true as NO_CONTENT: the hint must name SPAN_ONLY."""
    report, trajectories = _ingest(store, FIXTURES / "openai_v2_capture_true_langgraph.jsonl")
    assert (trajectories, report.problems) == ([], 2)
    assert all("carry no messages" in error and "SPAN_ONLY" in error for error in report.errors), report.errors


@pytest.mark.parametrize("instrumentation", ["langsmith", "langfuse"])
def test_a_file_whose_dialect_is_not_read_is_a_problem_naming_what_was_missing(tmp_path, store, instrumentation):
    """Spans of an instrumentation ingest does not read (here: LangSmith's and Langfuse's markers
    renamed away) give a problem naming what was looked for and what the spans carry, not a
    zero-trajectory success."""
    marker = {"langsmith": "langsmith.span.kind", "langfuse": "langfuse.observation.type"}[instrumentation]
    lines = (FIXTURES / INSTRUMENTATIONS[instrumentation]).read_text().replace(f'"{marker}"', '"vendor.kind"')
    lines = lines.replace('"gen_ai.operation.name"', '"vendor.operation"')
    path = tmp_path / "unknown.jsonl"
    path.write_text(lines)
    report, trajectories = _ingest(store, path)
    assert trajectories == [] and report.problems == 1, report.errors
    (error,) = report.errors
    assert "40 span(s)" in error and "gen_ai.operation.name" in error and "vendor.kind" in error, error
