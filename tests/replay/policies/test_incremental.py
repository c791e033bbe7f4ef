"""What the mutation policy computes once and reuses gives exactly what computing it afresh gives."""

from __future__ import annotations

import copy
from pathlib import Path

from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.policies.vocabulary import Harvester, Vocabulary
from ee_middleware.store import LocalExperienceStore
from tests.replay.policies.conftest import SHOP_STATE, SHOP_TOOLS


def _points(store_path: Path) -> list[DecisionPoint]:
    store = LocalExperienceStore(store_path, create=False)
    points = [
        DecisionPoint(t.id, s.index, s.state, t.tools, s.action.tool_call)
        for t in store.iter_trajectories(status="approved")
        for s in t.steps
        if s.action.tool_call is not None
    ]
    store.close()
    return points


def test_the_harvester_reads_each_message_once_and_gives_the_fresh_vocabulary(bfcl_expert_store_template: Path) -> None:
    harvester = Harvester()
    points = _points(bfcl_expert_store_template)
    for point in points:  # successive steps extend the state; a new trajectory starts afresh
        assert harvester.harvest(point) == Vocabulary.harvest(point)
    for point in reversed(points):  # shorter states than the last one
        assert harvester.harvest(point) == Vocabulary.harvest(point)


def test_the_harvester_notices_a_changed_earlier_message() -> None:
    expert = ToolCall(id="e", name="order_item", arguments={"item": "pear", "quantity": 5})
    harvester = Harvester()
    harvester.harvest(DecisionPoint("t", 3, SHOP_STATE, SHOP_TOOLS, expert))
    changed = copy.deepcopy(SHOP_STATE)
    changed[1]["content"] = "Ship order B-2048 to 3 Oak Road and e-mail kim@example.com."
    point = DecisionPoint("t", 4, [*changed, {"role": "user", "content": "And order 7 plums."}], SHOP_TOOLS, expert)
    vocab = harvester.harvest(point)
    assert vocab == Vocabulary.harvest(point) and "B-2048" in vocab.identifiers and "A-1017" not in vocab.identifiers


def test_proposals_do_not_depend_on_what_the_policy_saw_before(bfcl_expert_store_template: Path) -> None:
    points = _points(bfcl_expert_store_template)
    warm = Proposer(MutationPolicy(), k=8)
    warm_results = [warm.propose(p, seed=i) for i, p in enumerate(points)]
    for i, point in enumerate(points):
        fresh = Proposer(MutationPolicy(), k=8).propose(point, seed=i)
        assert fresh.accepted == warm_results[i].accepted and fresh.counts == warm_results[i].counts


def test_the_proposer_trusts_only_a_check_against_the_same_schemas() -> None:
    from ee_middleware.records import ProposerInfo
    from ee_middleware.replay.policies.protocol import Candidate, Proposals
    from ee_middleware.replay.policies.schema import ToolSchemas

    bad = ToolCall(id="x", name="order_item", arguments={"item": "pear", "quantity": "many"})
    other_schemas = ToolSchemas(SHOP_TOOLS)  # not the object the proposer validates against

    class Claims:
        name = "claims"

        def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
            info = ProposerInfo(policy="claims", seed=seed)
            return Proposals([Candidate(bad, info, checked=(other_schemas, "key"))])

        def describe(self) -> dict:
            return {}

        def close(self) -> None:
            pass

    expert = ToolCall(id="e", name="order_item", arguments={"item": "pear", "quantity": 5})
    result = Proposer(Claims(), k=1, refill=None).propose(DecisionPoint("t", 3, SHOP_STATE, SHOP_TOOLS, expert), seed=0)
    assert not result.accepted and result.counts == {"invalid_arguments": 1}
