"""A user's policy that breaks the protocol is named, with what it did and what the protocol requires (black-box sweep,
policies 1 and 2): a ``describe()`` holding a value replay records cannot keep is refused when the policy is built (it
crashed the replay at the store's write, "a bug in ee-middleware", naming no policy); a ``propose()`` answering
something other than ``Proposals`` of ``Candidate`` s whose call is a ``ToolCall`` is counted as a ``policy_error``, as
a policy that raised is (it failed with a bare ``AttributeError``, naming no policy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import PolicyError
from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import PROPOSALS_REQUIRED, Proposer, answer_problem
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.policies.registry import build_policy, prepare_policy, settings_problem

HERE = "tests.replay.policies.test_policy_answers"


class _Base:
    name = "user"

    def __init__(self, **options: Any) -> None:
        self.options = options

    def describe(self) -> Any:
        return {"policy": self.name}

    def close(self) -> None:
        pass

    def info(self) -> ProposerInfo:
        return ProposerInfo(policy=self.name)

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        call = ToolCall(id="x", name="check_stock", arguments={"item": "kiwi"})
        return Proposals([Candidate(call, self.info())])


class Good(_Base):
    name = "good"


class LambdaDescribe(_Base):
    name = "lambda-describe"

    def describe(self) -> Any:
        return {"policy": self.name, "fn": lambda: 0}


class SetDescribe(_Base):
    def describe(self) -> Any:
        return {"weights": {1, 2, 3}}


class NestedDescribe(_Base):
    def describe(self) -> Any:
        return {"model": {"paths": ["/m", len]}}


class IntKeys(_Base):
    def describe(self) -> Any:
        return {1: "one"}


class StrDescribe(_Base):
    def describe(self) -> Any:
        return "v1"


class RaisingDescribe(_Base):
    def describe(self) -> Any:
        raise RuntimeError("no settings yet")


class ReturnsList(_Base):
    name = "returns-list"

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return [ToolCall(id="x", name="check_stock", arguments={"item": "kiwi"})]


class ReturnsNone(_Base):
    name = "returns-none"

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return None


class DictCall(_Base):
    name = "dict-call"

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return Proposals([Candidate({"name": "check_stock", "arguments": {"item": "kiwi"}}, self.info())])  # type: ignore[arg-type]


class ToolCallsAsCandidates(_Base):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        return Proposals([ToolCall(id="x", name="check_stock", arguments={"item": "kiwi"})])  # type: ignore[list-item]


class DictProposer(_Base):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        call = ToolCall(id="x", name="check_stock", arguments={"item": "kiwi"})
        return Proposals([Candidate(call, {"policy": self.name})])  # type: ignore[arg-type]


class FunctionInSettings(_Base):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        call = ToolCall(id="x", name="check_stock", arguments={"item": "kiwi"})
        return Proposals([Candidate(call, ProposerInfo(policy=self.name, settings={"fn": len}))])


class NamesAnotherPolicy(_Base):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Any:
        call = ToolCall(id="x", name="check_stock", arguments={"item": "kiwi"})
        return Proposals([Candidate(call, ProposerInfo(policy="mutate"))])


def make(kind: str, **options: Any) -> Any:
    """The plug-in factory the specs below name: ``HERE:make`` with ``kind`` the class."""
    return globals()[kind](**options)


def make_lambda_describe() -> Any:
    return LambdaDescribe()


# --- a describe() replay records cannot keep: refused when the policy is built -------------------------------------


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("LambdaDescribe", "key 'fn' holds a function (LambdaDescribe.describe.<locals>.<lambda>)"),
        ("SetDescribe", "key 'weights' holds a set ({1, 2, 3})"),
        ("NestedDescribe", "key 'model.paths[1]' holds a function (len)"),
        ("IntKeys", "a key 1 that is an int (1), not text"),
        ("StrDescribe", "it returned a str ('v1'), not a dict"),
    ],
)
def test_a_describe_that_is_no_dict_of_json_values_is_refused_when_the_policy_is_built(kind: str, problem: str) -> None:
    spec = f"{HERE}:make"
    expected = f"policy {spec!r}: its describe() must return JSON-able settings: {problem}. Return a dict with text keys"
    with pytest.raises(PolicyError) as built:
        build_policy(spec, kind=kind)
    assert expected in str(built.value)
    with pytest.raises(PolicyError) as prepared:  # as each replay worker builds it
        prepare_policy(spec, {"kind": kind}, {})
    assert expected in str(prepared.value)


def test_a_describe_that_raises_is_named_with_its_error() -> None:
    with pytest.raises(PolicyError, match=r"failed in describe\(\): RuntimeError: no settings yet"):
        build_policy(f"{HERE}:make", kind="RaisingDescribe")


def test_a_policy_with_json_settings_still_builds() -> None:
    policy = build_policy(f"{HERE}:make", kind="Good")
    assert isinstance(policy, Good) and policy.describe() == {"policy": "good"}
    assert settings_problem({"a": [1, 2.5, None, True, ("x", {"b": "c"})]}) is None


# --- propose() answering outside the protocol: a policy_error, naming the policy and what it returned -----------------


@pytest.mark.parametrize(
    ("policy", "returned"),
    [
        (ReturnsList(), "propose() returned a list ([ToolCall(id='x', name='check_stock'"),
        (ReturnsNone(), "propose() returned a NoneType (None), not Proposals"),
        (DictCall(), "propose() returned a Candidate (candidate 0) whose call is a dict ({'name': 'check_stock'"),
        (ToolCallsAsCandidates(), "propose() returned Proposals whose candidate 0 is a ToolCall"),
        (DictProposer(), "whose proposer is a dict ({'policy': 'user'}), not a ProposerInfo"),
        (FunctionInSettings(), "whose proposer.settings are not JSON-able: key 'fn' holds a function (len)"),
        # sweep G: the rollouts of a policy whose candidates named the mutation policy were stored as the mutation policy's
        (NamesAnotherPolicy(), "whose proposer names the policy 'mutate', and the policy is 'user'"),
    ],
)
def test_an_answer_outside_the_protocol_is_a_policy_error_naming_the_policy(shop_point: DecisionPoint, policy: Any, returned: str) -> None:
    proposer = Proposer(policy, k=2)
    result = proposer.propose(shop_point, seed=0)
    assert result.counts == {"policy_error": 1}
    (rejection,) = [r for r in result.rejected if not r.refill]
    assert rejection.detail.startswith(f"{policy.name}: ") and returned in rejection.detail, rejection.detail
    assert rejection.detail.endswith(PROPOSALS_REQUIRED)
    assert "ToolCall" in PROPOSALS_REQUIRED and "Proposals of Candidates" in PROPOSALS_REQUIRED
    assert len(result.accepted) == 2 and result.refilled == 2, "the state is refilled, as for a policy that raised"
    errors = proposer.policy_errors(shop_point.trajectory_id)
    assert errors is not None and errors.examples[0]["error"] == rejection.detail


def test_a_good_answer_is_not_a_problem(shop_point: DecisionPoint) -> None:
    assert answer_problem(Good().propose(shop_point, 2, seed=0)) is None
    assert answer_problem(MutationPolicy().propose(shop_point, 3, seed=0)) is None
    assert answer_problem(Proposals([Candidate(None, ProposerInfo(policy="m"), raw="prose", problem="no tool call")])) is None


# --- through the replay job -------------------------------------------------------------------------------------------


@pytest.fixture
def kv_store(tmp_path: Path) -> Path:
    from tests.replay.kv_world import record_kv

    root = tmp_path / "store"
    record_kv(root, [("kv_set", {"key": "a", "value": "1"}), ("kv_get", {"key": "a"})], runs=2)
    return root


def make_returns_list() -> Any:
    return ReturnsList()


def test_the_job_refuses_a_policy_whose_describe_holds_a_function(kv_store: Path) -> None:
    """Was: `ee replay run` replayed, then failed writing the record: "unexpected PydanticSerializationError ... a bug in
    ee-middleware ... report it", naming no policy."""
    spec = f"{HERE}:make_lambda_describe"
    with pytest.raises(PolicyError, match=r"describe\(\) must return JSON-able settings: key 'fn' holds a function"):
        run_replay(ReplayConfig(store=kv_store, sandbox="tests.replay.kv_world:make_sandbox", policy=spec, k=2))


