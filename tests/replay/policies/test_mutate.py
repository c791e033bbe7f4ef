"""The mutation policy: k distinct, schema-valid, plausible alternatives; deterministic per seed."""

from __future__ import annotations

import json
import random
import re

import pytest

from ee_middleware.models.parsing import canonical_call
from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy, Vocabulary, _corrupt, string_role
from ee_middleware.replay.policies.protocol import DecisionPoint, Policy
from ee_middleware.replay.policies.schema import ToolSchemas
from ee_middleware.replay.policies.vocabulary import shape

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
    assert policy.describe() == {"policy": "mutate", "same_tool_share": 0.25, "optional_arg_rate": 0.3, "invalid_share": 0.15}
    with pytest.raises(ValueError, match="same_tool_share must be a number between 0 and 1"):
        MutationPolicy(same_tool_share=1.5)
    with pytest.raises(ValueError, match=r"invalid_share must be a number between 0 and 1, got -0\.1"):
        MutationPolicy(invalid_share=-0.1)


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


@pytest.mark.parametrize("depth", [5, 7, 12])
def test_a_value_deep_in_the_arguments_is_changed_within_its_schema(depth: int) -> None:
    """Was: past 4 levels every value was 0, "" or {} whatever its schema said, so an integer from 1 to 1000 seven
    levels down gave no alternative at all (the summary blamed the tools' schemas; a sweep)."""
    schema: dict = {"type": "integer", "minimum": 1, "maximum": 1000}
    arguments: object = 7
    for level in range(depth, 0, -1):
        schema = {"type": "object", "properties": {f"l{level}": schema}, "required": [f"l{level}"]}
        arguments = {f"l{level}": arguments}
    tools = [function_tool("deep", "", schema)]
    point = DecisionPoint("t", 0, [], tools, ToolCall(id="e", name="deep", arguments=arguments))  # type: ignore[arg-type]
    calls = assert_valid_distinct_not_expert(point, k=4, seed=1)
    assert all(c.name == "deep" for c in calls)


def test_a_schema_that_requires_itself_still_ends() -> None:
    """A recursive schema whose member is required at every level has no finite value: proposing for it ends (what it
    gives is refused by the schema check, not stored)."""
    tools = [
        function_tool(
            "tree",
            "",
            {
                "type": "object",
                "properties": {"node": {"$ref": "#/$defs/node"}},
                "required": ["node"],
                "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}, "required": ["child"]}},
            },
        )
    ]
    point = DecisionPoint("t", 0, [], tools, ToolCall(id="e", name="tree", arguments={"node": {"child": {}}}))
    MutationPolicy().propose(point, 3, seed=0)


def test_returns_fewer_when_the_schemas_allow_fewer() -> None:
    tools = [function_tool("toggle", "", {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]})]
    point = DecisionPoint("t", 0, [], tools, ToolCall(id="e", name="toggle", arguments={"on": True}))
    calls = [c.call for c in MutationPolicy().propose(point, 5, seed=0).candidates]
    assert [(c.name, c.arguments) for c in calls if c] == [("toggle", {"on": False})]


def test_expert_tool_not_offered_still_gives_other_tools(shop_point: DecisionPoint) -> None:
    point = DecisionPoint("t", 0, list(SHOP_STATE), shop_point.tools, ToolCall(id="e", name="retired_tool", arguments={"x": 1}))
    calls = assert_valid_distinct_not_expert(point, k=6)
    assert "retired_tool" not in {c.name for c in calls}


# --- values by role: what an agent in this conversation could have tried ------------------------------

