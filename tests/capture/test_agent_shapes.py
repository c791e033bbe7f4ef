"""record_experience on agent shapes beyond a plain ``invoke``: streams that carry a run's outcome
(structured output, ``return_direct`` tools, ``interrupt()``), ``astream_events``, resumed runs that
never call the model, tools that return a ``Command``. Real LangGraph graphs, the real OTel SDK, the
real local store; each in thread mode and with capture in a child process (same trajectories)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, StructuredTool, ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")  # every child process started here is stopped


def _recorded(agent: Any, store_path: Any) -> list[Trajectory]:
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    try:
        return sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        store.close()


@tool(return_direct=True)
def refund(order_id: str) -> str:
    """Refund an order; its result goes straight to the user."""
    return f"Refund for {order_id} issued."


class Restock(BaseModel):
    item: str
    ordered: int


def _return_direct_agent() -> Any:
    return create_agent(ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")])]), [refund])


def _structured_agent() -> Any:
    model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("Restock", item="pear", ordered=5)])])
    return create_agent(model, [], response_format=ToolStrategy(Restock))


def _review_graph() -> Any:
    """A model drafts, a human reviews it through ``interrupt()``; the resumed run calls no model."""
    model = ScriptedChatModel(script=[AIMessage(content="draft reply")])

    def review(state: MessagesState) -> dict[str, Any]:
        verdict = interrupt({"question": "send this reply?"})
        return {"messages": [AIMessage(content=f"reviewer said {verdict}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("draft", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("review", review)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "review")
    builder.add_edge("review", END)
    return builder.compile(checkpointer=InMemorySaver())


def _invoke(agent: Any, graph_input: Any, config: Any) -> None:
    agent.invoke(graph_input, config)


def _stream_updates(agent: Any, graph_input: Any, config: Any) -> None:
    list(agent.stream(graph_input, config, stream_mode="updates"))


def _stream_messages(agent: Any, graph_input: Any, config: Any) -> None:
    list(agent.stream(graph_input, config, stream_mode="messages"))


def _astream_values(agent: Any, graph_input: Any, config: Any) -> Any:
    async def run() -> None:
        [chunk async for chunk in agent.astream(graph_input, config, stream_mode="values")]

    return run()


def _astream_events(agent: Any, graph_input: Any, config: Any) -> Any:
    async def run() -> None:
        [event async for event in agent.astream_events(graph_input, config, version="v2")]

    return run()


def _invoke_v2(agent: Any, graph_input: Any, config: Any) -> None:
    agent.invoke(graph_input, config, version="v2")  # returns a GraphOutput, not the state


RUN_WAYS: dict[str, Callable[..., Any]] = {
    "invoke": _invoke,
    "invoke-v2": _invoke_v2,
    "stream-updates": _stream_updates,
    "stream-messages": _stream_messages,
    "astream-values": _astream_values,
    "astream_events": _astream_events,
}


async def _run(way: str, agent: Any, graph_input: Any, config: Any = None) -> None:
    pending = RUN_WAYS[way](agent, graph_input, config)
    if pending is not None:
        await pending


@OFFLOADS
@pytest.mark.parametrize("way", list(RUN_WAYS))
async def test_every_way_of_running_records_the_outcome_of_the_run(way, offload, store_path):
    """The final answer of a run that ends on a tool (return_direct, structured output) and the
    status of a run paused by ``interrupt()`` are what the graph produced, however it was run: a
    stream's chunks need not hold the final state (was: no final answer, and an interrupted stream
    recorded as completed; astream_events was not recorded at all)."""
    direct = record_experience(_return_direct_agent(), app="shop", store=store_path / "direct", offload=offload)
    await _run(way, direct, {"messages": [("user", "refund A-1")]})
    [t] = _recorded(direct, store_path / "direct")
    assert (t.status, t.final_answer) == ("completed", "Refund for A-1 issued.")

    structured = record_experience(_structured_agent(), app="shop", store=store_path / "structured", offload=offload)
    await _run(way, structured, {"messages": [("user", "restock pears")]})
    [t] = _recorded(structured, store_path / "structured")
    assert t.status == "completed" and json.loads(t.final_answer) == {"item": "pear", "ordered": 5}

    review = record_experience(_review_graph(), app="shop", store=store_path / "review", offload=offload)
    await _run(way, review, {"messages": [("user", "answer the customer")]}, {"configurable": {"thread_id": "r-1"}})
    [t] = _recorded(review, store_path / "review")
    assert (t.status, t.thread_id, [s.action.content for s in t.steps]) == ("interrupted", "r-1", ["draft reply"])


@OFFLOADS
def test_a_resumed_run_that_calls_no_model_is_recorded(offload, store_path):
    """Resuming after a human review often runs only tools or the reviewer's node: the run is still
    stored, with its thread, status, the tool results it produced, its reviewed turn and its answer (was: lost, with
    an error asking to 'enable message capture', raised by flush in strict mode)."""
    graph = create_agent(
        ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")])]),
        [refund],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"refund": True})],
        checkpointer=InMemorySaver(),
    )
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    config = {"configurable": {"thread_id": "hitl-1"}}
    assert "__interrupt__" in agent.invoke({"messages": [("user", "refund A-1")]}, config)
    done = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    assert done["messages"][-1].content == "Refund for A-1 issued."
    paused, resumed = _recorded(agent, store_path)
    call = paused.steps[-1].action.tool_call
    assert (paused.status, call.name, paused.steps[-1].observation) == ("interrupted", "refund", None)
    assert (resumed.status, resumed.thread_id, resumed.model) == ("completed", "hitl-1", None)
    # its reviewed turn, in the paused decision's state (tests/capture/test_resumed_without_model.py)
    assert [(s.action.tool_call, s.observation.content, s.state) for s in resumed.steps] == [
        (call, "Refund for A-1 issued.", paused.steps[-1].state)
    ]
    assert resumed.final_answer == "Refund for A-1 issued."
    assert {"role": "tool", "tool_call_id": call.id, "content": "Refund for A-1 issued."} in resumed.messages

    review = record_experience(_review_graph(), app="shop", store=store_path / "review", offload=offload)
    config = {"configurable": {"thread_id": "r-2"}}
    review.invoke({"messages": [("user", "answer the customer")]}, config)
    review.invoke(Command(resume="yes"), config)
    paused, resumed = _recorded(review, store_path / "review")
    assert (paused.status, resumed.status, resumed.final_answer) == ("interrupted", "completed", "reviewer said yes")


def _ordering_agent(script: list[AIMessage], placed: list[tuple[str, int]]) -> Any:
    """A shop agent whose orders a human reviews (``HumanInTheLoopMiddleware``); ``placed`` gets the orders that ran."""

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        return "0"

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        placed.append((item, quantity))
        return f"ordered {quantity} {item}"

    return create_agent(
        ScriptedChatModel(script=script),
        [check_stock, order_item],
        system_prompt="You run a fruit shop.",
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"order_item": True})],
        checkpointer=InMemorySaver(),
    )


REVIEWS = {
    "approve": {"type": "approve"},
    "edit": {"type": "edit", "edited_action": {"name": "order_item", "args": {"item": "pear", "quantity": 5}}},
    "reject": {"type": "reject", "message": "far too many"},
}


@OFFLOADS
@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
def test_the_resumed_run_holds_the_reviewed_call_as_it_ran(offload, store_path, decision):
    """The paused trajectory ends on the model's call awaiting review (datasets never teach it from there); the resumed
    one starts with that turn as the reviewer decided it, in the state the model decided in: the call that ran (the
    reviewer's edit, observed by the tool's own result), and no step for a rejected call (was: no step at all, and
    datasets taught the paused call whatever the reviewer decided)."""
    placed: list[tuple[str, int]] = []
    script = [
        AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
        AIMessage(content="Ordering.", tool_calls=[tool_call("order_item", item="pear", quantity=500)]),
        AIMessage(content="Done."),
    ]
    agent = record_experience(_ordering_agent(script, placed), app="shop", store=store_path, offload=offload)
    config = {"configurable": {"thread_id": "hitl-review"}}
    agent.invoke({"messages": [("user", "order pears if we have none")]}, config)
    agent.invoke(Command(resume={"decisions": [REVIEWS[decision]]}), config)
    paused, resumed = _recorded(agent, store_path)
    proposed = paused.steps[-1]
    assert (paused.status, proposed.action.tool_call.arguments, proposed.observation) == (
        "interrupted",
        {"item": "pear", "quantity": 500},
        None,
    )
    ran = {"approve": [("pear", 500)], "edit": [("pear", 5)], "reject": []}[decision]
    assert placed == ran
    reviewed = [s for s in resumed.steps if s.action.kind == "tool_call"]
    assert [(s.action.tool_call.id, s.action.tool_call.name, s.action.tool_call.arguments) for s in reviewed] == [
        (proposed.action.tool_call.id, "order_item", {"item": item, "quantity": quantity}) for item, quantity in ran
    ]
    assert [s.observation.content for s in reviewed] == [f"ordered {quantity} {item}" for item, quantity in ran]
    assert all(s.state == proposed.state and s.action.content == "Ordering." for s in reviewed)
    assert [(s.index, s.decision_index, s.action.kind) for s in resumed.steps] == [
        *((0, 0, "tool_call") for _ in ran),
        (len(ran), len(ran), "answer"),
    ]


def test_a_rejected_call_is_left_out_of_its_turn_and_the_others_kept(store_path):
    """Parallel calls of which the reviewer rejected one: the resumed run's turn makes the others."""
    placed: list[tuple[str, int]] = []
    both = AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear"), tool_call("order_item", item="pear", quantity=500)])
    agent = record_experience(_ordering_agent([both, AIMessage(content="Done.")], placed), app="shop", store=store_path)
    config = {"configurable": {"thread_id": "hitl-parallel"}}
    agent.invoke({"messages": [("user", "order pears if we have none")]}, config)
    agent.invoke(Command(resume={"decisions": [REVIEWS["reject"]]}), config)
    paused, resumed = _recorded(agent, store_path)
    assert [s.action.tool_call.name for s in paused.steps] == ["check_stock", "order_item"]
    assert placed == []
    assert [(s.decision_index, s.action.tool_call and s.action.tool_call.name) for s in resumed.steps] == [(0, "check_stock"), (1, None)]
    assert resumed.steps[0].observation.content == "0" and resumed.steps[0].state == paused.steps[0].state


