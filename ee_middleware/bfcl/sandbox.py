"""A replay sandbox over the real BFCL multi-turn backends."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from ee_middleware.bfcl.world import World, execute, method_table, world_from_environment
from ee_middleware.errors import SandboxError
from ee_middleware.records import Observation, ToolCall


@dataclass(frozen=True, eq=False)
class BFCLSnapshot:
    """The world at one moment: each backend instance pickled on its own."""

    parts: dict[str, bytes]


class BFCLSandbox:
    """Executes tool calls on BFCL's backend instances (file system, trading bot, travel, ...).

    The environment reference is the entry's ``initial_config`` and ``involved_classes`` (see
    :attr:`ee_middleware.bfcl.data.BFCLEntry.environment`). The backends are deterministic and a
    snapshot holds a pickled copy of each instance, so branching from any recorded state is exact.

    Restores are incremental: a call only ever changes the instance that owns the method, so
    restoring the snapshot the sandbox last started from only unpickles the instances that calls
    touched since (usually one), not the whole world.
    """

    kind = "bfcl"

    def __init__(self) -> None:
        self._world: World | None = None
        self._tools: dict[str, tuple[str, str]] = {}
        self._base: BFCLSnapshot | None = None
        self._dirty: set[str] = set()

    @property
    def world(self) -> World:
        if self._world is None:
            raise SandboxError("bfcl sandbox: call reset(environment) first.")
        return self._world

    def covers(self, tool_name: str) -> bool:
        return tool_name in self._tools

    def reset(self, environment: dict[str, Any] | None) -> None:
        self._world = world_from_environment(environment)
        self._tools = method_table(self._world)
        self._base = None
        self._dirty = set()

    def execute(self, call: ToolCall) -> Observation:
        world = self.world
        owner = self._tools.get(call.name)
        if owner is not None:
            self._dirty.add(owner[0])
        return execute(world, call, table=self._tools)

    def snapshot(self) -> BFCLSnapshot:
        snapshot = BFCLSnapshot({name: pickle.dumps(instance, protocol=pickle.HIGHEST_PROTOCOL) for name, instance in self.world.items()})
        self._base, self._dirty = snapshot, set()
        return snapshot

    def restore(self, snapshot: BFCLSnapshot) -> None:
        world = self.world
        stale = self._dirty if snapshot is self._base else snapshot.parts.keys()
        for name in stale:
            world[name] = pickle.loads(snapshot.parts[name])
        self._base, self._dirty = snapshot, set()

    def close(self) -> None:
        self._world = None
        self._tools = {}
        self._base = None
        self._dirty = set()
