"""A run paused for a human review, read from another instrumentation's spans, is recorded as capture records it.

The fixtures are real (``fixtures/make_sweep_fixtures.py``): ``create_react_agent(..., interrupt_before=["tools"])``
pauses before ``get_weather(東京)``, and the reviewer resumes with ``graph.invoke(None, config)``; or (``command_resume_*``)
the tool asks for approval with ``interrupt()`` and the reviewer resumes with ``graph.invoke(Command(resume="ok"),
config)``. The spans carry no ``ee.status``. Before, the paused run was stored ``completed`` ending on a call with no
observation (which the JSONL export taught), and the resumed run held only the answer: the reviewed call was in no step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.ingest import ingest_files
from tests.ingest.test_instrumentations import _steps

FIXTURES = Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "openinference_hitl_langgraph.meta.json").read_text())
CALL = ("get_weather", {"city": "東京"})


@pytest.mark.parametrize("instrumentation", ["openinference", "openllmetry"])
def test_a_run_paused_before_its_tools_ran_is_interrupted_not_completed(store, instrumentation):
    report = ingest_files([FIXTURES / f"{instrumentation}_hitl_langgraph.jsonl"], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    paused, resumed = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert (paused.thread_id, paused.task) == (META["thread"], META["turn"])
    assert (paused.status, paused.error) == ("interrupted", None)  # a pause, as capture records it: nobody stopped it
    assert _steps(paused) == [(*CALL, None, None)]  # ends on the call awaiting review, without an observation
    assert (resumed.thread_id, resumed.status) == (META["thread"], "completed")


@pytest.mark.parametrize("instrumentation", ["openinference", "openllmetry"])
def test_the_resumed_run_starts_with_the_reviewed_call_as_it_ran(store, instrumentation):
    """The resumed graph's input ``None`` (OpenInference: ``input.value`` ``null`` on the run's root; OpenLLMetry:
    ``"inputs": null`` on its workflow span, below the run's ``invoke_agent`` span): the run is a resume, and the
    reviewed call (run before its first model call) is its first step, with the tool's result."""
    report = ingest_files([FIXTURES / f"{instrumentation}_hitl_langgraph.jsonl"], store)
    assert report.problems == 0, report.errors
    _, resumed = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert _steps(resumed) == [(*CALL, "東京: 雨、18 °C ☔", False), ("answer", "In 東京 regnet es, 18 °C ☔.")]


@pytest.mark.parametrize("instrumentation", ["openinference", "openllmetry", "langsmith"])
def test_a_run_resumed_with_a_command_starts_with_the_reviewed_call_and_the_paused_one_ends_on_it(store, instrumentation):
    """``Command(resume=...)`` as the graph's input (written as its fields: ``{"graph": null, "update": null, "resume":
    "ok", "goto": []}``) is a resume, as ``None`` is: the call the tool's ``interrupt()`` paused on is the resumed run's
    first step with the result of the tool that ran again. The paused run ends on that call without an observation:
    the tool's span ended on ``GraphInterrupt`` (LangSmith: its repr and traceback), which is the pause, not the
    tool's result."""
    report = ingest_files([FIXTURES / f"command_resume_{instrumentation}.jsonl"], store)
    assert (report.problems, len(report.ingested)) == (0, 2), report.errors
    paused, resumed = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert (paused.thread_id, paused.task, paused.status) == (META["thread"], META["turn"], "interrupted")
    assert _steps(paused) == [(*CALL, None, None)]
    assert (resumed.thread_id, resumed.status) == (META["thread"], "completed")
    assert _steps(resumed) == [(*CALL, "東京: 雨、18 °C ☔", False), ("answer", "In 東京 regnet es, 18 °C ☔.")]


def test_a_run_that_answered_stays_completed(store):
    """The control: a run whose last reply was an answer is completed (the shop fixture, two runs)."""
    report = ingest_files([FIXTURES / "openinference_plain_langgraph.jsonl"], store)
    assert report.problems == 0, report.errors
    assert [t.status for t in store.iter_trajectories()] == ["completed", "completed"]