def test_the_job_fails_the_trajectories_of_a_policy_answering_a_list_naming_it(kv_store: Path) -> None:
    """Was: "failed ...: AttributeError: 'list' object has no attribute 'candidates'"."""
    spec = f"{HERE}:make_returns_list"
    summary = run_replay(ReplayConfig(store=kv_store, sandbox="tests.replay.kv_world:make_sandbox", policy=spec, k=2))
    assert summary.done == 0 and len(summary.failed) == 2 and summary.branches == 0
    for reason in summary.failed.values():
        assert f"the policy {spec!r} answered outside the policy protocol at every state (2)" in reason, reason
        assert "returns-list: propose() returned a list" in reason and "AttributeError" not in reason
    assert summary.rejected_by_reason == {"policy_error": 4}
    assert "not Proposals" in summary.policy_error_examples[0]["error"]


class PathsAndEnums(_Base):
    def describe(self) -> Any:
        import enum

        return {"model_dir": Path("/models/m"), "mode": enum.Enum("Mode", {"FAST": "fast"}).FAST}


def test_a_describe_with_values_the_store_writes_as_json_is_accepted() -> None:
    """Review R16: a path or an enum in describe() was refused, though the store writes settings in pydantic's JSON mode,
    which keeps them (a plug-in policy that worked before the check)."""
    from ee_middleware.replay.policies.registry import check_described

    check_described(f"{HERE}:make", PathsAndEnums())
