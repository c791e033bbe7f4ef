"""The JSONL export of a run of several agents sharing one conversation (a supervisor and its workers, each a
``create_agent`` node with its own system prompt and tools; handoffs by ``Command(graph=Command.PARENT)``) teaches each
decision once, under the system prompt and tools its own model was given (a sweep: the workers' decisions were taught
under the last agent's or the supervisor's prompt, and the supervisor's handoff calls, whose replies the parent's
conversation never held, not at all). Real LangGraph graphs, the real OTel SDK, the real local store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command

from ee_middleware import record_experience
from ee_middleware.export import export_jsonl
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call


@tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"sunny in {city}"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _handoff(agent: str) -> Any:
    @tool(f"transfer_to_{agent}")
    def handoff(reason: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Hand the conversation to a worker."""
        message = ToolMessage(f"Transferred to {agent}", tool_call_id=tool_call_id, name=f"transfer_to_{agent}")
        return Command(goto=agent, graph=Command.PARENT, update={"messages": [message]})

    return handoff


def _worker(name: str, tool_: Any, call: dict[str, Any]) -> Any:
    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if messages[-1].type == "tool" and messages[-1].name == tool_.name:
            return AIMessage(f"{name} agent: {messages[-1].content}")
        return AIMessage("", tool_calls=[call])

    return create_agent(ScriptedChatModel(policy=policy), [tool_], system_prompt=f"You are {name}.", name=name)


def _supervisor(handoffs: bool) -> Any:
    """A supervisor routing to a weather and a math worker: by handoff tools, or (``handoffs=False``) in code."""
    weather = _worker("weather", get_weather, tool_call("get_weather", city="Paris"))
    math = _worker("math", add, tool_call("add", a=2, b=3))
    graph = StateGraph(MessagesState)
    graph.add_node("weather", weather)
    graph.add_node("math", math)
    if not handoffs:
        graph.add_edge(START, "weather")
        graph.add_edge("weather", "math")
        return graph.compile()

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        said = [m.content for m in messages if m.type == "ai"]
        if not any("weather agent" in t for t in said):
            return AIMessage("", tool_calls=[tool_call("transfer_to_weather", reason="weather")])
        if not any("math agent" in t for t in said):
            return AIMessage("", tool_calls=[tool_call("transfer_to_math", reason="sums")])
        return AIMessage("supervisor: all done")

    tools = [_handoff("weather"), _handoff("math")]
    supervisor = create_agent(ScriptedChatModel(policy=policy), tools, system_prompt="You are supervisor.", name="supervisor")
    graph.add_node("supervisor", supervisor, destinations=("weather", "math", END))
    graph.add_edge(START, "supervisor")
    graph.add_edge("weather", "supervisor")
    graph.add_edge("math", "supervisor")
    return graph.compile()


def _taught(store_path: Path, out: Path) -> list[tuple[str, str, list[str]]]:
    """Each taught assistant message of the export: (its example's system prompt, what it says or calls, the tools the
    example offers)."""
    store = LocalExperienceStore(store_path)
    try:
        store.approve(store.trajectories()["id"].to_list(), by="alice")
        export_jsonl(store, out)
    finally:
        store.close()
    taught = []
    for line in out.read_text().splitlines():
        example = json.loads(line)
        system = example["messages"][0]["content"]
        offered = sorted(t["function"]["name"] for t in example["tools"])
        for message in example["messages"]:
            if message["role"] == "assistant" and message.get("weight", 1) == 1:
                calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
                taught.append((system, ",".join(calls) or message["content"], offered))
    return sorted(taught)


def test_workers_routed_in_code_are_taught_under_their_own_prompts(tmp_path: Path) -> None:
    agent = record_experience(_supervisor(handoffs=False), app="desk", store=tmp_path / "s")
    agent.invoke({"messages": [("user", "Weather in Paris and 2+3?")]})
    assert agent.flush()
    agent.recorder.close()
    assert _taught(tmp_path / "s", tmp_path / "out.jsonl") == [
        ("You are math.", "add", ["add"]),
        ("You are math.", "math agent: 5", ["add"]),
        ("You are weather.", "get_weather", ["get_weather"]),
        ("You are weather.", "weather agent: sunny in Paris", ["get_weather"]),
    ]


