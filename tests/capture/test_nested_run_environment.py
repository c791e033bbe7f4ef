"""An agent run inside a tool gets the environment the world was in when it started (sweep I2).

It was stored with the outer run's environment reference, read when the outer run started: after the outer run's
earlier calls changed the world, the inner run's replay started from a world its steps never saw, and its fidelity
errors were blamed on the sandbox. Where the recorder has an ``environment=`` hook, the hook is asked again as the inner
run starts. Real ``create_agent`` graphs, the real OTel SDK, both offload modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call

OFFLOADS = ["thread", pytest.param("process", marks=pytest.mark.heavy)]

WORLD = {"version": 0}


@tool
def deposit(amount: int) -> str:
    """Deposit money: changes the world."""
    WORLD["version"] += 1
    return f"deposited {amount}; version {WORLD['version']}"


@tool
def balance() -> str:
    """Read the balance."""
    return f"version {WORLD['version']}"


def _sub_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
    if messages[-1].type == "human":
        return AIMessage("", tool_calls=[tool_call("balance")])
    return AIMessage(f"sub: {messages[-1].content}")


SUB = create_agent(ScriptedChatModel(policy=_sub_policy, model_name="sub-model"), [balance])


@tool
def ask_teller(question: str) -> str:
    """Ask the teller agent."""
    return SUB.invoke({"messages": [("user", question)]})["messages"][-1].content


def _outer_policy(messages: list[BaseMessage], tools: Any) -> AIMessage:
    calls = [m for m in messages if m.type == "tool"]
    if not calls:
        return AIMessage("", tool_calls=[tool_call("deposit", amount=5)])
    if len(calls) == 1:
        return AIMessage("", tool_calls=[tool_call("ask_teller", question="What is my balance?")])
    return AIMessage(f"done: {messages[-1].content}")


def _agent(store: Path, offload: str, environment: Any) -> Any:
    model = ScriptedChatModel(policy=_outer_policy, model_name="outer-model")
    return record_experience(create_agent(model, [deposit, ask_teller]), app="bank", store=store, offload=offload, environment=environment)


def _environments(store_path: Path) -> tuple[Any, Any]:
    store = LocalExperienceStore(store_path)
    try:
        outer, inner = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        store.close()
    assert [s.action.tool_call.name for s in inner.steps if s.action.tool_call] == ["balance"]
    return outer.environment, inner.environment


@pytest.mark.parametrize("offload", OFFLOADS)
def test_an_agent_run_inside_a_tool_gets_the_environment_the_hook_gives_as_it_starts(tmp_path: Path, offload: str) -> None:
    WORLD["version"] = 0
    asked: list[Any] = []

    def snapshot(graph_input: Any, config: Any) -> dict[str, Any]:
        asked.append(graph_input)
        return {"snapshot": WORLD["version"]}

    agent = _agent(tmp_path / "store", offload, snapshot)
    out = agent.invoke({"messages": [("user", "Deposit 5, then check.")]})
    assert agent.flush()
    assert out["messages"][-1].content == "done: sub: version 1"
    assert _environments(tmp_path / "store") == ({"snapshot": 0}, {"snapshot": 1})  # before: ({"snapshot": 0}, {"snapshot": 0})
    assert len(asked) == 2 and asked[0] is asked[1], "asked again with the outer run's input, as when it started"


def test_a_fixed_environment_or_one_the_call_gives_is_the_inner_runs_too(tmp_path: Path) -> None:
    WORLD["version"] = 0
    agent = _agent(tmp_path / "fixed", "thread", {"scenario": "bank-1"})
    agent.invoke({"messages": [("user", "Deposit 5, then check.")]})
    assert agent.flush()
    assert _environments(tmp_path / "fixed") == ({"scenario": "bank-1"}, {"scenario": "bank-1"})

    WORLD["version"] = 0
    hooked = _agent(tmp_path / "given", "thread", lambda graph_input, config: {"snapshot": WORLD["version"]})
    hooked.invoke({"messages": [("user", "Deposit 5, then check.")]}, {"configurable": {"ee_environment": {"snapshot": "given"}}})
    assert hooked.flush()
    assert _environments(tmp_path / "given") == ({"snapshot": "given"}, {"snapshot": "given"}), "the call's own, not the hook's"


def test_a_hook_that_raises_for_the_inner_run_leaves_it_the_outer_environment_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")  # (the suite's strict capture raises it instead)
    WORLD["version"] = 0
    calls = []

    def once(graph_input: Any, config: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("snapshot service down")
        return {"snapshot": WORLD["version"]}

    agent = _agent(tmp_path / "store", "thread", once)
    with caplog.at_level("WARNING", logger="ee_middleware.capture"):
        out = agent.invoke({"messages": [("user", "Deposit 5, then check.")]})
        assert agent.flush()
    assert out["messages"][-1].content == "done: sub: version 1", "the tool's call went on"
    assert _environments(tmp_path / "store") == ({"snapshot": 0}, {"snapshot": 0})
    assert "the environment= hook raised RuntimeError when an agent run inside a tool started" in caplog.text
    assert "snapshot service down" not in caplog.text


def test_a_hook_whose_inner_answer_holds_a_live_object_is_said_so_with_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The warning said "the environment= hook raised ConfigError" where the hook had returned a live object for the
    inner run (a review): it says what the answer holds and where."""
    import sqlite3

    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")
    WORLD["version"] = 0
    connection = sqlite3.connect(":memory:")
    calls = []

    def live_later(graph_input: Any, config: Any) -> dict[str, Any]:
        calls.append(1)
        return {"snapshot": WORLD["version"]} if len(calls) == 1 else {"db": connection}

    try:
        agent = _agent(tmp_path / "store", "thread", live_later)
        with caplog.at_level("WARNING", logger="ee_middleware.capture"):
            agent.invoke({"messages": [("user", "Deposit 5, then check.")]})
            assert agent.flush()
    finally:
        connection.close()
    assert _environments(tmp_path / "store") == ({"snapshot": 0}, {"snapshot": 0})
    assert "returned a value that holds a sqlite3.Connection at environment['db']" in caplog.text, caplog.text
