"""A tool function taking the run's ``RunnableConfig``, replayed in PythonSandbox as LangChain's ``@tool`` calls it.

LangChain leaves a parameter annotated ``RunnableConfig`` out of the schema the model is offered and gives it the run's
config. Before, the sandbox took it for a required model argument: every replayed call of such a function (the
expert's included) was ``config: Field required``, in process and under ``--isolation subprocess``. This module has
``from __future__ import annotations``: every annotation here is a string, resolved in this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import StructuredTool, tool

from ee_middleware import record_experience
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
from ee_middleware.replay.sandboxes.langchain_tool import argument_schema, config_parameter
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once

pytestmark = pytest.mark.timeout(120)

OUTSIDE_A_GRAPH = {"tags": [], "metadata": {}, "callbacks": None, "recursion_limit": 25, "configurable": {}}
"""The config LangChain's tool gives its function when called outside a graph run (``tool.invoke(call)``)."""


def _shown(config: Any) -> str:
    """What a tool tells of the config it got: whether it is one (a graph run's holds more than one made outside it)."""
    if isinstance(config, dict) and isinstance(config.get("configurable"), dict) and "callbacks" in config:
        return "with a config"
    return f"config={config!r}"


def greet(name: str, config: RunnableConfig) -> str:
    """Greet someone."""
    return f"hello {name}, {_shown(config)}"


async def agreet(name: str, config: RunnableConfig) -> str:
    """Greet someone, asynchronously."""
    return f"hello {name}, {_shown(config)}"


def greet_defaulted(name: str, config: RunnableConfig = None) -> str:  # type: ignore[assignment]  # a common spelling
    """Greet someone."""
    return f"hello {name}, {_shown(config)}"


def greet_optional(name: str, config: Optional[RunnableConfig] = None) -> str:  # noqa: UP045 - the spelling under test
    """Greet someone."""
    return f"hello {name}, {_shown(config)}"


def rename(world: dict[str, Any], name: str, config: RunnableConfig) -> str:
    """Rename the account."""
    world["name"] = name
    return f"renamed to {name}, {_shown(config)}"


def tag(world: dict[str, Any], config: RunnableConfig, label: str = "x") -> str:
    """Tag the account (the config between the world and the model's argument)."""
    world.setdefault("labels", []).append(label)
    return f"tagged {label}, {_shown(config)}"


def build(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"name": (environment or {}).get("name", "bob")}


def make_sandbox() -> PythonSandbox:
    """Plain functions (world and read-only) and a world tool object, each taking the run's RunnableConfig."""
    return PythonSandbox(
        build,
        tools={
            "rename": rename,
            "tag": tag,
            "rename_tool": StructuredTool.from_function(rename, name="rename_tool", handle_tool_error=True),
        },
        read_only_tools={"greet": greet, "agreet": agreet, "greet_defaulted": greet_defaulted, "greet_optional": greet_optional},
    )


def _call(tool_name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=f"call_{tool_name}", name=tool_name, arguments=arguments)


def _production(fn: Any, arguments: dict[str, Any]) -> str:
    """What LangChain's ``@tool`` over ``fn`` answers outside a graph (its function called as production calls it)."""
    import asyncio

    made = tool(fn)
    request = {"type": "tool_call", "name": made.name, "args": arguments, "id": "c"}
    return (asyncio.run(made.ainvoke(request)) if made.func is None else made.invoke(request)).content


@pytest.mark.parametrize("isolation", ["in-process", "subprocess"])
def test_a_tool_function_taking_the_runs_config_gets_the_config_langchain_gives(isolation: str) -> None:
    """Each call answers what ``@tool`` over the same function answers: the config is no model argument and the
    function gets a config (a plain read-only function, an async one, one defaulting to None, a world function, one with
    the config before the model's argument, a world tool object). ``Optional[RunnableConfig]`` is LangChain's model
    argument: it gets None unless the call gives one, there as here."""
    sandbox = make_sandbox() if isolation == "in-process" else SubprocessSandbox(make_sandbox, memory_mb=None)
    try:
        sandbox.reset({})
        for name, fn in (("greet", greet), ("agreet", agreet), ("greet_defaulted", greet_defaulted), ("greet_optional", greet_optional)):
            observation = sandbox.execute(_call(name, name="ann"))
            assert not observation.is_error, observation.content
            assert observation.content == _production(fn, {"name": "ann"})
        assert _production(greet, {"name": "ann"}) == "hello ann, with a config"
        assert _production(greet_optional, {"name": "ann"}) == "hello ann, config=None"
        for name, expected in (
            ("rename", "renamed to ann, with a config"),
            ("rename_tool", "renamed to ann, with a config"),
        ):
            observation = sandbox.execute(_call(name, name="ann"))
            assert (observation.content, observation.is_error) == (expected, False)
        observation = sandbox.execute(_call("tag", label="vip"))
        assert (observation.content, observation.is_error) == ("tagged vip, with a config", False)
        missing = sandbox.execute(_call("greet"))  # the model's own argument is still required
        assert missing.is_error and "name: Field required" in missing.content and "config" not in missing.content
    finally:
        sandbox.close()