RETAIL_TOOLS = [
    function_tool(
        "get_order_details", "An order.", {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
    ),
    function_tool(
        "find_user_by_email", "A user id.", {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]}
    ),
    function_tool(
        "get_user_details", "A user.", {"type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]}
    ),
    function_tool(
        "cancel_order",
        "Cancel a pending order.",
        {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "reason": {"type": "string", "enum": ["no longer needed", "ordered by mistake"]},
            },
            "required": ["order_id", "reason"],
        },
    ),
    function_tool("add_note", "Note on the account.", {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}),
    function_tool("refund", "Refund an amount.", {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}),
]
RETAIL_STATE = [
    {"role": "system", "content": "You are a support agent. Escalate complaints about Johnson or Rivera at the Portland warehouse to a human."},
    {"role": "user", "content": "Hi, I'm Mia (mia.kim@example.com). Cancel order #W4821937, it was ordered by mistake; my sister ana@example.org too."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "find_user_by_email", "arguments": '{"email": "mia.kim@example.com"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "mia_kim_4821"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "get_user_details", "arguments": '{"user_id": "mia_kim_4821"}'}}]},
    {"role": "tool", "tool_call_id": "c2", "content": '{"user_id": "mia_kim_4821", "email": "[REDACTED:email]", "orders": ["#W4821937", "#W1203958", "#W7730021"], "credit": 54.5}'},
]  # fmt: skip


@pytest.fixture
def retail_point() -> DecisionPoint:
    expert = ToolCall(id="c3", name="cancel_order", arguments={"order_id": "#W4821937", "reason": "ordered by mistake"})
    return DecisionPoint("traj-retail", 2, list(RETAIL_STATE), list(RETAIL_TOOLS), expert)


def _valid_calls(point: DecisionPoint, k: int = 40, **settings: float) -> list[tuple[ToolCall, dict]]:
    proposals = MutationPolicy(**settings).propose(point, k, seed=1)  # type: ignore[arg-type]
    return [(c.call, c.proposer.settings) for c in proposals.candidates if c.call]


def test_identifiers_come_from_the_identifiers_seen_for_that_name(retail_point: DecisionPoint) -> None:
    calls = _valid_calls(retail_point, invalid_share=0.0)
    order_ids = {c.arguments["order_id"] for c, _ in calls if "order_id" in c.arguments}
    assert order_ids and order_ids <= {"#W4821937", "#W1203958", "#W7730021"}, order_ids
    user_ids = {c.arguments["user_id"] for c, _ in calls if "user_id" in c.arguments}
    assert user_ids == {"mia_kim_4821"}, "the user id the tools returned, not an order id or a word"
    emails = {c.arguments["email"] for c, _ in calls if "email" in c.arguments}
    assert emails and emails <= {"mia.kim@example.com", "ana@example.org"}, "e-mail addresses seen, never a word"


def test_free_text_comes_from_the_user_and_numbers_from_what_was_seen(retail_point: DecisionPoint) -> None:
    calls = _valid_calls(retail_point, invalid_share=0.0)
    values = [str(v) for c, _ in calls for v in c.arguments.values()]
    assert not any(word in value for value in values for word in ("Johnson", "Rivera", "Portland", "Escalate")), "never the system prompt"
    assert not any("[REDACTED" in value for value in values), "a redaction placeholder is not a value"
    notes = [c.arguments["note"] for c, _ in calls if c.name == "add_note"]
    user_turn = RETAIL_STATE[1]["content"]
    assert notes and all(note in user_turn for note in notes), notes
    amounts = [c.arguments["amount"] for c, _ in calls if c.name == "refund"]
    near_seen = [a for a in amounts if any(a == round(54.5 * f, 2) for f in (0.5, 0.9, 1.0, 1.1, 1.5, 2.0))]
    assert amounts and len(near_seen) >= len(amounts) / 2, amounts


def test_a_share_of_deliberately_invalid_values_marked_and_well_formed(retail_point: DecisionPoint) -> None:
    calls = _valid_calls(retail_point, k=20, invalid_share=0.25)
    invalid = [(c, s["deliberately_invalid"]) for c, s in calls if "deliberately_invalid" in s]
    assert len(invalid) == 5, "exactly the configured share of 20"
    seen_orders = {"#W4821937", "#W1203958", "#W7730021"}
    for call, argument in invalid:
        value = call.arguments[argument]
        if argument == "order_id":
            assert value not in seen_orders and shape(value) == "#A9999999", "a near miss: the form of an order id, not a seen one"
    assert not [s for _, s in _valid_calls(retail_point, k=20, invalid_share=0.0) if "deliberately_invalid" in s]


def test_with_nothing_seen_for_a_role_the_value_is_a_marked_guess() -> None:
    state = [{"role": "user", "content": "Show me my orders."}]
    tools = RETAIL_TOOLS[:3]
    point = DecisionPoint("t", 0, state, tools, ToolCall(id="e", name="get_order_details", arguments={"order_id": "#W1111111"}))
    calls = _valid_calls(point, k=4, invalid_share=0.0)
    assert len(calls) == 4, "still k alternatives"
    assert all(s.get("guessed") in ("order_id", "email", "user_id") for _, s in calls), calls


def test_a_redacted_expert_value_is_never_perturbed_into_a_proposal() -> None:
    """A pseudonym like [REDACTED:email:3f2a1c9e] is not a value: no near miss of it may be proposed."""
    state = [{"role": "user", "content": "Find my account, please."}]
    expert = ToolCall(id="e", name="find_user_by_email", arguments={"email": "[REDACTED:email:3f2a1c9e]"})
    point = DecisionPoint("t", 0, state, RETAIL_TOOLS[:3], expert)
    calls = _valid_calls(point, k=6, invalid_share=0.5)
    assert calls and not any("REDACTED" in json.dumps(call.arguments) for call, _ in calls), calls


@pytest.mark.parametrize(
    ("name", "schema", "current", "role"),
    [
        ("email", {}, None, "email"),
        ("contact", {"format": "email"}, None, "email"),
        ("phone", {}, None, "phone"),
        ("travel_date", {}, None, "date"),
        ("file_name", {}, None, "path"),
        ("order_id", {}, None, "identifier"),
        ("symbol", {}, None, "identifier"),
        ("x", {}, "#W1234567", "identifier"),
        ("expression", {}, None, "expression"),
        ("x", {}, "3 * 129.0", "expression"),
        ("reason", {}, None, "phrase"),
        ("query", {}, None, "word"),
        ("city", {}, None, "name"),
    ],
)
def test_string_roles(name: str, schema: dict, current: str | None, role: str) -> None:
    assert string_role(name, schema, current) == role


def test_deliberately_invalid_sizes_stay_small_even_when_the_conversation_holds_big_numbers() -> None:
    # A BFCL recording whose ids held 692387 proposed logarithm(precision=6923871): minutes in mpmath.
    tools = [
        function_tool(
            "logarithm",
            "Log of a number.",
            {
                "type": "object",
                "properties": {"value": {"type": "number"}, "base": {"type": "number"}, "precision": {"type": "integer"}},
                "required": ["value", "base", "precision"],
            },
        )
    ]
    state = [{"role": "user", "content": "Ticket 692387 and order 5550123: log of 8 in base 2, please, precision 3."}]
    expert = ToolCall(id="e", name="logarithm", arguments={"value": 8, "base": 2, "precision": 3})
    point = DecisionPoint("t", 0, state, tools, expert)
    precisions = [
        call.arguments["precision"]
        for seed in range(30)
        for candidate in MutationPolicy(invalid_share=0.5).propose(point, 6, seed=seed).candidates
        if (call := candidate.call) is not None and candidate.proposer.settings.get("deliberately_invalid") == "precision"
    ]
    assert precisions, "the invalid share must reach the precision argument"
    assert all(abs(p) <= 1009 for p in precisions), sorted(precisions)


def _corrupt_as_first_written(rng: random.Random, value: str) -> str:
    """``_corrupt`` before its choices were built once and its positions cached: the draws must stay the same."""
    digits = [i for i, c in enumerate(value) if c.isdigit()]
    letters = [i for i, c in enumerate(value) if c.isalpha()]
    if digits:
        i = rng.choice(digits)
        replacement = rng.choice([d for d in "0123456789" if d != value[i]])
    elif letters:
        i = rng.choice(letters)
        replacement = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != value[i].lower()])
        replacement = replacement.upper() if value[i].isupper() else replacement
    else:
        return value + "x"
    return value[:i] + replacement + value[i + 1 :]


