"""record_experience on ``create_agent`` apps with LangChain's built-in middleware and on graph shapes users build:
what each stored step holds is compared with what the agent's model was given and did. Real middleware, real
LangGraph graphs, the real OTel SDK and a real local store; a scripted chat model stands in for a served one."""

from __future__ import annotations

import json
import logging
import operator
import threading
from pathlib import Path
from typing import Annotated, Any, TypedDict

import polars as pl
from langchain.agents import create_agent
from langchain.agents.middleware import (
    LLMToolEmulator,
    LLMToolSelectorMiddleware,
    ModelFallbackMiddleware,
    ModelRetryMiddleware,
    SummarizationMiddleware,
    ToolCallLimitMiddleware,
    ToolRetryMiddleware,
    wrap_model_call,
    wrap_tool_call,
)
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, Send, interrupt
from pydantic import BaseModel, Field

from ee_middleware import record_experience
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from tests.capture.test_create_agent import as_recorded
from tests.conftest import record_once

TASK = {"messages": [("user", "Do we have pears and apples? Order 5 pears.")]}
PLAN = [
    AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
    AIMessage(content="", tool_calls=[tool_call("check_stock", item="apple")]),
    AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=5)]),
    AIMessage(content="No pears, 3 apples; I ordered 5 pears."),
]


class PlannedModel(ScriptedChatModel):
    """Makes the k-th decision of ``PLAN`` on its k-th call (a history rewritten by middleware does not change its
    plan), keeping the messages and tool names it was given (what the trajectory must hold)."""

    seen: list[tuple[list[BaseMessage], list[str]]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        tools = [t["function"]["name"] for t in kwargs.get("tools") or self.bound_tools]
        self.seen.append((list(messages), tools))
        return super()._generate(messages, *args, **kwargs)


def planned_model() -> PlannedModel:
    calls: list[int] = []

    def policy(messages: Any, tools: Any) -> AIMessage:
        calls.append(1)
        return PLAN[min(len(calls) - 1, len(PLAN) - 1)]

    return PlannedModel(policy=policy, model_name="expert", seen=[])


def _check_stock(world: dict[str, Any], item: str) -> str:
    return str(world["stock"].get(item, 0))


def _order_item(world: dict[str, Any], item: str, quantity: int) -> str:
    world["stock"][item] = world["stock"].get(item, 0) + quantity
    return f"ordered {quantity} {item}; now {world['stock'][item]}"


def shop_sandbox() -> PythonSandbox:
    """The shop's tools on a copy of the recorded stock (replay's sandbox)."""
    return PythonSandbox(lambda env: {"stock": dict(env["stock"])}, tools={"check_stock": _check_stock, "order_item": _order_item})


def shop_tools(stock: dict[str, int]) -> list[Any]:
    world = {"stock": stock}

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        return _check_stock(world, item)

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        return _order_item(world, item, quantity)

    return [check_stock, order_item]


def _actions(trajectory: Any) -> list[tuple[str, Any]]:
    return [(s.action.kind, s.action.tool_call.name if s.action.tool_call else s.action.content) for s in trajectory.steps]


def test_a_summarized_history_is_recorded_as_the_model_saw_it_and_the_summary_is_no_action(tmp_path: Path) -> None:
    """SummarizationMiddleware calls a model for its summary in the middle of the run. Before, that call was a decision
    of the agent: the summary was stored as an answer step (twice here), an IL row teaching the model to answer with
    a summary of the conversation, and the trajectory's offered tools were those of a summary prompt's run."""
    stock = {"pear": 0, "apple": 3}
    model = planned_model()
    summarizer = ScriptedChatModel(script=[AIMessage(content="The user asked about pears: none in stock.")], model_name="summarizer")
    summarize = SummarizationMiddleware(summarizer, trigger=("messages", 4), keep=("messages", 2))
    graph = create_agent(model, shop_tools(stock), middleware=[summarize], system_prompt="You run a fruit shop.")
    store = tmp_path / "store"
    environment = {"stock": dict(stock)}
    trajectory = record_once(record_experience(graph, app="shop", store=store, environment=environment), store, TASK)

    assert _actions(trajectory) == [
        ("tool_call", "check_stock"),
        ("tool_call", "check_stock"),
        ("tool_call", "order_item"),
        ("answer", PLAN[-1].content),
    ]
    assert any("summary of the conversation" in str(m.content) for m in model.seen[-1][0])  # the history was rewritten
    for step, (seen, _) in zip(trajectory.steps, model.seen, strict=True):
        assert step.state == as_recorded(seen)  # each state is what the model was given, summary included
    assert [s.observation.content for s in trajectory.steps[:3]] == ["0", "3", "ordered 5 pear; now 5"]
    assert (trajectory.model, trajectory.task, trajectory.final_answer) == ("expert", TASK["messages"][0][1], PLAN[-1].content)

    # replayed from the recorded states and built: one IL row per decision of the agent, none from the summary
    opened = LocalExperienceStore(store)
    opened.approve([trajectory.id], by="test")
    opened.close()
    summary = run_replay(ReplayConfig.load(store=store, k=2, sandbox=f"{__name__}:shop_sandbox"))
    assert summary.done == 1 and summary.fidelity_mismatches == 0
    build_datasets(DatasetConfig.load(store=store, out=tmp_path / "data", kinds="il"))
    rows = pl.read_parquet(tmp_path / "data" / "il.parquet")
    assert sorted(rows["step_index"].to_list()) == [0, 1, 2, 3]
    assert "none in stock" not in " ".join(rows["completion"].to_list())


def test_a_tool_selection_call_is_no_action_and_offers_no_tool(tmp_path: Path) -> None:
    """LLMToolSelectorMiddleware asks a model (structured output: a call of a ``ToolSelectionResponse`` tool) which
    tools to offer before each model call. Before, each selection was a tool-call step of a tool the agent does not
    have (no observation), and ``ToolSelectionResponse`` was among the trajectory's tools."""
    model = planned_model()
    selection = AIMessage(content="", tool_calls=[tool_call("ToolSelectionResponse", tools=["check_stock", "order_item"])])
    selector = LLMToolSelectorMiddleware(model=ScriptedChatModel(script=[selection], model_name="selector"), max_tools=2)
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[selector])
    trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    assert [name for _, name in _actions(trajectory)][:3] == ["check_stock", "check_stock", "order_item"]
    assert trajectory.num_steps == len(model.seen) == 4
    assert [t["function"]["name"] for t in trajectory.tools] == ["check_stock", "order_item"]
    assert json.dumps(trajectory.model_dump(mode="json")).count("ToolSelectionResponse") == 0


