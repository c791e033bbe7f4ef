"""The mutation policy: k distinct, schema-valid, plausible alternatives; deterministic per seed."""

from __future__ import annotations

import pytest

from ee_middleware.models.parsing import canonical_call
from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy, Vocabulary
from ee_middleware.replay.policies.protocol import DecisionPoint, Policy
from ee_middleware.replay.policies.schema import ToolSchemas

from .conftest import SHOP_STATE, bfcl_func_doc_dir, function_tool, load_bfcl_tools


def keys(point: DecisionPoint, k: int, seed: int, **settings: float) -> list[str]:
    proposals = MutationPolicy(**settings).propose(point, k, seed=seed)  # type: ignore[arg-type]
    return [canonical_call(c.call.name, c.call.arguments) for c in proposals.candidates if c.call]


def assert_valid_distinct_not_expert(point: DecisionPoint, k: int, seed: int = 0) -> list[ToolCall]:
    proposals = MutationPolicy().propose(point, k, seed=seed)
    calls = [c.call for c in proposals.candidates]
    assert len(calls) == k
    schemas = ToolSchemas(point.tools)
    expert = canonical_call(point.expert.name, point.expert.arguments)
    canon = []
    for tool_call in calls:
        assert tool_call is not None
        assert schemas.validate(tool_call) is None, (tool_call, schemas.validate(tool_call))
        canon.append(canonical_call(tool_call.name, tool_call.arguments))
    assert len(set(canon)) == k, "distinct"
    assert expert not in canon, "never the expert's own action"
    return [c for c in calls if c is not None]


def test_is_a_policy_and_describes_its_settings() -> None:
    policy = MutationPolicy(same_tool_share=0.25)
    assert isinstance(policy, Policy)
    assert policy.describe() == {"policy": "mutate", "same_tool_share": 0.25, "optional_arg_rate": 0.3}
    with pytest.raises(ValueError, match="between 0 and 1"):
        MutationPolicy(same_tool_share=1.5)


@pytest.mark.parametrize("seed", range(5))
def test_hand_written_tools_give_k_valid_distinct_alternatives(shop_point: DecisionPoint, seed: int) -> None:
    calls = assert_valid_distinct_not_expert(shop_point, k=12, seed=seed)
    names = {c.name for c in calls}
    assert "order_item" in names and len(names) >= 3, "a mix of the expert's tool and other tools"


def test_mix_follows_same_tool_share(shop_point: DecisionPoint) -> None:
    def same_tool(share: float) -> int:
        proposals = MutationPolicy(same_tool_share=share).propose(shop_point, 10, seed=3)
        return sum(c.call is not None and c.call.name == "order_item" for c in proposals.candidates)

    assert same_tool(0.0) == 0
    assert same_tool(1.0) == 10
    assert same_tool(0.5) == 5


def test_values_come_from_the_conversation(shop_point: DecisionPoint) -> None:
    proposals = MutationPolicy().propose(shop_point, 20, seed=0)
    strings = [v for c in proposals.candidates if c.call for v in c.call.arguments.values() if isinstance(v, str)]
    vocab = Vocabulary.harvest(shop_point)
    assert {"pear", "A-1017", "Springfield"} <= set(vocab.words)
    assert {5, 3, 12, 1017} <= set(vocab.ints)
    harvested = sum(s in vocab.words or s in vocab.strings for s in strings)
    assert harvested >= len(strings) * 0.5, strings


def test_perturbations_of_the_expert_change_one_thing(shop_point: DecisionPoint) -> None:
    proposals = MutationPolicy(same_tool_share=1.0).propose(shop_point, 10, seed=5)
    expert = shop_point.expert.arguments
    for candidate in proposals.candidates:
        assert candidate.call is not None and candidate.call.name == "order_item"
        args = candidate.call.arguments
        changed = {k for k in set(args) | set(expert) if args.get(k, "<absent>") != expert.get(k, "<absent>")}
        assert len(changed) == 1, (args, expert)
        assert 1 <= args["quantity"] <= 100


def test_same_seed_same_output_other_seed_other_output(shop_point: DecisionPoint) -> None:
    assert keys(shop_point, 8, seed=11) == keys(shop_point, 8, seed=11)
    assert keys(shop_point, 8, seed=11) != keys(shop_point, 8, seed=12)
    assert keys(shop_point, 8, seed=11)[:4] == keys(shop_point, 4, seed=11), "a larger k extends a smaller one"


