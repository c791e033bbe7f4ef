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


def proposals(expert: ToolCall, tools: list[dict[str, Any]], seeds: range, k: int = 8) -> list[list[ToolCall]]:
    policy = MutationPolicy()
    return [
        [c.call for c in policy.propose(DecisionPoint(f"t{seed}", 0, list(ORDER_STATE), tools, expert), k, seed=seed).candidates]
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


@pytest.mark.parametrize(
    ("default", "other"), [(None, "null"), (False, 0), (0, False), (1, 1.0), ("", []), ([], {}), ({"a": 1}, {"a": True})]
)
def test_a_value_of_another_type_than_the_default_is_a_different_call(default: Any, other: Any) -> None:
    """``0`` is not ``False`` and ``[]`` is not ``{}``: only the very default counts as the argument left out."""
    from ee_middleware.replay.policies.mutate import _memo_defaults

    parameters = {"type": "object", "properties": {"x": {"default": default}, "y": {"type": "string"}}, "required": ["y"]}
    plan = _memo_defaults(ToolSchemas([function_tool("f", "d", parameters)]))["f"]
    assert plan.strip({"y": "a", "x": default}) == {"y": "a"}
    assert plan.strip({"y": "a", "x": other}) == {"y": "a", "x": other}
    assert plan.is_default("x", default) and not plan.is_default("x", other)
