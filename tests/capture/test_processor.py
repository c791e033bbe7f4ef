"""The span processor on its own: GenAI spans made by other code, through the real OTel SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
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


class _CountingStore(LocalExperienceStore):
    """A real local store that notes how many trajectories each ``write`` call got."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.batches: list[int] = []

    def write(self, trajectories):
        trajectories = list(trajectories)
        self.batches.append(len(trajectories))
        return super().write(trajectories)


def test_runs_finishing_close_together_are_written_in_one_batch_and_flush_writes_at_once(tmp_path):
    import time

    store = _CountingStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store, min_write_interval_s=60)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("someone-elses-instrumentation")
    _genai_run(tracer, "task 0")
    deadline = time.monotonic() + 5
    while not store.batches and time.monotonic() < deadline:
        time.sleep(0.005)
    assert store.batches == [1], "the first run is written at once"
    for i in range(1, 6):
        _genai_run(tracer, f"task {i}")
    time.sleep(0.05)
    assert store.batches == [1], "runs that finish within the interval wait for the next write"
    started = time.monotonic()
    assert processor.force_flush(10_000)
    assert time.monotonic() - started < 5, "force_flush does not wait for the interval"
    assert store.batches == [1, 5]
    assert sorted(store.trajectories()["task"].to_list()) == [f"task {i}" for i in range(6)]
    provider.shutdown()


def test_a_forked_process_writes_its_own_runs_and_not_the_runs_its_parent_had_queued(tmp_path):
    """A process forked while runs waited in the processor's queue inherited the queue, the writer's state and its lock:
    it wrote the parent's queued runs a second time (177 repeated ids in one service's spool; reads drop repeats, but
    every repeat cost a write), and a lock held at the fork would never be released there. The child now starts with an
    empty queue and a lock of its own: each run is written once, by the process that recorded it."""
    import os
    import signal
    import time

    from ee_middleware.store.spool import read_spool

    store = _CountingStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store, min_write_interval_s=60)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("someone-elses-instrumentation")
    _genai_run(tracer, "parent 0")
    deadline = time.monotonic() + 10
    while not store.batches and time.monotonic() < deadline:
        time.sleep(0.005)
    assert store.batches == [1]
    _genai_run(tracer, "parent 1")  # queued: the next write waits for the interval
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            _genai_run(tracer, "child 0")
            code = 0 if processor.force_flush(10_000) and store.batches[-1:] == [1] else 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    if not done[0]:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] and os.waitstatus_to_exitcode(done[1]) == 0, "the child wrote more than its own run, or never ended"
    assert processor.force_flush(10_000)
    records, _ = read_spool(tmp_path / "s" / "spool")
    tasks = sorted(r["data"]["task"] for r in records if r["kind"] == "trajectory")
    assert tasks == ["child 0", "parent 0", "parent 1"], "each run written once, by the process that recorded it"
    provider.shutdown()


def test_a_run_captured_and_traced_by_openinference_on_one_provider_is_one_trajectory_live(tmp_path):
    """Real spans (tests/ingest/fixtures/make_double_traced_fixtures.py --ee-capture): ``record_experience(...,
    tracer_provider=provider)`` and OpenInference's LangChain instrumentation on one provider, fed to a processor on it
    in the order they ended. OpenInference's model spans hang under its node spans (no GenAI operation: not kept), so
    they were taken for a run of their own: the run was stored twice (app ``shop`` and ``unknown_service``). Now they
    are read as under capture's root, and that run's own spans alone make it, as ``ee traces ingest`` stores it."""
    from pathlib import Path

    from ee_middleware.ingest.otlp_json import ParseResult, iter_otlp_json
    from ee_middleware.ingest.service import ingest_files

    fixture = Path(__file__).parents[1] / "ingest" / "fixtures" / "double_traced_ee_capture_openinference_langchain.jsonl"
    meta = json.loads(fixture.with_name(fixture.name.replace(".jsonl", ".meta.json")).read_text())
    spans = sorted(iter_otlp_json(fixture, ParseResult()), key=lambda s: s.end_ns)
    assert {s.attributes.get("openinference.span.kind") for s in spans} >= {"LLM", "CHAIN", "TOOL"}
    store = LocalExperienceStore(tmp_path / "live")
    processor = ExperienceSpanProcessor(store)
    for span in spans:
        processor.on_end_data(span)
    assert processor.force_flush()
    [live] = store.iter_trajectories()
    ingested_store = LocalExperienceStore(tmp_path / "ingested")
    ingest_files([fixture], ingested_store)
    [ingested] = ingested_store.iter_trajectories()
    steps = [(s.action.tool_call.name, s.action.tool_call.arguments) if s.action.tool_call else s.action.content for s in live.steps]
    assert steps == [("get_weather", {"city": "Paris"}), ("convert_temp", {"celsius": 20}), meta["steps"][-1][1]]
    assert (live.app, live.task, live.status, live.final_answer) == ("shop", meta["task"], "completed", meta["steps"][-1][1])
    assert [s.observation for s in live.steps] == [s.observation for s in ingested.steps]
    assert processor.pending_spans() == 0 and not processor._unread
    processor.shutdown()