def test_a_tool_that_interrupts_has_no_observation_until_the_thread_resumes(tmp_path: Path) -> None:
    """A tool that calls ``interrupt()`` (a human approves a refund) has not finished: it runs again when the thread
    resumes. Before, the interrupted run stored 'GraphInterrupt: (Interrupt(value=...' as the call's observation,
    flagged as a tool error: replay compared the real refund's result with it and IWM learned it as the outcome."""

    @tool
    def refund(order_id: str) -> str:
        """Refund an order once a human approves."""
        approved = interrupt({"approve refund": order_id})
        return f"refund {order_id}: {'issued' if approved else 'declined'}"

    script = [AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")]), AIMessage(content="Refund issued.")]
    graph = create_agent(ScriptedChatModel(script=script), [refund], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="shop", store=tmp_path / "s")
    config = {"configurable": {"thread_id": "refunds"}}
    assert agent.invoke({"messages": [("user", "refund A-1")]}, config)["__interrupt__"]
    agent.invoke(Command(resume=True), config)
    agent.flush()
    agent.recorder.close()
    opened = LocalExperienceStore(tmp_path / "s")
    paused, resumed = sorted(opened.iter_trajectories(), key=lambda t: t.started_at)
    opened.close()
    assert paused.status == "interrupted" and [s.action.tool_call.name for s in paused.steps] == ["refund"]
    assert paused.steps[0].observation is None and paused.steps[0].latency_ms is None
    assert resumed.status == "completed" and resumed.final_answer == "Refund issued."
    assert [m["content"] for m in resumed.messages if m["role"] == "tool"] == ["refund A-1: issued"]  # run on resume


def test_retried_model_and_tool_calls_are_one_step_with_the_last_attempts_result(tmp_path: Path) -> None:
    """ModelRetryMiddleware and ToolRetryMiddleware call the model or the tool again after a failure. A failed model
    attempt made no decision (no step, no decision number); a tool's result is its last attempt's. Before, a retried tool's step took the
    first attempt's span: the observation the model saw ('0') was flagged as a tool error, with the failed attempt's
    latency, and replay or datasets read a working call as a failing one."""
    world = {"stock": {"pear": 0, "apple": 3}}
    attempts: list[str] = []

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        attempts.append(item)
        if len(attempts) == 1:
            raise ConnectionError("inventory database did not answer")
        return _check_stock(world, item)

    failures = iter([False, True, False, False, False])

    class FlakyModel(PlannedModel):
        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
            if next(failures):
                raise TimeoutError("model server timed out")
            return super()._generate(messages, *args, **kwargs)

    model = planned_model()
    model = FlakyModel(policy=model.policy, model_name="expert", seen=[])
    retries = [
        ModelRetryMiddleware(max_retries=2, initial_delay=0, jitter=False),
        ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False),
    ]
    graph = create_agent(model, [check_stock, shop_tools(world["stock"])[1]], middleware=retries)
    trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    assert attempts == ["pear", "pear", "apple"]
    assert _actions(trajectory) == [
        ("tool_call", "check_stock"),
        ("tool_call", "check_stock"),
        ("tool_call", "order_item"),
        ("answer", PLAN[-1].content),
    ]
    assert [s.decision_index for s in trajectory.steps] == [0, 1, 2, 3]  # the failed attempt takes no number (was 0, 2, 3, 4)
    for step, (seen, _) in zip(trajectory.steps, model.seen, strict=True):
        assert step.state == as_recorded(seen)
    first = trajectory.steps[0]
    assert (first.observation.content, first.observation.is_error) == ("0", False)
    assert [s.observation.is_error for s in trajectory.steps[:3]] == [False, False, False]


