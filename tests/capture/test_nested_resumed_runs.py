"""Graph runs inside a tool (an agent as a tool, invoked with the tool's configuration) of an outer run resumed after a
review: which of them resumed with it, and on which thread. Real ``create_agent`` graphs, ``interrupt()``, checkpointer,
recorder and store; the same spans ingested store the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt

from ee_middleware import record_experience
from ee_middleware.testing import ScriptedChatModel
from tests.capture.test_nested_run_threads import _asks, _by_model, _calls, _stored
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.ingest.test_nested_agents import _dumps, _ingested_twice

CONTEXT = "Context: the customer is on the gold plan."


def _desk(store: Path, ask_first: bool, tracer_provider: Any = None) -> list[Any]:
    """An outer agent whose tool (asking for approval first where ``ask_first``, then resumed) runs an inner agent
    afresh, with the tool's configuration, given a context message and the question. The inner runs stored."""

    @tool
    def quick_lookup(key: str) -> str:
        """Look a key up."""
        return f"value-{key}"

    inner = create_agent(ScriptedChatModel(policy=_asks("quick_lookup", "inner says", key="k1"), model_name="inner-m"), [quick_lookup])

    @tool
    def approved_lookup(request: str, config: RunnableConfig) -> str:
        """Ask for approval, then ask the inner agent."""
        if ask_first and not interrupt({"ask": request}):
            return "refused"
        return inner.invoke({"messages": [("user", CONTEXT), ("user", request)]}, config)["messages"][-1].content

    model = ScriptedChatModel(policy=_asks("approved_lookup", "outer done", request="look k1 up"), model_name="outer-m")
    outer = create_agent(model, [approved_lookup], checkpointer=InMemorySaver())
    agent = record_experience(outer, app="desk", store=store, tracer_provider=tracer_provider)
    config = {"configurable": {"thread_id": "q1"}}
    out = agent.invoke({"messages": [("user", "please look k1 up")]}, config)
    if ask_first:
        out = agent.invoke(Command(resume=True), config)
    assert out["messages"][-1].content == "outer done: inner says: value-k1"
    agent.recorder.close()
    return _by_model(_stored(store))["inner-m"]


def test_an_agent_a_resumed_tool_runs_afresh_has_the_task_it_has_when_nothing_was_reviewed(
    tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    """The inner agent starts afresh in both runs (nothing of it paused): its task is its first user message either way.
    Before, the resumed outer run marked it resumed too, and its task was its last user message ('look k1 up')."""
    [fresh] = _desk(tmp_path / "fresh", ask_first=False)
    [after_review] = _desk(tmp_path / "live", ask_first=True, tracer_provider=tracer_provider)
    for run in (fresh, after_review):
        assert (run.task, run.thread_id, run.status) == (CONTEXT, "q1", "completed")
        assert _calls(run) == [("quick_lookup", {"key": "k1"}, "value-k1"), ("answer", None, "inner says: value-k1")]
    ingested, first, _ = _ingested_twice(tmp_path, list(span_exporter.get_finished_spans()))
    assert first.errors == []
    assert _dumps(ingested) == _dumps(tmp_path / "live")


def test_an_agent_paused_twice_inside_a_tool_keeps_the_outer_thread_in_every_run(
    tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    """The inner agent (the tool's configuration, outer thread ``p1``) asks for two refunds in turn, each paused on
    ``interrupt()``. The outer run that resumed and paused again made no model call and its tool never ended: its spans
    name no namespace of its own. Its inner run was stored with no thread (before); now every run is on ``p1``, each
    resumed inner run starting with the call approved in it. Ingesting the spans stores the same."""

    @tool
    def refund(order: str) -> str:
        """Refund an order (asks a reviewer)."""
        return f"refunded {order}" if interrupt({"refund": order}) else "refused"

    def inner_policy(messages: list[Any], tools: Any) -> Any:
        from langchain_core.messages import AIMessage

        from ee_middleware.testing import tool_call

        done = sum(1 for m in messages if m.type == "tool")
        if done < 2:
            return AIMessage("", tool_calls=[tool_call("refund", order=("A-7", "B-8")[done])])
        return AIMessage(f"inner done: {messages[-1].content}")

    inner = create_agent(ScriptedChatModel(policy=inner_policy, model_name="inner-m"), [refund])

    @tool
    def billing_agent(request: str, config: RunnableConfig) -> str:
        """Ask the billing agent."""
        return inner.invoke({"messages": [("user", request)]}, config)["messages"][-1].content

    model = ScriptedChatModel(policy=_asks("billing_agent", "outer done", request="refund A-7 and B-8"), model_name="outer-m")
    live = tmp_path / "live"
    agent = record_experience(
        create_agent(model, [billing_agent], checkpointer=InMemorySaver()), app="desk", store=live, tracer_provider=tracer_provider
    )
    config = {"configurable": {"thread_id": "p1"}}
    agent.invoke({"messages": [("user", "refund A-7 and B-8")]}, config)
    agent.invoke(Command(resume=True), config)
    assert agent.invoke(Command(resume=True), config)["messages"][-1].content == "outer done: inner done: refunded B-8"
    agent.recorder.close()
    runs = _stored(live)
    assert {t.thread_id for t in runs} == {"p1"}
    inner_runs = [t for t in runs if t.model == "inner-m"]
    assert [(t.status, _calls(t)) for t in inner_runs] == [
        ("interrupted", [("refund", {"order": "A-7"}, None)]),
        ("interrupted", [("refund", {"order": "A-7"}, "refunded A-7"), ("refund", {"order": "B-8"}, None)]),
        ("completed", [("refund", {"order": "B-8"}, "refunded B-8"), ("answer", None, "inner done: refunded B-8")]),
    ]
    ingested, first, _ = _ingested_twice(tmp_path, list(span_exporter.get_finished_spans()))
    assert len(first.errors) == 1 and "called no model" in first.errors[0]  # the outer run resumed and paused again

    def seen(trajectories: list[Any]) -> list[Any]:
        return [(t.id, t.model, t.status, t.thread_id, _calls(t)) for t in trajectories if t.model is not None]

    assert seen(_stored(ingested)) == seen(runs)
