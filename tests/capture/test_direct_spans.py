"""Spans made directly as plain data (ee_middleware/capture/direct_spans.py) read as the OpenTelemetry SDK's spans read
(the same :class:`SpanData`), and a recorder without a tracer provider of the user's own stores every run whatever the
user's OpenTelemetry settings say about sampling and attribute limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status, StatusCode

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.direct_spans import DirectTracer
from ee_middleware.capture.spandata import SpanData, from_readable_span
from tests.conftest import USER_TASK


class _Collected:
    """Stands in for the processor: keeps what a :class:`DirectTracer` hands it."""

    def __init__(self) -> None:
        self.spans: list[SpanData] = []

    def on_end_data(self, data: SpanData) -> None:
        self.spans.append(data)


def _sdk_and_direct() -> tuple[Any, InMemorySpanExporter, DirectTracer, _Collected]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    collected = _Collected()
    return provider.get_tracer("t"), exporter, DirectTracer(collected, {}), collected  # type: ignore[arg-type]


def _comparable(data: SpanData) -> dict[str, Any]:
    out = {k: getattr(data, k) for k in ("name", "start_ns", "end_ns", "attributes", "status_code", "status_message", "events")}
    out["root"] = data.parent_span_id is None
    return out


def _drive(tracer: Any, error: BaseException) -> None:
    """The same calls on a span of either tracer, the way capture and a user's code make them."""
    root = tracer.start_span("invoke_agent shop", kind=SpanKind.INTERNAL, attributes={"a": "x", "keys": ["k1", "k2"]}, start_time=10)
    child = tracer.start_span(
        "chat m", context=trace.set_span_in_context(root), kind=SpanKind.CLIENT, attributes={"n": 3, "f": 0.5, "b": True}, start_time=11
    )
    child.set_attribute("positions", [0, 2])
    child.set_attributes({"later": "y", "nested": {"k": [1, 2]}, "": "dropped", "none": None})
    child.add_event("exception", {"exception.type": "ValueError", "exception.message": "bad"})
    child.set_status(Status(StatusCode.ERROR, "bad"))
    child.set_status(StatusCode.UNSET)  # ignored, as the SDK ignores it
    child.update_name("chat m2")
    child.end(end_time=12)
    child.set_attribute("after", "ignored")  # an ended span takes nothing
    child.add_event("after")
    child.end(end_time=99)
    root.record_exception(error, attributes={"extra": 1})
    root.set_status(Status(StatusCode.OK))
    root.set_status(Status(StatusCode.ERROR, "not after OK"))
    root.end(end_time=13)


def test_direct_spans_are_the_sdk_spans_as_plain_data():
    sdk, exporter, direct, collected = _sdk_and_direct()
    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    _drive(sdk, error)
    _drive(direct, error)
    expected = [_comparable(from_readable_span(s)) for s in exporter.get_finished_spans()]
    assert [_comparable(s) for s in collected.spans] == expected
    assert collected.spans[0].parent_span_id == collected.spans[1].span_id  # the child's parent: the root
    assert collected.spans[0].trace_id == collected.spans[1].trace_id


def test_a_direct_span_continues_the_current_trace_and_keeps_its_sampling():
    user_provider = TracerProvider(sampler=ALWAYS_OFF)  # the user's own tracing samples this request out
    _, _, direct, collected = _sdk_and_direct()
    with user_provider.get_tracer("user").start_as_current_span("request") as request:
        span = direct.start_span("invoke_agent shop")
        with trace.use_span(span, end_on_exit=True):
            assert trace.get_current_span() is span
    parent = request.get_span_context()
    assert span.get_span_context().trace_flags == parent.trace_flags and not span.get_span_context().trace_flags.sampled
    [data] = collected.spans  # recorded all the same: capture's records are not the user's sampling
    assert data.trace_id == f"{parent.trace_id:032x}" and data.parent_span_id == f"{parent.span_id:016x}"
    assert data.parent_remote is False
    fresh = direct.start_span("another")  # no current span: a trace of its own, sampled
    assert fresh.get_span_context().trace_id != parent.trace_id and fresh.get_span_context().trace_flags.sampled


