"""A model that ends its run with an empty reply (``content=""`` after a tool result: many do once a tool said it all) made
a decision: to stop. It is the run's last step, an answer with empty content, in the state after the tool's result, so
IL teaches stopping there (was: no step; the trajectory ended on the tool call and nothing said a decision was left
out). The run's ``final_answer`` stays empty (``None``). Real ``create_agent`` and ``ToolNode`` graphs, the real OTel
SDK, the real local store; each in thread mode and with capture in a child process."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware import record_experience
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_graph_input_tasks import recorded as _recorded
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")


@tool
def notify(user: str) -> str:
    """Notify a user."""
    return f"notified {user}"


def _script() -> list[AIMessage]:
    return [AIMessage(content="", tool_calls=[tool_call("notify", user="ann"), tool_call("notify", user="bob")]), AIMessage(content="")]


def _tool_node_loop() -> Any:
    model = ScriptedChatModel(script=_script()).bind_tools([notify])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([notify]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile()


@OFFLOADS
@pytest.mark.parametrize("build", [lambda: create_agent(ScriptedChatModel(script=_script()), [notify]), _tool_node_loop])
def test_an_empty_last_reply_is_the_runs_last_step(offload, build, store_path):
    agent = record_experience(build(), app="notifier", store=store_path, offload=offload)
    out = agent.invoke({"messages": [("user", "tell ann and bob")]})
    assert [(m.type, m.content) for m in out["messages"][-2:]] == [("tool", "notified bob"), ("ai", "")]
    [t] = _recorded(agent, store_path)
    assert (t.status, t.task, t.final_answer) == ("completed", "tell ann and bob", None)
    assert [(s.decision_index, s.action.kind, s.action.content) for s in t.steps] == [
        (0, "tool_call", None),
        (0, "tool_call", None),
        (1, "answer", ""),
    ]
    last = t.steps[-1]
    assert (last.observation, [m["role"] for m in last.state]) == (None, ["user", "assistant", "tool", "tool"])
    assert [m["content"] for m in last.state[-2:]] == ["notified ann", "notified bob"]  # the state it decided to stop in


@OFFLOADS
def test_an_empty_reply_the_run_did_not_end_on_is_no_step(offload, store_path):
    """An empty reply a node then answered after (asking the model again) is no decision of the run: only the last is."""

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        return AIMessage(content="" if messages[-1].type == "human" and messages[-1].content == "hi" else "Hello!")

    model = ScriptedChatModel(policy=policy)

    def agent_node(state: dict[str, Any]) -> dict[str, Any]:
        first = model.invoke(state["messages"])
        again = model.invoke([*state["messages"], first, ("user", "please say something")])
        return {"messages": [again]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent_node)
    builder.add_edge(START, "agent")
    agent = record_experience(builder.compile(), app="greeter", store=store_path, offload=offload)
    agent.invoke({"messages": [("user", "hi")]})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", "Hello!")
    assert [(s.action.kind, s.action.content) for s in t.steps] == [("answer", "Hello!")]


@OFFLOADS
def test_an_empty_first_reply_to_the_user_is_no_step(offload: str, store_path: Any) -> None:
    """After review R4 #3 of 392cd6e: the empty-answer step is the model stopping after a tool's result; an empty reply
    to the user's question itself (a content filter, max_tokens spent on reasoning) would teach saying nothing."""
    agent = record_experience(
        create_agent(ScriptedChatModel(script=[AIMessage(content="")]), [notify]), app="notes", store=store_path, offload=offload
    )
    agent.invoke({"messages": [("user", "Tell ann the build is green.")]})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer, t.steps) == ("completed", None, [])
