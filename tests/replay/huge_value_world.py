"""A sandbox whose observation claims ``truncated_chars`` 2**64 (outside the store's 64-bit columns) in the world of
one trajectory alone (its environment holds ``huge``), named by spec for the replay job:
``tests.replay.huge_value_world:make_sandbox`` with ``tests.replay.huge_value_world:LookupBPolicy``."""

from __future__ import annotations

from typing import Any

from ee_middleware.records import Observation, ProposerInfo, ToolCall
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.sandboxes.python import PythonSandbox
from tests.replay.sandbox_failure_world import build_world, lookup


class HugeCountSandbox(PythonSandbox):
    def execute(self, call: ToolCall) -> Observation:
        observation = super().execute(call)
        if "huge" in (self.world or {}):
            return observation.model_copy(update={"truncated_chars": 2**64})
        return observation


def make_sandbox(**options: Any) -> HugeCountSandbox:
    return HugeCountSandbox(build_world, tools={"lookup": lookup}, kind="counters")


class LookupBPolicy:
    name = "lookup-b"

    def __init__(self, **settings: Any) -> None:
        pass

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        call = ToolCall(id=f"alt_{point.step_index}", name="lookup", arguments={"key": "b"})
        return Proposals([Candidate(call=call, proposer=ProposerInfo(policy=self.name))])

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
