"""A PythonSandbox's own ``is_error_result`` and ``format_result`` are the user's code, not the tool's: an exception
there is a bug of the sandbox's configuration, which fails the replay naming the function, never an "Error: ..."
observation stored as what the tool returned (and taught as an IWM target). Only a value the DEFAULT formatter cannot
write (nested deeper than json and str recurse, an int past Python's digit limit) is the tool's failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from langchain_core.tools import tool

from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.python import PythonSandbox
from tests.replay.policies_for_tests import FixedCallsPolicy


def _lookup(world: dict[str, Any], city: str) -> Any:
    """A city's weather; None for a city it does not know (a value a careless ``is_error_result`` does not expect)."""
    return f"{city}: sunny" if city in ("paris", "oslo") else None


def _deep(world: dict[str, Any], depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"z": [value]}
    return value


def _huge(world: dict[str, Any]) -> int:
    return 10**5000  # past Python's 4,300-digit limit: json.dumps and str both raise ValueError


def _startswith_error(value: Any) -> bool:
    return value.startswith("Error:")  # the bug: the tool returns None for some cities


def _sandbox(**options: Any) -> PythonSandbox:
    sandbox = PythonSandbox(lambda environment: {}, tools={"lookup": _lookup, "deep": _deep, "huge": _huge}, **options)
    sandbox.reset(None)
    return sandbox


def test_an_is_error_result_that_raises_fails_naming_itself_and_the_tool() -> None:
    sandbox = _sandbox(is_error_result=_startswith_error)
    assert sandbox.execute(ToolCall(id="1", name="lookup", arguments={"city": "paris"})).content == "paris: sunny"
    with pytest.raises(SandboxError, match=r"is_error_result raised AttributeError: 'NoneType' .* tool 'lookup'.*NoneType") as raised:
        sandbox.execute(ToolCall(id="2", name="lookup", arguments={"city": "atlantis"}))
    assert isinstance(raised.value.__cause__, AttributeError)


def test_a_format_result_that_raises_fails_naming_itself_and_the_tool() -> None:
    sandbox = _sandbox(format_result=lambda value: value.upper())
    with pytest.raises(SandboxError, match=r"format_result raised AttributeError: .* tool 'lookup'"):
        sandbox.execute(ToolCall(id="1", name="lookup", arguments={"city": "atlantis"}))


def test_a_langchain_tools_result_goes_through_the_same_rule() -> None:
    @tool
    def forecast(city: str) -> dict[str, str]:
        """A city's forecast."""
        return {"forecast": "rain"}

    # the bug: LangChain's tool gives its result as text (JSON here), and this expects the dict
    sandbox = PythonSandbox(
        lambda environment: {}, tools={}, read_only_tools={"forecast": forecast}, is_error_result=lambda v: v.get("error") is not None
    )
    sandbox.reset(None)
    with pytest.raises(SandboxError, match=r"is_error_result raised AttributeError.*tool 'forecast'.*a str"):
        sandbox.execute(ToolCall(id="1", name="forecast", arguments={"city": "rome"}))


@pytest.mark.parametrize(("name", "arguments", "error"), [("deep", {"depth": 2_000}, "RecursionError"), ("huge", {}, "ValueError")])
def test_a_value_the_default_formatter_cannot_write_is_still_the_tools_error_observation(
    name: str, arguments: dict[str, Any], error: str
) -> None:
    observation = _sandbox().execute(ToolCall(id="1", name=name, arguments=arguments))
    assert observation.is_error and observation.content.startswith(f"Error: {error}"), observation


def test_a_working_is_error_result_still_marks_errors() -> None:
    sandbox = _sandbox(is_error_result=lambda value: value is None)
    observation = sandbox.execute(ToolCall(id="1", name="lookup", arguments={"city": "atlantis"}))
    assert observation.is_error and observation.content == "null"


# --- end to end: a real create_agent run, replayed by run_replay, built by build_datasets ----------------------------


def careless_sandbox(**options: Any) -> PythonSandbox:
    """The sandbox spec the replay loads: its is_error_result assumes every result is a str."""
    return PythonSandbox(lambda environment: {}, tools={"lookup": _lookup}, kind="cities", is_error_result=_startswith_error)


class Atlantis(FixedCallsPolicy):
    name = "atlantis"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("lookup", {"city": "atlantis"})]


def test_a_replay_with_a_raising_is_error_result_fails_the_trajectory_and_stores_no_bug_text(tmp_path: Path) -> None:
    """Before the fix, the replay was ``done`` and stored "Error: AttributeError: 'NoneType' object has no attribute
    'startswith'" as lookup('atlantis')'s observation, which ``ee datasets build`` taught as an IWM target."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from ee_middleware import record_experience
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool
    def lookup(city: str) -> str:
        """Look a city's weather up."""
        return f"{city}: sunny"

    root = tmp_path / "store"
    script = [
        AIMessage("", tool_calls=[tool_call("lookup", city="paris")]),
        AIMessage("", tool_calls=[tool_call("lookup", city="oslo")]),
        AIMessage("ok"),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [lookup]), app="cities", store=root)
    agent.invoke({"messages": [("user", "weather")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(root)
    try:
        store.approve(store.trajectories()["id"].to_list(), by="test")
    finally:
        store.close()

    summary = run_replay(ReplayConfig.load(store=root, k=1, sandbox=f"{__name__}:careless_sandbox", policy=f"{__name__}:Atlantis"))
    assert summary.done == 0 and len(summary.failed) == 1, summary
    (reason,) = summary.failed.values()
    assert "SandboxError" in reason and "is_error_result raised AttributeError" in reason and "'lookup'" in reason, reason
    store = LocalExperienceStore(root)
    try:
        assert not any("AttributeError" in text for text in store.rollouts()["observation"].to_list())
    finally:
        store.close()
