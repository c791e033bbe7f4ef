"""The proposer: validation, rejection counts by reason, refill to k, policy failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ConfigError, PolicyError
from ee_middleware.models.parsing import ParseProblem, canonical_call, parse_tool_calls
from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.policies.schema import ToolSchemas

from .conftest import function_tool


class TextPolicy:
    """A stand-in for a model: emits fixed texts, parsed exactly as a real policy parses model output."""

    def __init__(self, texts: list[str], name: str = "scripted") -> None:
        self.name = name
        self.texts = texts
        self.calls: list[tuple[int, int]] = []

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        self.calls.append((k, seed))
        meta = ProposerInfo(policy=self.name, model="script", seed=seed)
        out = []
        for text in self.texts:
            for item in parse_tool_calls(text):
                if isinstance(item, ParseProblem):
                    out.append(Candidate(call=None, proposer=meta, raw=text, problem=item.problem))
                else:
                    out.append(Candidate(call=item, proposer=meta, raw=text))
        return Proposals(out)

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name}

    def close(self) -> None:
        pass


class FailingPolicy(TextPolicy):
    def __init__(self, error: Exception) -> None:
        super().__init__([], name="flaky")
        self.error = error

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        raise self.error


SCRIPT = [
    '{"name": "check_stock", "arguments": {"item": "apple"}}',  # accepted
    "I am not sure what to do.",  # unparsable
    '{"name": "delete_shop", "arguments": {}}',  # unknown tool
    '{"name": "order_item", "arguments": {"item": "pear", "quantity": "five"}}',  # invalid arguments
    '{"name": "order_item", "arguments": {"quantity": 5, "item": "pear"}}',  # the expert's action (key order differs)
    '{"name": "check_stock", "arguments": {"item": "apple"}}',  # duplicate
    "set_priority(order_id='A-1017', level='high')",  # accepted
]


def test_counts_per_reason_and_first_come_order(shop_point: DecisionPoint) -> None:
    result = Proposer(TextPolicy(SCRIPT), k=2, refill=None).propose(shop_point, seed=0)
    assert [(c.call.name, c.call.arguments) for c in result.accepted if c.call] == [
        ("check_stock", {"item": "apple"}),
        ("set_priority", {"order_id": "A-1017", "level": "high"}),
    ]
    assert result.counts == {"unparsable": 1, "unknown_tool": 1, "invalid_arguments": 1, "expert_action": 1, "duplicate": 1}
    details = {r.reason: r.detail for r in result.rejected}
    assert details["unknown_tool"].startswith("unknown tool 'delete_shop'")
    assert details["invalid_arguments"] == "order_item: argument 'quantity': 'five' is not of type 'integer'"
    assert details["unparsable"] == "no tool call found in the output"
    assert result.refilled == 0


def test_accepted_ids_are_deterministic_per_step_and_branch(shop_point: DecisionPoint) -> None:
    result = Proposer(TextPolicy(SCRIPT), k=2, refill=None).propose(shop_point, seed=0)
    assert [c.call.id for c in result.accepted if c.call] == ["alt-1-0", "alt-1-1"]


def test_stops_at_k_and_leaves_the_rest_unjudged(shop_point: DecisionPoint) -> None:
    result = Proposer(TextPolicy(SCRIPT), k=1, refill=None).propose(shop_point, seed=0)
    assert len(result.accepted) == 1 and result.rejected == []


def test_refills_to_k_with_mutations_marked_as_refill(shop_point: DecisionPoint) -> None:
    result = Proposer(TextPolicy(SCRIPT), k=6).propose(shop_point, seed=3)
    assert len(result.accepted) == 6 and result.refilled == 4
    own, refilled = result.accepted[:2], result.accepted[2:]
    assert all(c.proposer.policy == "scripted" for c in own)
    assert all(c.proposer.policy == "mutate" and c.proposer.settings["refill_for"] == "scripted" for c in refilled)
    schemas = ToolSchemas(shop_point.tools)
    keys = [canonical_call(c.call.name, c.call.arguments) for c in result.accepted if c.call]
    assert len(set(keys)) == 6 and canonical_call("order_item", {"item": "pear", "quantity": 5}) not in keys
    assert all(schemas.validate(c.call) is None for c in result.accepted if c.call)
    assert [c.call.id for c in result.accepted if c.call] == [f"alt-1-{i}" for i in range(6)]
    assert result.counts == {"unparsable": 1, "unknown_tool": 1, "invalid_arguments": 1, "expert_action": 1, "duplicate": 1}


def test_the_refill_of_a_mutation_policy_keeps_its_settings(shop_point: DecisionPoint) -> None:
    """``--policy mutate --policy-setting invalid_share=0``: the alternatives the refill tops up where the sandbox
    refused some (its tool not provided) were drawn with the default settings, 15% deliberately invalid."""
    policy = MutationPolicy(invalid_share=0.0, same_tool_share=1.0, optional_arg_rate=0.5)
    proposer = Proposer(policy, k=8)
    assert proposer.refill is not None and proposer.refill.describe() == policy.describe()
    result = proposer.propose(shop_point, seed=3)
    more = proposer.top_up(shop_point, result, covers=lambda name: name != "order_item", seed=3)
    assert more and all("deliberately_invalid" not in c.proposer.settings for c in [*result.accepted, *more])
    assert all(c.proposer.settings["invalid_share"] == 0.0 for c in more)
    assert Proposer(TextPolicy(SCRIPT), k=2).refill.describe() == MutationPolicy().describe()  # a model's: the defaults


def test_refill_rejections_are_kept_apart(shop_point: DecisionPoint) -> None:
    """Refill candidates that repeat accepted calls are counted apart from the policy's own rejections."""
    policy = TextPolicy(['{"name": "check_stock", "arguments": {"item": "apple"}}'])
    refill = TextPolicy(['{"name": "check_stock", "arguments": {"item": "apple"}}', "check_stock(item='banana')"], name="backup")
    result = Proposer(policy, k=2, refill=refill).propose(shop_point, seed=0)
    assert [c.call.arguments["item"] for c in result.accepted if c.call] == ["apple", "banana"]
    assert result.counts == {}
    assert result.refill_counts == {"duplicate": 1}
    [(asked, refill_seed)] = refill.calls
    assert asked == 2, "asks for missing + accepted, so that enough new ones can come"
    assert refill_seed != 0, "a refill seed of its own, so a mutate refill does not repeat a mutate policy"
    assert result.accepted[1].proposer.settings == {"refill_for": "scripted"}