def test_near_misses_draw_exactly_as_before() -> None:
    values = ["#W1234567", "abc", "ABC", "İstanbul", "x\u0661\u0662", "Ünïcode", "", "--", "a1", "ß", "ǅ", "²3", "mixedCase_9"]
    for seed in range(100):
        ours, reference = random.Random(seed), random.Random(seed)
        assert [_corrupt(ours, v) for v in values * 3] == [_corrupt_as_first_written(reference, v) for v in values * 3]
        assert ours.random() == reference.random(), "the same number of draws"


def test_the_near_misses_of_a_value_maker_draw_exactly_as_before() -> None:
    from ee_middleware.replay.policies.mutate import _ValueMaker

    values = ["#W1234567", "abc", "ABC", "İstanbul", "x\u0661\u0662", "Ünïcode", "", "--", "a1", "ß", "ǅ", "²3", "mixedCase_9"]
    for seed in range(100):
        ours, reference = random.Random(seed), random.Random(seed)
        assert _ValueMaker(ours, Vocabulary(), 0.3)._near_misses(values * 3) == [
            _corrupt_as_first_written(reference, v) for v in values * 3
        ]
        assert ours.random() == reference.random(), "the same number of draws"


def test_a_deliberately_invalid_string_reads_only_the_values_it_corrupts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the first 50 fitting values are corrupted; checking every value of the pools (hundreds of ids seen in a long
    # conversation) against the schema first was work thrown away.
    from ee_middleware.replay.policies import mutate

    vocab = Vocabulary(identifiers=[f"#W{1000000 + i}" for i in range(500)])
    checked = []
    fits = mutate._Fits.__call__
    monkeypatch.setattr(mutate._Fits, "__call__", lambda self, value: (checked.append(value), fits(self, value))[1])
    value = mutate._ValueMaker(random.Random(0), vocab, 0.3).value({"type": "string"}, "order_id", 1, invalid=True)
    assert value.startswith("#W1") and len(value) == 9
    assert len(checked) <= 100, len(checked)  # 50 seeds, then their 50 near misses


def test_the_fast_chooser_draws_exactly_what_random_choice_draws() -> None:
    from ee_middleware.replay.policies.mutate import _chooser

    sequences = [[1], "ab", tuple(range(3)), list(range(4)), "0123456789", list(range(17)), list(range(64)), list(range(1000))]
    for seed in range(50):
        ours, reference = random.Random(seed), random.Random(seed)
        choice = _chooser(ours)
        assert [choice(s) for s in sequences * 4] == [reference.choice(s) for s in sequences * 4]
        assert [_corrupt(ours, v, choice) for v in ["#W1234567", "abc", "İstanbul", "--"] * 3] == [
            _corrupt_as_first_written(reference, v) for v in ["#W1234567", "abc", "İstanbul", "--"] * 3
        ]
        assert ours.random() == reference.random(), "the same number of draws"
    with pytest.raises(IndexError):
        _chooser(random.Random(0))([])

    class Custom(random.Random):
        def choice(self, seq):  # type: ignore[no-untyped-def]
            return seq[0]

    assert _chooser(Custom(0))([3, 4, 5]) == 3, "a subclass keeps its own choice"


CALLBACK_TOOLS = [
    function_tool(
        "book_callback",
        "Book a call back on a day.",
        {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}, "required": ["day"]},
    ),
    function_tool(
        "lookup_ticket",
        "Look a ticket up.",
        {"type": "object", "properties": {"ticket": {"type": "string"}}, "required": ["ticket"]},
    ),
]


@pytest.mark.parametrize("expert", [ToolCall(id="c", name="book_callback", arguments={"day": "2026-01-02"}), None])
def test_a_date_argument_gets_dates_where_the_conversation_shows_none(expert: ToolCall | None) -> None:
    """``day`` with ``format: date`` and no other date seen: the alternatives gave it words ("notes_35", "beta_48"),
    which the tool refuses as a validation error, unmarked; now dates (moved from the expert's, else of 2025-2026),
    only the deliberately invalid ones not."""
    expert = expert or ToolCall(id="c", name="lookup_ticket", arguments={"ticket": "T-1044"})
    state = [{"role": "user", "content": "Please call me back about ticket T-1044."}]
    days: list[tuple[str, bool]] = []
    for seed in range(40):
        proposals = MutationPolicy(invalid_share=0.15).propose(DecisionPoint("t", 0, state, CALLBACK_TOOLS, expert), 8, seed=seed)
        days += [
            (c.call.arguments["day"], c.proposer.settings.get("deliberately_invalid") == "day")
            for c in proposals.candidates
            if c.call is not None and c.call.name == "book_callback"
        ]
    valid = [day for day, broken in days if not broken]
    assert valid and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) for day in valid), sorted(set(valid))
