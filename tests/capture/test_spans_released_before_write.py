"""Capture lets go of a run's spans once it has assembled the run, before the store writes it.

A run's chat spans hold its conversation once per model call (each call's input messages), as much again as the run's
record, whose every step holds the conversation so far. Both held at once made a long run cost about twice its record in
the app: 100 steps of 100 KB tool results, 1.7 GB (``benchmarks/capture_long_runs.py``). Checked on a real LangGraph
agent recorded through the real OpenTelemetry SDK with capture's threads (``offload="process"`` runs the same processor in
its child), for one run and for a batch of several."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.prebuilt import create_react_agent

from ee_middleware import record_experience
from ee_middleware.capture.spandata import SpanData
from ee_middleware.scripted import ScriptedChatModel, tool_call
from ee_middleware.store import LocalExperienceStore


class _SpanCountingStore(LocalExperienceStore):
    """A real local store that counts, at each write, the spans of the runs it is given still alive in this process (a
    run recorded meanwhile keeps its own until it ends)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.alive_at_write: list[int] = []

    def write(self, trajectories: Any) -> int:
        trajectories = list(trajectories)
        traces = {t.trace_id for t in trajectories}
        assert None not in traces
        gc.collect()
        self.alive_at_write.append(sum(1 for o in gc.get_objects() if isinstance(o, SpanData) and o.trace_id in traces))
        return super().write(trajectories)


def _agent(tools: list[Any], store: LocalExperienceStore) -> Any:
    script = [
        AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
        AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=5)]),
        AIMessage(content="Ordered 5 pears."),
    ]
    graph = create_react_agent(ScriptedChatModel(script=script), tools)
    return record_experience(graph, app="shop", store=store)


def test_a_runs_spans_are_gone_when_its_record_is_written(tmp_path: Path, tools: list[Any]) -> None:
    store = _SpanCountingStore(tmp_path / "experience")
    agent = _agent(tools, store)
    agent.invoke({"messages": [("user", "order pears")]})
    assert agent.flush()
    agent.recorder.close()
    assert store.alive_at_write == [0]
    (run,) = LocalExperienceStore(store.root).iter_trajectories()
    assert [s.action.tool_call.name for s in run.steps if s.action.tool_call] == ["check_stock", "order_item"]
    assert len(run.steps[-1].state) == 5


def test_a_batch_of_runs_lets_go_of_each_runs_spans(tmp_path: Path, tools: list[Any]) -> None:
    store = _SpanCountingStore(tmp_path / "experience")
    agent = _agent(tools, store)
    for n in range(6):
        agent.invoke({"messages": [("user", f"order pears {n}")]})
    assert agent.flush()
    agent.recorder.close()
    assert store.alive_at_write and set(store.alive_at_write) == {0}, store.alive_at_write
    runs = list(LocalExperienceStore(store.root).iter_trajectories())
    assert sorted(r.task for r in runs) == [f"order pears {n}" for n in range(6)]
    assert all(len(r.steps) == 3 for r in runs)