def _stored(store_path: Path) -> list[Any]:
    store = LocalExperienceStore(store_path)
    try:
        return list(store.iter_trajectories())
    finally:
        store.close()


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.0"},
        {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "12", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3"},
    ],
    ids=["sampler-off", "ratio-zero", "attribute-limits"],
)
def test_the_users_otel_settings_for_their_exporters_never_drop_or_cut_a_recorded_run(react_graph, tmp_path, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store_path = tmp_path / "store"
    agent = record_experience(react_graph, app="shop", store=store_path, offload="thread")
    agent.invoke(USER_TASK)
    assert agent.flush()
    [trajectory] = _stored(store_path)
    assert trajectory.status == "completed"
    assert [step.action.tool_call.name if step.action.tool_call else step.action.kind for step in trajectory.steps] == [
        "check_stock",
        "order_item",
        "answer",
    ]
    assert trajectory.steps[0].state[0]["content"] == USER_TASK["messages"][0][1]  # whole, not cut at 12 characters
    assert trajectory.steps[2].action.content == "Pears were out of stock; I ordered 5, so there are 5 now."


def test_a_run_inside_an_unsampled_user_span_is_stored_in_the_users_trace(react_graph, tmp_path):
    user_provider = TracerProvider(sampler=ALWAYS_OFF)
    store_path = tmp_path / "store"
    agent = record_experience(react_graph, app="shop", store=store_path, offload="thread")
    with user_provider.get_tracer("user").start_as_current_span("request"):
        agent.invoke(USER_TASK)
    assert agent.flush()
    [trajectory] = _stored(store_path)
    assert trajectory.status == "completed" and len(trajectory.steps) == 3


def test_direct_spans_reach_the_recorders_processor_only_once_each(react_graph, tmp_path):
    store_path = tmp_path / "store"
    agent = record_experience(react_graph, app="shop", store=store_path, offload="thread")
    assert isinstance(agent.recorder.tracer, DirectTracer) and agent.recorder.tracer_provider is None
    for _ in range(3):
        agent.invoke(USER_TASK)
    assert agent.flush()
    stats = agent.recorder.stats
    assert stats.trajectories_written == 3 and stats.spans_dropped == 0 and not stats.errors
    assert len({t.id for t in _stored(store_path)}) == 3


def _agent_with_user_spans(
    expert_model: Any, user_tracer: Any, store_path: Path, offload: str, seen: list[Any], tracer_provider: Any = None
) -> Any:
    """A ReAct agent whose stock tool opens a span of the user's own and notes the current span."""

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        seen.append(trace.get_current_span())
        with user_tracer.start_as_current_span("db.query"):
            return "0"

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        return "ok"

    graph = create_react_agent(expert_model, [check_stock, order_item])
    return record_experience(graph, app="shop", store=store_path, offload=offload, tracer_provider=tracer_provider)


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_run_inside_the_users_span_is_stored_in_the_users_trace_and_leaves_their_spans_where_they_were(expert_model, tmp_path, offload):
    """The run's root span reaches no exporter of the user's (no ``tracer_provider=``), so the spans their code opens
    inside the run keep the parent they have without capture: under it they pointed at a parent their backend is never
    sent (a trace with a missing parent in Jaeger or Tempo, and another instrumentation's spans cut off from theirs)."""
    exporter = InMemorySpanExporter()
    user_provider = TracerProvider()
    user_provider.add_span_processor(SimpleSpanProcessor(exporter))
    user_tracer = user_provider.get_tracer("user-code")
    seen: list[Any] = []
    agent = _agent_with_user_spans(expert_model, user_tracer, tmp_path / "store", offload, seen)
    with user_tracer.start_as_current_span("request") as request:
        agent.invoke(USER_TASK)
    assert agent.flush()
    agent.recorder.close()
    [trajectory] = _stored(tmp_path / "store")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    trace_id = request.get_span_context().trace_id
    assert trajectory.trace_id == f"{trace_id:032x}"  # process mode too: the capture process made the root with these ids
    assert spans["db.query"].context.trace_id == trace_id
    assert spans["db.query"].parent.span_id == request.get_span_context().span_id  # as without capture
    exported = {s.context.span_id for s in spans.values()}
    assert all(s.parent is None or s.parent.span_id in exported for s in spans.values()), "no span points at one never exported"
    assert seen == [request]  # the current span in a tool is the user's own


def test_with_the_users_tracer_provider_their_spans_inside_a_run_nest_under_its_root(expert_model, tmp_path):
    """Where the run's spans reach the user's provider, the root is the current span while the graph runs: the user's
    spans nest under it, in one tree their backend receives whole."""
    exporter = InMemorySpanExporter()
    user_provider = TracerProvider()
    user_provider.add_span_processor(SimpleSpanProcessor(exporter))
    user_tracer = user_provider.get_tracer("user-code")
    seen: list[Any] = []
    agent = _agent_with_user_spans(expert_model, user_tracer, tmp_path / "store", "thread", seen, tracer_provider=user_provider)
    with user_tracer.start_as_current_span("request"):
        agent.invoke(USER_TASK)
    assert agent.flush()
    agent.recorder.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["db.query"].parent.span_id == spans["invoke_agent shop"].context.span_id
    assert spans["invoke_agent shop"].parent.span_id == spans["request"].context.span_id
    assert seen[0].name == "invoke_agent shop" and seen[0].attributes["gen_ai.operation.name"] == "invoke_agent"
    exported = {s.context.span_id for s in spans.values()}
    assert all(s.parent is None or s.parent.span_id in exported for s in spans.values())


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_the_users_sampler_still_decides_which_of_their_own_spans_inside_a_run_are_exported(expert_model, tmp_path, monkeypatch, offload):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    exporter = InMemorySpanExporter()
    user_provider = TracerProvider()  # reads the same setting
    user_provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = _agent_with_user_spans(expert_model, user_provider.get_tracer("user-code"), tmp_path / "store", offload, [])
    agent.invoke(USER_TASK)
    assert agent.flush()
    agent.recorder.close()
    assert [s.name for s in exporter.get_finished_spans()] == []  # their tracing is off: capture turns none of it on
    [trajectory] = _stored(tmp_path / "store")  # and the run is stored all the same
    assert trajectory.status == "completed" and len(trajectory.steps) == 3


def test_a_root_is_marked_sampled_as_the_global_providers_own_sampler_decides(monkeypatch):
    """A sampler set in code on the user's global SDK provider (not through OTEL_TRACES_SAMPLER) decides the root's flags."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: TracerProvider(sampler=ParentBased(ALWAYS_OFF)))
    _, _, direct, collected = _sdk_and_direct()
    root = direct.start_span("invoke_agent shop")
    child = direct.start_span("chat m", context=trace.set_span_in_context(root))
    assert not root.get_span_context().trace_flags.sampled and child.get_span_context().trace_flags == root.get_span_context().trace_flags
    child.end()
    root.end()
    assert [s.name for s in collected.spans] == ["chat m", "invoke_agent shop"]  # recorded all the same


@pytest.mark.parametrize("unsampled", ["sampler", "request"])
def test_with_the_users_tracer_provider_a_run_its_sampler_leaves_out_is_stored_and_exported_nowhere(expert_model, tmp_path, unsampled):
    """Sweep: with ``tracer_provider=``, a run the provider's sampler left out (``ALWAYS_OFF``, a ratio; or a request that
    came in unsampled, under the default parent-based sampler) made no recording span, so no processor saw it, capture's
    own included: it was never stored, ``flush()`` said True and nothing was counted. Now it is recorded directly (its
    trajectory whole, in the request's trace, marked not sampled); the user's exporters still see none of it, and spans
    their code opens inside it keep the unsampled parent they have (nothing points at a span never exported)."""
    exporter = InMemorySpanExporter()
    user_provider = TracerProvider(sampler=ALWAYS_OFF) if unsampled == "sampler" else TracerProvider()
    user_provider.add_span_processor(SimpleSpanProcessor(exporter))
    user_tracer = user_provider.get_tracer("user-code")
    seen: list[Any] = []
    agent = _agent_with_user_spans(expert_model, user_tracer, tmp_path / "store", "thread", seen, tracer_provider=user_provider)
    request = trace.NonRecordingSpan(trace.SpanContext(0x5EED, 0xCAFE, is_remote=True, trace_flags=trace.TraceFlags(0)))
    with trace.use_span(request) if unsampled == "request" else user_tracer.start_as_current_span("request"):
        parent = trace.get_current_span()
        agent.invoke(USER_TASK)
        agent.invoke(USER_TASK)
    assert agent.flush()
    agent.recorder.close()
    stored = _stored(tmp_path / "store")
    assert len(stored) == 2 and all(t.status == "completed" and len(t.steps) == 3 for t in stored), stored
    assert {t.trace_id for t in stored} == {f"{parent.get_span_context().trace_id:032x}"}
    assert exporter.get_finished_spans() == (), "their sampler decides what their exporters see"
    assert all(span is parent for span in seen), "the current span in a tool is the user's own, as without capture"


@pytest.mark.parametrize("limit", ["env", "span_limits"])
def test_with_the_users_tracer_provider_its_attribute_limits_cut_only_what_their_exporters_get(expert_model, tmp_path, monkeypatch, limit):
    """Sweep: a provider whose attribute values are cut at N characters (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``, or
    ``SpanLimits``) cut the JSON of a run's messages as capture's processor read them: "attribute gen_ai.input.messages
    is not valid JSON", and the run was not stored. Their exporters get the cut values; the trajectory is whole."""
    from opentelemetry.sdk.trace import SpanLimits

    if limit == "env":
        monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "20")
    exporter = InMemorySpanExporter()
    user_provider = TracerProvider(span_limits=SpanLimits(max_attribute_length=20) if limit == "span_limits" else None)
    user_provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = _agent_with_user_spans(
        expert_model, user_provider.get_tracer("user-code"), tmp_path / "store", "thread", [], tracer_provider=user_provider
    )
    agent.invoke(USER_TASK)
    assert agent.flush()
    agent.recorder.close()
    [trajectory] = _stored(tmp_path / "store")
    assert trajectory.status == "completed" and len(trajectory.steps) == 3
    assert trajectory.steps[0].state[0]["content"] == USER_TASK["messages"][0][1] and len(USER_TASK["messages"][0][1]) > 20
    exported = {s.name: s for s in exporter.get_finished_spans()}
    assert len(exported["invoke_agent shop"].attributes["gen_ai.input.messages"]) == 20, "their exporters get what they asked for"


