"""A run paused inside a sub-agent node has no final answer, as any paused run ending on the call awaiting review.

A supervisor node's model replies, then a ``create_agent`` sub-agent (a node of the parent graph) calls a tool that
pauses the run (``interrupt()`` in the tool, or ``HumanInTheLoopMiddleware``). The parent's state does not hold the
sub-agent's messages yet, so its last message is the supervisor's reply: that reply was stored as the paused run's
``final_answer``, which ``ee traces export`` and the ``traces:`` regression suite read. Real graphs, real local store;
also read back from capture's own spans by ``ee traces ingest``'s assembler."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.graph import MessagesState
from langgraph.types import Command, interrupt
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.capture.assembler import AssemblyOptions, assemble
from ee_middleware.capture.spandata import from_readable_span
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_graph_input_tasks import chain_graph, recorded

SUPERVISOR_REPLY = "I will ask the billing team to handle this."


@tool
def refund(order_id: str) -> str:
    """Refund an order (a human approves it first)."""
    verdict = interrupt({"approve refund of": order_id})
    return f"refund {order_id}: {verdict}"


@tool
def refund_reviewed(order_id: str) -> str:
    """Refund an order."""
    return f"refund {order_id} issued"


def _billing_policy(name: str) -> Any:
    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        if messages[-1].type == "tool":
            return AIMessage(content="Refunded.")
        return AIMessage(content="", tool_calls=[tool_call(name, order_id="A-1")])

    return policy


def _supervised(pause: str) -> Any:
    if pause == "interrupt-in-tool":
        billing = create_agent(ScriptedChatModel(model_name="billing", policy=_billing_policy("refund")), [refund])
    else:
        billing = create_agent(
            ScriptedChatModel(model_name="billing", policy=_billing_policy("refund_reviewed")),
            [refund_reviewed],
            middleware=[HumanInTheLoopMiddleware(interrupt_on={"refund_reviewed": True})],
        )
    supervisor = ScriptedChatModel(model_name="supervisor", script=[AIMessage(content=SUPERVISOR_REPLY)])
    return chain_graph(MessagesState, ("supervisor", _replies(supervisor)), ("billing", billing))


def _replies(model: Any) -> Any:
    """A node that appends ``model``'s reply to the conversation."""
    return lambda state: {"messages": [model.invoke(state["messages"])]}


@pytest.mark.parametrize("pause", ["interrupt-in-tool", "hitl-middleware"])
def test_a_run_paused_inside_a_sub_agent_has_no_final_answer(pause: str, store_path: Any, tracer_provider: Any, span_exporter: Any) -> None:
    agent = record_experience(_supervised(pause), app="support", store=store_path, tracer_provider=tracer_provider)
    config = {"configurable": {"thread_id": "p-1"}}
    out = agent.invoke({"messages": [("user", "Refund order A-1")]}, config)
    assert "__interrupt__" in out
    resume = {"decisions": [{"type": "approve"}]} if pause == "hitl-middleware" else "approved"
    agent.invoke(Command(resume=resume), config)
    paused, resumed = recorded(agent, store_path)

    assert paused.status == "interrupted" and paused.final_answer is None
    assert [s.action.content for s in paused.steps if s.action.kind == "answer"] == [SUPERVISOR_REPLY]  # still its step
    last = paused.steps[-1]
    assert last.action.tool_call is not None and last.action.tool_call.name.startswith("refund") and last.observation is None
    assert (resumed.status, resumed.final_answer) == ("completed", "Refunded.")

    # the same spans read back (as ee traces ingest reads capture's own spans) give the same answer
    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    roots = sorted((s for s in spans if s.name.startswith("invoke_agent")), key=lambda s: s.start_ns)
    run = [s for s in spans if s.trace_id == roots[0].trace_id]
    assert assemble(run, AssemblyOptions(app="support")).final_answer is None