@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
def test_a_reviewed_turn_keeps_the_models_reasoning_only_as_it_proposed_it(store_path, decision):
    """A reasoning model's turn a human reviewed: the resumed run's steps carry the reasoning of the reply that made
    the calls where the turn ran as the model proposed it (approved), and none where the reviewer changed it (an edited
    call, a rejected one left out of the turn): that reasoning argued for calls the turn no longer makes."""
    placed: list[tuple[str, int]] = []
    thought = "None in stock: order 500 pears and check apples too."
    calls = [tool_call("order_item", item="pear", quantity=500), tool_call("check_stock", item="apple")]
    script = [AIMessage(content="", additional_kwargs={"reasoning_content": thought}, tool_calls=calls), AIMessage(content="Done.")]
    agent = record_experience(_ordering_agent(script, placed), app="shop", store=store_path)
    config = {"configurable": {"thread_id": f"hitl-reasoning-{decision}"}}
    agent.invoke({"messages": [("user", "order pears")]}, config)
    agent.invoke(Command(resume={"decisions": [REVIEWS[decision]]}), config)
    paused, resumed = _recorded(agent, store_path)
    assert [s.action.reasoning for s in paused.steps] == [thought, thought]  # the proposal, as the model made it
    turn = [s for s in resumed.steps if s.decision_index == 0]
    expected = {"approve": (2, thought), "edit": (2, None), "reject": (1, None)}[decision]
    assert (len(turn), *{s.action.reasoning for s in turn}) == expected


