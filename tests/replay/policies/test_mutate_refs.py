"""The mutation policy generates values for schemas with ``$ref`` into ``$defs``/``definitions``, ``allOf`` and
``multipleOf``: pydantic's JSON schema of nested models, as MCP servers and OpenAPI specs supply it and LangChain
records it unchanged when a tool is bound as an OpenAI-format dict."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.policies.schema import ToolSchemas

from .conftest import function_tool


class Line(BaseModel):
    sku: str
    qty: int = Field(ge=1)


class Order(BaseModel):
    """Place an order."""

    customer: str
    line: Line


class Node(BaseModel):
    name: str
    children: list[Node] = []


class Tree(BaseModel):
    """Store a tree."""

    root: Node


LOOKUP = function_tool("lookup", "Look up.", {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
STATE = [{"role": "user", "content": "order 2 of SKU-001 for bob, and also SKU-002 for ann; 42 of them"}]


def pydantic_tool(model: type[BaseModel], name: str) -> dict[str, Any]:
    """An OpenAI-format tool whose parameters are pydantic's JSON schema of ``model`` (``$defs`` and ``$ref``, as is)."""
    tool = function_tool(name, model.__doc__ or name, model.model_json_schema())
    assert convert_to_openai_tool(tool) == tool, "LangChain keeps an OpenAI-format dict tool as it is"
    return tool


def propose(tools: list[dict[str, Any]], expert: ToolCall, k: int = 8, seed: int = 1) -> list[ToolCall]:
    return [c.call for c in MutationPolicy().propose(DecisionPoint("t", 0, list(STATE), tools, expert), k, seed=seed).candidates]


def assert_valid(tool: dict[str, Any], calls: list[ToolCall]) -> None:
    validator = jsonschema.Draft202012Validator(tool["function"]["parameters"])
    for call in calls:
        if call.name == tool["function"]["name"]:
            validator.validate(call.arguments)


def test_a_tool_whose_required_argument_is_a_ref_to_a_nested_model_is_proposed() -> None:
    """Before the fix: 1 candidate, none of them ``place_order`` (a ``$ref`` read as a string); inlined, 8 with 7."""
    place_order = pydantic_tool(Order, "place_order")
    assert "$ref" in json.dumps(place_order)
    calls = propose([place_order, LOOKUP], ToolCall(id="e", name="lookup", arguments={"q": "SKU-001"}))
    assert len(calls) == 8
    assert sum(c.name == "place_order" for c in calls) >= 4
    assert_valid(place_order, calls)
    assert all(isinstance(c.arguments["line"], dict) and c.arguments["line"]["qty"] >= 1 for c in calls if c.name == "place_order")


def test_the_experts_ref_argument_is_perturbed() -> None:
    place_order = pydantic_tool(Order, "place_order")
    expert = ToolCall(id="e", name="place_order", arguments={"customer": "bob", "line": {"sku": "SKU-001", "qty": 2}})
    calls = propose([place_order, LOOKUP], expert)
    same = [c for c in calls if c.name == "place_order"]
    assert len(calls) == 8 and len(same) >= 3
    assert_valid(place_order, calls)
    assert any(c.arguments["line"] != expert.arguments["line"] for c in same), "the nested model's value changes too"


def test_a_recursive_model_gives_valid_candidates_without_following_its_refs_forever() -> None:
    store_tree = pydantic_tool(Tree, "store_tree")
    expert = ToolCall(id="e", name="store_tree", arguments={"root": {"name": "a", "children": [{"name": "b"}]}})
    for seed in range(10):
        calls = propose([store_tree, LOOKUP], expert, seed=seed)
        assert len(calls) == 8
        assert_valid(store_tree, calls)
    assert any(c.name == "store_tree" for c in calls)


def test_pydantic_v1_style_all_of_ref_and_draft_4_definitions() -> None:
    """Pydantic v1 (and many OpenAPI generators) wrap a ref in ``allOf`` to give it a description, under ``definitions``."""
    parameters = {
        "type": "object",
        "definitions": {"Line": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}, "required": ["sku", "qty"]}},
        "properties": {
            "customer": {"type": "string"},
            "line": {"allOf": [{"$ref": "#/definitions/Line"}], "description": "The order line."},
            "count": {"allOf": [{"type": "integer", "minimum": 3}, {"maximum": 9}]},
        },
        "required": ["customer", "line", "count"],
    }  # fmt: skip
    place_order = function_tool("place_order", "Place an order.", parameters)
    calls = propose([place_order, LOOKUP], ToolCall(id="e", name="lookup", arguments={"q": "SKU-001"}))
    placed = [c for c in calls if c.name == "place_order"]
    assert len(calls) == 8 and len(placed) >= 4
    assert_valid(place_order, calls)
    assert all(3 <= c.arguments["count"] <= 9 for c in placed)


@pytest.mark.parametrize(
    ("name", "kind", "step", "expert_value", "at_least"),
    [
        ("limit", "integer", 25, 50, 1),
        ("n", "integer", 7, 14, 2),
        ("precision", "number", 0.5, 1.5, 4),
        ("amount", "number", 0.01, 0.07, 3),
    ],
)
def test_multiple_of_is_respected(name: str, kind: str, step: float, expert_value: float, at_least: int) -> None:
    """Values are moved to a multiple within the bounds. Before the fix a small count (``limit``, drawn from 0-20) with
    ``multipleOf: 25`` never got a valid value: 0 alternatives perturbed the expert's, at every seed."""
    parameters = {"type": "object", "properties": {name: {"type": kind, "multipleOf": step, "minimum": 1}}, "required": [name]}
    tool = function_tool("f", "Do it.", parameters)
    schemas = ToolSchemas([tool, LOOKUP])
    for seed in range(10):
        calls = propose([tool, LOOKUP], ToolCall(id="e", name="f", arguments={name: expert_value}), seed=seed)
        assert all(schemas.validate(c) is None for c in calls)
        assert sum(c.name == "f" for c in calls) >= at_least, [c.arguments for c in calls]


