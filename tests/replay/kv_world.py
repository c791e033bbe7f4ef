"""A key-value app for the replay CLI's tests: recorded through a real ``create_agent`` graph (a scripted model), replayed
in a real :class:`PythonSandbox` named by spec (``tests.replay.kv_world:make_sandbox``), so that the replay job, its
workers and its subprocess sandbox's child build it too.

Its tools, in production (:func:`record_kv`) and in the sandbox:

- ``note(text)`` keeps a note, and prints about it: a Python ``print``, a write to file descriptor 1 and a child process
  (``echo``), as a chatty tool or library does;
- ``kv_set(key, value)`` and ``kv_get(key)``; in the sandbox, ``kv_set`` of a key the world lists in ``slow_keys`` takes
  far longer than any time limit the tests set (a tool slower in the sandbox than it was in production);
- ``clock()`` tells the time: production's and the sandbox's differ (a tool that reads the clock).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

from ee_middleware.replay.sandboxes.python import PythonSandbox
from tests.replay.policies_for_tests import FixedCallsPolicy

PRINTED = "NOTE-PRINTED"
"""What ``note`` prints (each line starts with it)."""
PRODUCTION_CLOCK = "2026-12-01T04:10:15.955730"
SANDBOX_CLOCK = "2026-12-01T04:10:17.917664"


def _print_about(text: str) -> None:
    print(f"{PRINTED} by print: {text}", flush=True)
    os.write(1, f"{PRINTED} on fd 1: {text}\n".encode())
    subprocess.run(["echo", f"{PRINTED} by a child process: {text}"], check=True)


def build_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    environment = environment or {}
    return {"kv": dict(environment.get("kv", {})), "slow_keys": list(environment.get("slow_keys", [])), "notes": []}


def note(world: dict[str, Any], text: str) -> str:
    _print_about(text)
    world["notes"].append(text)
    return f"noted ({len(world['notes'])})"


def kv_set(world: dict[str, Any], key: str, value: str) -> str:
    if key in world["slow_keys"]:
        time.sleep(120)
    world["kv"][key] = value
    return "ok"


def kv_get(world: dict[str, Any], key: str) -> str:
    return world["kv"].get(key, f"Error: no key {key}")


def clock(world: dict[str, Any]) -> str:
    return SANDBOX_CLOCK


def make_sandbox(**options: Any) -> PythonSandbox:
    tools = {"note": note, "kv_set": kv_set, "kv_get": kv_get, "clock": clock}
    return PythonSandbox(build_world, tools=tools, kind="kv", is_error_result=lambda v: str(v).startswith("Error:"))


def build_world_from_snapshot(environment: dict[str, Any] | None) -> dict[str, Any]:
    """The world from the JSON file ``environment["snapshot"]`` names (its ``kv``): a missing file cannot rebuild it."""
    with open((environment or {})["snapshot"], encoding="utf-8") as handle:
        return build_world(json.load(handle))


def make_snapshot_sandbox(**options: Any) -> PythonSandbox:
    """:func:`make_sandbox` whose world is read from a snapshot file (:func:`build_world_from_snapshot`)."""
    tools = {"note": note, "kv_set": kv_set, "kv_get": kv_get, "clock": clock}
    return PythonSandbox(build_world_from_snapshot, tools=tools, kind="kv-snapshot", is_error_result=lambda v: str(v).startswith("Error:"))


class Notes(FixedCallsPolicy):
    """Proposes a note at every state."""

    name = "notes"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("note", {"text": "from an alternative"})]


class Lookups(FixedCallsPolicy):
    """Proposes reading the key ``s`` at every state."""

    name = "lookups"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("kv_get", {"key": "s"})]


def record_kv(
    root: Path, calls: list[tuple[str, dict[str, Any]]], *, runs: int = 1, environment: dict[str, Any] | None = None
) -> list[str]:
    """Record ``runs`` runs of a real create_agent graph making ``calls`` one after the other, then answering; approve them
    and return their ids (``root`` may hold trajectories recorded before: those are left as they are)."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel, tool_call

    world = build_world(environment)
    before: set[str] = set()
    if (root / "ee-store.json").exists():
        earlier = LocalExperienceStore(root)
        before, _ = set(earlier.trajectories()["id"].to_list()), earlier.close()

    @tool("note")
    def note_tool(text: str) -> str:
        """Keep a note."""
        _print_about(text)
        world["notes"].append(text)
        return f"noted ({len(world['notes'])})"

    @tool("kv_set")
    def kv_set_tool(key: str, value: str) -> str:
        """Set a key."""
        world["kv"][key] = value
        return "ok"

    @tool("kv_get")
    def kv_get_tool(key: str) -> str:
        """Read a key."""
        return kv_get(world, key)

    @tool("clock")
    def clock_tool() -> str:
        """The time now."""
        return PRODUCTION_CLOCK

    script = [*(AIMessage(content="", tool_calls=[tool_call(name, **arguments)]) for name, arguments in calls), AIMessage(content="done")]
    graph = create_agent(ScriptedChatModel(script=script), [note_tool, kv_set_tool, kv_get_tool, clock_tool])
    agent = record_experience(graph, app="kv", store=root, environment=lambda inputs, config: environment or {})
    for run in range(runs):
        world.update(build_world(environment))
        agent.invoke({"messages": [("user", f"please do it ({run})")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(root)
    try:
        ids = [i for i in store.trajectories()["id"].to_list() if i not in before]
        assert len(ids) == runs, ids
        store.approve(ids, by="test")
    finally:
        store.close()
    return ids