def test_proposer_metadata(shop_point: DecisionPoint) -> None:
    [candidate] = MutationPolicy().propose(shop_point, 1, seed=9).candidates
    assert candidate.proposer.policy == "mutate" and candidate.proposer.seed == 9
    assert candidate.raw is None and candidate.problem is None


def test_bfcl_file_system_schemas(bfcl_file_point: DecisionPoint) -> None:
    calls = assert_valid_distinct_not_expert(bfcl_file_point, k=16, seed=1)
    file_args = [c.arguments.get("file_name") for c in calls if "file_name" in c.arguments]
    assert file_args and all(isinstance(f, str) for f in file_args)
    assert any(f in ("final_report.pdf", "notes.txt") for f in file_args), "file names come from the conversation"


@pytest.mark.parametrize(
    "file_name",
    ["math_api.json", "trading_bot.json", "travel_booking.json", "vehicle_control.json", "posting_api.json", "web_search.json"],
)
def test_bfcl_schemas_with_floats_enums_arrays(file_name: str) -> None:
    folder = bfcl_func_doc_dir()
    if folder is None or not (folder / file_name).exists():
        pytest.skip(f"{file_name} is not in this bfcl-eval version")
    tools = load_bfcl_tools(file_name)
    state = [{"role": "user", "content": "Please help with account 4021, 2.5 units of NVDA, 18 degrees, route SFO to LAX."}]
    for name in ToolSchemas(tools).names[:6]:
        expert = _a_valid_call(tools, name, state)
        assert_valid_distinct_not_expert(DecisionPoint("t", 0, state, tools, expert), k=6, seed=2)


def _a_valid_call(tools: list[dict], name: str, state: list[dict]) -> ToolCall:
    """A valid call of ``name`` to play the expert: the policy's own first proposal when only ``name`` is offered."""
    only = [t for t in tools if t["function"]["name"] == name]
    [candidate] = MutationPolicy().propose(DecisionPoint("t", 0, state, only, ToolCall(id="e", name="not_offered")), 1, seed=0).candidates
    assert candidate.call is not None
    return candidate.call


def test_enum_arrays_and_nested_objects_respect_the_schema() -> None:
    tools = [
        function_tool(
            "configure",
            "",
            {
                "type": "dict",
                "properties": {
                    "mode": {"type": "string", "enum": ["fast", "safe"]},
                    "ratio": {"type": "float", "minimum": 0, "maximum": 1},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
                    "limits": {"type": "dict", "properties": {"cpu": {"type": "integer", "minimum": 1}}, "required": ["cpu"]},
                    "pair": {"type": "tuple", "items": [{"type": "integer"}, {"type": "string"}]},
                    "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                },
                "required": ["mode", "ratio", "tags", "limits", "pair"],
            },
        ),
        function_tool("noop", "", {"type": "object", "properties": {}}),
    ]
    expert = ToolCall(id="e", name="noop")
    point = DecisionPoint("t", 0, [{"role": "user", "content": "Use codes ABC or XYZ."}], tools, expert)
    calls = assert_valid_distinct_not_expert(point, k=8, seed=4)
    assert {c.name for c in calls} == {"configure"}
    assert all(c.arguments["mode"] in ("fast", "safe") for c in calls)


def test_returns_fewer_when_the_schemas_allow_fewer() -> None:
    tools = [function_tool("toggle", "", {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]})]
    point = DecisionPoint("t", 0, [], tools, ToolCall(id="e", name="toggle", arguments={"on": True}))
    calls = [c.call for c in MutationPolicy().propose(point, 5, seed=0).candidates]
    assert [(c.name, c.arguments) for c in calls if c] == [("toggle", {"on": False})]


def test_expert_tool_not_offered_still_gives_other_tools(shop_point: DecisionPoint) -> None:
    point = DecisionPoint("t", 0, list(SHOP_STATE), shop_point.tools, ToolCall(id="e", name="retired_tool", arguments={"x": 1}))
    calls = assert_valid_distinct_not_expert(point, k=6)
    assert "retired_tool" not in {c.name for c in calls}
