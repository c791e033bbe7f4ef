"""A tool message capture cut to ``max_observation_chars`` says how much it cut (``truncated_chars``) whatever wrote it:
the text ToolNode writes for a tool that raised (``handle_tool_errors=True``) or for arguments that failed validation
was stored cut with ``truncated_chars`` 0, as if whole (a sweep), so replay's fidelity check compared a whole result
with a cut one and reported a mismatch, and the datasets left out that replay's rollouts. Real ``StateGraph`` agents
with ``ToolNode``, the real OTel SDK and the real local store, in thread mode and with capture in a child process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import ToolException, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware import record_experience
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_graph_input_tasks import recorded
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")
CAP = 60


@tool
def raises(n: int) -> str:
    """Fails: ToolNode writes the error for the model."""
    raise ValueError("V" * 100)


@tool
def answers_its_error(n: int) -> str:
    """Fails and answers with its own error text."""
    raise ToolException("T" * 100)


answers_its_error.handle_tool_error = True


@tool
def long_result(n: int) -> str:
    """A long result."""
    return "O" * 100


TOOLS = [raises, answers_its_error, long_result]


def _graph(calls: list[tuple[str, dict[str, Any]]], *, end_on_tools: bool) -> Any:
    script = [AIMessage(content="", tool_calls=[tool_call(name, **args)]) for name, args in calls]
    model = ScriptedChatModel(script=[*script, AIMessage(content="done")]).bind_tools(TOOLS)
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode(TOOLS, handle_tool_errors=True))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", END if end_on_tools else "agent")
    return builder.compile()


def _seen_and_stored(
    store_path: Path, calls: list[tuple[str, dict[str, Any]]], offload: str, *, end_on_tools: bool = False
) -> list[tuple[int, int, int]]:
    """For each call: the length of the tool message the model (or the caller) got, of the stored observation, and its
    ``truncated_chars``."""
    agent = record_experience(
        _graph(calls, end_on_tools=end_on_tools), app="cut", store=store_path, offload=offload, max_observation_chars=CAP
    )
    output = agent.invoke({"messages": [("user", "run the tools")]})
    seen = {m.tool_call_id: len(m.content) for m in output["messages"] if m.type == "tool"}
    [trajectory] = recorded(agent, store_path)
    steps = [s for s in trajectory.steps if s.action.tool_call is not None]
    assert len(steps) == len(calls)
    return [(seen[s.action.tool_call.id], len(s.observation.content), s.observation.truncated_chars) for s in steps]


@OFFLOADS
def test_every_cut_tool_message_says_how_much_was_cut(store_path: Path, offload: str) -> None:
    calls = [("raises", {"n": 1}), ("answers_its_error", {"n": 1}), ("raises", {"n": "not a number " * 20}), ("long_result", {"n": 1})]
    for seen, stored, cut in _seen_and_stored(store_path, calls, offload):
        assert seen > CAP
        assert (stored, stored + cut) == (CAP, seen)


def test_the_tool_message_a_run_ends_on_says_how_much_was_cut(store_path: Path) -> None:
    """The last call's result comes from the messages the run ended on (the graph ends after its tools)."""
    [(seen, stored, cut)] = _seen_and_stored(store_path, [("raises", {"n": 1})], "thread", end_on_tools=True)
    assert (stored, stored + cut) == (CAP, seen)


def test_a_short_error_is_not_marked_cut(store_path: Path) -> None:
    calls = [("raises", {"n": 1})]
    agent = record_experience(_graph(calls, end_on_tools=False), app="cut", store=store_path)
    agent.invoke({"messages": [("user", "run the tools")]})
    [trajectory] = recorded(agent, store_path)
    assert trajectory.steps[0].observation.truncated_chars == 0
    assert trajectory.steps[0].observation.is_error
