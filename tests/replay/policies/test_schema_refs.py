"""resolve_schema: local ``$ref`` s inlined and ``allOf`` merged once per tool schema, for generating values."""

from __future__ import annotations

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
