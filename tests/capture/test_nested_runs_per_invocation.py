"""Each graph run inside one tool call is a trajectory of its own (README: "an agent run inside a tool ... is a
trajectory of its own"): a tool that asks a sub-agent two questions stored ONE inner run (task 'first question', steps
[lookup, answer, lookup, answer], the second invocation's answer), because capture keyed an inner run by the tool call
that held it. Real ``create_agent`` graphs, the real recorder, OTel SDK and store; the same spans ingested store the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.testing import ScriptedChatModel
from tests.capture.test_nested_run_threads import _asks, _by_model, _calls, _stored
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.ingest.test_nested_agents import _dumps, _ingested_twice


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-{key}"


def _inner() -> Any:
    return create_agent(ScriptedChatModel(policy=_asks("lookup", "inner says", key="k"), model_name="inner-m"), [lookup])


@pytest.mark.parametrize("inner_config", ["inherits_config", "own_thread"])
def test_two_agent_runs_in_one_tool_call_are_two_trajectories(
    tmp_path: Path, tracer_provider: Any, span_exporter: Any, inner_config: str
) -> None:
    inner = _inner()

    @tool
    def ask_twice(question: str, config: RunnableConfig) -> str:
        """Ask the inner agent two questions."""
        given = config if inner_config == "inherits_config" else {"configurable": {"thread_id": "inner-own"}}
        first = inner.invoke({"messages": [("user", "first question")]}, given)["messages"][-1].content
        second = inner.invoke({"messages": [("user", "second question")]}, given)["messages"][-1].content
        return f"{first} | {second}"

    outer = create_agent(ScriptedChatModel(policy=_asks("ask_twice", "outer says", question="x"), model_name="outer-m"), [ask_twice])
    live = tmp_path / "live"
    agent = record_experience(outer, app="nest", store=live, tracer_provider=tracer_provider)
    out = agent.invoke({"messages": [("user", "outer task")]}, {"configurable": {"thread_id": "t1"}})
    assert out["messages"][-1].content == "outer says: inner says: value-k | inner says: value-k"
    agent.recorder.close()
    runs = _by_model(_stored(live))
    [outer_run] = runs["outer-m"]
    assert _calls(outer_run)[0] == ("ask_twice", {"question": "x"}, "inner says: value-k | inner says: value-k")
    thread = "t1" if inner_config == "inherits_config" else None
    assert [(t.task, t.thread_id, t.status, _calls(t), t.final_answer) for t in runs["inner-m"]] == [
        (task, thread, "completed", [("lookup", {"key": "k"}, "value-k"), ("answer", None, "inner says: value-k")], "inner says: value-k")
        for task in ("first question", "second question")
    ]
    ingested, first, _ = _ingested_twice(tmp_path, list(span_exporter.get_finished_spans()))
    assert (first.errors, len(first.ingested)) == ([], 3)
    assert _dumps(ingested) == _dumps(live)
