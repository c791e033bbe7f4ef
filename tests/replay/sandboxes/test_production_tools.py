"""A production tool listed among PythonSandbox's world tools is never called, whatever its shape.

A world tool's function takes the world first. Given the production tool instead (its function takes the model's
arguments only, or an injected one first), the sandbox would call that function with the world in its first parameter:
a call leaving that parameter out (an optional one, the mutation policy dropping it, a call the model got wrong) or one
the model never gives (``InjectedToolCallId``, ``InjectedState``, ``ToolRuntime``, a ``RunnableConfig``) ran the
production function during replay. Each production function here leaves a marker file when it runs (its real side
effect: an SMS sent, an order cancelled); the markers must never appear during replay or the conformance kit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import InjectedToolCallId, StructuredTool
from langgraph.prebuilt import InjectedState, ToolRuntime
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import ScriptedChatModel, check_sandbox, tool_call
from tests.conftest import record_once
from tests.replay.policies_for_tests import FixedCallsPolicy

MARKERS = "EE_TEST_PRODUCTION_MARKERS"
"""The folder production functions leave their markers in (an environment variable: the subprocess sandbox's child
inherits it)."""


def _ran(tool_name: str, first: Any) -> None:
    folder = os.environ.get(MARKERS)
    if folder:
        (Path(folder) / tool_name).write_text(repr(first)[:200])


# -- production tools: the functions production's tools call, with the world nowhere -----------------------------------


def list_orders(limit: int = 10) -> str:
    """List the latest orders."""
    _ran("list_orders", limit)
    return f"{limit} orders"


def send_sms(tool_call_id: Annotated[str, InjectedToolCallId], text: str) -> str:
    """Send an SMS to the customer."""
    _ran("send_sms", tool_call_id)
    return f"sent {text!r}"


def count_messages(state: Annotated[dict, InjectedState], prefix: str) -> str:
    """Count the conversation's messages."""
    _ran("count_messages", state)
    return f"{prefix}{len(state['messages'])}"


def whoami(runtime: ToolRuntime, prefix: str) -> str:
    """Say which call this is."""
    _ran("whoami", runtime)
    return f"{prefix}{runtime.tool_call_id}"


def tagged(config: RunnableConfig, text: str) -> str:
    """Repeat a text with the run's tags."""
    _ran("tagged", config)
    return f"{text} {sorted(config.get('tags') or [])}"


async def notify(channel: str = "sms", text: str = "") -> str:
    """Notify the customer."""
    _ran("notify", channel)
    return f"notified by {channel}"


class PlaceArgs(BaseModel):
    item: str
    quantity: int = 1


def place(item: str, quantity: int = 1) -> str:
    """Place an order."""
    _ran("place", item)
    return f"placed {quantity} {item}"


def cancel(order_id: str) -> str:
    """Cancel an order."""
    _ran("cancel", order_id)
    return f"cancelled {order_id}"


def _production_tools() -> dict[str, StructuredTool]:
    """The tools as production built them (handle_tool_error=True, as d200d3b's world tools are built)."""
    made = {
        fn.__name__: StructuredTool.from_function(**{"coroutine" if fn is notify else "func": fn}, handle_tool_error=True)
        for fn in (list_orders, send_sms, count_messages, whoami, tagged, notify, cancel)
    }
    made["place"] = StructuredTool.from_function(place, args_schema=PlaceArgs, handle_tool_error=True)
    return made


REFUSED_AT_BUILD = {
    "list_orders": "'limit' has a default (10)",
    "send_sms": "'tool_call_id' is injected (InjectedToolCallId)",
    "count_messages": "'state' is injected (InjectedState)",
    "whoami": "'runtime' is injected (ToolRuntime)",
    "tagged": "LangChain gives 'config' the run's RunnableConfig",
    "notify": "'channel' has a default ('sms')",
    "place": "'item' is one of the model's arguments (the tool's args_schema lists it)",
}
"""Production tools whose function alone says they take no world, and why."""


# -- genuine world tools, beside them ---------------------------------------------------------------------------------


def build_orders(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"orders": list((environment or {}).get("orders", ["A1", "B2"])), "cancelled": []}


def _count_in(world: dict[str, Any]) -> str:
    return f"{len(world['orders'])} open, {len(world['cancelled'])} cancelled"


def _cancel_in(world: dict[str, Any], order_id: str) -> str:
    world["orders"].remove(order_id)
    world["cancelled"].append(order_id)
    return f"cancelled {order_id}"


class _CancelArgs(BaseModel):
    order_id: str


