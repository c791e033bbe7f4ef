"""A tool's exception whose own ``__str__`` raises (a client library's error formatting fields it never set): the run
is recorded, the error said as Python's traceback says it. Before, the run was not stored ("a tool call's arguments or
result could not be encoded"), though the agent handled the error and answered."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.testing import ScriptedChatModel, tool_call


class ApiError(Exception):
    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"  # type: ignore[attr-defined]  # never set: AttributeError


@tool
def fetch(q: str) -> str:
    """Fetch a page."""
    raise ApiError("boom")


def _graph(handle_tool_errors: bool) -> object:
    model = ScriptedChatModel(script=[AIMessage("", tool_calls=[tool_call("fetch", q="x")]), AIMessage("Sorry, fetch failed.")])
    bound = model.bind_tools([fetch])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [bound.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([fetch], handle_tool_errors=handle_tool_errors))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile()


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_run_whose_tool_raised_an_unprintable_error_the_agent_handled_is_stored(tmp_path: Path, offload: str) -> None:
    agent = record_experience(_graph(handle_tool_errors=True), app="odd", store=tmp_path / "store", offload=offload)
    try:
        out = agent.invoke({"messages": [("user", "fetch x")]})
        assert agent.flush()
        stats = agent.recorder.stats
    finally:
        agent.recorder.close()
    assert out["messages"][-1].content == "Sorry, fetch failed."
    assert (stats.trajectories_written, stats.runs_failed) == (1, 0), stats.errors
    store = LocalExperienceStore(tmp_path / "store")
    [trajectory] = list(store.iter_trajectories())
    store.close()
    assert trajectory.status == "completed" and trajectory.steps[0].action.tool_call.name == "fetch"


def test_a_run_an_unprintable_tool_error_ended_is_stored_as_an_error(tmp_path: Path) -> None:
    agent = record_experience(_graph(handle_tool_errors=False), app="odd", store=tmp_path / "store")
    try:
        with pytest.raises(ApiError):  # the caller gets its own exception, as without capture
            agent.invoke({"messages": [("user", "fetch x")]})
        assert agent.flush()
    finally:
        agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "store")
    [trajectory] = list(store.iter_trajectories())
    store.close()
    assert trajectory.status == "error" and "<exception str() failed>" in (trajectory.error or ""), trajectory.error