def test_parallel_branches_with_reused_call_ids_each_get_their_own_observations(tmp_path: Path) -> None:
    """A ``Send`` fan-out runs an agent per item at once, and its model numbers its calls per reply (``call_0`` in every
    branch). Before, the pear branch's call was answered by the apple branch's tool message (stored: check_stock(pear)
    -> 'apple: 3'), the first later history holding ``call_0`` at that position, whichever branch it was."""
    stock = {"pear": 0, "apple": 3}
    pear_asked, apple_answered = threading.Event(), threading.Event()

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        if item == "pear":  # the apple branch answers first: its history is the first later one holding call_0
            apple_answered.wait(timeout=30)
        return f"{item}: {stock[item]}"

    def policy(messages: Any, tools: Any) -> AIMessage:
        item = "pear" if "pear" in messages[0].content else "apple"
        if item == "pear":
            pear_asked.set()
        else:
            pear_asked.wait(timeout=30)  # the pear branch decides first
        if not any(m.type == "tool" for m in messages):
            return AIMessage(content="", tool_calls=[{"name": "check_stock", "args": {"item": item}, "id": "call_0", "type": "tool_call"}])
        if item == "apple":
            apple_answered.set()
        return AIMessage(content=f"{item} checked")

    worker = create_agent(ScriptedChatModel(policy=policy), [check_stock])

    class Items(TypedDict):
        items: list[str]
        answers: Annotated[list[str], operator.add]

    def ask(state: dict[str, str]) -> dict[str, list[str]]:
        return {"answers": [worker.invoke({"messages": [("user", f"How many {state['item']}s?")]})["messages"][-1].content]}

    graph = StateGraph(Items)
    graph.add_node("ask", ask)
    graph.add_conditional_edges(START, lambda state: [Send("ask", {"item": i}) for i in state["items"]], ["ask"])
    graph.add_edge("ask", END)
    agent = record_experience(graph.compile(), app="shop", store=tmp_path / "s")
    trajectory = record_once(agent, tmp_path / "s", {"items": ["pear", "apple"], "answers": []})
    calls = [s for s in trajectory.steps if s.action.kind == "tool_call"]
    assert sorted(s.action.tool_call.arguments["item"] for s in calls) == ["apple", "pear"]
    for step in calls:
        item = step.action.tool_call.arguments["item"]
        assert step.observation.content == f"{item}: {stock[item]}"