def make_sandbox_with_production_cancel() -> PythonSandbox:
    """A sandbox listing production's cancel (its function takes the order id first) beside a world tool."""
    return PythonSandbox(
        build_orders,
        tools={
            "cancel": _production_tools()["cancel"],
            "count": StructuredTool.from_function(_count_in, name="count", description="Count."),
        },
    )


class Counts(FixedCallsPolicy):
    """Proposes counting at every state: the expert's own call is the first of the production tool's to run."""

    name = "counts"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("count", {})]


@pytest.fixture
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The folder production functions leave their markers in; empty when the test ends or the test fails."""
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv(MARKERS, str(folder))
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == [], "a production function ran during replay"


def _record(tmp_path: Path, markers: Path, calls: list[tuple[str, dict[str, Any]]], tools: list[Any], *, ran: set[str]) -> Trajectory:
    """One run of a real create_agent graph calling ``calls`` with the ``tools``; the markers production left (the
    production functions that ``ran``) are checked, then removed: only replay's would remain."""
    script = [*(AIMessage(content="", tool_calls=[tool_call(name, **args)]) for name, args in calls), AIMessage(content="done")]
    graph = create_agent(ScriptedChatModel(script=script), tools)
    agent = record_experience(graph, app="orders", store=tmp_path / "s", environment=lambda inputs, config: {"orders": ["A1", "B2"]})
    trajectory = record_once(agent, tmp_path / "s", {"messages": [("user", "Sort out my orders.")]}, run_async=True)
    assert {p.name for p in markers.iterdir()} == ran
    for marker in markers.iterdir():
        marker.unlink()
    return trajectory


@pytest.mark.parametrize(
    ("name", "given"),
    [
        *((name, "tool") for name in sorted(REFUSED_AT_BUILD)),
        *((name, "function") for name in sorted(REFUSED_AT_BUILD) if name not in ("tagged", "place")),
    ],
)
def test_a_production_tool_among_world_tools_is_refused_when_the_sandbox_is_built(name: str, given: str, markers: Path) -> None:
    """Since d200d3b such a tool was accepted and refused only at a call naming its first parameter: list_orders() and
    send_sms(text=...) ran production's functions with the world as limit / tool_call_id. Now the sandbox cannot be
    built with it (nor the conformance kit's), saying which parameter and what to do; its plain function alike (but for
    a RunnableConfig or a schema of its own, which only a tool object has), which the sandbox would call the same way."""
    production = _production_tools()[name]
    listed = production if given == "tool" else production.func or production.coroutine
    with pytest.raises(SandboxError) as refused:
        PythonSandbox(build_orders, tools={name: listed, "count": _count_in})
    message = str(refused.value)
    assert message.startswith(f"tools[{name!r}]") and REFUSED_AT_BUILD[name] in message, message
    assert "read_only_tools" in message and "takes the world first" in message
    with pytest.raises(SandboxError, match=rf"tools\[{name!r}\]"):
        check_sandbox(
            lambda: PythonSandbox(build_orders, tools={name: listed, "count": _count_in}),
            environment={"orders": ["A1"]},
            mutate=ToolCall(id="m", name=name, arguments={}),
            read=ToolCall(id="r", name="count", arguments={}),
        )


def test_a_replay_of_production_tools_runs_none_of_them(tmp_path: Path, markers: Path) -> None:
    """The review's repro, through a real agent: each production tool called as the expert called it, replayed by the
    mutation policy (which drops optional arguments) in a sandbox listing them all among world tools: refused when the
    sandbox is built, no production function ran. Listed in read_only_tools, where a tool that needs no world belongs,
    those that LangGraph gives nothing replay (their functions run there, as read-only tools do)."""
    calls = [
        ("list_orders", {"limit": 5}),
        ("send_sms", {"text": "your refund"}),
        ("count_messages", {"prefix": "n="}),
        ("whoami", {"prefix": "id="}),
        ("tagged", {"text": "hi"}),
        ("notify", {"text": "on its way"}),
        ("place", {"item": "pear"}),
    ]
    production = _production_tools()
    _record(tmp_path, markers, calls, [production[name] for name, _ in calls], ran={name for name, _ in calls})
    for name, _ in calls:
        with pytest.raises(SandboxError, match=rf"tools\[{name!r}\]"):
            PythonSandbox(build_orders, tools={name: production[name]})
    assert not list(markers.iterdir())


def _replay(trajectory: Trajectory, sandbox: Any, policy: Any) -> Any:
    return replay_trajectory(trajectory, sandbox, Proposer(policy, k=2), ReplaySettings("production-tools", "p", k=2))


