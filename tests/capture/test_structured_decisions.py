"""A structured-output call is dropped as answer formatting only where ``create_react_agent(response_format=...)`` makes
it: in its ``generate_structured_response`` node (tests/capture/test_answer_formatting.py). Any other graph's structured
call is a decision and a step, also one made by the graph's last node, after the last reply, whose result is the run's
answer: a triage graph's ``route`` node choosing a team and a priority into ``structured_response``. Before, such a
decision matched create_react_agent's shape (a structured call after the last reply, in another node, its arguments the
final answer) and was dropped: the trajectory had only the acknowledgement step, and datasets never taught the
routing, which cannot be worked out from the reply."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import create_react_agent
from pydantic import BaseModel

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import AssemblyOptions, assemble
from ee_middleware.capture.spandata import from_readable_span
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_answer_formatting import ANSWER, MODELS, TASK, Verdict, _shape, fetch
from tests.conftest import record_once
from tests.ingest.otlp_builders import _write

TICKET = '{"team":"billing","priority":"high"}'


class Ticket(BaseModel):
    team: str
    priority: str


class TriageState(MessagesState):
    structured_response: Any


def _triage_graph() -> Any:
    """``acknowledge`` replies to the user; ``route``, the last node, decides the ticket's team and priority with
    ``with_structured_output(Ticket)`` and keeps it as ``structured_response``: the app's answer."""
    acknowledger = ScriptedChatModel(script=[AIMessage(content="Thanks, your ticket is logged.")])
    router = ScriptedChatModel(
        model_name="router", policy=lambda m, t: AIMessage(content="", tool_calls=[tool_call("Ticket", team="billing", priority="high")])
    )
    builder = StateGraph(TriageState)
    builder.add_node("acknowledge", lambda state: {"messages": [acknowledger.invoke(state["messages"])]})
    builder.add_node("route", lambda state: {"structured_response": router.with_structured_output(Ticket).invoke(state["messages"])})
    builder.add_edge(START, "acknowledge")
    builder.add_edge("acknowledge", "route")
    builder.add_edge("route", END)
    return builder.compile()


def _ingested(span_exporter: Any, tmp_path: Path) -> list[Any]:
    """The trajectories ``ee traces ingest`` makes of capture's own spans, exported to an OTLP file."""
    file = _write(tmp_path / "traces.jsonl", spans_to_otlp_json(list(span_exporter.get_finished_spans())))
    other = LocalExperienceStore(tmp_path / "ingested")
    report = ingest_files([file], other)
    assert report.errors == []
    return list(other.iter_trajectories())


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_last_nodes_structured_decision_that_is_the_answer_stays_a_step(
    offload: str, tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    store = tmp_path / "s"
    own = {"tracer_provider": tracer_provider} if offload == "thread" else {"offload": offload}
    agent = record_experience(_triage_graph(), app="triage", store=store, **own)
    trajectory = record_once(agent, store, {"messages": [("user", "I was double charged")]})
    assert (trajectory.status, trajectory.final_answer) == ("completed", TICKET)
    assert [(kind, name) for kind, name, _ in _shape(trajectory)] == [
        ("answer", "Thanks, your ticket is logged."),
        ("tool_call", "Ticket"),
    ]
    decision = trajectory.steps[1].action.tool_call
    assert decision is not None and decision.arguments == {"team": "billing", "priority": "high"}
    if offload == "process":
        return
    [ingested] = _ingested(span_exporter, tmp_path)
    assert _shape(ingested) == _shape(trajectory) and ingested.final_answer == TICKET


def test_create_react_agents_formatting_call_is_no_step_after_ingest(tmp_path: Path, tracer_provider: Any, span_exporter: Any) -> None:
    """Capture's own spans of a ``create_react_agent(response_format=...)`` run, exported and ingested: the node they
    record is read back, and the formatting call is no step there either."""
    store = tmp_path / "s"
    agent = record_experience(
        create_react_agent(MODELS["tool calling"](), [fetch], response_format=Verdict),
        app="react",
        store=store,
        tracer_provider=tracer_provider,
    )
    trajectory = record_once(agent, store, TASK)
    [ingested] = _ingested(span_exporter, tmp_path)
    assert _shape(ingested) == _shape(trajectory) == [("tool_call", "fetch", None), ("answer", "done with d1", None)]
    assert ingested.final_answer == ANSWER


def test_the_node_is_read_from_the_checkpoint_namespace_where_its_name_is_not_recorded(
    tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    """Spans that carry the model call's checkpoint namespace but not its node's name: the node is the namespace's
    innermost one, ``generate_structured_response`` for create_react_agent's call, ``route`` for the triage decision."""
    for app, graph in (
        ("react", create_react_agent(MODELS["tool calling"](), [fetch], response_format=Verdict)),
        ("triage", _triage_graph()),
    ):
        record_once(record_experience(graph, app=app, store=tmp_path / app, tracer_provider=tracer_provider), tmp_path / app, TASK)
    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    unnamed = [dataclasses.replace(s, attributes={k: v for k, v in s.attributes.items() if k != sc.EE_LANGGRAPH_NODE}) for s in spans]
    assert any(sc.EE_LANGGRAPH_CHECKPOINT_NS in s.attributes and sc.EE_STRUCTURED_OUTPUT in s.attributes for s in unnamed)
    for app, expected in (("react", ["fetch", "done with d1"]), ("triage", ["Thanks, your ticket is logged.", "Ticket"])):
        run = [s for s in unnamed if s.trace_id == next(r.trace_id for r in unnamed if r.attributes.get(sc.EE_APP) == app)]
        assert [name for _, name, _ in _shape(assemble(run, AssemblyOptions(app=app)))] == expected