def test_model_spans_under_spans_not_kept_belong_to_the_agent_run_above_them(tmp_path):
    """An agent span (OpenInference's ``AGENT`` kind) whose model call hangs under a chain span of no GenAI operation
    (a LangGraph node's), real SDK spans: the call is the agent's step, one run, not a run of its own beside an agent
    run with no call. Of the spans not kept, only those over a kept span are remembered (the app's database spans are
    not), and nothing once the trace has ended."""
    store = LocalExperienceStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("another-instrumentation")
    with tracer.start_as_current_span("request") as request:
        with tracer.start_as_current_span("agent", attributes={"openinference.span.kind": "AGENT", "gen_ai.agent.name": "planner"}):
            for n in range(3):
                with tracer.start_as_current_span(f"db query {n}"):
                    pass
            chat = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "m",
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "plan a trip"}]}]),
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "ok"}]}]),
            }
            with (
                tracer.start_as_current_span("model", attributes={"openinference.span.kind": "CHAIN"}) as node,
                tracer.start_as_current_span("chat m", attributes=chat),
            ):
                pass
        trace_id = f"{request.get_span_context().trace_id:032x}"
        [ancestry] = processor._unread.values()
        assert ancestry.parents == {f"{node.get_span_context().span_id:016x}": f"{node.parent.span_id:016x}"}
    assert processor.force_flush()
    [trajectory] = store.iter_trajectories()
    assert (trajectory.app, trajectory.task, trajectory.final_answer, trajectory.status) == ("planner", "plan a trip", "ok", "completed")
    assert trace_id not in processor._unread and processor.pending_spans() == 0
    provider.shutdown()


_FIXTURES = sorted((Path(__file__).parents[1] / "ingest" / "fixtures").glob("*.jsonl"))


def _steps_of(trajectory: Any) -> tuple[Any, ...]:
    steps = [
        (s.action.kind, s.action.tool_call and (s.action.tool_call.name, s.action.tool_call.arguments), s.action.content, s.observation)
        for s in trajectory.steps
    ]
    return (trajectory.id, trajectory.app, trajectory.task, trajectory.status, trajectory.final_answer, trajectory.model, steps)