class _NoChatSpans:
    """A user's sampler that keeps the model calls' spans (their prompts) out of their backend, by name."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

        return SamplingResult(Decision.DROP if name.startswith("chat") else Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "NoChatSpans"


def test_with_the_users_tracer_provider_a_call_span_its_sampler_drops_is_still_recorded(expert_model, tmp_path):
    """Review: a sampler that drops spans by name (the model calls' here) dropped them for capture too: the run was
    stored without its model calls, and the calls' attributes kept for their end (``keep_whole``) were never let go
    (their spans never end in the provider). Such a span is made directly, as a run the sampler drops is."""
    from opentelemetry.sdk.trace.sampling import Sampler

    sampler = type("NoChat", (_NoChatSpans, Sampler), {})()
    exporter = InMemorySpanExporter()
    user_provider = TracerProvider(sampler=sampler)
    user_provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = _agent_with_user_spans(
        expert_model, user_provider.get_tracer("user-code"), tmp_path / "store", "thread", [], tracer_provider=user_provider
    )
    for _ in range(3):
        agent.invoke(USER_TASK)
    assert agent.flush()
    assert agent.recorder.processor._whole == {}, "nothing kept for spans that never end"
    agent.recorder.close()
    stored = _stored(tmp_path / "store")
    assert len(stored) == 3 and all([s.action.kind for s in t.steps] == ["tool_call", "tool_call", "answer"] for t in stored)
    names = {s.name for s in exporter.get_finished_spans()}
    assert "invoke_agent shop" in names and not any(n.startswith("chat") for n in names), "their exporters get what their sampler keeps"
