"""A run resumed after a human review that calls no model (the approved call's tool is ``return_direct``; a reviewed tool
raises and ends the run) keeps its reviewed turn as steps, in the state the paused decision was made in, offered that
decision's tools: it gave no step before, so an approved final action was never taught (the paused trajectory does not
teach a call awaiting review). Real ``create_agent`` graphs and ``StateGraph`` graphs paused and resumed on a real
checkpointer, the real OTel SDK, the real local store, datasets built by ``ee datasets build``'s own code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

from ee_middleware import record_experience
from ee_middleware.capture.paused import PAUSED_FOLDER
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.capture.test_graph_input_tasks import recorded
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")

EDIT = {"type": "edit", "edited_action": {"name": "send_email", "args": {"to": "carol", "body": "see you at 5"}}}


def _mail_agent(sent: list[tuple[str, str]]) -> Any:
    """Looks a contact up, then sends an e-mail (``return_direct``: the run ends on its result) after a human's review."""

    @tool
    def lookup(name: str) -> str:
        """Find a contact's address."""
        return f"{name} is in the address book"

    @tool(return_direct=True)
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        sent.append((to, body))
        return f"sent to {to}"

    script = [
        AIMessage(content="", tool_calls=[tool_call("lookup", name="bob")]),
        AIMessage(content="Writing to Bob now.", tool_calls=[tool_call("send_email", to="bob", body="see you at 4")]),
    ]
    return create_agent(
        ScriptedChatModel(script=script),
        [lookup, send_email],
        system_prompt="You write e-mails for the user.",
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"send_email": True})],
        checkpointer=InMemorySaver(),
    )


def _paused_and_resumed(trajectories: list[Trajectory]) -> tuple[Trajectory, Trajectory]:
    paused, resumed = trajectories
    assert (paused.status, resumed.status) == ("interrupted", "completed")
    return paused, resumed


def _tool_names(trajectory: Trajectory) -> list[str]:
    return [t["function"]["name"] for t in trajectory.tools]


@OFFLOADS
@pytest.mark.parametrize("decision", ["approve", "edit"])
def test_a_return_direct_call_approved_or_edited_is_the_resumed_runs_step(tmp_path: Path, offload: str, decision: str) -> None:
    sent: list[tuple[str, str]] = []
    agent = record_experience(_mail_agent(sent), app="mail", store=tmp_path / "s", offload=offload)
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [("user", "tell bob I'll be there at 4")]}, config)
    answer = {"type": "approve"} if decision == "approve" else EDIT
    agent.invoke(Command(resume={"decisions": [answer]}), config)
    paused, resumed = _paused_and_resumed(recorded(agent, tmp_path / "s"))
    awaiting = paused.steps[-1]
    to, body = sent[0]
    assert [(s.action.tool_call.name, s.action.tool_call.arguments) for s in resumed.steps] == [("send_email", {"to": to, "body": body})]
    [step] = resumed.steps
    assert step.state == awaiting.state  # the model's own input: its system prompt, the lookup's result
    assert step.state[0] == {"role": "system", "content": "You write e-mails for the user."}
    assert step.action.tool_call.id == awaiting.action.tool_call.id
    assert step.action.content == "Writing to Bob now."
    assert (step.observation.content, step.observation.is_error) == (f"sent to {to}", False)
    assert _tool_names(resumed) == ["lookup", "send_email"]  # what the paused decision was offered
    assert resumed.task == "tell bob I'll be there at 4"
    assert resumed.final_answer.endswith(f"sent to {to}")  # (an edit: after LangChain's note that a human replaced the call)
    assert (to, body) == (("bob", "see you at 4") if decision == "approve" else ("carol", "see you at 5"))


def test_il_teaches_the_approved_return_direct_call_once(tmp_path: Path) -> None:
    """IL teaches it from the resumed trajectory (before: from neither)."""
    agent = record_experience(_mail_agent([]), app="mail", store=tmp_path / "s")
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [("user", "tell bob I'll be there at 4")]}, config)
    agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    recorded(agent, tmp_path / "s")
    store = LocalExperienceStore(tmp_path / "s")
    store.approve(store.trajectories()["id"].to_list(), by="alice")
    store.close()
    summary = build_datasets(DatasetConfig.load(store=tmp_path / "s", out=tmp_path / "out", kinds="il"))
    assert summary["datasets"]["il"]["calls_awaiting_review_left_out"] == 1
    taught = [
        c["function"]["name"]
        for completion in pl.read_parquet(tmp_path / "out" / "il.parquet")["completion"]
        for message in json.loads(completion)
        for c in message.get("tool_calls") or ()
    ]
    assert sorted(taught) == ["lookup", "send_email"]


@pytest.mark.parametrize("notes", ["kept", "removed"])
def test_another_process_resuming_finds_the_paused_decision(tmp_path: Path, notes: str) -> None:
    """The app restarted between the pause and the resume: the paused run's decision is read through its note in the
    store's ``paused/`` folder, or, without one (a store written by a version without notes), from the store's tables."""
    graph = _mail_agent([])
    config = {"configurable": {"thread_id": "t1"}}
    first = record_experience(graph, app="mail", store=tmp_path / "s")
    first.invoke({"messages": [("user", "tell bob I'll be there at 4")]}, config)
    recorded(first, tmp_path / "s")
    if notes == "removed":
        shutil.rmtree(tmp_path / "s" / PAUSED_FOLDER)
    second = record_experience(graph, app="mail", store=tmp_path / "s")
    second.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    paused, resumed = _paused_and_resumed(recorded(second, tmp_path / "s"))
    assert [(s.action.tool_call.id, s.state) for s in resumed.steps] == [(paused.steps[-1].action.tool_call.id, paused.steps[-1].state)]
    assert _tool_names(resumed) == ["lookup", "send_email"]


@tool
def refund(order_id: str) -> str:
    """Refund an order once a human approves it."""
    if interrupt(f"refund {order_id}?") != "yes":
        raise ValueError(f"the refund of {order_id} was refused by the payment system")
    return "refunded"


def _refund_graph() -> Any:
    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(content="Refunded.")
        return AIMessage(content="", tool_calls=[tool_call("refund", order_id="A1")])

    model = ScriptedChatModel(policy=policy).bind_tools([refund])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([refund], handle_tool_errors=False))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


@OFFLOADS
def test_a_reviewed_tool_that_raises_is_the_failed_resumed_runs_step(tmp_path: Path, offload: str) -> None:
    agent = record_experience(_refund_graph(), app="shop", store=tmp_path / "s", offload=offload)
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [("user", "refund order A1")]}, config)
    with pytest.raises(ValueError, match="refused by the payment system"):
        agent.invoke(Command(resume="no"), config)
    paused, resumed = recorded(agent, tmp_path / "s")
    assert (paused.status, resumed.status) == ("interrupted", "error")
    [step] = resumed.steps
    assert step.state == paused.steps[-1].state
    assert step.action.tool_call == paused.steps[-1].action.tool_call
    assert step.observation.is_error
    assert "refused by the payment system" in step.observation.content
    assert _tool_names(resumed) == ["refund"]
