"""resolve_schema: local ``$ref`` s inlined and ``allOf`` merged once per tool schema, for generating values."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from ee_middleware.replay.policies.schema import ToolSchemas, resolve_schema

from .conftest import SHOP_TOOLS, function_tool


class Line(BaseModel):
    sku: str
    qty: int = 1


class Order(BaseModel):
    customer: str
    lines: list[Line]
    gift: Line | None = None


def test_pydantic_defs_are_inlined_with_their_siblings() -> None:
    resolved = resolve_schema(Order.model_json_schema())
    assert "$defs" not in resolved
    line = {"properties": {"sku": {"title": "Sku", "type": "string"}, "qty": {"default": 1, "title": "Qty", "type": "integer"}}}
    assert resolved["properties"]["lines"]["items"]["properties"] == line["properties"]
    assert resolved["properties"]["lines"]["items"]["required"] == ["sku"]
    gift = resolved["properties"]["gift"]
    assert gift["default"] is None and gift["anyOf"][0]["properties"] == line["properties"] and gift["anyOf"][1] == {"type": "null"}


def test_a_schema_without_refs_or_all_of_is_returned_as_it_is() -> None:
    schema = SHOP_TOOLS[3]["function"]["parameters"]
    assert resolve_schema(schema) is schema


def test_pointers_definitions_and_escapes() -> None:
    schema = {
        "definitions": {"a/b": {"type": "integer"}, "t~x": {"type": "boolean"}},
        "$defs": {"Root": {"type": "object", "properties": {"n": {"$ref": "#/definitions/a~1b"}, "f": {"$ref": "#/definitions/t~0x"}}}},
        "$ref": "#/$defs/Root",
        "description": "the arguments",
    }
    resolved = resolve_schema(schema)
    assert resolved == {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "f": {"type": "boolean"}},
        "description": "the arguments",
    }


def test_recursive_refs_are_followed_to_a_bound_then_left() -> None:
    schema = {
        "$defs": {"Node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
        "$ref": "#/$defs/Node",
    }
    node = resolve_schema(schema)
    depth = 0
    while "$ref" not in node:
        node = node["properties"]["kids"]["items"]
        depth += 1
    assert depth == 8 and node == {"$ref": "#/$defs/Node"}


def test_unresolvable_refs_are_left_as_they_are() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}, "b": {"$ref": "other.json#/x"}}}
    resolved = resolve_schema(schema)
    assert resolved["properties"] == {"a": {"$ref": "#/$defs/Missing"}, "b": {"$ref": "other.json#/x"}}


def test_all_of_merges_properties_required_types_enums_and_bounds() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 10}}, "required": ["a"]},
            {"properties": {"a": {"minimum": 2, "multipleOf": 2}, "b": {"enum": ["x", "y", "z"]}}, "required": ["b"]},
            {"properties": {"a": {"maximum": 8, "multipleOf": 3}, "b": {"enum": ["y", "z", "w"], "type": ["string", "null"]}}},
        ],
        "properties": {"b": {"type": "string"}},
    }
    resolved = resolve_schema(schema)
    assert resolved["required"] == ["a", "b"]
    assert resolved["properties"]["a"] == {"type": "integer", "minimum": 2, "maximum": 8, "multipleOf": 6}
    assert resolved["properties"]["b"] == {"enum": ["y", "z"], "type": "string"}


def test_tool_schemas_resolve_once_and_validate_against_the_schema_as_offered() -> None:
    tool = function_tool("place", "Place an order.", Order.model_json_schema())
    schemas = ToolSchemas([tool])
    assert schemas.resolved("place") is schemas.resolved("place")
    assert "$ref" in str(schemas.parameters("place"))
    props, required = schemas.arguments_of("place")
    assert list(props) == ["customer", "lines", "gift"] and required == {"customer", "lines"}
    assert schemas.check("place", {"customer": "bob", "lines": [{"sku": "A"}]}) is None
    assert schemas.check("place", {"customer": "bob", "lines": [{"qty": 2}]}) == "place: argument 'lines'[0]: 'sku' is a required property"


PAGED = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "allOf": [{"$ref": "#/$defs/Paging"}],
    "required": ["name"],
    "$defs": {
        "Paging": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}}, "required": ["limit"]}
    },
}


def test_properties_an_all_of_member_adds_are_the_tools_arguments() -> None:
    """An OpenAPI-style body: its own ``properties`` plus an ``allOf`` member adding ``limit``. Before the fix every call
    setting ``limit`` (the expert's valid one too) was 'unexpected argument(s) 'limit'; it accepts: name'."""
    schemas = ToolSchemas([function_tool("list_items", "List items.", PAGED)])
    assert schemas.check("list_items", {"name": "books", "limit": 10}) is None
    assert schemas.check("list_items", {"name": "books"}) == "list_items: missing required argument 'limit'"
    assert schemas.check("list_items", {"name": "books", "limit": 10, "page": 2}) == (
        "list_items: unexpected argument(s) 'page'; it accepts: limit, name"
    )
    assert schemas.check("list_items", {"name": "books", "limit": 0}) == "list_items: argument 'limit': 0 is less than the minimum of 1"


def test_a_remote_ref_the_arguments_reach_is_a_problem_named_not_an_exception() -> None:
    """jsonschema cannot resolve a remote ``$ref`` (it fetches nothing): before the fix ``check`` raised ``Unresolvable``
    for any call setting the argument it describes, and the mutation policy's state ended as a ``policy_error``."""
    parameters = {"type": "object", "properties": {"q": {"type": "string"}, "extra": {"$ref": "https://example.invalid/extra.json"}}}
    schemas = ToolSchemas([function_tool("search", "Search.", parameters)])
    assert schemas.check("search", {"q": "cats"}) is None
    problem = schemas.check("search", {"q": "cats", "extra": {"a": 1}})
    assert problem is not None and problem.startswith("search: its schema refers to 'https://example.invalid/extra.json', which cannot")
    assert "$defs" in problem
    assert not schemas.accepts("search", {"q": "cats", "extra": {"a": 1}})


@pytest.mark.parametrize(
    ("steps", "merged", "kept"),
    [((2, 3), 6, None), ((0.2, 0.3), 0.6, [0.2, 0.3]), ((0.25, 0.1), 0.5, [0.25, 0.1]), ((1.5, 2), 6, [1.5, 2])],
)
def test_all_of_multiple_of_is_the_least_common_multiple(steps: tuple[float, float], merged: float, kept: list[float] | None) -> None:
    """Before the fix two float steps merged to the larger (0.2 and 0.3 gave 0.3, no multiple of 0.2); float steps stay
    checked too, as a validator divides in floating point (``1.8 / 0.2`` is not a whole number)."""
    resolved = resolve_schema({"type": "number", "allOf": [{"multipleOf": steps[0]}, {"multipleOf": steps[1]}]})
    assert resolved["multipleOf"] == merged
    assert [m["multipleOf"] for m in resolved.get("allOf", [])] == (kept or [])


def test_all_of_multiple_of_without_a_short_decimal_keeps_both() -> None:
    resolved = resolve_schema({"type": "number", "allOf": [{"multipleOf": 1 / 3}, {"multipleOf": 0.5}]})
    assert resolved["multipleOf"] == 0.5 and resolved["allOf"] == [{"multipleOf": 1 / 3}]