@OFFLOADS
def test_a_run_that_fails_before_calling_the_model_is_recorded_as_an_error(offload, store_path):
    def load_profile(state: MessagesState) -> dict[str, Any]:
        raise LookupError("customer profile service is down")

    builder = StateGraph(MessagesState)
    builder.add_node("load_profile", load_profile)
    builder.add_edge(START, "load_profile")
    agent = record_experience(builder.compile(), app="shop", store=store_path, offload=offload)
    with pytest.raises(LookupError):
        agent.invoke({"messages": [("user", "where is my order?")]}, {"configurable": {"thread_id": "t-9"}})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.thread_id, t.task, t.steps) == ("error", "t-9", "where is my order?", [])
    assert "customer profile service is down" in t.error


@OFFLOADS
def test_a_tool_that_returns_a_command_is_observed_as_its_tool_message(offload, store_path):
    """A tool that updates the graph state through a ``Command`` (handoffs, state-writing tools):
    its observation is the tool message it returned, also for the last call of a run, which no
    later model input shows (was: the JSON dump of the Command object)."""

    @tool
    def remember(fact: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Remember a fact about the customer."""
        return Command(update={"messages": [ToolMessage(content=f"noted: {fact}", tool_call_id=tool_call_id)]})

    @tool
    def fail(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(reason)

    model = ScriptedChatModel(
        script=[AIMessage(content="", tool_calls=[tool_call("remember", fact="likes pears"), tool_call("fail", reason="x")])]
    )
    bound = model.bind_tools([remember, fail])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [bound.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([remember, fail], handle_tool_errors=False))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    agent = record_experience(builder.compile(), app="shop", store=store_path, offload=offload)
    with pytest.raises(RuntimeError):
        agent.invoke({"messages": [("user", "I like pears")]})
    [t] = _recorded(agent, store_path)
    assert [(s.action.tool_call.name, s.observation.content, s.observation.is_error) for s in t.steps] == [
        ("remember", "noted: likes pears", False),
        ("fail", "RuntimeError: x", True),
    ]


def _echo_agent(active: list[int], peak: list[int]) -> Any:
    async def lookup_slowly(order_id: str) -> str:
        active.append(1)
        peak[0] = max(peak[0], len(active))
        await asyncio.sleep(0.05)
        active.pop()
        return f"order {order_id}: shipped"

    lookup = StructuredTool.from_function(
        func=lambda order_id: f"order {order_id}: shipped",
        coroutine=lookup_slowly,  # slowly: concurrent runs overlap
        name="lookup",
        description="Look an order up.",
    )

    def policy(messages: Any, tools: Any) -> AIMessage:
        user = next(m for m in messages if m.type == "human").content
        if messages[-1].type == "tool":
            return AIMessage(content=f"{user}: {messages[-1].content}")
        return AIMessage(content="", tool_calls=[tool_call("lookup", order_id=user)])

    return create_agent(ScriptedChatModel(policy=policy), [lookup])


def test_batch_as_completed_records_every_run(store_path):
    """(was: passed through to the graph, so none of its runs was recorded)"""
    agent = record_experience(_echo_agent([], [0]), app="shop", store=store_path)
    inputs = [{"messages": [("user", f"A-{i}")]} for i in range(3)]
    done = dict(agent.batch_as_completed(inputs))
    assert sorted(done) == [0, 1, 2] and done[2]["messages"][-1].content == "A-2: order A-2: shipped"
    recorded = _recorded(agent, store_path)
    assert sorted(t.final_answer for t in recorded) == [f"A-{i}: order A-{i}: shipped" for i in range(3)]


async def test_abatch_keeps_max_concurrency_and_abatch_as_completed_records_every_run(store_path):
    """abatch runs at most ``max_concurrency`` runs at once, as the graph's own does (was: all at
    once); abatch_as_completed records its runs (was: passed through unrecorded)."""
    active: list[int] = []
    peak = [0]
    agent = record_experience(_echo_agent(active, peak), app="shop", store=store_path)
    inputs = [{"messages": [("user", f"B-{i}")]} for i in range(6)]
    outputs = await agent.abatch(inputs, {"max_concurrency": 2})
    assert [o["messages"][-1].content for o in outputs] == [f"B-{i}: order B-{i}: shipped" for i in range(6)]
    assert peak[0] == 2
    done = {i: out async for i, out in agent.abatch_as_completed(inputs[:2])}
    assert sorted(done) == [0, 1]
    assert len(_recorded(agent, store_path)) == 8


@OFFLOADS
def test_a_malformed_tool_call_is_kept_as_the_models_action(offload, store_path):
    """A reply whose tool call is not valid JSON reaches LangChain as ``invalid_tool_calls`` only:
    the step keeps it as the model's call with its text under ``_raw`` (as OpenAI returns it), no
    observation since no tool ran (was: dropped, a trajectory with no step and no answer)."""
    malformed = {"type": "invalid_tool_call", "id": "call_bad", "name": "refund", "args": '{"order_id": "A-1"', "error": "bad JSON"}
    graph = create_agent(ScriptedChatModel(script=[AIMessage(content="", invalid_tool_calls=[malformed])]), [refund])
    agent = record_experience(graph, app="shop", store=store_path, offload=offload)
    assert agent.invoke({"messages": [("user", "refund A-1")]})["messages"][-1].invalid_tool_calls
    [t] = _recorded(agent, store_path)
    [step] = t.steps
    assert (step.action.kind, step.action.tool_call.model_dump(), step.observation) == (
        "tool_call",
        {"id": "call_bad", "name": "refund", "arguments": {"_raw": '{"order_id": "A-1"'}, "malformed": True},
        None,
    )
    assert t.messages[-1]["tool_calls"] == [  # the conversation shows the call as the model wrote it (since 41f3e1f)
        {"id": "call_bad", "type": "function", "function": {"name": "refund", "arguments": '{"order_id": "A-1"'}}
    ]

    nameless = {"type": "invalid_tool_call", "id": None, "name": None, "args": '{"order', "error": None}
    graph = create_agent(ScriptedChatModel(script=[AIMessage(content="", invalid_tool_calls=[nameless])]), [refund])
    agent = record_experience(graph, app="shop", store=store_path / "nameless", offload=offload, strict=True)
    agent.invoke({"messages": [("user", "refund A-1")]})
    [t] = _recorded(agent, store_path / "nameless")  # (was: the run failed to assemble, a ToolCall needs a name)
    # named so that no tool can be (was unknown_tool: IL taught it, replay looked for it: tests/capture/test_invalid_tool_calls.py)
    assert [s.action.tool_call.model_dump() for s in t.steps] == [
        {"id": "", "name": "(no name)", "arguments": {"_raw": '{"order'}, "malformed": True}
    ]


def _breakpoint_agent(**graph_options: Any) -> Any:
    @tool
    def cancel_order(order_id: str) -> str:
        """Cancel an order."""
        return f"Order {order_id} cancelled."

    script = [AIMessage(content="", tool_calls=[tool_call("cancel_order", order_id="A-1")]), AIMessage(content="Cancelled A-1.")]
    return create_agent(ScriptedChatModel(script=script), [cancel_order], checkpointer=InMemorySaver(), **graph_options)


@OFFLOADS
@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream", "per_call"])
def test_a_run_stopped_at_a_static_breakpoint_is_interrupted(offload: str, how: str, tmp_path: Any) -> None:
    """``interrupt_before=["tools"]`` (a reviewer approves each tool call) pauses the run before the tool: LangGraph
    returns the state as if the run had ended, so it was recorded as ``completed`` (and an ``approve_if`` on completed
    runs approved it). The resumed run ends the thread's work and is ``completed``."""
    per_call = how == "per_call"
    agent = record_experience(
        _breakpoint_agent(**({} if per_call else {"interrupt_before": ["tools"]})), app="shop", store=tmp_path, offload=offload
    )
    config = {"configurable": {"thread_id": f"review-{how}"}}
    task = {"messages": [("user", "cancel A-1")]}
    if how in ("invoke", "per_call"):
        options = {"interrupt_before": ["tools"]} if per_call else {}
        agent.invoke(task, config, **options)
        agent.invoke(None, config, **options)
    elif how == "stream":
        list(agent.stream(task, config, stream_mode="values"))
        list(agent.stream(None, config, stream_mode="values"))
    else:

        async def twice() -> None:
            if how == "ainvoke":
                await agent.ainvoke(task, config)
                await agent.ainvoke(None, config)
            else:
                [chunk async for chunk in agent.astream(task, config, stream_mode="values")]
                [chunk async for chunk in agent.astream(None, config, stream_mode="values")]

        asyncio.run(twice())
    paused, resumed = _recorded(agent, tmp_path)
    assert (paused.status, resumed.status) == ("interrupted", "completed")
    assert [s.action.tool_call.name for s in paused.steps if s.action.tool_call] == ["cancel_order"]
    assert resumed.final_answer == "Cancelled A-1." and paused.thread_id == resumed.thread_id
    # the call that paused is the resumed run's first step, run and observed there (was: in neither trajectory with its result)
    first = resumed.steps[0]
    assert (first.action.tool_call.name, first.observation.content, first.state) == (
        "cancel_order",
        "Order A-1 cancelled.",
        paused.steps[0].state,
    )


