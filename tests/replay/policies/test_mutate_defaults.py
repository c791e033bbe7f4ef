"""The mutation policy compares calls as the tool receives them: an argument at its schema default is the argument left out.

Tools with optional arguments (a LangChain ``@tool`` signature with defaults, BFCL's function docs) declare a
``default`` per optional argument; a candidate that writes one out at that value (``{"order_id": "O-1", "fields":
null}``) is the same call as the one that leaves it out, so it is neither proposed as an alternative to the expert's
call nor kept next to another alternative it equals.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.policies.schema import ToolSchemas

from .conftest import BFCL_FILE_STATE, function_tool, load_bfcl_tools


@tool
def get_order(order_id: str, fields: list[str] | None = None, verbose: bool = False, limit: int = 10) -> dict:
    """Get one order."""
    return {"order_id": order_id, "fields": fields, "verbose": verbose, "limit": limit}


@tool
def list_orders() -> list:
    """List orders."""
    return []


class Line(BaseModel):
    sku: str
    qty: int = 1
    gift: bool = False


@tool
def place_order(customer: str, line: Line, note: str | None = None) -> str:
    """Place an order for one line."""
    return f"{customer}: {line.qty} x {line.sku}"


ORDER_STATE = [
    {"role": "user", "content": "Show order O-1 for ann, then order 2 of SKU-001 for bob."},
    {"role": "assistant", "content": "", "tool_calls": []},
]


def received(langchain_tool: Any, arguments: dict[str, Any]) -> str:
    """The arguments as the LangChain tool's function receives them (its own pydantic schema fills in the defaults)."""
    return langchain_tool.args_schema.model_validate(arguments).model_dump_json()


def proposals(
    expert: ToolCall, tools: list[dict[str, Any]], seeds: range, k: int = 8, state: list[dict[str, Any]] = ORDER_STATE
) -> list[list[ToolCall]]:
    policy = MutationPolicy()
    return [
        [c.call for c in policy.propose(DecisionPoint(f"t{seed}", 0, list(state), tools, expert), k, seed=seed).candidates]
        for seed in seeds
    ]


def test_get_order_expert_call_with_a_default_written_out_is_never_proposed() -> None:
    """LangChain's schema of ``get_order`` declares ``fields``, ``verbose`` and ``limit`` with defaults; before the fix
    76 of 400 candidates over 50 states were ``get_order({"order_id": "O-1", "fields": None})`` and the like."""
    tools = [convert_to_openai_tool(t) for t in (get_order, list_orders)]
    schemas = ToolSchemas(tools)
    for expert_arguments in ({"order_id": "O-1"}, {"order_id": "O-1", "verbose": False}, {"order_id": "O-1", "limit": 10}):
        expert = ToolCall(id="e", name="get_order", arguments=expert_arguments)
        expert_received = received(get_order, expert_arguments)
        for calls in proposals(expert, tools, range(50)):
            same_tool = [received(get_order, c.arguments) for c in calls if c.name == "get_order"]
            assert expert_received not in same_tool, (expert_arguments, [c.arguments for c in calls])
            assert len(set(same_tool)) == len(same_tool), "two alternatives the tool receives alike"
            assert all(schemas.validate(c) is None for c in calls)


def test_nested_model_defaults_are_compared_as_the_tool_receives_them() -> None:
    """``place_order``'s ``line`` is a pydantic model (``$defs`` + ``$ref``) whose ``qty`` and ``gift`` have defaults."""
    tools = [convert_to_openai_tool(place_order), convert_to_openai_tool(list_orders)]
    expert = ToolCall(id="e", name="place_order", arguments={"customer": "bob", "line": {"sku": "SKU-001", "qty": 1}})
    expert_received = received(place_order, expert.arguments)
    same_tool_seen = 0
    for calls in proposals(expert, tools, range(40)):
        same_tool = [received(place_order, c.arguments) for c in calls if c.name == "place_order"]
        same_tool_seen += len(same_tool)
        assert expert_received not in same_tool
        assert len(set(same_tool)) == len(same_tool)
    assert same_tool_seen > 40, "the expert's call is perturbed"


def test_bfcl_find_with_its_default_path_is_not_proposed_without_it() -> None:
    """BFCL's ``find`` declares ``path`` with default ``"."``: dropping it from the expert's ``find(path=".", name=...)``
    is the expert's call again (the golden BFCL replay proposed it)."""
    expert = ToolCall(id="b2", name="find", arguments={"path": ".", "name": "notes"})
    tools = load_bfcl_tools("gorilla_file_system.json")
    policy = MutationPolicy()
    for seed in range(30):
        point = DecisionPoint("traj-bfcl", 1, list(BFCL_FILE_STATE), tools, expert)
        calls = [c.call for c in policy.propose(point, 8, seed=seed).candidates]
        assert {"name": "notes"} not in [c.arguments for c in calls if c.name == "find"]
        ls_calls = [c.arguments for c in calls if c.name == "ls"]
        assert not ({} in ls_calls and {"a": False} in ls_calls), "ls() and ls(a=False) are one call"