def test_same_seed_same_result(shop_point: DecisionPoint) -> None:
    def run(seed: int) -> list[str]:
        result = Proposer(TextPolicy(SCRIPT[:3]), k=5).propose(shop_point, seed=seed)
        return [canonical_call(c.call.name, c.call.arguments) for c in result.accepted if c.call]

    assert run(4) == run(4)
    assert run(4) != run(5)


def test_a_raising_policy_is_counted_and_refilled(shop_point: DecisionPoint) -> None:
    result = Proposer(FailingPolicy(RuntimeError("CUDA out of memory")), k=3).propose(shop_point, seed=0)
    assert result.counts == {"policy_error": 1}
    assert result.rejected[0].detail == "flaky: RuntimeError: CUDA out of memory"
    assert len(result.accepted) == 3 and result.refilled == 3


def test_policy_errors_that_mean_unusable_propagate(shop_point: DecisionPoint) -> None:
    with pytest.raises(PolicyError, match="server down"):
        Proposer(FailingPolicy(PolicyError("server down")), k=3).propose(shop_point, seed=0)


def test_without_refill_fewer_than_k(shop_point: DecisionPoint) -> None:
    result = Proposer(TextPolicy(["nothing useful"]), k=3, refill=None).propose(shop_point, seed=0)
    assert result.accepted == [] and result.counts == {"unparsable": 1}


def test_refill_that_runs_out_gives_what_it_can() -> None:
    tools = [function_tool("toggle", "", {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]})]
    point = DecisionPoint("t", 0, [], tools, ToolCall(id="e", name="toggle", arguments={"on": True}))
    result = Proposer(TextPolicy([]), k=4).propose(point, seed=0)
    assert [c.call.arguments for c in result.accepted if c.call] == [{"on": False}]


def test_k_zero_and_negative(shop_point: DecisionPoint) -> None:
    policy = TextPolicy(SCRIPT)
    assert Proposer(policy, k=0).propose(shop_point, seed=0).accepted == []
    assert policy.calls == []
    with pytest.raises(ConfigError, match="k must be 0 or more"):
        Proposer(policy, k=-1)


class ResourcePolicy(TextPolicy):
    """A policy that holds a real resource (an open file), as a model client holds connections."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__([], name=name)
        self.handle = path.open("w")

    def close(self) -> None:
        self.handle.close()


def test_describe_and_close(tmp_path: Path) -> None:
    assert Proposer(TextPolicy([]), k=2).describe() == {"k": 2, "policy": {"policy": "scripted"}, "refill": MutationPolicy().describe()}
    policy, refill = ResourcePolicy(tmp_path / "policy", "scripted"), ResourcePolicy(tmp_path / "refill", "refill")
    proposer = Proposer(policy, k=2, refill=refill)
    assert proposer.describe() == {"k": 2, "policy": {"policy": "scripted"}, "refill": {"policy": "refill"}}
    assert not policy.handle.closed and not refill.handle.closed
    proposer.close()
    assert policy.handle.closed and refill.handle.closed, "close releases what the policy and the refill hold"
    with pytest.raises(ValueError, match="closed file"):
        policy.handle.write("after close")
    alone = ResourcePolicy(tmp_path / "alone", "alone")
    without_refill = Proposer(alone, k=1, refill=None)
    assert without_refill.describe()["refill"] is None
    without_refill.close()
    assert alone.handle.closed