def test_a_run_paused_after_its_model_answered_keeps_the_answer(store_path: Any) -> None:
    """A review node that pauses after the model's reply (nothing awaits a tool): that reply stays the run's answer."""
    model = ScriptedChatModel(script=[AIMessage(content="draft reply")])

    def review(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(content=f"reviewer said {interrupt('send it?')}")]}

    agent = record_experience(chain_graph(MessagesState, ("draft", _replies(model)), ("review", review)), app="support", store=store_path)
    agent.invoke({"messages": [("user", "Write to the customer")]}, {"configurable": {"thread_id": "r-1"}})
    [paused] = recorded(agent, store_path)
    assert (paused.status, paused.final_answer) == ("interrupted", "draft reply")


class Grade(BaseModel):
    """Grade the draft."""

    score: int


@pytest.mark.parametrize("between", ["structured-output", "router", "structured-output-then-breakpoint"])
def test_a_run_paused_for_review_after_a_tool_calling_grader_keeps_the_answer(
    between: str, store_path: Any, tracer_provider: Any, span_exporter: Any
) -> None:
    """The model answers, a model call that answers by a tool call grades the answer (``with_structured_output``, tool
    calling by default; or a router's ``bind_tools`` call the node reads itself), then a review node pauses. The state
    ends on the answer and nothing awaits a tool, yet the grader's call, the last decision that acted, was taken for a
    call awaiting review and the answer was dropped (final_answer None). The state the run paused in now tells."""
    drafter = ScriptedChatModel(script=[AIMessage(content="draft reply")])
    grader = ScriptedChatModel(model_name="grader", policy=lambda m, t: AIMessage(content="", tool_calls=[tool_call("Grade", score=4)]))

    class State(MessagesState):
        score: int

    def grade(state: State) -> dict[str, Any]:
        if between == "router":
            reply = grader.bind_tools([Grade], tool_choice="Grade").invoke(state["messages"])
            return {"score": reply.tool_calls[0]["args"]["score"]}
        return {"score": grader.with_structured_output(Grade).invoke(state["messages"]).score}

    def review(state: State) -> dict[str, Any]:
        if between != "structured-output-then-breakpoint":
            interrupt("send it?")
        return {}

    breakpoints = ["review"] if between.endswith("breakpoint") else None
    graph = chain_graph(State, ("draft", _replies(drafter)), ("grade", grade), ("review", review), interrupt_before=breakpoints)
    agent = record_experience(graph, app="support", store=store_path, tracer_provider=tracer_provider)
    out = agent.invoke({"messages": [("user", "Write to the customer")]}, {"configurable": {"thread_id": "g-1"}})
    assert out["messages"][-1].content == "draft reply" and out["score"] == 4
    [paused] = recorded(agent, store_path)
    assert (paused.status, paused.final_answer) == ("interrupted", "draft reply")
    assert [s.action.tool_call.name for s in paused.steps if s.action.tool_call is not None] == ["Grade"]

    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    assert assemble(spans, AssemblyOptions(app="support")).final_answer == "draft reply"


def test_a_breakpoint_before_the_tools_of_a_sub_agent_free_graph_has_no_answer(store_path: Any) -> None:
    """A graph stopped at a breakpoint before its tools (``interrupt_before=["tools"]``) after an earlier model reply: its
    state ends on the calls awaiting the tools, so the earlier reply is no answer (as when no node says where it paused)."""
    model = ScriptedChatModel(
        script=[AIMessage(content="Let me look."), AIMessage(content="", tool_calls=[tool_call("refund_reviewed", order_id="A-1")])]
    )
    graph = chain_graph(
        MessagesState, ("intro", _replies(model)), ("agent", _replies(model)), ("tools", lambda state: {}), interrupt_before=["tools"]
    )
    agent = record_experience(graph, app="support", store=store_path)
    agent.invoke({"messages": [("user", "Refund order A-1")]}, {"configurable": {"thread_id": "b-1"}})
    [paused] = recorded(agent, store_path)
    assert (paused.status, paused.final_answer) == ("interrupted", None)
