"""An agent run inside another agent's tool (a LangGraph graph invoked by a tool: an agent as a tool) is a trajectory of
its own, with its own decisions, tools and model; the outer trajectory keeps only its own steps (the tool call and the
observation the tool returned). Fixtures: the real run traced by OpenInference, OpenLLMetry and LangSmith
(fixtures/nested_agent.meta.json); and ee-middleware's own spans of such runs (record_experience exporting to a tracer
provider, written as the Collector's file exporter writes them), which ingest reads as the recorder stored them."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.ingest import ingest_files
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from tests.capture.test_nested_runs import SUB, _consulting_graph, _supervisor, ask_fx_expert, ask_fx_expert_on_its_thread
from tests.ingest.otlp_builders import _write

FIXTURES = Path(__file__).parent / "fixtures"


def _decisions(trajectory) -> list[tuple[str | None, str | None]]:
    return [
        (s.action.tool_call.name if s.action.tool_call else s.action.content, s.observation.content if s.observation else None)
        for s in trajectory.steps
    ]


@pytest.mark.parametrize("instrumentation", ["openinference", "openllmetry", "langsmith"])
def test_an_agent_run_inside_a_tool_is_a_trajectory_of_its_own(store, instrumentation):
    report = ingest_files([FIXTURES / f"nested_agent_{instrumentation}.jsonl"], store)
    assert report.problems == 0, report.errors
    by_model = {t.model: t for t in store.iter_trajectories()}
    assert sorted(by_model) == ["inner-model", "outer-model"], "two trajectories: the outer agent's and the one in its tool"
    outer, inner = by_model["outer-model"], by_model["inner-model"]
    assert _decisions(outer) == [("ask_calculator", "2.5 + 4 = 6.5"), ("Der Rechner sagt: 2.5 + 4 = 6.5", None)]
    assert [t["function"]["name"] for t in outer.tools] == ["ask_calculator"]
    assert outer.task == "Frag den Rechner: 2.5 + 4" and outer.status == "completed"
    assert _decisions(inner) == [("add", "6.5"), ("2.5 + 4 = 6.5", None)]
    assert [t["function"]["name"] for t in inner.tools] == ["add"]
    assert inner.task == "Was ist 2.5 + 4?" and inner.status == "completed"
    assert inner.trace_id == outer.trace_id and inner.id != outer.id
    assert all("add" not in str(m.get("tool_calls")) for m in outer.messages), "the inner run's messages are not the outer's"


@pytest.mark.parametrize(("instrumentation", "thread"), [("openinference", None), ("openllmetry", "inner"), ("langsmith", None)])
def test_an_agent_invoked_with_its_own_thread_in_a_tool_is_not_on_the_outer_thread(store, instrumentation, thread):
    """The tool invokes the inner agent with ``{"configurable": {"thread_id": "inner"}}``: a root graph of its own (its
    nodes' checkpoint namespaces are not below the tool's), whose spans still carry the outer run's ``thread_id``
    (LangChain hands it down). OpenLLMetry's ``invoke_agent`` span of the inner graph names its thread; OpenInference
    and LangSmith name it nowhere, so the inner run has none rather than the outer's."""
    report = ingest_files([FIXTURES / f"nested_agent_{instrumentation}.jsonl"], store)
    assert report.problems == 0, report.errors
    by_model = {t.model: t for t in store.iter_trajectories()}
    assert by_model["outer-model"].thread_id == "outer"
    assert by_model["inner-model"].thread_id == thread


def test_an_agent_that_inherits_the_tools_configuration_runs_on_the_outer_thread(store):
    """The control: the tool invokes the inner agent without a configuration (``inner.invoke({"messages": ...})``), so it
    inherits the tool's: it runs in the tool's checkpoint namespace, on the outer run's thread, and says so."""
    report = ingest_files([FIXTURES / "nested_agent_inherited_openinference.jsonl"], store)
    assert report.problems == 0, report.errors
    by_model = {t.model: t for t in store.iter_trajectories()}
    assert sorted(by_model) == ["inner-model", "outer-model"]
    assert _decisions(by_model["inner-model"]) == [("add", "6.5"), ("2.5 + 4 = 6.5", None)]
    assert by_model["outer-model"].thread_id == by_model["inner-model"].thread_id == "outer"


def _dumps(path: Path) -> list[dict]:
    """The trajectories stored at ``path``, oldest first, as data (their source aside: live capture or ingest)."""
    store = LocalExperienceStore(path)
    try:
        return [t.model_dump(exclude={"source"}) for t in sorted(store.iter_trajectories(), key=lambda t: (t.started_at, t.app))]
    finally:
        store.close()


