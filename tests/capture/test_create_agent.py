"""record_experience on graphs from LangChain's ``create_agent`` (the successor of LangGraph's
deprecated ``create_react_agent``), with real middleware, real tools and the real OTel SDK."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import (
    HumanInTheLoopMiddleware,
    ToolErrorMiddleware,
    after_model,
    before_model,
    wrap_model_call,
    wrap_tool_call,
)
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, SystemMessage, ToolMessage
from langchain_core.tools import ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from pydantic import BaseModel, Field

from ee_middleware import record_experience
from ee_middleware.messages import langchain_to_openai
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import EXPERT_SCRIPT, USER_TASK


class SeeingModel(ScriptedChatModel):
    """The scripted expert, keeping the messages it was called with (what the trajectory must hold)."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def as_recorded(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """The OpenAI form of messages as a step's state holds them (tool messages keep no ``name``)."""
    return [{k: v for k, v in m.items() if not (m["role"] == "tool" and k == "name")} for m in langchain_to_openai(messages)]


@pytest.fixture
def seeing_model() -> SeeingModel:
    return SeeingModel(script=EXPERT_SCRIPT, model_name="scripted-expert", seen=[])


def test_create_agent_records_every_step(seeing_model, tools, store, store_path, inventory):
    graph = create_agent(seeing_model, tools, system_prompt="You manage a fruit shop.")
    agent = record_experience(graph, app="shop", store=store_path)
    result = agent.invoke(USER_TASK, {"configurable": {"thread_id": "t-1"}})
    agent.flush()
    assert result["messages"][-1].content.startswith("Pears were out of stock")
    [t] = list(store.iter_trajectories())
    assert (t.status, t.thread_id, t.model, t.task) == ("completed", "t-1", "scripted-expert", "Do we have pears? If not, order 5.")
    assert [tool["function"]["name"] for tool in t.tools] == ["check_stock", "order_item"]
    assert [(s.action.kind, s.action.tool_call and s.action.tool_call.name) for s in t.steps] == [
        ("tool_call", "check_stock"),
        ("tool_call", "order_item"),
        ("answer", None),
    ]
    assert [s.observation.content for s in t.steps[:2]] == ["0", "ordered 5 pear; now 5"]
    assert t.steps[0].state == [{"role": "system", "content": "You manage a fruit shop."}, {"role": "user", "content": t.task}]
    assert t.final_answer == result["messages"][-1].content
    for step, seen in zip(t.steps, seeing_model.seen, strict=True):
        assert step.state == as_recorded(seen)


def test_middleware_that_edits_messages_is_recorded_as_the_model_saw_it(seeing_model, tools, store, store_path):
    @before_model
    def mask_order_numbers(state: Any, runtime: Any) -> dict[str, Any] | None:
        """Rewrites the user's turn in the graph state (a RemoveMessage + a new message)."""
        first = state["messages"][0]
        if isinstance(first, HumanMessage) and "pears" in first.content:
            return {"messages": [RemoveMessage(id=first.id), HumanMessage(content=first.content.replace("pears", "PEARS"), id=first.id)]}
        return None

    @wrap_model_call
    def add_hint(request: Any, handler: Any) -> Any:
        """Edits only the request: the model sees a hint that the graph state never holds."""
        return handler(request.override(messages=[*request.messages, SystemMessage("hint: be brief")]))

    @after_model
    def sign(state: Any, runtime: Any) -> dict[str, Any] | None:
        last = state["messages"][-1]
        if isinstance(last, AIMessage) and not last.tool_calls and not last.content.endswith("-- shop bot"):
            return {"messages": [AIMessage(content=f"{last.content} -- shop bot", id=last.id)]}
        return None

    graph = create_agent(seeing_model, tools, middleware=[mask_order_numbers, add_hint, sign])
    agent = record_experience(graph, app="shop", store=store_path)
    result = agent.invoke(USER_TASK)
    agent.flush()
    [t] = list(store.iter_trajectories())
    assert t.num_steps == 3 and len(seeing_model.seen) == 3
    for step, seen in zip(t.steps, seeing_model.seen, strict=True):
        assert step.state == as_recorded(seen)  # the edited messages, hint included
        assert step.state[0]["content"] == "Do we have PEARS? If not, order 5."
        assert step.state[-1] == {"role": "system", "content": "hint: be brief"}
    # the model's own decision is the action; the run's answer is what the graph returned
    assert t.steps[-1].action.content == EXPERT_SCRIPT[-1].content
    assert t.final_answer == result["messages"][-1].content == EXPERT_SCRIPT[-1].content + " -- shop bot"
    assert "hint: be brief" not in json.dumps([m.content for m in result["messages"]])


