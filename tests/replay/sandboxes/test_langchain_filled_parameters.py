"""Tool functions' parameters that LangChain's ``@tool`` fills itself, replayed in PythonSandbox as it fills them.

``StructuredTool`` gives ``callbacks`` the run's child callback manager, keeps ``config`` and ``run_manager`` for itself
(the function gets its default: a ``TypeError`` without one, whatever the model wrote), gives a ``RunnableConfig``
parameter a config whose callbacks have a parent run (in a graph run), and runs the function under that config, so that
``dispatch_custom_event`` works with or without it. Before, the sandbox failed every call of a tool dispatching a custom
event ("Unable to dispatch an adhoc event without a parent run id") or taking ``callbacks`` (a ``TypeError``), and
passed the model's value to a ``config`` parameter LangChain never passes it to.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional
from uuid import UUID

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import StructuredTool, tool

from ee_middleware import record_experience
from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once

pytestmark = pytest.mark.timeout(120)


def lookup(order_id: str, config: RunnableConfig) -> str:
    """Look an order up, reporting progress as LangChain's docs show."""
    dispatch_custom_event("progress", {"step": "lookup"}, config=config)
    return f"order {order_id}: shipped"


async def alookup(order_id: str, config: RunnableConfig) -> str:
    """Look an order up, asynchronously."""
    await adispatch_custom_event("progress", {"step": "lookup"}, config=config)
    return f"order {order_id}: shipped"


def lookup_no_config(order_id: str) -> str:
    """Look an order up, reporting progress through LangChain's current config."""
    dispatch_custom_event("progress", {"step": "lookup"})
    return f"order {order_id}: shipped"


async def alookup_no_config(order_id: str) -> str:
    """Look an order up, asynchronously, through LangChain's current config."""
    await adispatch_custom_event("progress", {"step": "lookup"})
    return f"order {order_id}: shipped"


def cancel_on_world(world: dict[str, Any], order_id: str, config: RunnableConfig) -> str:
    """Cancel an order (a world function), reporting progress."""
    dispatch_custom_event("progress", {"step": "cancel"}, config=config)
    world.setdefault("cancelled", []).append(order_id)
    return f"cancelled {order_id}"


def _described(manager: Any) -> str:
    """What a tool tells of a callback manager: its kind, whether it has handlers and a parent run."""
    return f"{type(manager).__name__} handlers={len(manager.handlers)} parent={isinstance(manager.parent_run_id, UUID)}"


def with_callbacks(order_id: str, callbacks) -> str:  # LangChain's docs leave it unannotated
    """Look an order up, passing callbacks on to a nested runnable."""
    return RunnableLambda(lambda x: f"order {x}: {_described(callbacks)}").invoke(order_id, {"callbacks": callbacks})


async def awith_callbacks(order_id: str, callbacks) -> str:
    """Look an order up, asynchronously, passing callbacks on."""
    return f"order {order_id}: {_described(callbacks)}"


def config_optional(x: int, config: Optional[RunnableConfig] = None) -> str:  # noqa: UP045 - the spelling under test
    """Optional config under the name LangChain keeps."""
    return f"x={x} config={config!r}"


def config_union(x: int, config: RunnableConfig | None = None) -> str:
    """Optional config, spelled with |."""
    return f"x={x} config={config!r}"


def config_unannotated(x: int, config) -> str:
    """An unannotated config with no default."""
    return f"x={x} config={config!r}"


def cfg_optional(x: int, cfg: Optional[RunnableConfig] = None) -> str:  # noqa: UP045
    """Optional config under another name: the model's argument."""
    return f"x={x} cfg={cfg!r}"


def run_manager_defaulted(x: int, run_manager: Any = "default") -> str:
    """A run_manager parameter with a default."""
    return f"x={x} run_manager={run_manager!r}"


EVENT_TOOLS = {"lookup": lookup, "alookup": alookup, "lookup_no_config": lookup_no_config, "alookup_no_config": alookup_no_config}
FILLED_TOOLS = {
    "with_callbacks": with_callbacks,
    "awith_callbacks": awith_callbacks,
    "config_optional": config_optional,
    "config_union": config_union,
    "config_unannotated": config_unannotated,
    "cfg_optional": cfg_optional,
    "run_manager_defaulted": run_manager_defaulted,
}


def make_sandbox() -> PythonSandbox:
    return PythonSandbox(
        lambda environment: {},
        tools={
            "cancel": cancel_on_world,
            "cancel_tool": StructuredTool.from_function(cancel_on_world, name="cancel_tool", handle_tool_error=True),
        },
        read_only_tools={**EVENT_TOOLS, **FILLED_TOOLS, "lookup_tool": tool(lookup), "alookup_tool": tool(alookup)},
    )


def _production(fn: Any, arguments: dict[str, Any]) -> str:
    """What LangChain's ``@tool`` over ``fn`` answers, as the text an agent's tool node shows for an exception."""
    made = tool(fn)
    request = {"type": "tool_call", "name": made.name, "args": arguments, "id": "c"}
    try:
        return (asyncio.run(made.ainvoke(request)) if made.func is None else made.invoke(request)).content
    except Exception as exc:  # the tool's own failure, as the sandbox writes it
        return f"Error: {type(exc).__name__}: {exc}"


def _call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=f"call_{name}", name=name, arguments=arguments)