@pytest.mark.parametrize("fixture", _FIXTURES, ids=[f.stem for f in _FIXTURES])
def test_other_instrumentations_spans_are_stored_live_as_ingest_stores_them(
    tmp_path: Path, fixture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every instrumentation's real spans in tests/ingest/fixtures, fed to a processor in the order they ended (as an SDK
    hands them over), make the trajectories `ee traces ingest` makes of the same file, as the README promises. Live,
    they went through capture's own grouping of its own spans: 43 of these 54 files came out otherwise (an OpenInference
    LangGraph run a trajectory per model call; Langfuse, MLflow, Logfire and the Vercel AI SDK, whose spans name their
    operation in their own words, nothing at all; GenAI spans with their messages in events, an empty run), and runs
    were stored unredacted (a sweep of other instrumentations' traces)."""
    from ee_middleware.ingest.otlp_json import ParseResult, iter_otlp_json
    from ee_middleware.ingest.service import ingest_files

    spans = sorted(iter_otlp_json(fixture, ParseResult()), key=lambda s: s.end_ns)
    live = LocalExperienceStore(tmp_path / "live")
    processor = ExperienceSpanProcessor(live, strict=False)  # (a run ingest skips is a capture failure: logged)
    # the writer starts once every span has ended, so that the file's traces are read together, as ingest reads them: a
    # model call an SDK's instrumentation traced on its own (a trace of its own, the agent's context not passed to it) is
    # known to be one of the agent's calls traced again only beside the agent's trace, which ends after it
    monkeypatch.setattr(processor, "_ensure_worker", lambda: None)
    for span in spans:
        processor.on_end_data(span)
    monkeypatch.undo()
    processor.start_writer()
    flushed = processor.force_flush()  # False where a run ingest skips failed here (as a recorder's flush() says)
    assert flushed is (processor.stats.runs_failed == 0), processor.stats
    ingested = LocalExperienceStore(tmp_path / "ingested")
    ingest_files([fixture], ingested)
    assert sorted(map(_steps_of, live.iter_trajectories()), key=str) == sorted(map(_steps_of, ingested.iter_trajectories()), key=str)
    assert processor.pending_spans() == 0 and not processor._unread
    processor.shutdown()


def test_other_instrumentations_runs_are_redacted_live_with_the_stores_rules(tmp_path: Path) -> None:
    """Live, a run of another instrumentation's spans was stored as it came: an e-mail address and an API key in the
    user's message were kept verbatim (a sweep). They are redacted as capture and ingest redact, with the store's rules."""
    store = LocalExperienceStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    _genai_run(provider.get_tracer("someone-elses-instrumentation"), "mail bob@example.com the key sk-abcdefghijklmnopqrstuvwxyz123456")
    assert processor.force_flush()
    [trajectory] = store.iter_trajectories()
    assert "bob@example.com" not in trajectory.task and "sk-abcdefghijklmnopqrstuvwxyz123456" not in trajectory.task
    assert "[REDACTED:email" in trajectory.task and "[REDACTED:api_key" in trajectory.task
    provider.shutdown()


def test_other_spans_of_a_dialect_are_not_runs_and_no_failures(tmp_path: Path) -> None:
    """Logfire marks every span (a web request's, a SQL query's) with logfire.msg_template, MLflow every traced function
    with mlflow.spanType: kept as possible model calls, each such trace went to ingest and came back 'none of the spans
    is one ingest understands', an error line and a failed run per batch (a review). Only spans that adapt to a GenAI
    operation are kept; a trace without one is no failure."""
    from ee_middleware.capture.spandata import SpanData

    store = LocalExperienceStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store)
    for n in range(3):
        trace = f"{n + 1:032x}"
        web = SpanData(trace, "1" * 16, None, "GET /health", 1, 5, {"logfire.msg_template": "GET /health", "http.route": "/health"})
        query = SpanData(trace, "2" * 16, "1" * 16, "SELECT", 2, 3, {"logfire.msg_template": "SELECT 1", "db.system": "sqlite"})
        mlflow = SpanData(trace, "3" * 16, "1" * 16, "helper", 3, 4, {"mlflow.spanType": "UNKNOWN", "mlflow.spanInputs": "{}"})
        for span in (query, mlflow, web):
            processor.on_end_data(span)
    assert processor.force_flush()
    assert processor.stats.runs_failed == 0 and not processor.stats.errors, processor.stats
    assert store.trajectories().height == 0 and processor.pending_spans() == 0
    processor.shutdown()


def test_the_processors_options_hold_for_other_instrumentations_runs(tmp_path: Path) -> None:
    """A review: live runs of other instrumentations were stored with ingest's source ('otlp-ingest', which a later
    `ee traces ingest` reads as an ingested run) and its observation cap, not the processor's; a redactor with a
    function no other process can import failed every write, instead of being refused once, as a recorder refuses it."""
    from ee_middleware.capture.assembler import AssemblyOptions
    from ee_middleware.capture.redaction import Redactor
    from ee_middleware.errors import ConfigError

    with pytest.raises(ConfigError, match="redact_fn cannot be used"):
        ExperienceSpanProcessor(LocalExperienceStore(tmp_path / "r"), options=AssemblyOptions(redactor=Redactor(custom=lambda t: t)))
    store = LocalExperienceStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store, options=AssemblyOptions(source="otel-processor", max_observation_chars=5))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    _genai_run(provider.get_tracer("someone-elses-instrumentation"), "plan a trip")
    assert processor.force_flush()
    [trajectory] = store.iter_trajectories()
    assert trajectory.source == "otel-processor"
    provider.shutdown()


class _RefusingStore(LocalExperienceStore):
    """A real local store that refuses any batch holding the run whose task says 'poison' (a record it cannot write)."""

    def write(self, trajectories):
        trajectories = list(trajectories)
        if any("poison" in (t.task or "") for t in trajectories):
            raise ValueError("this record cannot be written")
        return super().write(trajectories)


def test_one_run_the_store_refuses_does_not_take_the_others_of_its_batch(tmp_path: Path) -> None:
    """Live runs of other instrumentations went to the store in one write per batch: one run it refused failed the
    whole batch (up to 256 traces), where capture's own runs are written one by one after a refused batch (a review).
    Ingest writes a refused batch's runs each alone, too: the others are stored, the refused one is a failure."""
    store = _RefusingStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store, min_write_interval_s=60, strict=False)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("someone-elses-instrumentation")
    for task in ("plan a trip", "poison the well", "plan a party"):
        _genai_run(tracer, task)
    assert processor.force_flush() is False, "a run was not stored"
    assert sorted(store.trajectories()["task"].to_list()) == ["plan a party", "plan a trip"]
    assert processor.stats.runs_failed == 1 and processor.stats.trajectories_written == 2, processor.stats
    provider.shutdown()
