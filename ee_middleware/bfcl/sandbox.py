"""A replay sandbox over the real BFCL multi-turn backends."""

from __future__ import annotations

from typing import Any

from ee_middleware.bfcl.world import World, execute, method_table, world_from_environment
from ee_middleware.errors import SandboxError
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.python import WorldSnapshot


class BFCLSandbox:
    """Executes tool calls on BFCL's backend instances (file system, trading bot, travel, ...).

    The environment reference is the entry's ``initial_config`` and ``involved_classes`` (see
    :attr:`ee_middleware.bfcl.data.BFCLEntry.environment`). The backends are deterministic and a
    snapshot is a deep copy of the instances, so branching from any recorded state is exact.
    """

    kind = "bfcl"

    def __init__(self) -> None:
        self._world: World | None = None
        self._tools: dict[str, tuple[str, str]] = {}

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

    def execute(self, call: ToolCall) -> Observation:
        return execute(self.world, call, table=self._tools)

    def snapshot(self) -> WorldSnapshot:
        return WorldSnapshot(self.world)

    def restore(self, snapshot: WorldSnapshot) -> None:
        self._world = snapshot.materialize()  # same classes as at reset, so the tool table stands

    def close(self) -> None:
        self._world = None
        self._tools = {}
