"""An agent run inside another agent's tool (a LangGraph graph invoked by a tool: an agent as a tool) is a trajectory of
its own, with its own decisions, tools and model; the outer trajectory keeps only its own steps (the tool call and the
observation the tool returned). Fixtures: the real run traced by OpenInference, OpenLLMetry and LangSmith
(fixtures/nested_agent.meta.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.ingest import ingest_files

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
