"""Parts a user writes and names by spec (``tests.replay.plugin_parts:make_policy``), as the README shows, so that the
replay job, its worker processes and the dataset builder build them as they build a user's:

- :func:`make_policy`: a policy whose factory takes no parameters (reading the key ``s`` at every state of the
  ``tests.replay.kv_world`` app); :func:`make_policy_with_temperature` one that names ``temperature``;
- :func:`make_down_policy`: a policy whose backend is down: ``propose`` raises at every state;
  :func:`make_policy_down_at_first`: one that raises at the first state only (both take ``**options``);
- :func:`make_client`: a user's own :class:`~ee_middleware.models.ChatClient` (a gateway to their model), without
  parameters: it answers a ``kv_get`` call when tools are offered, else a sentence;
- :func:`make_loaded_policy`: a policy whose factory loads its model when called (standing for a multi-GB load): it
  appends its process id to the file ``EE_TEST_POLICY_BUILDS`` names, and takes ``cache_dir`` only;
- :func:`audited_store`: a store that subclasses the local one and appends a line to an audit log at every replay
  batch (``EE_TEST_AUDITED_STORE``, ``EE_TEST_AUDIT_LOG``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ee_middleware.models.protocol import Choice, Sampling
from ee_middleware.records import ProposerInfo, ReplayRecord, Rollout, ToolCall
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.store.local import LocalExperienceStore

DOWN = "policy server http://policy.internal:9000 refused the connection"


class Lookups:
    """Proposes reading the keys ``s``, ``t`` and ``u`` at every state."""

    def __init__(self, name: str = "lookups") -> None:
        self.name = name

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        info = ProposerInfo(policy=self.name, seed=seed)
        calls = [ToolCall(id=f"p{i}", name="kv_get", arguments={"key": key}) for i, key in enumerate("stu")]
        return Proposals([Candidate(call=call, proposer=info) for call in calls[:k]])

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name}

    def close(self) -> None:
        pass


def make_policy() -> Lookups:
    return Lookups()


def make_policy_with_temperature(temperature: float = 0.3) -> Lookups:
    return Lookups(f"lookups-t{temperature}")


def make_loaded_policy(cache_dir: str = "") -> Lookups:
    with open(os.environ["EE_TEST_POLICY_BUILDS"], "a") as log:  # the model is loaded here, in the calling process
        log.write(f"{os.getpid()}\n")
    return Lookups("loaded")


class _Down(Lookups):
    def __init__(self, down_at: set[int] | None) -> None:
        super().__init__("down")
        self.down_at = down_at

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        if self.down_at is None or point.step_index in self.down_at:
            raise ConnectionError(DOWN)
        return super().propose(point, k, seed=seed)


def make_down_policy(**options: Any) -> Lookups:
    return _Down(None)


def make_policy_down_at_first(**options: Any) -> Lookups:
    return _Down({0})


class KvClient:
    """A chat client of the user's own (their gateway): a ``kv_get`` call per answer when tools are offered."""

    model = "kv-gateway"

    def complete(
        self, messages: Sequence[Any], *, tools: Sequence[Any] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        if tools:
            answers = [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": f"c{i}", "type": "function", "function": {"name": "kv_get", "arguments": json.dumps({"key": f"k{i}"})}}
                    ],
                }
                for i in range(n)
            ]
        else:
            answers = [{"role": "assistant", "content": "The expert's call does what the user asked."}] * n
        return [Choice.from_message(answer, finish_reason="stop") for answer in answers]

    def describe(self) -> dict[str, Any]:
        return {"model": self.model}

    def close(self) -> None:
        pass


def make_client() -> KvClient:
    return KvClient()


class AuditedStore(LocalExperienceStore):
    """The local store, plus an audit line per replay batch (which process wrote it, for which trajectory)."""

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        with open(os.environ["EE_TEST_AUDIT_LOG"], "a") as log:
            log.write(json.dumps({"pid": os.getpid(), "trajectory": record.trajectory_id, "rollouts": len(rollouts)}) + "\n")
        super().write_replay(record, rollouts)


def audited_store() -> AuditedStore:
    return AuditedStore(os.environ["EE_TEST_AUDITED_STORE"], create=False)