@OFFLOADS
def test_reasoning_and_tool_use_blocks_are_not_the_models_text(offload, store_path):
    """A model that replies in content blocks (Anthropic's ``thinking`` and ``tool_use``, LangChain's standard
    ``reasoning`` and ``tool_call`` blocks) says only its ``text`` blocks, as LangChain's ``message.text`` reads it.
    Was: every other block glued as JSON onto the text, so the answer read
    '{"type":"thinking",...}Found it' and the action's text carried the tool call twice."""

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return f"found {q}"

    thinking = {"type": "thinking", "thinking": "The user wants a; look it up.", "signature": "c2ln"}
    script = [
        AIMessage(
            content=[
                {"type": "reasoning", "reasoning": "I should look it up"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "a"}},
            ],
            tool_calls=[{"name": "lookup", "args": {"q": "a"}, "id": "toolu_1", "type": "tool_call"}],
        ),
        AIMessage(content=[thinking, {"type": "redacted_thinking", "data": "eyJ"}, {"type": "text", "text": "Found "}, "it: a."]),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [lookup]), app="shop", store=store_path, offload=offload)
    assert agent.invoke({"messages": [("user", "find a")]})["messages"][-1].text == "Found it: a."
    [t] = _recorded(agent, store_path)
    # text blocks a line apart, as LangChain's OpenAI conversion and vLLM join them (since 41f3e1f)
    assert [(s.action.kind, s.action.content) for s in t.steps] == [("tool_call", "Let me check."), ("answer", "Found \nit: a.")]
    assert [s.action.reasoning for s in t.steps] == ["I should look it up", "The user wants a; look it up."]  # their own reply's
    assert t.final_answer == "Found \nit: a."
    assert [m["content"] for m in t.messages] == ["find a", "Let me check.", "found a", "Found \nit: a."]
    assert t.steps[1].state[1]["content"] == "Let me check."  # the history the next decision saw