def test_tool_middleware_edits_and_tool_errors(store, store_path, inventory):
    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        if item not in inventory.stock:
            raise ToolException(f"unknown item {item!r}")
        return str(inventory.stock[item])

    @wrap_tool_call
    def annotate(request: Any, handler: Any) -> Any:
        result = handler(request)
        if isinstance(result, ToolMessage) and result.status != "error":
            return result.model_copy(update={"content": f"{result.content} (checked)"})
        return result

    script = [
        AIMessage(content="", tool_calls=[tool_call("check_stock", item="kiwi")]),
        AIMessage(content="", tool_calls=[tool_call("check_stock", item="apple")]),
        AIMessage(content="3 apples."),
    ]
    errors = ToolErrorMiddleware(on_error=lambda exc, request: f"Error: {exc}")
    graph = create_agent(ScriptedChatModel(script=script), [check_stock], middleware=[errors, annotate])
    agent = record_experience(graph, app="shop", store=store_path)
    agent.invoke({"messages": [("user", "kiwis or apples?")]})
    agent.flush()
    [t] = list(store.iter_trajectories())
    first, second, _ = t.steps
    assert first.observation.is_error and first.observation.content == "Error: unknown item 'kiwi'"
    assert not second.observation.is_error and second.observation.content == "3 (checked)"  # what the model saw next


def test_structured_output_is_the_answer_and_its_tool_message_the_last_observation(tools, store, store_path):
    class Restock(BaseModel):
        item: str
        ordered: int

    script = [*EXPERT_SCRIPT[:2], AIMessage(content="", tool_calls=[tool_call("Restock", item="pear", ordered=5)])]
    graph = create_agent(ScriptedChatModel(script=script), tools, response_format=ToolStrategy(Restock))
    agent = record_experience(graph, app="shop", store=store_path)
    result = agent.invoke(USER_TASK)
    agent.flush()
    assert result["structured_response"] == Restock(item="pear", ordered=5)
    [t] = list(store.iter_trajectories())
    assert t.status == "completed" and json.loads(t.final_answer) == {"item": "pear", "ordered": 5}
    last = t.steps[-1]
    assert last.action.tool_call.name == "Restock" and last.observation.content.startswith("Returning structured response")


def test_human_in_the_loop_interrupt_and_resume(seeing_model, tools, store, store_path):
    graph = create_agent(
        seeing_model, tools, middleware=[HumanInTheLoopMiddleware(interrupt_on={"order_item": True})], checkpointer=InMemorySaver()
    )
    agent = record_experience(graph, app="shop", store=store_path)
    config = {"configurable": {"thread_id": "review-1"}}
    paused = agent.invoke(USER_TASK, config)
    assert "__interrupt__" in paused
    done = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    agent.flush()
    assert done["messages"][-1].content.startswith("Pears were out of stock")
    first, second = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert (first.status, first.thread_id, second.status, second.thread_id) == ("interrupted", "review-1", "completed", "review-1")
    assert [s.action.tool_call.name for s in first.steps] == ["check_stock", "order_item"]
    assert first.steps[0].observation.content == "0"


@pytest.mark.parametrize("mode", ["stream", "ainvoke"])
async def test_stream_and_ainvoke(seeing_model, tools, store, store_path, mode):
    agent = record_experience(create_agent(seeing_model, tools), app="shop", store=store_path)
    if mode == "stream":
        chunks = list(agent.stream(USER_TASK, stream_mode="updates"))
        assert chunks
    else:
        await agent.ainvoke(USER_TASK)
    agent.flush()
    [t] = list(store.iter_trajectories())
    assert [s.action.kind for s in t.steps] == ["tool_call", "tool_call", "answer"]