def test_a_supervisors_handoffs_and_its_workers_are_each_taught_once_under_their_own_prompts(tmp_path: Path) -> None:
    agent = record_experience(_supervisor(handoffs=True), app="desk", store=tmp_path / "s")
    agent.invoke({"messages": [("user", "Weather in Paris and 2+3?")]})
    assert agent.flush()
    agent.recorder.close()
    handoffs = ["transfer_to_math", "transfer_to_weather"]
    assert _taught(tmp_path / "s", tmp_path / "out.jsonl") == [
        ("You are math.", "add", ["add"]),
        ("You are math.", "math agent: 5", ["add"]),
        ("You are supervisor.", "supervisor: all done", handoffs),
        ("You are supervisor.", "transfer_to_math", handoffs),
        ("You are supervisor.", "transfer_to_weather", handoffs),
        ("You are weather.", "get_weather", ["get_weather"]),
        ("You are weather.", "weather agent: sunny in Paris", ["get_weather"]),
    ]


def test_one_agent_whose_system_prompt_changes_every_call_is_one_conversation(tmp_path: Path) -> None:
    """A ``@dynamic_prompt`` (the step, the date) changes the system message of every call of the same agent: it exports
    as one example teaching every decision, as before (the review: each decision was split into its own example,
    repeating the history, and the Parquet row taught only the last)."""
    from langchain.agents.middleware import dynamic_prompt

    @dynamic_prompt
    def numbered(request: Any) -> str:
        return f"You are a weather desk. This is call {len(request.state['messages'])}."

    script = [
        AIMessage("", tool_calls=[tool_call("get_weather", city="Paris")]),
        AIMessage("", tool_calls=[tool_call("get_weather", city="Oslo")]),
        AIMessage("Sunny in both."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [get_weather], middleware=[numbered])
    agent = record_experience(graph, app="desk", store=tmp_path / "s")
    agent.invoke({"messages": [("user", "Weather in Paris and Oslo?")]})
    assert agent.flush()
    agent.recorder.close()
    taught = _taught(tmp_path / "s", tmp_path / "out.jsonl")
    assert [what for _, what, _ in taught] == ["Sunny in both.", "get_weather", "get_weather"]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1


def test_a_resumed_run_that_called_no_model_is_taught_as_one_conversation(tmp_path: Path) -> None:
    """Its messages (the graph's state) hold no system prompt, its reviewed step's state does (the model's input): that
    is no other agent (the review: its approved call was reported as another conversation and left out of Parquet)."""
    from langchain.agents.middleware import HumanInTheLoopMiddleware
    from langgraph.checkpoint.memory import InMemorySaver

    from ee_middleware.export import export_parquet

    @tool(return_direct=True)
    def send_email(to: str) -> str:
        """Send an e-mail."""
        return f"sent to {to}"

    model = ScriptedChatModel(script=[AIMessage("", tool_calls=[tool_call("send_email", to="bob")])])
    graph = create_agent(
        model,
        [send_email],
        system_prompt="You write e-mails.",
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"send_email": True})],
        checkpointer=InMemorySaver(),
    )
    agent = record_experience(graph, app="mail", store=tmp_path / "s")
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [("user", "mail bob")]}, config)
    agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    assert agent.flush()
    agent.recorder.close()
    split: list[str] = []
    store = LocalExperienceStore(tmp_path / "s")
    try:
        store.approve(store.trajectories()["id"].to_list(), by="alice")
        export_parquet(store, tmp_path / "out.parquet", on_split=lambda trajectory_id, what: split.append(what))
    finally:
        store.close()
    assert split == []
    taught = [
        call["function"]["name"]
        for messages in pl.read_parquet(tmp_path / "out.parquet")["messages"].to_list()
        for message in messages
        if message["role"] == "assistant" and message.get("weight") == 1
        for call in message.get("tool_calls") or []
    ]
    assert taught == ["send_email"]