@pytest.mark.parametrize("isolation", ["in-process", "subprocess"])
def test_a_production_tool_whose_first_argument_is_required_is_refused_before_the_replay_runs_anything(
    tmp_path: Path, markers: Path, isolation: str
) -> None:
    """cancel(order_id) in production: from its function alone, order_id could be a world parameter. The expert called
    it once without order_id (production refused the call: a validation error) and once with it. Since d200d3b, replay
    executed the first call as cancel(world): production's function ran with the world as the order id. The recorded
    schema the model was offered lists order_id, so before anything of the trajectory runs, the replay is refused, naming
    the tool and the parameter (in the subprocess sandbox's child too); a call naming it is refused as before."""
    calls = [("cancel", {}), ("cancel", {"order_id": "A1"}), ("count", {})]
    count = StructuredTool.from_function(lambda: "2 open", name="count", description="Count.")
    trajectory = _record(tmp_path, markers, calls, [_production_tools()["cancel"], count], ran={"cancel"})
    assert trajectory.steps[0].observation is not None and trajectory.steps[0].observation.is_error
    factory: Callable[[], Any] = make_sandbox_with_production_cancel
    for policy in (Counts(), MutationPolicy()):
        sandbox = factory() if isolation == "in-process" else SubprocessSandbox(factory, memory_mb=None)
        try:
            with pytest.raises(SandboxError, match=r"tools\['cancel'\] takes 'order_id' first.*the tool schema the model was offered"):
                _replay(trajectory, sandbox, policy)
            sandbox.reset({"orders": ["A1"]})
            with pytest.raises(SandboxError, match=r"tools\['cancel'\] takes 'order_id' first.*this call gives it"):
                sandbox.execute(ToolCall(id="c", name="cancel", arguments={"order_id": "A1"}))
        finally:
            sandbox.close()
    with pytest.raises(AssertionError, match=r"raised SandboxError: tools\['cancel'\] takes 'order_id' first"):
        check_sandbox(
            make_sandbox_with_production_cancel,
            environment={"orders": ["A1"]},
            mutate=ToolCall(id="m", name="cancel", arguments={"order_id": "A1"}),
            read=ToolCall(id="r", name="count", arguments={}),
        )


def test_a_plain_production_function_whose_first_argument_is_required_is_refused_before_the_replay_runs_anything(
    tmp_path: Path, markers: Path
) -> None:
    """The same for production's plain function listed as a world tool: the call without order_id ran cancel(world)."""
    calls = [("cancel", {}), ("count", {})]
    count = StructuredTool.from_function(lambda: "2 open", name="count", description="Count.")
    trajectory = _record(tmp_path, markers, calls, [_production_tools()["cancel"], count], ran=set())
    sandbox = PythonSandbox(build_orders, tools={"cancel": cancel, "count": _count_in})
    with pytest.raises(SandboxError, match=r"tools\['cancel'\] takes 'order_id' first.*the tool schema the model was offered"):
        _replay(trajectory, sandbox, Counts())
    sandbox.close()


def test_world_tools_built_over_functions_of_the_world_replay(tmp_path: Path) -> None:
    """What d200d3b allowed stays allowed: the tool built over a function of the world (its schema made from the
    function, the world in it; or production's own schema, without the world), replayed with the mutation policy: every
    expert call observes what production did."""
    world = build_orders(None)
    production = [
        StructuredTool.from_function(
            lambda order_id: _cancel_in(world, order_id), name="cancel", description="Cancel.", args_schema=_CancelArgs
        ),
        StructuredTool.from_function(lambda: _count_in(world), name="count", description="Count."),
    ]
    script = [
        AIMessage(content="", tool_calls=[tool_call("cancel", order_id="A1")]),
        AIMessage(content="", tool_calls=[tool_call("count")]),
    ]
    graph = create_agent(ScriptedChatModel(script=[*script, AIMessage(content="done")]), production)
    agent = record_experience(graph, app="orders", store=tmp_path / "s", environment=lambda inputs, config: {"orders": ["A1", "B2"]})
    trajectory = record_once(agent, tmp_path / "s", {"messages": [("user", "Cancel A1.")]})
    for schema in (None, _CancelArgs):
        sandbox = PythonSandbox(
            build_orders,
            tools={
                "cancel": StructuredTool.from_function(_cancel_in, name="cancel", description="Cancel.", args_schema=schema),
                "count": StructuredTool.from_function(_count_in, name="count", description="Count."),
            },
        )
        outcome = _replay(trajectory, sandbox, MutationPolicy())
        assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
        sandbox.close()