def _ingested_twice(tmp_path: Path, spans: list) -> tuple[Path, object, object]:
    """``spans`` written as one OTLP JSON file and ingested into a new store twice: the store and both reports."""
    file = _write(tmp_path / "traces.jsonl", spans_to_otlp_json(spans))
    other = LocalExperienceStore(tmp_path / "ingested")
    try:
        first, second = ingest_files([file], other), ingest_files([file], other)
    finally:
        other.close()
    return tmp_path / "ingested", first, second


@pytest.mark.parametrize("inner_thread", [False, True], ids=["inherits_config", "own_thread"])
def test_our_own_spans_of_an_agent_inside_a_tool_ingest_as_the_recorder_stored_them(tmp_path, tracer_provider, span_exporter, inner_thread):
    """record_experience exports its spans to the user's provider (as to a Collector over OTLP); a supervisor's tool runs a
    sub-agent, which the recorder stores as a trajectory of its own (tests/capture/test_nested_runs.py). Ingesting those
    spans merged the sub-agent into the supervisor's run (steps [ask_fx_expert, fx_rate, answer, answer], one
    trajectory); now ingest splits a run capture marked so, and stores what the recorder stored, ids included (so that
    ingesting the file again adds nothing)."""
    live = tmp_path / "live"
    agent = record_experience(
        _supervisor(ask_fx_expert_on_its_thread if inner_thread else ask_fx_expert), app="fx", store=live, tracer_provider=tracer_provider
    )
    agent.invoke({"messages": [("user", "How many dollars for 100 EUR?")]}, {"configurable": {"thread_id": "outer"}})
    assert agent.flush()
    agent.recorder.close()
    ingested, first, second = _ingested_twice(tmp_path, list(span_exporter.get_finished_spans()))
    assert (first.errors, first.runs, len(first.ingested)) == ([], 2, 2)
    expected = _dumps(live)
    assert [len(t["steps"]) for t in expected] == [2, 2]
    assert _dumps(ingested) == expected
    assert (second.errors, second.ingested, len(second.already_stored)) == ([], [], 2)


@pytest.mark.parametrize("where", ["in_a_tool", "as_a_node", "from_a_node"])
def test_our_own_spans_of_a_recorded_agent_inside_another_ingest_as_its_recorder_stored_them(
    tmp_path, tracer_provider, span_exporter, where
):
    """Both agents wrapped with record_experience, exporting to one tracer provider: the sub-agent's ``invoke_agent``
    span is a child of the outer run's (its run is in flight inside the outer's), and ingest read the two as one run.
    Each recorder stores its own run, as its spans name it (ee.trajectory.id): the sub-agent invoked in a tool or by a
    node's code once, by its recorder (the outer run keeps its own decisions); a recorded graph used as a node of a
    recorded graph by both, as the node's steps are the outer graph's too. Ingest now gives those same trajectories."""
    live = tmp_path / "live"
    expert = record_experience(SUB, app="fx-expert", store=live, tracer_provider=tracer_provider)
    if where == "in_a_tool":

        @tool("ask_fx_expert")
        def ask_recorded_expert(question: str) -> str:
            """Ask the FX sub-agent (recorded by its own recorder)."""
            return expert.invoke({"messages": [("user", question)]})["messages"][-1].content

        graph = _supervisor(ask_recorded_expert)
    elif where == "from_a_node":
        graph = _consulting_graph(expert, run_async=False)
    else:
        builder = StateGraph(MessagesState)
        builder.add_node("expert", expert)
        builder.add_edge(START, "expert")
        builder.add_edge("expert", END)
        graph = builder.compile()
    agent = record_experience(graph, app="fx", store=live, tracer_provider=tracer_provider)
    agent.invoke({"messages": [("user", "EUR to USD?")]}, {"configurable": {"thread_id": "outer"}})
    assert agent.flush() and expert.flush()
    agent.recorder.close()
    expert.recorder.close()
    ingested, first, second = _ingested_twice(tmp_path, list(span_exporter.get_finished_spans()))
    assert (first.errors, len(first.ingested)) == ([], 2)
    expected = _dumps(live)
    assert sorted(t["app"] for t in expected) == ["fx", "fx-expert"]
    assert _dumps(ingested) == expected
    assert (second.errors, second.ingested, len(second.already_stored)) == ([], [], 2)