@OFFLOADS
def test_a_model_that_numbers_its_tool_calls_anew_each_turn_gets_each_calls_own_observation(offload, store_path):
    """Some servers number tool calls per reply (``call_0`` every turn): each step still observes what its own call
    returned, with its own tool span's error flag. Was: every call with a reused id observed the first one's result
    ('found a' for the calls of b and c) and took the last one's span."""

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        if q == "b":
            raise ToolException("b is not indexed")
        return f"found {q}"

    def call(q: str, call_id: str = "call_0") -> dict[str, Any]:
        return {"name": "lookup", "args": {"q": q}, "id": call_id, "type": "tool_call"}

    script = [
        AIMessage(content="", tool_calls=[call("a")]),
        AIMessage(content="", tool_calls=[call("b")]),
        AIMessage(content="", tool_calls=[call("c"), call("d", "call_1")]),
        AIMessage(content="", tool_calls=[call("e")]),  # the run's last call: its observation is on the run's output
    ]
    bound = ScriptedChatModel(script=script).bind_tools([lookup])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [bound.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([lookup], handle_tool_errors=lambda exc: f"Error: {exc}"))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_conditional_edges("tools", lambda state: END if len(state["messages"]) > 8 else "agent")
    agent = record_experience(builder.compile(), app="shop", store=store_path, offload=offload)
    assert [m.content for m in agent.invoke({"messages": [("user", "look up a to e")]})["messages"] if m.type == "tool"] == [
        "found a",
        "Error: b is not indexed",
        "found c",
        "found d",
        "found e",
    ]
    [t] = _recorded(agent, store_path)
    assert [(s.action.tool_call.arguments["q"], s.observation.content, s.observation.is_error) for s in t.steps] == [
        ("a", "found a", False),
        ("b", "Error: b is not indexed", True),
        ("c", "found c", False),
        ("d", "found d", False),
        ("e", "found e", False),
    ]


