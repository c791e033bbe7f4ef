"""The policy conformance kit passes the built-in mutation policy and a user's good policy, and fails each broken policy
with a message naming the promise it broke."""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import pytest

from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.testing import check_policy
from ee_middleware.testing.policy_conformance import conformance_trajectory, decision_points

_ITEMS = ["apple", "banana", "kiwi", "plum", "fig", "lime", "date", "melon"]


class Seeded:
    """A user's good policy: other items to check, drawn with the seed; a priority for an order where only that is new."""

    name = "seeded"

    def __init__(self, temperature: float = 0.7) -> None:
        self.temperature = temperature

    def describe(self) -> Any:
        return {"policy": self.name, "temperature": self.temperature, "items": list(_ITEMS)}

    def close(self) -> None:
        pass

    def info(self) -> ProposerInfo:
        return ProposerInfo(policy=self.name, temperature=self.temperature, settings={"items": len(_ITEMS)})

    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        offered = {tool["function"]["name"] for tool in point.tools}
        rng = random.Random(f"{seed}:{point.step_index}")
        if "check_stock" in offered:
            items = [item for item in _ITEMS if item != point.expert.arguments.get("item")]
            return [ToolCall(id=f"s{i}", name="check_stock", arguments={"item": item}) for i, item in enumerate(rng.sample(items, k))]
        levels = ["low", "normal", "high"][:k]
        return [
            ToolCall(id=f"p{i}", name="set_priority", arguments={"order_id": "O-1017", "level": level}) for i, level in enumerate(levels)
        ]

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return Proposals([Candidate(call, self.info()) for call in self.calls(point, k, seed)])


class ModelLike(Seeded):
    """A policy asking a model: some answers are prose, some call a tool not offered (the proposer drops them)."""

    name = "model-like"

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        prose = Candidate(None, self.info(), raw="Let me think.", problem="no tool call found")
        unknown = Candidate(ToolCall(id="u", name="refund", arguments={}), self.info())
        return Proposals([prose, unknown, *super().propose(point, k, seed=seed).candidates][:k])


# --- broken policies: each breaks one promise ------------------------------------------------------------------------


class NoClose:
    name = "no-close"

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return Proposals()

    def describe(self) -> Any:
        return {}


class IntName(Seeded):
    name = 12345  # type: ignore[assignment]


class LambdaDescribe(Seeded):
    def describe(self) -> Any:
        return {"policy": self.name, "fn": lambda: 0}


class SetDescribe(Seeded):
    def describe(self) -> Any:
        return {"weights": {1, 2, 3}}


class StrDescribe(Seeded):
    def describe(self) -> Any:
        return "v1"


class CountingDescribe(Seeded):
    def __init__(self) -> None:
        super().__init__()
        self.asked = itertools.count()

    def describe(self) -> Any:
        return {"asked": next(self.asked)}

    def __getstate__(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, asked=itertools.count())


class ReturnsList(Seeded):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return self.calls(point, k, seed)


class ReturnsNone(Seeded):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return None


class DictCalls(Seeded):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return Proposals([Candidate(c.model_dump(), self.info()) for c in self.calls(point, k, seed)])  # type: ignore[arg-type]


class Raises(Seeded):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        raise RuntimeError("backend down")


class IgnoresK(Seeded):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return super().propose(point, 3, seed=seed)


class AlwaysCheckStock(Seeded):
    """Proposes check_stock at every state, also where it is not offered."""

    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        items = [item for item in _ITEMS if item != point.expert.arguments.get("item")][:k]
        return [ToolCall(id=f"s{i}", name="check_stock", arguments={"item": item}) for i, item in enumerate(items)]


class InvalidArguments(Seeded):
    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        calls = super().calls(point, k, seed)
        return [calls[0].model_copy(update={"arguments": {"itemz": "apple"}}), *calls[1:]]


class ExpertOwn(Seeded):
    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        return [*super().calls(point, k - 1, seed), point.expert.model_copy(update={"id": "e"})]


class ExpertAtItsDefault(Seeded):
    """Proposes search_catalog(query=...) where the expert called search_catalog(query=..., limit=10), limit's default."""

    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        if point.expert.name == "search_catalog":
            return [ToolCall(id="d", name="search_catalog", arguments={"query": point.expert.arguments["query"]})]
        return super().calls(point, k, seed)


class Duplicates(Seeded):
    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        first = super().calls(point, k, seed)[0]
        return [first, first.model_copy(update={"id": "again"})]


class NoCall(Seeded):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return Proposals([Candidate(None, self.info(), raw="I would check the stock.", problem="no tool call found")])


class Unseeded(Seeded):
    """Draws from a counter of its own, not from the seed."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn = 0

    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        self.drawn += 1
        return super().calls(point, k, seed + self.drawn)


class HoldsALock(Seeded):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


class ForgetsOnPickle(Seeded):
    """Its pickled copy proposes for another seed (its state drops a setting that shapes proposals)."""

    def __init__(self, offset: int = 100) -> None:
        super().__init__()
        self.offset = offset

    def calls(self, point: DecisionPoint, k: int, seed: int) -> list[ToolCall]:
        return super().calls(point, k, seed + self.offset)

    def __getstate__(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "offset": 0}


class CloseRaises(Seeded):
    def close(self) -> None:
        raise RuntimeError("already closed")


class ProposesNothing(Seeded):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return Proposals()


class FunctionInSettings(Seeded):
    def info(self) -> ProposerInfo:
        return ProposerInfo(policy=self.name, settings={"sample": random.random})


class NamesAnotherPolicy(Seeded):
    """Sweep G: its candidates said the mutation policy proposed them; rollout records kept that, as if refills."""

    def info(self) -> ProposerInfo:
        return ProposerInfo(policy="mutate", temperature=self.temperature)


class DescribeCountsProposals(Seeded):
    """Sweep G: describe() was checked before the policy proposed only; this one's changes with every proposal."""

    def __init__(self) -> None:
        super().__init__()
        self.proposed = 0

    def describe(self) -> Any:
        return {"temperature": self.temperature, "proposed": self.proposed}

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        self.proposed += 1
        return super().propose(point, k, seed=seed)


