"""The capture process keeps its collector out of the way of the runs it records (``offload="process"``): what it
holds once ready is frozen and young collections are rarer. Read inside the real child, through the span processor
hook tests use (``EE_CAPTURE_OFFLOAD_SPAN_PROCESSOR``), on a real LangGraph graph."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from ee_middleware import record_experience
from ee_middleware.capture.offload import CHILD_GC_THRESHOLD, SPAN_PROCESSOR_ENV
from tests.conftest import USER_TASK

STATE_FILE_ENV = "EE_TEST_CHILD_GC_STATE"


class _CollectorState(SpanProcessor):
    """Writes the collector's state, as the child has it while it records a run, to ``$EE_TEST_CHILD_GC_STATE``."""

    def on_end(self, span: ReadableSpan) -> None:
        state = {"frozen": gc.get_freeze_count(), "threshold": list(gc.get_threshold()), "pid": os.getpid()}
        Path(os.environ[STATE_FILE_ENV]).write_text(json.dumps(state))


def collector_state_tap() -> SpanProcessor:
    return _CollectorState()


def test_the_capture_process_freezes_what_it_holds_and_collects_young_objects_less_often(react_graph, tmp_path, monkeypatch):
    state_file = tmp_path / "child-gc.json"
    monkeypatch.setenv(SPAN_PROCESSOR_ENV, f"{__name__}:collector_state_tap")
    monkeypatch.setenv(STATE_FILE_ENV, str(state_file))
    agents_collector = (gc.get_threshold(), gc.get_freeze_count())
    agent = record_experience(react_graph, app="shop", store=tmp_path / "store", offload="process")
    try:
        assert agent.recorder.offload is not None, "the recorder did not start its capture process"
        agent.invoke(USER_TASK)
        assert agent.flush()
        state: dict[str, Any] = json.loads(state_file.read_text())
    finally:
        agent.recorder.close()
    assert state["pid"] != os.getpid()  # read in the capture process, not here
    assert state["frozen"] > 10_000  # its modules, store and rules: out of the full collections
    assert tuple(state["threshold"]) == CHILD_GC_THRESHOLD
    assert (gc.get_threshold(), gc.get_freeze_count()) == agents_collector  # the agent's process: left as it was