def test_tools_that_change_from_call_to_call_are_said_once(tmp_path: Path, caplog: Any) -> None:
    """A middleware that offers the model other tools at each call: one warning per recorder names the cause and what
    is stored (each step's own tools, ``Step.tools``: tests/capture/test_step_tools.py). A run whose tools stay the
    same says nothing."""

    @wrap_model_call
    def one_tool_per_turn(request: Any, handler: Any) -> Any:
        done = sum(1 for m in request.messages if m.type == "tool")
        wanted = {0: "check_stock", 1: "check_stock", 2: "order_item"}.get(done)
        return handler(request.override(tools=[t for t in request.tools if t.name == wanted]))

    steady = record_experience(create_agent(planned_model(), shop_tools({"pear": 0, "apple": 3})), app="steady", store=tmp_path / "a")
    with caplog.at_level(logging.WARNING, logger="ee_middleware.capture"):
        record_once(steady, tmp_path / "a", TASK)
    assert not caplog.records

    model = planned_model()
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[one_tool_per_turn])
    agent = record_experience(graph, app="shop", store=tmp_path / "s")
    with caplog.at_level(logging.WARNING, logger="ee_middleware.capture"):
        agent.invoke(TASK)
        agent.invoke(TASK)
        agent.flush()
        agent.recorder.close()
    [warning] = caplog.records
    assert "app 'shop' offers its model different tools" in warning.getMessage()
    assert "Each step records the tools offered at it" in warning.getMessage()
    assert "['check_stock'], then ['order_item']" in warning.getMessage()
    opened = LocalExperienceStore(tmp_path / "s")
    trajectory = next(iter(opened.iter_trajectories()))
    opened.close()
    assert [t["function"]["name"] for t in trajectory.tools] == ["check_stock", "order_item"]  # the run's, as said
    assert [s.tools for s in trajectory.steps] == [["check_stock"], ["check_stock"], ["order_item"], []]
    assert [tools for _, tools in model.seen[:4]] == [["check_stock"], ["check_stock"], ["order_item"], []]


def test_tool_results_written_by_llm_tool_emulator_are_said_once(tmp_path: Path, caplog: Any) -> None:
    """LLMToolEmulator answers a tool call with a model's text instead of running the tool. Its call is the middleware's
    own (no step), and the emulated text is what the model saw, so it is the step's observation; but replay runs the
    real tool and datasets learn the emulated world: one warning per recorder says so (before, nothing did)."""
    model = planned_model()
    emulator = LLMToolEmulator(tools=["order_item"], model=ScriptedChatModel(script=[AIMessage(content="ordered 5 pears (emulated)")]))
    graph = create_agent(model, shop_tools({"pear": 0, "apple": 3}), middleware=[emulator])
    with caplog.at_level(logging.WARNING, logger="ee_middleware.capture"):
        trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    [warning] = caplog.records
    assert "app 'shop' runs LLMToolEmulator" in warning.getMessage()
    assert _actions(trajectory) == [
        ("tool_call", "check_stock"),
        ("tool_call", "check_stock"),
        ("tool_call", "order_item"),
        ("answer", PLAN[-1].content),
    ]
    assert trajectory.steps[2].observation.content == "ordered 5 pears (emulated)"


class ChatState(TypedDict):
    """A custom state: the conversation under ``chat`` (not ``messages``), beside another list of messages."""

    chat: Annotated[list[AnyMessage], add_messages]
    notes: Annotated[list[AnyMessage], add_messages]