def test_the_mutation_policy_passes() -> None:
    check_policy(MutationPolicy)
    check_policy(lambda: MutationPolicy(same_tool_share=0.8, invalid_share=0.5), k=6, seeds=range(4))


def test_a_users_good_policy_passes_and_one_asking_a_model_passes_without_usable_candidates() -> None:
    check_policy(Seeded)
    check_policy(ModelLike, require_usable=False)
    with pytest.raises(AssertionError, match="every candidate is a tool call"):
        check_policy(ModelLike)


def test_a_policy_is_checked_on_a_trajectory_of_the_users_own() -> None:
    trajectory = conformance_trajectory()
    own = trajectory.model_copy(update={"steps": trajectory.steps[:2]})  # no state without check_stock
    check_policy(AlwaysCheckStock, trajectory=own)
    assert [p.step_index for p in decision_points(trajectory)] == [0, 1, 2, 3]
    assert [t["function"]["name"] for t in decision_points(trajectory)[2].tools] == ["ship", "set_priority"]


@pytest.mark.parametrize(
    ("make", "broken"),
    [
        (
            NoClose,
            r"NoClose is no policy: a policy has a 'name' attribute and 'propose\(point, k, \*, seed\)', 'describe\(\)' and 'close\(\)'",
        ),
        (IntName, r"a policy has a non-empty name, a string .*: got 12345"),
        (LambdaDescribe, r"describe\(\) returns the policy's settings as a dict of JSON-able values .*key 'fn' holds a function"),
        (SetDescribe, r"describe\(\) returns .*JSON-able.*key 'weights' holds a set"),
        (StrDescribe, r"describe\(\) returns .*: it returned a str \('v1'\), not a dict"),
        (CountingDescribe, r"describe\(\) returns the same settings each time"),
        (ReturnsList, r"propose\(\) returns Proposals of Candidates whose call is a ToolCall .*: at state 0 .*propose\(\) returned a list"),
        (ReturnsNone, r"propose\(\) returns Proposals .*propose\(\) returned a NoneType \(None\), not Proposals"),
        (DictCalls, r"propose\(\) returns Proposals .*whose call is a dict"),
        (FunctionInSettings, r"propose\(\) returns Proposals .*proposer.settings are not JSON-able: key 'sample' holds a function"),
        (Raises, r"propose\(\) at state 0 \(the expert called check_stock; k=2, seed=0\) raised RuntimeError: backend down"),
        (IgnoresK, r"propose\(\) returns at most k candidates: 3 at state 0 \(the expert called check_stock; k=2, seed=0\)"),
        (
            AlwaysCheckStock,
            r"every candidate calls a tool offered at its state: candidate 0 at state 2 .* calls 'check_stock', and that state offers ship, set_priority",
        ),
        (InvalidArguments, r"every candidate's arguments fit its tool's schema: candidate 0 at state 0 .*itemz"),
        (ExpertOwn, r"no candidate is the expert's own action \(as the tool receives it.*candidate 1 at state 0"),
        (
            ExpertAtItsDefault,
            r"no candidate is the expert's own action .*search_catalog\(\{\"query\": \"pear\"\}\), is the expert's search_catalog\(\{\"limit\": 10, \"query\": \"pear\"\}\)",
        ),
        (Duplicates, r"candidates are distinct \(as the tool receives it.*candidates 0 and 1 at state 0"),
        (
            NoCall,
            r"every candidate is a tool call: candidate 0 at state 0 .* has none \(no tool call found; raw: 'I would check the stock.'\)",
        ),
        (Unseeded, r"propose\(\) is deterministic: the same point, k and seed give the same candidates"),
        (HoldsALock, r"the policy pickles \(it may cross to a replay's worker processes\): TypeError: cannot pickle '_thread.lock'"),
        (ForgetsOnPickle, r"an unpickled copy of the policy proposes what the policy does"),
        (CloseRaises, r"close\(\) returns.*RuntimeError: already closed"),
        (ProposesNothing, r"a policy proposes alternatives: 'seeded' proposed no candidate at any of the 4 states"),
        (
            NamesAnotherPolicy,
            r"propose\(\) returns Proposals .*at state 0 .*candidate 0\) whose proposer names the policy 'mutate', and the "
            r"policy is 'seeded'.*Build each candidate's ProposerInfo with policy=self.name",
        ),
        (
            DescribeCountsProposals,
            r"describe\(\) returns the same settings after the policy proposed .*\{'temperature': 0.7, 'proposed': 0\} before, "
            r"\{'temperature': 0.7, 'proposed': 32\} after",
        ),
    ],
)
def test_a_broken_policy_fails_naming_the_promise_it_broke(make: Any, broken: str) -> None:
    with pytest.raises(AssertionError, match=broken):
        check_policy(make, k=2)
