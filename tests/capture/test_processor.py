"""The span processor on its own: GenAI spans made by other code, through the real OTel SDK."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from ee_middleware import ExperienceSpanProcessor, LocalExperienceStore


def _genai_run(tracer, task: str, fail: bool = False) -> None:
    with tracer.start_as_current_span(
        "invoke_agent planner", attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}
    ) as root:
        with tracer.start_as_current_span(
            "chat m",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "m",
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": task}]}]),
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "ok"}]}]),
            },
        ):
            pass
        if fail:
            root.set_status(Status(StatusCode.ERROR, "planner crashed"))


def test_processor_records_foreign_genai_spans_live(tmp_path):
    store = LocalExperienceStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("someone-elses-instrumentation")
    with tracer.start_as_current_span("http request"):  # the agent runs inside a request span
        _genai_run(tracer, "plan a trip")
        _genai_run(tracer, "plan a party", fail=True)
    with tracer.start_as_current_span("unrelated"):
        pass
    assert processor.force_flush()
    frame = store.trajectories()
    assert sorted(frame["task"].to_list()) == ["plan a party", "plan a trip"]
    assert sorted(frame["status"].to_list()) == ["completed", "error"]
    assert set(frame["app"].to_list()) == {"planner"}
    assert processor.pending_spans() == 0
    provider.shutdown()
