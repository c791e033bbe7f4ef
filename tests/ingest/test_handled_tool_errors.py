"""A tool error the tool handled is an error observation, whichever instrumentation traced it, as capture records it.

LangChain ends a handled tool error (``ToolException`` with ``handle_tool_error=True``, ``ToolNode``'s default
handling, ``ToolRetryMiddleware``) with ``on_tool_end``: the tool span's status stays OK and only the ``ToolMessage``
the model is given says ``"status": "error"``. Capture stores that call ``is_error=true``; ingest read the same graph's
OpenInference spans as a success (sweep s17, F1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.dialects import adapt
from ee_middleware.records import Trajectory
from tests.ingest import library_agent
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write

FIXTURE = Path(__file__).parent / "fixtures" / "openinference_library.jsonl"


def _observations(trajectory: Trajectory) -> list[tuple[Any, ...]]:
    return [
        (
            s.action.tool_call.name if s.action.tool_call else None,
            s.observation.content if s.observation else None,
            s.observation.is_error if s.observation else None,
        )
        for s in trajectory.steps
    ]


def _by_task(store: LocalExperienceStore) -> dict[str | None, Trajectory]:
    return {t.task: t for t in store.iter_trajectories()}


def test_openinference_handled_tool_error_is_ingested_as_an_error_as_capture_records_it(tmp_path):
    ingested = LocalExperienceStore(tmp_path / "ingested")
    report = ingest_files([FIXTURE], ingested)
    assert report.errors == [] and len(report.ingested) == 2, report.as_dict()
    agent = record_experience(library_agent.build(), app="library-bot", store=tmp_path / "captured")
    library_agent.run(agent)
    assert agent.flush()
    captured = LocalExperienceStore(tmp_path / "captured")

    emma = _by_task(ingested)[library_agent.TURNS[1]]
    assert _observations(emma)[0] == ("reserve_book", "no copies of Emma left", True)
    assert {task: _observations(t) for task, t in _by_task(ingested).items()} == {
        task: _observations(t) for task, t in _by_task(captured).items()
    }


def _tool_span(output_key: str, output: Any) -> dict[str, Any]:
    spans = json.loads(json.dumps(GENAI_FILE))
    tool = spans[2]
    tool["attributes"] = [a for a in tool["attributes"] if a["key"] != sc.TOOL_CALL_RESULT]
    tool["attributes"].append({"key": output_key, "value": {"stringValue": json.dumps(output)}})
    return {"spans": spans}


_FIELDS = {"content": "invoice 7 is locked", "tool_call_id": "c1", "name": "refund", "status": "error"}


@pytest.mark.parametrize(
    ("key", "output"),
    [
        ("output.value", {"type": "tool", "data": {"type": "tool", **_FIELDS}}),  # OpenInference: messages_to_dict
        (  # OpenLLMetry: the LangChain run's output, serialized
            "traceloop.entity.output",
            {"output": {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "ToolMessage"], "kwargs": _FIELDS}},
        ),
        (sc.TOOL_CALL_RESULT, {"output": {"type": "tool", **_FIELDS}}),  # a dumped ToolMessage under output
    ],
    ids=["openinference", "openllmetry", "dumped"],
)
def test_a_tool_message_marked_error_makes_the_observation_an_error(tmp_path, store, key, output):
    spans = _tool_span(key, output)["spans"]
    report = ingest_files([_write(tmp_path / "t.jsonl", _request(spans))], store)
    assert report.errors == [], report.errors
    [trajectory] = list(store.iter_trajectories())
    assert trajectory.steps[0].observation is not None and trajectory.steps[0].observation.is_error is True


def test_a_tool_message_that_succeeded_stays_a_success(tmp_path, store):
    fields = {**_FIELDS, "status": "success", "content": 'said "error"'}
    spans = _tool_span("output.value", {"type": "tool", "data": {"type": "tool", **fields}})["spans"]
    ingest_files([_write(tmp_path / "t.jsonl", _request(spans))], store)
    [trajectory] = list(store.iter_trajectories())
    assert trajectory.steps[0].observation is not None and trajectory.steps[0].observation.is_error is False


def test_a_span_already_marked_failed_keeps_its_own_error_type():
    from ee_middleware.capture.spandata import SpanData

    span = SpanData(
        trace_id="1" * 32,
        span_id="2" * 16,
        parent_span_id=None,
        name="execute_tool refund",
        start_ns=1,
        end_ns=2,
        attributes={
            sc.OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.ERROR_TYPE: "TimeoutError",
            "output.value": json.dumps({"type": "tool", "data": {"type": "tool", **_FIELDS}}),
        },
    )
    assert adapt(span).attributes[sc.ERROR_TYPE] == "TimeoutError"
