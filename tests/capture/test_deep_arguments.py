"""Tool call arguments nested deep (a tree, a JSON document a tool takes) are stored whole: past 64 levels they were
replaced with "<nested too deep>" though the tool had received them whole, so IL taught that text and replay ran a call
other than the recorded one (a sweep). Real LangGraph graph, the real OTel SDK, the real local store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware import record_experience
from ee_middleware.messages import MAX_JSON_DEPTH, to_jsonable
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_graph_input_tasks import recorded


def _tree(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for level in range(levels):
        node = {f"k{level}": [node]}
    return node


@tool
def store_tree(tree: dict) -> str:
    """Store a tree."""
    return "stored"


def test_arguments_nested_150_levels_deep_are_stored_as_the_tool_received_them(store_path: Path) -> None:
    tree = _tree(75)  # an object and a list a level: 151 levels of JSON
    model = ScriptedChatModel(script=[AIMessage("", tool_calls=[tool_call("store_tree", tree=tree)]), AIMessage("done")])
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [model.bind_tools([store_tree]).invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([store_tree]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    agent = record_experience(graph.compile(), app="trees", store=store_path)
    agent.invoke({"messages": [("user", "store my tree")]})
    [trajectory] = recorded(agent, store_path)
    assert trajectory.steps[0].action.tool_call.arguments == {"tree": tree}


def test_a_value_deeper_than_the_limit_or_holding_itself_ends() -> None:
    assert to_jsonable(_tree(MAX_JSON_DEPTH // 2 - 1)) == _tree(MAX_JSON_DEPTH // 2 - 1)
    looped: list[Any] = []
    looped.append(looped)
    walked = to_jsonable(looped)
    for _ in range(MAX_JSON_DEPTH):
        walked = walked[0]
    assert walked == ["<nested too deep>"]