def test_a_custom_messages_key_keeps_the_runs_outcome(tmp_path: Path) -> None:
    """A graph whose conversation is under ``chat`` and that ends on its tools' messages (a refund, and a tool that
    writes its reply into ``chat`` with a ``Command``). Before, only a ``messages`` key was read: the run had no final
    answer, and the Command tool's observation was the Command's JSON instead of the reply the user got."""

    @tool
    def refund(order_id: str) -> str:
        """Refund an order."""
        return f"Refund for {order_id} issued."

    @tool
    def note(text: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Keep a note for the next shift."""
        return Command(update={"chat": [ToolMessage(f"Noted: {text}", tool_call_id=tool_call_id)], "notes": [HumanMessage(text)]})

    script = [AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1"), tool_call("note", text="A-1 refunded")])]
    bound = ScriptedChatModel(script=script).bind_tools([refund, note])
    graph = StateGraph(ChatState)
    graph.add_node("agent", lambda state: {"chat": [bound.invoke(state["chat"])]})
    graph.add_node("tools", ToolNode([refund, note], messages_key="chat"))
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "tools")
    graph.add_edge("tools", END)
    agent = record_experience(graph.compile(), app="shop", store=tmp_path / "s")
    trajectory = record_once(agent, tmp_path / "s", {"chat": [HumanMessage("Refund A-1 and note it.")], "notes": []})
    assert [(s.action.tool_call.name, s.observation.content) for s in trajectory.steps] == [
        ("refund", "Refund for A-1 issued."),
        ("note", "Noted: A-1 refunded"),
    ]
    assert (trajectory.task, trajectory.final_answer) == ("Refund A-1 and note it.", "Noted: A-1 refunded")


def test_a_fallback_models_decisions_are_recorded_under_its_name(tmp_path: Path) -> None:
    """ModelFallbackMiddleware: the primary model fails, the fallback decides. The failed call is no step, and the
    trajectory's model is the one that decided. Before, it was the failed primary's name (its call came first)."""

    class DownModel(ScriptedChatModel):
        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("primary model is down")

    backup = planned_model()
    backup.model_name = "backup"
    graph = create_agent(
        DownModel(script=PLAN, model_name="primary"), shop_tools({"pear": 0, "apple": 3}), middleware=[ModelFallbackMiddleware(backup)]
    )
    trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    assert trajectory.model == "backup"
    assert [kind for kind, _ in _actions(trajectory)] == ["tool_call", "tool_call", "tool_call", "answer"]
    for step, (seen, _) in zip(trajectory.steps, backup.seen, strict=True):
        assert step.state == as_recorded(seen)


def test_a_call_a_middleware_answered_with_an_error_is_an_error_observation(tmp_path: Path) -> None:
    """ToolCallLimitMiddleware, or a guardrail in wrap_tool_call, answers a call with ``ToolMessage(status="error")``
    without running the tool: no tool span failed, so before, the step's observation was a success (replay and IWM
    read "Tool call limit exceeded" as what check_stock returns). The flag is the error status the model was given,
    per turn: with a model that numbers its calls per reply (``call_0`` every turn), only the blocked turn's."""

    @wrap_tool_call
    def no_orders_over_3(request: Any, handler: Any) -> Any:
        if request.tool_call["name"] == "order_item" and request.tool_call["args"]["quantity"] > 3:
            return ToolMessage("Blocked: orders over 3 need a manager.", tool_call_id=request.tool_call["id"], status="error")
        return handler(request)

    def numbered(name: str, **args: Any) -> AIMessage:
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": "call_0", "type": "tool_call"}])

    script = [
        numbered("check_stock", item="pear"),
        numbered("check_stock", item="apple"),
        numbered("order_item", item="pear", quantity=5),
        numbered("order_item", item="pear", quantity=3),
        AIMessage(content="Ordered 3 pears."),
    ]
    failures = iter([False, False, True])  # the call after the blocked one fails once: that history is seen first

    class FlakyModel(ScriptedChatModel):
        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
            if next(failures, False):
                raise TimeoutError("model server timed out")
            return super()._generate(messages, *args, **kwargs)

    middleware = [
        ModelRetryMiddleware(max_retries=1, initial_delay=0, jitter=False),
        ToolCallLimitMiddleware(tool_name="check_stock", run_limit=1),
        no_orders_over_3,
    ]
    graph = create_agent(FlakyModel(script=script), shop_tools({"pear": 0, "apple": 3}), middleware=middleware)
    trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    observed = [(s.observation.content[:24], s.observation.is_error) for s in trajectory.steps[:4]]
    assert observed == [
        ("0", False),
        ("Tool call limit exceeded", True),
        ("Blocked: orders over 3 n", True),
        ("ordered 3 pear; now 3", False),
    ]