@OFFLOADS
def test_parallel_calls_that_share_one_id_each_observe_their_own_result(offload, store_path):
    """Some servers and proxies give every call of a reply the same id. Each step observes its own call's result, and
    the last call (the run's last reply: answered on its output) too. Was: every call observed the first one's result
    ('4' for sq(3) and for cube(2)), stored completed without a warning (found by a reviewer)."""

    @tool
    def sq(n: int) -> int:
        """Square a number."""
        return n * n

    @tool
    def cube(n: int) -> int:
        """Cube a number."""
        if n < 0:
            raise ToolException("no negative cubes")
        return n**3

    def call(name: str, n: int) -> dict[str, Any]:
        return {"name": name, "args": {"n": n}, "id": "dup", "type": "tool_call"}

    script = [
        AIMessage(content="", tool_calls=[call("sq", 2), call("sq", 3), call("cube", 2)]),
        AIMessage(content="", tool_calls=[call("cube", -1), call("sq", 4)]),
        AIMessage(content="4, 9, 8 and 16."),
    ]
    bound = ScriptedChatModel(script=script).bind_tools([sq, cube])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [bound.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([sq, cube], handle_tool_errors=lambda exc: f"Error: {exc}"))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    agent = record_experience(builder.compile(), app="shop", store=store_path, offload=offload)
    agent.invoke({"messages": [("user", "square 2, 3 and 4, cube 2 and -1")]})
    [t] = _recorded(agent, store_path)
    assert [
        (s.action.tool_call.name, s.action.tool_call.arguments["n"], s.observation.content, s.observation.is_error) for s in t.steps[:-1]
    ] == [
        ("sq", 2, "4", False),
        ("sq", 3, "9", False),
        ("cube", 2, "8", False),
        ("cube", -1, "Error: no negative cubes", True),
        ("sq", 4, "16", False),
    ]
    assert (t.status, t.final_answer) == ("completed", "4, 9, 8 and 16.")