def test_a_return_direct_tool_ends_the_run_with_its_result(store, store_path):
    @tool(return_direct=True)
    def refund(order_id: str) -> str:
        """Refund an order; its result goes straight to the user."""
        return f"Refund for {order_id} issued."

    graph = create_agent(ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")])]), [refund])
    agent = record_experience(graph, app="shop", store=store_path)
    agent.invoke({"messages": [("user", "refund A-1")]})
    agent.flush()
    [t] = list(store.iter_trajectories())
    assert t.final_answer == t.steps[-1].observation.content == "Refund for A-1 issued."


def test_a_resumed_review_of_parallel_calls_keeps_its_steps_in_decision_order(store, store_path):
    """A review of 3 parallel calls, all approved: the resumed run's steps are the reviewed calls (0, 1, 2) in the order
    the model made them, then its answer (3); the indices were 0, 2, 4 and the third call came after the answer."""

    @tool
    def refund(order: str) -> str:
        """Refund an order."""
        return f"refunded {order}"

    script = [AIMessage("", tool_calls=[tool_call("refund", order=f"A-{i}") for i in (1, 2, 3)]), AIMessage("all refunded")]
    graph = create_agent(
        ScriptedChatModel(script=script),
        [refund],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"refund": True})],
        checkpointer=InMemorySaver(),
    )
    agent = record_experience(graph, app="shop", store=store_path)
    config = {"configurable": {"thread_id": "review-3"}}
    agent.invoke({"messages": [("user", "refund A-1, A-2 and A-3")]}, config)
    agent.invoke(Command(resume={"decisions": [{"type": "approve"}] * 3}), config)
    agent.flush()
    paused, resumed = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert paused.status == "interrupted" and resumed.status == "completed"
    assert [s.index for s in resumed.steps] == [0, 1, 2, 3]
    assert [s.decision_index for s in resumed.steps] == [0, 0, 0, 1]
    assert [s.action.tool_call.arguments["order"] if s.action.tool_call else s.action.content for s in resumed.steps] == [
        "A-1",
        "A-2",
        "A-3",
        "all refunded",
    ]
    assert [s.observation.content for s in resumed.steps[:3]] == ["refunded A-1", "refunded A-2", "refunded A-3"]


def test_parallel_tools_that_interrupt_resume_with_their_steps_in_order_and_the_pause_has_no_answer(store, store_path):
    """interrupt() in two of three parallel tools: the paused run has no final answer (the third tool's result is none)
    and keeps that result in its messages; the resumed run's steps run 0..3 in the order the model made the calls."""
    from langgraph.types import interrupt

    @tool
    def pay(amount: int) -> str:
        """Pay an amount; a person confirms first."""
        return f"paid {amount}" if interrupt(f"pay {amount}?") else "declined"

    @tool
    def note(text: str) -> str:
        """Take a note."""
        return f"noted {text}"

    script = [
        AIMessage("", tool_calls=[tool_call("pay", amount=5), tool_call("note", text="x"), tool_call("pay", amount=9)]),
        AIMessage("finished"),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [pay, note], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="bank", store=store_path, approve_if=lambda t: t.final_answer is not None)
    config = {"configurable": {"thread_id": "pay"}}
    out = agent.invoke({"messages": [("user", "pay both")]}, config)
    assert sorted(i.value for i in out["__interrupt__"]) == ["pay 5?", "pay 9?"]  # the tools run at once: either first
    resume = {i.id: i.value == "pay 5?" for i in out["__interrupt__"]}
    agent.invoke(Command(resume=resume), config)
    agent.flush()
    paused, resumed = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert (paused.status, paused.final_answer, paused.approval.status) == ("interrupted", None, "pending")
    assert [m["role"] for m in paused.messages] == ["user", "assistant", "tool"]
    assert paused.messages[-1]["content"] == "noted x"
    assert [s.index for s in resumed.steps] == [0, 1, 2, 3]
    assert [
        (s.action.tool_call.name if s.action.tool_call else "answer", s.observation and s.observation.content) for s in resumed.steps
    ] == [
        ("pay", "paid 5"),
        ("note", "noted x"),
        ("pay", "declined"),
        ("answer", None),
    ]


def test_a_resumed_later_turn_has_its_own_turns_task_not_the_threads_first(store, store_path):
    """Turn 1 asks about the weather, turn 2 asks for a refund that a person reviews; the run resumed with
    Command(resume=...) is stored with turn 2's question as its task (it was the thread's first question)."""

    @tool
    def lookup(city: str) -> str:
        """Weather."""
        return f"sunny in {city}"

    @tool
    def refund(order: str) -> str:
        """Refund an order."""
        return f"refunded {order}"

    def policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
        last = messages[-1]
        if last.type == "human":
            call = tool_call("refund", order="A-9") if "refund" in last.content else tool_call("lookup", city="Paris")
            return AIMessage("", tool_calls=[call])
        return AIMessage(f"ok: {last.content}")

    graph = create_agent(
        ScriptedChatModel(policy=policy),
        [lookup, refund],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"refund": True})],
        checkpointer=InMemorySaver(),
    )
    agent = record_experience(graph, app="shop", store=store_path)
    config = {"configurable": {"thread_id": "t-1"}}
    agent.invoke({"messages": [("user", "weather in Paris?")]}, config)
    agent.invoke({"messages": [("user", "please refund order A-9")]}, config)
    agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    agent.flush()
    runs = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    assert [(t.status, t.task) for t in runs] == [
        ("completed", "weather in Paris?"),
        ("interrupted", "please refund order A-9"),
        ("completed", "please refund order A-9"),
    ]
    assert [s.action.tool_call.name if s.action.tool_call else "answer" for s in runs[-1].steps] == ["refund", "answer"]