class _Events(BaseCallbackHandler):
    """A handler of the replay job's own, which must never see a tool's events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append(name)


def _execute_all(sandbox: Any, calls: list[ToolCall]) -> list[tuple[str, bool]]:
    """Each call's observation, made under a LangChain run of the job's own with a handler that hears custom events."""
    events = _Events()
    out: list[tuple[str, bool]] = []

    def run(_: Any) -> None:
        for call in calls:
            observation = sandbox.execute(call)
            out.append((observation.content, observation.is_error))

    RunnableLambda(run).invoke(None, {"callbacks": [events]})
    assert events.events == []  # the job's callbacks never get in
    return out


@pytest.mark.parametrize("mode", ["in-process", "caller-loop", "subprocess"])
def test_a_tool_dispatching_custom_events_answers_as_in_production_and_its_events_reach_no_one(mode: str) -> None:
    """Sync and async, with the config and without (LangChain's current one), a plain function, a tool object, a world
    function and a world tool object: each answers what it answered in production, with no handler hearing the event."""
    calls = [_call(name, order_id="A1") for name in [*EVENT_TOOLS, "lookup_tool", "alookup_tool"]]
    calls += [_call("cancel", order_id="A2"), _call("cancel_tool", order_id="A3")]
    expected = [("order A1: shipped", False)] * 6 + [("cancelled A2", False), ("cancelled A3", False)]
    sandbox = SubprocessSandbox(make_sandbox, memory_mb=None) if mode == "subprocess" else make_sandbox()
    try:
        sandbox.reset({})
        if mode == "caller-loop":

            async def inside_a_loop() -> list[tuple[str, bool]]:
                return _execute_all(sandbox, calls)

            assert asyncio.run(inside_a_loop()) == expected
        else:
            assert _execute_all(sandbox, calls) == expected
    finally:
        sandbox.close()


def _same_as_production(isolation: str, cases: list[tuple[str, dict[str, Any]]]) -> PythonSandbox | SubprocessSandbox:
    """A reset sandbox after checking that each case answers what ``@tool`` over the same function answers."""
    sandbox = SubprocessSandbox(make_sandbox, memory_mb=None) if isolation == "subprocess" else make_sandbox()
    sandbox.reset({})
    for name, arguments in cases:
        observation = sandbox.execute(_call(name, **arguments))
        assert observation.content == _production(FILLED_TOOLS[name], arguments), (name, arguments)
    return sandbox


@pytest.mark.parametrize("isolation", ["in-process", "subprocess"])
def test_a_callbacks_parameter_gets_a_callback_manager_as_langchain_gives_it(isolation: str) -> None:
    """``callbacks`` (no default) gets a handler-less manager with a parent run (an async one for an async tool), which
    the tool can pass on to a runnable, as ``@tool`` over the same function gives it."""
    _same_as_production(isolation, [("with_callbacks", {"order_id": "A1"}), ("awith_callbacks", {"order_id": "A1"})]).close()
    assert _production(with_callbacks, {"order_id": "A1"}) == "order A1: CallbackManager handlers=0 parent=True"
    assert _production(awith_callbacks, {"order_id": "A1"}) == "order A1: AsyncCallbackManager handlers=0 parent=True"


@pytest.mark.parametrize("isolation", ["in-process", "subprocess"])
def test_a_config_or_run_manager_parameter_langchain_keeps_gets_its_default_never_the_models_value(isolation: str) -> None:
    """``config`` not annotated ``RunnableConfig`` (``Optional[...]``, ``| None``, none) and ``run_manager`` get their
    default (a ``TypeError`` without one) whatever the model wrote; ``cfg: Optional[RunnableConfig]`` gets the model's
    value: each as ``@tool`` over the same function answers."""
    model_config = {"tags": ["from the model"]}
    sandbox = _same_as_production(
        isolation,
        [
            ("config_optional", {"x": 1, "config": model_config}),
            ("config_union", {"x": 1, "config": model_config}),
            ("config_unannotated", {"x": 1, "config": model_config}),
            ("cfg_optional", {"x": 1, "cfg": model_config}),
            ("run_manager_defaulted", {"x": 1}),
        ],
    )
    try:
        assert _production(config_optional, {"x": 1, "config": model_config}) == "x=1 config=None"
        assert "missing 1 required positional argument: 'config'" in _production(config_unannotated, {"x": 1, "config": {}})
        # a run_manager the model wrote (no schema offers it) is LangChain's too: the function gets its default
        observation = sandbox.execute(_call("run_manager_defaulted", x=1, run_manager="the model's"))
        assert observation.content == "x=1 run_manager='default'"
    finally:
        sandbox.close()


def test_a_recorded_agent_whose_tool_dispatches_custom_events_replays_with_no_fidelity_mismatch(tmp_path: Path) -> None:
    """The reviewer's case: a create_agent run whose tool reports progress, replayed. Before: 1 fidelity mismatch of 1
    (the expert call was 'RuntimeError: Unable to dispatch an adhoc event without a parent run id')."""
    script = [AIMessage(content="", tool_calls=[tool_call("lookup", order_id="A1")]), AIMessage(content="done")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [tool(lookup)]), app="orders", store=tmp_path / "s")
    trajectory = record_once(agent, tmp_path / "s", {"messages": [("user", "Where is A1?")]})
    assert next(s.observation.content for s in trajectory.steps if s.action.tool_call) == "order A1: shipped"
    sandbox = make_sandbox()
    try:
        outcome = replay_trajectory(trajectory, sandbox, Proposer(MutationPolicy(), k=2), ReplaySettings("ev", "mutate", k=2))
    finally:
        sandbox.close()
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
