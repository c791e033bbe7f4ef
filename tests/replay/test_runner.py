"""Replaying one trajectory: determinism, branch isolation, fidelity checks and the safety rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.records import Observation, ProposerInfo, ToolCall, Trajectory
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore

SETTINGS = ReplaySettings(replay_id="test", policy="mutate", k=4, seed=7)


def _trajectories(path: Path) -> list[Trajectory]:
    return list(LocalExperienceStore(path).iter_trajectories(status="approved"))


def _comparable(rollouts: list[Any]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json", exclude={"created_at", "duration_ms"}) for r in rollouts]


def test_same_seed_gives_identical_rollouts_and_the_expert_path_is_reproduced(bfcl_store_path: Path) -> None:
    trajectory = _trajectories(bfcl_store_path)[0]
    first = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=4), SETTINGS)
    second = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=4), SETTINGS)
    assert first.record.status == "done"
    assert first.record.fidelity_mismatches == 0
    tool_steps = [s for s in trajectory.steps if s.action.kind == "tool_call"]
    assert first.record.states == len(tool_steps)
    assert first.record.branches == len(first.rollouts) == 4 * len(tool_steps)
    assert _comparable(first.rollouts) == _comparable(second.rollouts)
    other_seed = replay_trajectory(
        trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=4), ReplaySettings("test", "mutate", k=4, seed=8)
    )
    assert _comparable(other_seed.rollouts) != _comparable(first.rollouts)
    for rollout in first.rollouts:
        step = trajectory.steps[rollout.step_index]
        assert rollout.action.tool_call != step.action.tool_call or rollout.action.tool_call.arguments != step.action.tool_call.arguments
        assert rollout.sandbox == "bfcl" and not rollout.synthetic and rollout.proposer.policy == "mutate"


class _ScriptedPolicy:
    """Proposes fixed calls at every state (to drive mutating calls into the sandbox)."""

    name = "scripted"

    def __init__(self, calls: list[ToolCall]) -> None:
        self.calls = calls

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        return Proposals([Candidate(call=c, proposer=ProposerInfo(policy=self.name)) for c in self.calls])

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def test_mutating_branches_never_leak_into_other_branches_or_the_expert_path(bfcl_store_path: Path) -> None:
    trajectory = next(t for t in _trajectories(bfcl_store_path) if t.environment["entry_id"] == "multi_turn_base_0")
    # Each branch creates a directory, then the next branch lists the folder: if anything leaked,
    # `ls` would show the directory, and the expert's own steps would see a different world.
    policy = _ScriptedPolicy(
        [
            ToolCall(id="a", name="mkdir", arguments={"dir_name": "leaked"}),
            ToolCall(id="b", name="ls", arguments={}),
            ToolCall(id="c", name="touch", arguments={"file_name": "leaked.txt"}),
            ToolCall(id="d", name="ls", arguments={"a": True}),
        ]
    )
    outcome = replay_trajectory(trajectory, BFCLSandbox(), Proposer(policy, k=4, refill=None), SETTINGS)
    assert outcome.record.fidelity_mismatches == 0, outcome.record.details
    listings = [r for r in outcome.rollouts if r.action.tool_call.name == "ls"]
    assert listings and all("leaked" not in r.observation.content for r in listings)
    made = [r for r in outcome.rollouts if r.action.tool_call.name == "mkdir"]
    assert made and all(not r.is_error for r in made[:1])


def test_a_sandbox_that_diverges_is_reported_as_a_fidelity_error(bfcl_store_path: Path) -> None:
    trajectory = _trajectories(bfcl_store_path)[0]
    step = next(s for s in trajectory.steps if s.observation is not None)
    step.observation = Observation(content="something the sandbox will not return")
    outcome = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=1), SETTINGS)
    assert outcome.record.fidelity_mismatches == 1
    (mismatch,) = outcome.record.details["fidelity_mismatches"]
    assert mismatch["step"] == step.index and mismatch["recorded"] == "something the sandbox will not return"
    assert mismatch["position"] == 0 and mismatch["recorded_chars"] == len("something the sandbox will not return")
    assert mismatch["diff"].startswith("--- recorded\n+++ sandbox\n@@") and "-something the sandbox will not return" in mismatch["diff"]
    assert "redacted_arguments" not in mismatch


def test_an_expert_argument_replay_cannot_restore_is_flagged_not_counted_as_a_fidelity_error() -> None:
    """The expert's argument was stored as a plain redaction placeholder (no pseudonym, no vault): the
    sandbox can only be given the placeholder, so its answer says nothing about the sandbox's fidelity."""
    trajectory = _shop_trajectory()
    step = trajectory.steps[0]
    step.action.tool_call.arguments = {"item": "[REDACTED:email]"}
    step.observation = Observation(content='{"ordered": "apple", "left": 2, "note": "' + "x" * 120 + '"}')

    def order_item(world: dict[str, Any], item: str) -> dict[str, Any]:
        return {"ordered": item, "left": world["stock"].get(item, 0), "note": "x" * 120}

    sandbox = PythonSandbox(lambda env: {"stock": dict(env["stock"])}, tools={"order_item": order_item})
    outcome = replay_trajectory(trajectory, sandbox, Proposer(_ScriptedPolicy([]), k=1, refill=None), SETTINGS)
    assert outcome.record.fidelity_mismatches == 0 and "fidelity_mismatches" not in outcome.record.details
    assert outcome.record.unrestorable == 1
    (flag,) = outcome.record.details["unrestorable_steps"]
    assert flag["step"] == step.index and flag["tool"] == "order_item" and flag["arguments"] == ["item"]
    assert flag["placeholders"] == ["[REDACTED:email]"] and flag["observation_matched"] is False
    assert flag["reasons"] == ["a placeholder without a pseudonym tag names no value (record with redaction_pseudonyms=True)"]


