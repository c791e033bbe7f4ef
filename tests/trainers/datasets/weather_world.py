"""A small world for SR tests with parallel tool calls: the same tools as a LangChain agent (:func:`agent_tools`) and as
a replay sandbox (``tests.trainers.datasets.weather_world:make_sandbox``, importable by name as the replay job needs).

The world is ``{"forecast": {city: text}}`` from the trajectory's environment. ``weather(city)`` reads a city's
forecast (an unknown city is an error: ``KeyError``), ``local_time(city)`` answers a fixed time for a known city.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ee_middleware.replay.sandboxes.python import PythonSandbox

if TYPE_CHECKING:
    from ee_middleware.records import Trajectory

FORECAST = {"Paris": "sunny", "Rome": "rainy", "Oslo": "snow"}
ENVIRONMENT = {"forecast": FORECAST}


def build_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"forecast": dict((environment or {}).get("forecast", {}))}


def weather(world: dict[str, Any], city: str) -> str:
    return f"{world['forecast'][city]} in {city}"


def local_time(world: dict[str, Any], city: str) -> str:
    if city not in world["forecast"]:
        raise KeyError(city)
    return f"12:00 in {city}"


TOOLS = {"weather": weather, "local_time": local_time}


def make_sandbox(**options: Any) -> PythonSandbox:
    return PythonSandbox(build_world, tools=TOOLS, kind="weather")


def agent_tools() -> list[Any]:
    """The tools as LangChain tools over :data:`FORECAST` (what the recorded agent calls)."""
    from langchain_core.tools import tool

    world = build_world(ENVIRONMENT)

    @tool("weather")
    def weather_tool(city: str) -> str:
        """The weather in a city."""
        return weather(world, city)

    @tool("local_time")
    def local_time_tool(city: str) -> str:
        """The local time in a city."""
        return local_time(world, city)

    return [weather_tool, local_time_tool]


def record_trajectory(root: Path, script: list[Any], task: str) -> Trajectory:
    """One run of a real LangGraph agent (a ``ScriptedChatModel`` answering ``script``, the :func:`agent_tools`) recorded
    by ``record_experience`` into the store at ``root`` with :data:`ENVIRONMENT`, approved; the trajectory stored."""
    from langchain.agents import create_agent

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel

    agent = record_experience(create_agent(ScriptedChatModel(script=script), agent_tools()), app="w", store=root, environment=ENVIRONMENT)
    agent.invoke({"messages": [("user", task)]})
    agent.flush()
    store = LocalExperienceStore(root)
    (trajectory,) = store.iter_trajectories()
    store.approve([trajectory.id], by="test")
    store.close()
    return trajectory


class EveryCityPolicy:
    """A replay policy (``tests.trainers.datasets.weather_world:EveryCityPolicy``) proposing ``weather`` of every city
    at every state, in a fixed order: at a turn that asks for two cities, each call's alternatives include the turn's
    other call (the proposer leaves out only the call being replaced)."""

    name = "every-city"

    def __init__(self, **options: Any) -> None:
        pass

    def propose(self, point: Any, k: int, *, seed: int) -> Any:
        from ee_middleware.records import ProposerInfo, ToolCall
        from ee_middleware.replay.policies.protocol import Candidate, Proposals

        return Proposals(
            [
                Candidate(call=ToolCall(id=f"city-{i}", name="weather", arguments={"city": city}), proposer=ProposerInfo(policy=self.name))
                for i, city in enumerate(FORECAST)
            ][:k]
        )

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
