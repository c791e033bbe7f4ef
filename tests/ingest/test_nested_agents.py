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