def test_an_environment_the_sandbox_cannot_rebuild_is_skipped_with_the_reason(bfcl_store_path: Path) -> None:
    trajectory = _trajectories(bfcl_store_path)[0]
    trajectory.environment = {"kind": "bfcl", "involved_classes": ["NoSuchAPI"]}
    outcome = replay_trajectory(trajectory, BFCLSandbox(), Proposer(MutationPolicy(), k=2), SETTINGS)
    assert outcome.record.status == "skipped" and "NoSuchAPI" in outcome.record.reason and not outcome.rollouts


# --- the safety rule, on an app's own tools ----------------------------------------------------

SHOP_TOOLS = [
    {"type": "function", "function": {"name": n, "description": d, "parameters": p}}
    for n, d, p in [
        ("check_stock", "Stock of an item.", {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}),
        ("order_item", "Order an item.", {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}),
        ("send_email", "E-mail a customer.", {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}),
    ]
]


def _shop_trajectory() -> Trajectory:
    import datetime as dt

    call = {"id": "c1", "type": "function", "function": {"name": "order_item", "arguments": json.dumps({"item": "apple"})}}
    state = [{"role": "user", "content": "order an apple for bob@example.com"}]
    return Trajectory.parse(
        {
            "id": "shop-1",
            "app": "shop",
            "tools": SHOP_TOOLS,
            "started_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "ended_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "environment": {"stock": {"apple": 3}},
            "messages": [*state, {"role": "assistant", "content": "", "tool_calls": [call]}],
            "steps": [
                {
                    "trajectory_id": "shop-1",
                    "index": 0,
                    "decision_index": 0,
                    "state": state,
                    "action": {"kind": "tool_call", "tool_call": {"id": "c1", "name": "order_item", "arguments": {"item": "apple"}}},
                    "observation": {"content": "ordered apple, 2 left"},
                }
            ],
        }
    )


def test_a_side_effecting_tool_without_a_sandbox_is_never_called() -> None:
    emails_sent: list[str] = []

    def order_item(world: dict[str, Any], item: str) -> str:
        world["stock"][item] -= 1
        return f"ordered {item}, {world['stock'][item]} left"

    sandbox = PythonSandbox(
        lambda env: {"stock": dict(env["stock"])},
        tools={"order_item": order_item},
        read_only_tools={"check_stock": lambda item: f"{item}: in stock"},
    )
    # send_email exists in the app but has no sandbox: a real call would e-mail a customer.
    assert not sandbox.covers("send_email")
    policy = _ScriptedPolicy(
        [
            ToolCall(id="x", name="send_email", arguments={"to": "bob@example.com"}),
            ToolCall(id="y", name="check_stock", arguments={"item": "apple"}),
            ToolCall(id="z", name="order_item", arguments={"item": "pear"}),
        ]
    )
    outcome = replay_trajectory(_shop_trajectory(), sandbox, Proposer(policy, k=3, refill=None), SETTINGS)
    assert emails_sent == []
    assert outcome.record.refused == 1 and outcome.record.details["refused_tools"] == {"send_email": 1}
    assert {r.action.tool_call.name for r in outcome.rollouts} == {"check_stock", "order_item"}
    pear = next(r for r in outcome.rollouts if r.action.tool_call.name == "order_item")
    assert pear.is_error and "KeyError" in pear.observation.content
    assert outcome.record.fidelity_mismatches == 0


def test_an_expert_path_through_an_unsandboxed_tool_is_skipped_with_the_fix() -> None:
    sandbox = PythonSandbox(lambda env: {}, tools={"check_stock": lambda world, item: "ok"})
    outcome = replay_trajectory(_shop_trajectory(), sandbox, Proposer(MutationPolicy(), k=2), SETTINGS)
    assert outcome.record.status == "skipped"
    assert "order_item" in outcome.record.reason and "Add these tools to the sandbox" in outcome.record.reason


@pytest.mark.parametrize("garbage", ["", "not json at all", '{"name": "order_item", "arguments": {"item": 5}}'])
def test_malformed_policy_output_is_counted_and_refilled(garbage: str) -> None:
    from ee_middleware.models.parsing import parse_tool_calls

    class GarbagePolicy(_ScriptedPolicy):
        def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
            candidates = []
            for parsed in parse_tool_calls(garbage) or [None]:
                call = parsed if isinstance(parsed, ToolCall) else None
                candidates.append(
                    Candidate(call=call, proposer=ProposerInfo(policy="garbage"), raw=garbage, problem=None if call else "unparsable")
                )
            return Proposals(candidates)

    sandbox = PythonSandbox(
        lambda env: {"stock": dict(env["stock"])},
        tools={"order_item": lambda w, item: f"ordered {item}", "check_stock": lambda w, item: "ok", "send_email": lambda w, to: "sent"},
    )
    outcome = replay_trajectory(_shop_trajectory(), sandbox, Proposer(GarbagePolicy([]), k=3), SETTINGS)
    assert outcome.record.rejected >= 1
    assert outcome.record.branches == 3 and all(r.proposer.policy == "mutate" for r in outcome.rollouts)