def test_a_reply_a_middleware_threw_away_is_no_step(tmp_path: Path) -> None:
    """A guardrail in wrap_model_call rejects the model's order of 500 pears and asks again with a correction. The
    rejected reply never acted (the graph never held it, its call never ran). Before, it was stored as the run's first
    expert step, order_item(quantity=500) with no observation: an IL row teaching the rejected call."""

    @wrap_model_call
    def no_big_orders(request: Any, handler: Any) -> Any:
        response = handler(request)
        if any(call["args"].get("quantity", 0) > 100 for call in response.result[-1].tool_calls):
            return handler(request.override(messages=[*request.messages, HumanMessage("Orders over 100 are not allowed.")]))
        return response

    script = iter(
        [
            AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=500)]),
            AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=5)]),
            AIMessage(content="I ordered 5 pears."),
        ]
    )
    model = PlannedModel(policy=lambda messages, tools: next(script), seen=[])
    graph = create_agent(model, shop_tools({"pear": 0}), middleware=[no_big_orders])
    trajectory = record_once(
        record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", {"messages": [("user", "Order pears.")]}
    )
    assert [(s.action.kind, s.action.tool_call and s.action.tool_call.arguments) for s in trajectory.steps] == [
        ("tool_call", {"item": "pear", "quantity": 5}),
        ("answer", None),
    ]
    assert trajectory.steps[0].state == as_recorded(model.seen[1][0])  # the correction the model was given
    assert trajectory.steps[0].observation.content == "ordered 5 pear; now 5"


def test_a_routers_call_on_the_same_history_is_kept(tmp_path: Path) -> None:
    """A router node asks a model (structured output) which department answers, then the agent's model is given the
    same history: the router's decision acted (it chose the route) and is kept, as before."""

    class Route(BaseModel):
        department: str

    router = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("Route", department="stock")])])
    answerer = ScriptedChatModel(script=[AIMessage(content="No pears.")])
    graph = StateGraph(MessagesState)
    graph.add_node("route", lambda state: {"messages": []} if router.with_structured_output(Route).invoke(state["messages"]) else None)
    graph.add_node("answer", lambda state: {"messages": [answerer.invoke(state["messages"])]})
    graph.add_edge(START, "route")
    graph.add_edge("route", "answer")
    graph.add_edge("answer", END)
    trajectory = record_once(
        record_experience(graph.compile(), app="shop", store=tmp_path / "s"), tmp_path / "s", {"messages": [("user", "Pears?")]}
    )
    assert _actions(trajectory) == [("tool_call", "Route"), ("answer", "No pears.")]


def test_parallel_branches_asked_the_same_question_each_keep_their_decisions(tmp_path: Path) -> None:
    """Best-of-N / self-consistency: the same question to 3 parallel create_agent workers (Send), sampled differently.
    Each branch's reply acted in its own branch, but every reply but the last was taken for one a middleware had thrown
    away (a later call given the same history went on with no reply), so both check_stock decisions were lost. A second
    ask is now a call of the same graph task (LangGraph's checkpoint namespace) that started after the reply."""
    lock, order = threading.Lock(), iter(range(100))

    def policy(messages: Any, tools: Any) -> AIMessage:
        if any(m.type == "tool" for m in messages):
            return AIMessage(content="No pears (checked).")
        with lock:
            n = next(order)
        if n < 2:  # samples 1 and 2 check the stock, sample 3 answers from memory
            return AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")])
        return AIMessage(content="We have no pears.")

    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        return f"{item}: 0"

    worker = create_agent(ScriptedChatModel(policy=policy), [check_stock])

    class Votes(TypedDict):
        n: int
        answers: Annotated[list[str], operator.add]

    def ask(state: dict) -> dict:
        return {"answers": [worker.invoke({"messages": [("user", "How many pears?")]})["messages"][-1].content]}

    graph = StateGraph(Votes)
    graph.add_node("ask", ask)
    graph.add_conditional_edges(START, lambda s: [Send("ask", {"i": i}) for i in range(s["n"])], ["ask"])
    graph.add_edge("ask", END)
    trajectory = record_once(record_experience(graph.compile(), app="shop", store=tmp_path / "s"), tmp_path / "s", {"n": 3, "answers": []})
    kinds = sorted((s.action.tool_call.name if s.action.tool_call else s.action.content) for s in trajectory.steps)
    assert kinds == ["No pears (checked).", "No pears (checked).", "We have no pears.", "check_stock", "check_stock"], kinds