@OFFLOADS
def test_a_tool_the_apps_own_code_calls_before_the_model_is_no_step(offload, store_path):
    """A graph on its own state (no messages in its input) whose first node makes a tool call itself (LangGraph's
    SQL-agent pattern: a fixed list_tables call run by a ToolNode before the model) had that call recorded as a
    reviewed turn of a resumed run: a model decision from a state no model saw, taught by IL (found by review). Only
    a run that continues from its checkpoint (Command or None as input) carries reviewed turns."""
    from typing import TypedDict

    from langchain_core.messages import HumanMessage
    from langgraph.graph.message import add_messages

    @tool
    def list_tables() -> str:
        """List the database tables."""
        return "orders, customers"

    # the functional form: its types are read now (this module's annotations are strings, read in its globals)
    State = TypedDict("State", {"question": str, "messages": Annotated[list, add_messages]}, total=False)  # noqa: UP013

    def prep(state: dict[str, Any]) -> dict[str, Any]:
        forced = AIMessage(content="", tool_calls=[{"name": "list_tables", "args": {}, "id": "forced-1"}])
        return {"messages": [HumanMessage(state["question"]), forced]}

    model = ScriptedChatModel(script=[AIMessage(content="There are 2 tables: orders and customers.")])

    def agent_node(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(State)
    graph.add_node("prep", prep)
    graph.add_node("tools", ToolNode([list_tables]))
    graph.add_node("agent", agent_node)
    graph.add_edge(START, "prep")
    graph.add_edge("prep", "tools")
    graph.add_edge("tools", "agent")
    graph.add_edge("agent", END)
    agent = record_experience(graph.compile(), app="sql", store=store_path, offload=offload)
    agent.invoke({"question": "Which tables are there?"})
    [t] = _recorded(agent, store_path)
    assert [(s.action.kind, s.action.content) for s in t.steps] == [("answer", "There are 2 tables: orders and customers.")]