def default_plan(default: Any) -> Any:
    parameters = {"type": "object", "properties": {"x": {"default": default}, "y": {"type": "string"}}, "required": ["y"]}
    schemas = ToolSchemas([function_tool("f", "d", parameters)])
    plan = schemas.defaults("f")
    assert plan is not None
    return schemas, plan


@pytest.mark.parametrize(
    ("default", "other"),
    [(None, "null"), (False, 0), (0, False), (1, True), (True, 1.0), (1, "1"), ("", []), ([], {}), ({"a": 1}, {"a": True})],
)
def test_a_value_of_another_type_than_the_default_is_a_different_call(default: Any, other: Any) -> None:
    """``0`` is not ``False``, ``"1"`` is not ``1`` and ``[]`` is not ``{}``: only the very default counts as the argument
    left out."""
    schemas, plan = default_plan(default)
    assert plan.strip({"y": "a", "x": default}) == {"y": "a"}
    assert plan.strip({"y": "a", "x": other}) == {"y": "a", "x": other}
    assert plan.is_default("x", default) and not plan.is_default("x", other)
    assert schemas.call_key("f", {"y": "a", "x": other}) != schemas.call_key("f", {"y": "a"})


@pytest.mark.parametrize(("default", "same"), [(30, 30.0), (0.0, 0), (-0.0, 0), ([1, 2.5], [1.0, 2.5]), ({"a": 1}, {"a": 1.0})])
def test_a_number_equal_to_the_default_is_the_default_whatever_its_type(default: Any, same: Any) -> None:
    """JSON has one number type: ``timeout: float = 30`` is written ``"default": 30`` and a tool receives ``30.0`` as the
    same 30. Before the fix (numbers compared by type) ``30.0`` was kept as a different call."""
    schemas, plan = default_plan(default)
    assert plan.strip({"y": "a", "x": same}) == {"y": "a"}
    assert plan.is_default("x", same)
    assert schemas.call_key("f", {"y": "a", "x": same}) == schemas.call_key("f", {"y": "a"})


def test_calls_that_differ_only_by_how_a_number_is_written_are_one_call() -> None:
    schemas = ToolSchemas([function_tool("f", "d", {"type": "object", "properties": {"x": {"type": "number"}, "y": {}}})])
    assert schemas.call_key("f", {"x": 3, "y": [2, {"z": 1}]}) == schemas.call_key("f", {"x": 3.0, "y": [2.0, {"z": 1.0}]})
    assert schemas.call_key("f", {"x": 3}) != schemas.call_key("f", {"x": 3.5})
    assert schemas.call_key("f", {"y": 1}) != schemas.call_key("f", {"y": True})


@tool
def search(q: str, timeout: float = 30, min_score: float = 0) -> list:
    """Search documents."""
    return []


@tool
def page(q: str, offset: float = 0.0) -> list:
    """Page through results."""
    return []


@pytest.mark.parametrize(
    ("langchain_tool", "expert_arguments"),
    [(search, {"q": "cats"}), (page, {"q": "cats", "offset": 0})],
    ids=["int-default-float-value", "float-default-int-value"],
)
def test_a_float_default_written_as_an_int_and_the_other_way_round_is_never_the_experts_call_again(
    langchain_tool: Any, expert_arguments: dict[str, Any]
) -> None:
    """LangChain writes ``timeout: float = 30`` as ``"default": 30`` and the policy makes floats (``30.0``); a model writes
    ``offset=0`` for ``offset: float = 0.0``. Before the fix 29 and 49 of 400 candidates were the expert's call as the
    tool receives it."""
    tools = [convert_to_openai_tool(t) for t in (langchain_tool, list_orders)]
    expert = ToolCall(id="e", name=langchain_tool.name, arguments=expert_arguments)
    expert_received = received(langchain_tool, expert_arguments)
    perturbed = 0
    state = [{"role": "user", "content": "search cats, timeout 30 seconds, min score 0"}, {"role": "assistant", "content": ""}]
    for calls in proposals(expert, tools, range(50), state=state):
        same_tool = [received(langchain_tool, c.arguments) for c in calls if c.name == langchain_tool.name]
        perturbed += len(same_tool)
        assert expert_received not in same_tool, [c.arguments for c in calls]
        assert len(set(same_tool)) == len(same_tool), "two alternatives the tool receives alike"
    assert perturbed > 100
