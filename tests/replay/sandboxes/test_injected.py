"""Tools with arguments the model never sees (LangChain/LangGraph's InjectedToolCallId, InjectedState,
InjectedStore, ToolRuntime), recorded from a real ``create_agent`` graph and replayed in a PythonSandbox.

Replay gives a tool its call id as LangGraph's ToolNode does; a tool that needs the graph's state, its
store or the run's runtime, which replay cannot rebuild, is refused with the parameter named and how
to allow it. It is never called with the argument missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.messages import AIMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.prebuilt import InjectedState, InjectedStore
from langgraph.store.memory import InMemoryStore

from ee_middleware import record_experience
from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.replay.sandboxes.registry import sandbox_factory
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once


def remember(notes: list[str], fact: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Remember a fact."""
    notes.append(fact)
    return f"noted {fact!r} as {tool_call_id}"


def lookup(key: str) -> str:
    """Look a key up."""
    return f"{key}: blue"


def count_messages(prefix: str, state: Annotated[dict, InjectedState]) -> str:
    """Count the messages so far."""
    return f"{prefix}{len(state['messages'])}"


def user_name(key: str, store: Annotated[Any, InjectedStore()]) -> str:
    """Read a user's name from the store."""
    item = store.get(("users",), key)
    return str(item.value["name"] if item else None)


def whoami(greeting: str, runtime: ToolRuntime) -> str:
    """Greet with the call's id."""
    return f"{greeting} {runtime.tool_call_id}"


