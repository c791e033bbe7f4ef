"""A small world for SR tests on threads of several runs: a LangGraph agent that notes things and reads the weather,
recorded into a real store and replayed in a Python sandbox of the same tools (``make_sandbox``, importable by name as
the replay job needs) with :class:`ContrastPolicy`'s alternatives.

``save_note(text)`` answers ``saved`` whatever the text; ``weather(city)`` answers a city's forecast alone (Rome and
London are both ``rainy``), an unknown city is an error (``KeyError``). So an alternative can have the expert call's
very outcome: another note, or London's weather in place of Rome's.

:func:`record_threads` records three approved runs (:data:`NOTE`, :data:`ROME` the requests):

* thread ``t1``, first run: ``NOTE`` -> ``save_note`` -> answer;
* thread ``t1``, second run (a checkpointer keeps the thread): ``ROME`` -> ``weather(Rome)`` -> answer; its state
  starts with the first run's messages;
* a run given the whole history by its caller (no checkpointer): ``NOTE``, the answer, ``ROME`` -> ``weather(Rome)``
  -> answer; its stored ``task`` is ``NOTE``.

:func:`record_requests` records any number of runs asking ``ROME`` alike (one state each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ee_middleware.replay.sandboxes.python import PythonSandbox

FORECAST = {"Paris": "sunny", "Rome": "rainy", "London": "rainy"}
ENVIRONMENT = {"forecast": FORECAST}
NOTE = "Note that the train leaves at 9."
ROME = "What's the weather in Rome?"
SANDBOX = "tests.trainers.datasets.thread_world:make_sandbox"
POLICY = "tests.trainers.datasets.thread_world:ContrastPolicy"


def build_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    return {"forecast": dict((environment or {}).get("forecast", {})), "notes": []}


def save_note(world: dict[str, Any], text: str) -> str:
    world["notes"].append(text)
    return "saved"


def weather(world: dict[str, Any], city: str) -> str:
    return world["forecast"][city]


def make_sandbox(**options: Any) -> PythonSandbox:
    return PythonSandbox(build_world, tools={"save_note": save_note, "weather": weather}, kind="notes")


class ContrastPolicy:
    """A replay policy proposing four fixed alternatives (K=4: the replay tops up none) for the expert's tool: four
    other notes in place of a note (all ``saved``, the expert's outcome), and London (``rainy``, Rome's outcome), Paris,
    Atlantis and Oslo (errors: unknown cities) in place of a city's weather."""

    name = "contrast"

    def __init__(self, **options: Any) -> None:
        pass

    def propose(self, point: Any, k: int, *, seed: int) -> Any:
        from ee_middleware.records import ProposerInfo, ToolCall
        from ee_middleware.replay.policies.protocol import Candidate, Proposals

        if point.expert.name == "save_note":
            calls = [("save_note", {"text": text}) for text in ("call mum", "buy milk", "water plants", "pay rent")]
        else:
            calls = [("weather", {"city": city}) for city in ("London", "Paris", "Atlantis", "Oslo")]
        return Proposals(
            [
                Candidate(call=ToolCall(id=f"alt-{i}", name=name, arguments=arguments), proposer=ProposerInfo(policy=self.name))
                for i, (name, arguments) in enumerate(calls[:k])
            ]
        )

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def agent_tools() -> list[Any]:
    """The tools as LangChain tools (what the recorded agent calls)."""
    from langchain_core.tools import tool

    world = build_world(ENVIRONMENT)

    @tool("save_note")
    def save_note_tool(text: str) -> str:
        """Save a note."""
        return save_note(world, text)

    @tool("weather")
    def weather_tool(city: str) -> str:
        """The weather in a city."""
        return weather(world, city)

    return [save_note_tool, weather_tool]


def _expert(messages: list[Any], tools: Any) -> Any:
    """The scripted expert: its reply to the latest request, by how many replies it made since."""
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call

    replies = {
        NOTE: [AIMessage(content="", tool_calls=[tool_call("save_note", text="train leaves at 9")]), AIMessage(content="Noted.")],
        ROME: [AIMessage(content="", tool_calls=[tool_call("weather", city="Rome")]), AIMessage(content="Rainy in Rome.")],
    }
    turn = 0
    for message in reversed(messages):
        if message.type == "human":
            return replies[message.content][min(turn, 1)]
        turn += message.type == "ai"
    raise AssertionError("no request")


def record_threads(root: Path) -> Path:
    """The three runs of the module docstring, recorded with ``record_experience`` into the store at ``root``,
    approved and replayed (K=4, :class:`ContrastPolicy`, :func:`make_sandbox`); ``root``."""
    from langgraph.checkpoint.memory import InMemorySaver

    thread = _agent(root, InMemorySaver())
    for request in (NOTE, ROME):
        thread.invoke({"messages": [("user", request)]}, {"configurable": {"thread_id": "t1"}})
    thread.flush()
    history = _agent(root)
    history.invoke({"messages": [("user", NOTE), ("assistant", "Noted."), ("user", ROME)]})
    history.flush()
    return _approve_and_replay(root, 3)


def record_requests(root: Path, runs: int) -> Path:
    """``runs`` runs asking :data:`ROME` (each its own thread: one state, ``weather(Rome)``), recorded, approved and
    replayed as :func:`record_threads` does; ``root``."""
    agent = _agent(root)
    for _ in range(runs):
        agent.invoke({"messages": [("user", ROME)]})
    agent.flush()
    return _approve_and_replay(root, runs)


def _agent(root: Path, checkpointer: Any = None) -> Any:
    """A ``create_agent`` graph of the scripted expert and :func:`agent_tools`, recorded into the store at ``root``."""
    from langchain.agents import create_agent

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel

    graph = create_agent(ScriptedChatModel(policy=_expert), agent_tools(), checkpointer=checkpointer)
    return record_experience(graph, app="notes", store=root, environment=ENVIRONMENT)


def _approve_and_replay(root: Path, runs: int) -> Path:
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store import LocalExperienceStore

    store = LocalExperienceStore(root)
    ids = store.trajectories()["id"].to_list()
    assert len(ids) == runs
    store.approve(ids, by="test")
    store.close()
    summary = run_replay(ReplayConfig.load(store=root, k=4, sandbox=SANDBOX, policy=POLICY))
    assert summary.done == runs and not summary.failed, summary
    return root