def test_a_remote_ref_is_left_out_of_the_values_made() -> None:
    """A ``$ref`` that names nothing in the schema (a remote one) gets no made-up value; the tool's other arguments do."""
    parameters = {
        "type": "object",
        "properties": {"q": {"type": "string"}, "extra": {"$ref": "https://example.com/schemas/extra.json"}},
        "required": ["q"],
    }
    search = function_tool("search", "Search.", parameters)
    calls = propose([search, LOOKUP], ToolCall(id="e", name="lookup", arguments={"q": "SKU-001"}), seed=3)
    assert any(c.name == "search" for c in calls)
    assert all("extra" not in c.arguments for c in calls)


def test_an_all_of_member_adding_properties_to_the_top_level_ones_gives_alternatives() -> None:
    """An OpenAPI-style body (own ``properties`` plus an ``allOf`` ``$ref`` adding a required ``limit``). Before the fix
    0 of 80 candidates over 10 seeds perturbed the expert's ``list_items``: each was 'unexpected argument(s) 'limit''."""
    parameters = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "allOf": [{"$ref": "#/$defs/Paging"}],
        "required": ["name"],
        "$defs": {"Paging": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}}, "required": ["limit"]}},
    }  # fmt: skip
    list_items = function_tool("list_items", "List items.", parameters)
    expert = ToolCall(id="e", name="list_items", arguments={"name": "books", "limit": 10})
    perturbed = 0
    for seed in range(10):
        calls = propose([list_items, LOOKUP], expert, seed=seed)
        assert_valid(list_items, calls)
        perturbed += sum(c.name == "list_items" for c in calls)
    assert perturbed >= 20


def test_a_remote_ref_the_expert_set_leaves_other_alternatives_not_a_policy_error() -> None:
    """The expert sets ``extra``, whose schema is a remote ``$ref``: calls keeping it cannot be checked (jsonschema
    fetches nothing). Before the fix validation raised ``Unresolvable`` and the state ended as ``policy_error`` with no
    alternative; now such calls are failed tries, and the state keeps the alternatives that do not set it (the expert's
    call without ``extra``, another tool)."""
    from ee_middleware.replay.policies.proposer import Proposer

    parameters = {
        "type": "object",
        "properties": {"q": {"type": "string"}, "extra": {"$ref": "https://example.invalid/x.json"}},
        "required": ["q"],
    }
    search = function_tool("search", "Search.", parameters)
    expert = ToolCall(id="e", name="search", arguments={"q": "cats", "extra": {"a": 1}})
    point = DecisionPoint("t", 0, list(STATE), [search, LOOKUP], expert)
    result = Proposer(MutationPolicy(), k=8).propose(point, seed=1)
    assert "policy_error" not in result.counts and "policy_error" not in result.refill_counts
    calls = [(c.call.name, c.call.arguments) for c in result.accepted if c.call]
    assert ("search", {"q": "cats"}) in calls and any(name == "lookup" for name, _ in calls)
    assert all("extra" not in arguments for _, arguments in calls)


@pytest.mark.parametrize(("kind", "step"), [("integer", 1.5), ("integer", 2.5), ("integer", 0.3), ("number", 0.07), ("number", 0.17)])
def test_multiple_of_a_decimal_step_gives_values_a_validator_takes(kind: str, step: float) -> None:
    """Before the fix an integer with ``multipleOf: 1.5`` got 7.5 truncated to 7 (never valid), and for ``0.07`` about
    one value in five had no neighbour that jsonschema's ``value / step`` divides exactly and stayed invalid."""
    from ee_middleware.replay.policies.mutate import _multiple

    validator = jsonschema.Draft202012Validator({"type": kind, "multipleOf": step})
    for value in range(200):
        made = _multiple(value if kind == "integer" else value * 0.37, step, float("-inf"), float("inf"), integer=kind == "integer")
        assert validator.is_valid(made), (value, made)
        assert abs(made - value * (1 if kind == "integer" else 0.37)) <= 20 * step * (2 if kind == "integer" else 1)


@pytest.mark.parametrize(("kind", "steps"), [("number", (0.2, 0.3)), ("number", (0.07, 0.05)), ("integer", (1.5, 2))])
def test_all_of_decimal_steps_give_values_that_are_multiples_of_both(kind: str, steps: tuple[float, float]) -> None:
    """Before the fix ``allOf`` steps 0.2 and 0.3 merged to 0.3, whose multiples are mostly not multiples of 0.2."""
    parameters = {
        "type": "object",
        "properties": {"amount": {"type": kind, "minimum": 1, "allOf": [{"multipleOf": steps[0]}, {"multipleOf": steps[1]}]}},
        "required": ["amount"],
    }
    tool = function_tool("pay", "Pay an amount.", parameters)
    expert = ToolCall(id="e", name="pay", arguments={"amount": 6})
    paid = 0
    for seed in range(10):
        calls = propose([tool, LOOKUP], expert, seed=seed)
        assert_valid(tool, calls)
        paid += sum(c.name == "pay" for c in calls)
    assert paid >= 20