def _agent_tools() -> list[Any]:
    """The production tools: the functions above, ``remember`` bound to the app's notes."""
    notes: list[str] = []

    @tool("remember")
    def remember_fact(fact: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
        """Remember a fact."""
        return remember(notes, fact, tool_call_id)

    return [remember_fact, *(tool(fn) for fn in (lookup, count_messages, user_name, whoami))]


def _record(store_path: Path, calls: list[dict[str, Any]]) -> Trajectory:
    script = [AIMessage(content="", tool_calls=[c]) for c in calls] + [AIMessage(content="done")]
    memory = InMemoryStore()
    memory.put(("users",), "u1", {"name": "Ann"})
    agent = record_experience(create_agent(ScriptedChatModel(script=script), _agent_tools(), store=memory), app="notes", store=store_path)
    inputs = {"messages": [("user", "The sky is blue; remember that for u1.")]}
    return record_once(agent, store_path, inputs, {"configurable": {"thread_id": "t"}})


def _sandbox() -> PythonSandbox:
    return PythonSandbox(
        lambda environment: [],
        tools={"remember": remember},
        read_only_tools={"lookup": lookup, "count_messages": count_messages, "user_name": user_name, "whoami": whoami},
    )


def test_a_recorded_trajectory_offers_and_calls_only_what_the_model_sees(tmp_path: Path) -> None:
    trajectory = _record(tmp_path / "store", [tool_call("count_messages", prefix="n="), tool_call("whoami", greeting="hi")])
    offered = {t["function"]["name"]: t["function"]["parameters"]["properties"] for t in trajectory.tools}
    assert offered == {
        "remember": {"fact": {"type": "string"}},
        "lookup": {"key": {"type": "string"}},
        "count_messages": {"prefix": {"type": "string"}},
        "user_name": {"key": {"type": "string"}},
        "whoami": {"greeting": {"type": "string"}},
    }
    calls = [s.action.tool_call for s in trajectory.steps if s.action.tool_call]
    assert [(c.name, c.arguments) for c in calls] == [("count_messages", {"prefix": "n="}), ("whoami", {"greeting": "hi"})]
    assert trajectory.steps[1].observation.content == f"hi {calls[1].id}"


def test_replay_gives_a_tool_its_call_id_and_refuses_those_needing_state_store_or_runtime(tmp_path: Path) -> None:
    trajectory = _record(tmp_path / "store", [tool_call("remember", fact="the sky is blue"), tool_call("lookup", key="sky")])
    settings = ReplaySettings(replay_id="injected", policy="mutate", k=8, seed=3)
    outcome = replay_trajectory(trajectory, _sandbox(), Proposer(MutationPolicy(), k=8), settings)

    record = outcome.record
    assert (record.status, record.fidelity_mismatches) == ("done", 0)  # the expert's remember saw its own call id again
    assert set(record.details["refused_tools"]) <= {"count_messages", "user_name", "whoami"} and record.refused > 0
    assert outcome.rollouts and {r.action.tool_call.name for r in outcome.rollouts} <= {"remember", "lookup"}
    offered = {t["function"]["name"]: set(t["function"]["parameters"]["properties"]) for t in trajectory.tools}
    for rollout in outcome.rollouts:
        call = rollout.action.tool_call
        assert set(call.arguments) <= offered[call.name]  # the policy never proposes an injected parameter
        assert "TypeError" not in rollout.observation.content
        if call.name == "remember":
            assert rollout.observation.content == f"noted {call.arguments['fact']!r} as {call.id}"


@pytest.mark.parametrize(
    ("tool_name", "parameter", "annotation"),
    [("count_messages", "state", "InjectedState"), ("user_name", "store", "InjectedStore"), ("whoami", "runtime", "ToolRuntime")],
)
def test_a_tool_needing_what_replay_cannot_rebuild_is_refused_with_the_reason(tool_name: str, parameter: str, annotation: str) -> None:
    sandbox = _sandbox()
    sandbox.reset(None)
    assert sandbox.covers("remember") and sandbox.covers("lookup") and not sandbox.covers(tool_name)
    hint = sandbox.refusal_hint(tool_name)
    assert hint is not None and f"'{parameter}'" in hint and annotation in hint and "world" in hint
    assert sandbox.refusal_hint("remember") is None
    observation = sandbox.execute(ToolCall(id="c1", name=tool_name, arguments={}))  # asked anyway: refused, not called
    assert observation.is_error and f"'{parameter}'" in observation.content and "TypeError" not in observation.content


@pytest.mark.parametrize("isolation", ["none", "subprocess"])
def test_a_trajectory_whose_expert_needs_the_graph_state_is_skipped_naming_the_parameter(tmp_path: Path, isolation: str) -> None:
    # before its last step: a later state depends on it (at the last step it is left unexecuted, see test_runner)
    trajectory = _record(tmp_path / "store", [tool_call("count_messages", prefix="n="), tool_call("lookup", key="sky")])
    sandbox = sandbox_factory(f"{__name__}:_sandbox", isolation=isolation, memory_mb=None)()
    try:
        outcome = replay_trajectory(trajectory, sandbox, Proposer(MutationPolicy(), k=2), ReplaySettings("injected", "mutate", k=2))
    finally:
        sandbox.close()
    assert outcome.record.status == "skipped" and not outcome.rollouts
    assert "count_messages" in outcome.record.reason and "'state'" in outcome.record.reason and "InjectedState" in outcome.record.reason


def test_a_wrapper_that_supplies_the_state_from_the_world_is_called() -> None:
    """The way to allow such a tool that its refusal gives: a function of the world and the model's arguments."""
    sandbox = PythonSandbox(
        lambda environment: {"state": {"messages": [environment["task"]]}},
        tools={"count_messages": lambda world, **arguments: count_messages(**arguments, state=world["state"])},
    )
    sandbox.reset({"task": "hello"})
    assert sandbox.covers("count_messages")
    assert sandbox.execute(ToolCall(id="c1", name="count_messages", arguments={"prefix": "n="})).content == "n=1"


def test_a_model_written_value_for_an_injected_call_id_is_replaced_by_the_call_id() -> None:
    sandbox = _sandbox()
    sandbox.reset(None)
    observation = sandbox.execute(ToolCall(id="call_7", name="remember", arguments={"fact": "x", "tool_call_id": "forged"}))
    assert (observation.content, observation.is_error) == ("noted 'x' as call_7", False)


def test_a_langchain_tool_object_without_a_world_is_refused_among_world_tools_and_called_as_a_read_only_tool() -> None:
    """A @tool object whose function takes no world, among world tools: its first call is refused, naming the parameter
    the world would have taken (it said so only as a TypeError observation per call; a tool built over a function of the
    world belongs there, see test_tool_shapes). In read_only_tools it is called as ToolNode calls it, and one that takes
    the graph's state is refused as its function would be."""
    misplaced = PythonSandbox(lambda environment: None, tools={"lookup": tool(lookup)})
    misplaced.reset(None)
    with pytest.raises(SandboxError, match=r"tools\['lookup'\] takes 'key' first.*one of the model's arguments.*read_only_tools"):
        misplaced.execute(ToolCall(id="c", name="lookup", arguments={"key": "k"}))
    sandbox = PythonSandbox(
        lambda environment: None, tools={}, read_only_tools={"lookup": tool(lookup), "count_messages": tool(count_messages)}
    )
    sandbox.reset(None)
    assert sandbox.execute(ToolCall(id="c", name="lookup", arguments={"key": "k"})).content == lookup("k")
    assert not sandbox.covers("count_messages") and "InjectedState" in (sandbox.refusal_hint("count_messages") or "")
