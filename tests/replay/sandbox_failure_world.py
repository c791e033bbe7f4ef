"""A sandbox and a policy whose alternatives make the subprocess sandbox fail, named by spec so that the replay job (and
its sandbox child, started with ``spawn``) import them: ``tests.replay.sandbox_failure_world:make_sandbox`` and
``tests.replay.sandbox_failure_world:FailingToolsPolicy``.

The world is a dict of counters. ``lookup(key)`` reads one (the expert's call and one alternative: a real answer);
``hang()`` sleeps far past the sandbox's time limit, ``die()`` ends the sandbox's process with ``os._exit`` and
``hog(mb)`` allocates past its memory limit. At every state the policy proposes exactly these four alternatives.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.sandboxes.python import PythonSandbox

HOG_MB = 8192
"""What ``hog`` allocates in the alternative the policy proposes: far past any memory limit the tests set."""


def build_world(environment: dict[str, Any] | None) -> dict[str, int]:
    return dict((environment or {}).get("counts", {}))


def lookup(world: dict[str, int], key: str) -> str:
    return f"{key} = {world.get(key, 0)}"


def hang(world: dict[str, int]) -> str:
    time.sleep(120)
    return "woke up"


def die(world: dict[str, int]) -> str:
    os._exit(3)


def hog(world: dict[str, int], mb: int) -> str:
    block = bytearray(mb * 1024 * 1024)
    return f"allocated {len(block) // 2**20} MB"


TOOLS = {"lookup": lookup, "hang": hang, "die": die, "hog": hog}


def make_sandbox(**options: Any) -> PythonSandbox:
    """The sandbox factory (the replay job wraps it in a SubprocessSandbox under ``isolation = "subprocess"``)."""
    return PythonSandbox(build_world, tools=TOOLS, kind="counters")


def tool_schemas() -> list[dict[str, Any]]:
    """The OpenAI tool schemas of :data:`TOOLS`, as the recorded trajectories offer them."""

    def schema(name: str, properties: dict[str, Any]) -> dict[str, Any]:
        parameters = {"type": "object", "properties": properties, "required": list(properties)}
        return {"type": "function", "function": {"name": name, "description": f"the {name} tool", "parameters": parameters}}

    return [
        schema("lookup", {"key": {"type": "string"}}),
        schema("hang", {}),
        schema("die", {}),
        schema("hog", {"mb": {"type": "integer"}}),
    ]


class FailingToolsPolicy:
    """Proposes, at every state: ``lookup`` of another key (a real answer), ``hang()``, ``die()`` and ``hog(HOG_MB)``."""

    name = "failing-tools"

    def __init__(self, **sampling: Any) -> None:  # the job passes sampling options to policies other than mutate
        pass

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        calls = [
            ToolCall(id=f"alt_lookup_{point.step_index}", name="lookup", arguments={"key": "b"}),
            ToolCall(id=f"alt_hang_{point.step_index}", name="hang", arguments={}),
            ToolCall(id=f"alt_die_{point.step_index}", name="die", arguments={}),
            ToolCall(id=f"alt_hog_{point.step_index}", name="hog", arguments={"mb": HOG_MB}),
        ]
        return Proposals([Candidate(call=call, proposer=ProposerInfo(policy=self.name)) for call in calls])

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