def test_the_config_is_langchains_with_callbacks_that_reach_no_one_made_afresh_and_never_the_models() -> None:
    """The function gets what ``tool.invoke`` gives it outside a graph, but for its callbacks: a manager with no handlers
    (never the replay job's) and a parent run of its own, as in a graph run (a custom event it dispatches then reaches no
    one instead of failing). A new one at each call (a tool changing it changes no later call), over any ``config`` the
    model's call wrote."""
    seen: list[Any] = []

    def keep(item: str, config: RunnableConfig) -> str:
        """Keep the config."""
        seen.append(config)
        config["configurable"]["changed"] = True
        return item

    tool(keep).invoke({"type": "tool_call", "name": "keep", "args": {"item": "a"}, "id": "c"})
    sandbox = PythonSandbox(build, tools={}, read_only_tools={"keep": keep})
    sandbox.reset({})
    assert not sandbox.execute(_call("keep", item="a")).is_error
    assert not sandbox.execute(_call("keep", item="b", config={"callbacks": ["the model's"], "tags": ["x"]})).is_error
    production, first, second = seen
    assert production == {**OUTSIDE_A_GRAPH, "configurable": {"changed": True}}
    for config in (first, second):
        assert {**config, "callbacks": None} == production
        assert type(config["callbacks"]).__name__ == "CallbackManager" and config["callbacks"].handlers == []
        assert config["callbacks"].parent_run_id is not None
    assert first is not second and first["configurable"] is not second["configurable"]
    assert first["callbacks"].parent_run_id != second["callbacks"].parent_run_id
    sandbox.close()


def test_the_config_parameter_is_found_as_langchain_finds_it() -> None:
    """By its annotation, ``RunnableConfig`` itself (a string annotation resolved in the function's module), whatever
    its name, after the world; ``Optional[RunnableConfig]`` is not one (LangChain offers it to the model)."""

    def named_otherwise(query: str, cfg: RunnableConfig) -> str:
        return query

    def not_resolvable(query: str, config: RunnableConfig, other: NoSuchType) -> str:  # type: ignore[name-defined]  # noqa: F821
        return query

    assert config_parameter(greet) == "config"
    assert config_parameter(named_otherwise) == "cfg"
    assert config_parameter(rename, skip=1) == "config"
    assert config_parameter(greet_optional) is None
    assert config_parameter(not_resolvable) == "config"  # read as written where the module cannot resolve the rest
    assert list(argument_schema("rename", rename, skip=1).model_fields) == ["name"]
    assert list(argument_schema("tag", tag, skip=1).model_fields) == ["label"]
    assert list(argument_schema("greet_optional", greet_optional).model_fields) == ["name", "config"]
    assert list(argument_schema("named_otherwise", named_otherwise).model_fields) == ["query"]


def _record(tmp_path: Path) -> Trajectory:
    """A real create_agent graph whose tools are ``@tool`` over greet, agreet and rename (its world bound), recorded."""
    world = build(None)

    def rename_in_production(name: str, config: RunnableConfig) -> str:
        """Rename the account."""
        return rename(world, name, config)

    production = [tool(greet), tool(agreet), tool("rename")(rename_in_production)]
    script = [
        AIMessage(content="", tool_calls=[tool_call("greet", name="ann")]),
        AIMessage(content="", tool_calls=[tool_call("agreet", name="cy")]),
        AIMessage(content="", tool_calls=[tool_call("rename", name="dee")]),
        AIMessage(content="done"),
    ]
    graph = create_agent(ScriptedChatModel(script=script), production)
    agent = record_experience(graph, app="greeter", store=tmp_path / "s", environment=lambda inputs, config: {"name": "bob"})
    return record_once(agent, tmp_path / "s", {"messages": [("user", "Greet them.")]}, run_async=True)


@pytest.mark.parametrize("isolation", ["in-process", "subprocess"])
def test_a_recorded_agent_whose_tools_take_the_runs_config_replays_with_no_fidelity_mismatch(tmp_path: Path, isolation: str) -> None:
    """The sweep's case through a real agent: its tools' functions listed in the sandbox. Before, every expert call was
    'config: Field required' (3 fidelity mismatches of 3) and every alternative an error."""
    trajectory = _record(tmp_path)
    assert next(s.observation.content for s in trajectory.steps if s.action.tool_call) == "hello ann, with a config"
    sandbox = make_sandbox() if isolation == "in-process" else SubprocessSandbox(make_sandbox, memory_mb=None)
    try:
        outcome = replay_trajectory(trajectory, sandbox, Proposer(MutationPolicy(), k=2), ReplaySettings("config", "mutate", k=2))
    finally:
        sandbox.close()
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, outcome.record.details
