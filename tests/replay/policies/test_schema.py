"""Tool schemas: BFCL type normalization and human-readable validation problems."""

from __future__ import annotations

import pytest

from ee_middleware.models.parsing import canonical_call
from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.schema import ToolSchemas, normalize_schema

from .conftest import SHOP_TOOLS, function_tool, load_bfcl_tools


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(id="x", name=name, arguments=arguments)


@pytest.fixture
def shop() -> ToolSchemas:
    return ToolSchemas(SHOP_TOOLS)


def test_names_properties_required_and_param_order(shop: ToolSchemas) -> None:
    assert shop.names == ["check_stock", "order_item", "set_priority", "ship"]
    assert "ship" in shop and "nope" not in shop and len(shop) == 4
    assert shop.required("order_item") == ["item", "quantity"]
    assert list(shop.properties("order_item")) == ["item", "quantity", "note"]
    assert shop.param_order()["set_priority"] == ["order_id", "level"]
    assert shop.description("check_stock") == "How many of an item are in stock."


def test_a_valid_call_passes(shop: ToolSchemas) -> None:
    assert shop.validate(call("order_item", item="pear", quantity=5)) is None
    assert shop.validate(call("ship", order_id="A-1", address={"street": "Elm", "city": "X"}, weight_kg=2)) is None, "an int is a number"


@pytest.mark.parametrize(
    ("tool_call", "expected"),
    [
        (call("launch_rocket"), "unknown tool 'launch_rocket'; the tools offered are: check_stock, order_item, set_priority, ship"),
        (call("order_item", item="pear"), "order_item: missing required argument 'quantity'"),
        (call("order_item", item="pear", quantity="5"), "order_item: argument 'quantity': '5' is not of type 'integer'"),
        (call("order_item", item="pear", quantity=True), "order_item: argument 'quantity': True is not of type 'integer'"),
        (call("order_item", item="pear", quantity=5.0), "order_item: argument 'quantity': 5.0 is not of type 'integer'"),
        (call("order_item", item="pear", quantity=500), "order_item: argument 'quantity': 500 is greater than the maximum of 100"),
        (
            call("set_priority", order_id="A", level="urgent"),
            "set_priority: argument 'level': 'urgent' is not one of ['low', 'normal', 'high']",
        ),
        (call("check_stock", item="pear", colour="green"), "check_stock: unexpected argument(s) 'colour'; it accepts: item"),
        (call("ship", order_id="A", address={"street": "Elm"}), "ship: argument 'address': 'city' is a required property"),
    ],
)
def test_problems_are_readable(shop: ToolSchemas, tool_call: ToolCall, expected: str) -> None:
    assert shop.validate(tool_call) == expected


def test_bfcl_types_are_normalized_recursively() -> None:
    raw = {
        "type": "dict",
        "properties": {
            "price": {"type": "float"},
            "pair": {"type": "tuple", "items": [{"type": "float"}, {"type": "string"}]},
            "anything": {"type": "any"},
            "rows": {"type": "array", "items": {"type": "dict", "properties": {"type": {"type": "float"}}}},
            "meta": {"type": "dict", "additionalProperties": {"type": "float"}},
        },
    }
    normalized = normalize_schema(raw)
    props = normalized["properties"]
    assert normalized["type"] == "object"
    assert props["price"] == {"type": "number"}
    assert props["pair"] == {"type": "array", "prefixItems": [{"type": "number"}, {"type": "string"}]}
    assert props["anything"] == {}
    assert props["rows"]["items"]["properties"]["type"] == {"type": "number"}, "a property named 'type' is a property, not a keyword"
    assert props["meta"]["additionalProperties"] == {"type": "number"}
    assert raw["type"] == "dict", "the input is not modified"


def test_bfcl_schemas_validate_ints_as_floats_and_reject_bools() -> None:
    schemas = ToolSchemas(load_bfcl_tools("math_api.json"))
    assert schemas.validate(call("add", a=1, b=2.5)) is None
    assert "is not of type 'number'" in (schemas.validate(call("add", a=True, b=2.5)) or "")
    assert schemas.validate(call("mean", numbers=[1, 2.5])) is None
    assert "is not of type 'number'" in (schemas.validate(call("mean", numbers=[1, "2"])) or "")


def test_every_bfcl_multi_turn_schema_compiles() -> None:
    from .conftest import bfcl_func_doc_dir

    folder = bfcl_func_doc_dir()
    if folder is None:
        pytest.skip("bfcl-eval is not installed")
    for path in sorted(folder.glob("*.json")):
        schemas = ToolSchemas(load_bfcl_tools(path.name))
        for name in schemas.names:
            # an empty call is either fine or missing something, never an invalid-schema crash
            problem = schemas.validate(call(name))
            assert problem is None or "missing required argument" in problem, (path.name, name, problem)


def test_malformed_tools_are_skipped_and_bare_function_docs_accepted() -> None:
    schemas = ToolSchemas(
        [
            {"type": "function", "function": {"description": "no name"}},
            "not a tool",  # type: ignore[list-item]
            {"name": "bare", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
            function_tool("no_params", "", None),  # type: ignore[arg-type]
        ]
    )
    assert schemas.names == ["bare", "no_params"]
    assert schemas.validate(call("bare", x=1)) is None
    assert schemas.validate(call("no_params", anything=1)) is None


def test_a_schema_that_is_itself_invalid_still_checks_required_arguments(caplog: pytest.LogCaptureFixture) -> None:
    """And says so, once, naming the tool and what is wrong (was silent: a sweep's broken regex, unknown type,
    properties given as a list, proposals checked against nothing but the required names)."""
    schemas = ToolSchemas([function_tool("odd", "", {"type": "object", "properties": {"x": {"type": 5}}, "required": ["x"]})])
    with caplog.at_level("WARNING", logger="ee_middleware.replay"):
        assert schemas.validate(call("odd")) == "odd: missing required argument 'x'"
        assert schemas.validate(call("odd", x="whatever")) is None
    [warned] = [r.getMessage() for r in caplog.records if r.name == "ee_middleware.replay"]
    assert "the parameters of tool 'odd' are not a valid JSON Schema 2020-12" in warned and "(at properties/x/type)" in warned
    assert "checked for their required arguments only" in warned


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({"type": "object", "properties": {"s": {"type": "string", "pattern": "([a-z"}}}, "is not a 'regex'"),
        ({"type": "object", "properties": ["a", "b"]}, "is not of type 'object' (at properties)"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": "a"}, "is not of type 'array' (at required)"),
    ],
)
def test_each_broken_schema_is_named_with_its_problem(parameters: dict, problem: str, caplog: pytest.LogCaptureFixture) -> None:
    schemas = ToolSchemas([function_tool("broken", "", parameters)])
    with caplog.at_level("WARNING", logger="ee_middleware.replay"):
        schemas.accepts("broken", {})
    assert any(problem in r.getMessage() and "'broken'" in r.getMessage() for r in caplog.records), caplog.text


def test_a_valid_schema_warns_nothing(caplog: pytest.LogCaptureFixture) -> None:
    schemas = ToolSchemas(SHOP_TOOLS)
    with caplog.at_level("WARNING", logger="ee_middleware.replay"):
        for name in schemas.names:
            schemas.accepts(name, {})
    assert not caplog.records


def test_canonical_call_ignores_key_order() -> None:
    assert canonical_call("f", {"a": 1, "b": [1, 2]}) == canonical_call("f", {"b": [1, 2], "a": 1})
    assert canonical_call("f", {"a": 1}) != canonical_call("g", {"a": 1})


def test_tool_lists_with_the_same_content_share_their_schemas_and_others_do_not() -> None:
    import copy

    from ee_middleware.replay.policies.schema import tool_schemas_for

    tools = [
        {"type": "function", "function": {"name": "pick", "parameters": {"type": "object", "properties": {"a": {"enum": [1]}, "b": {}}}}}
    ]
    schemas = tool_schemas_for(tools)
    assert tool_schemas_for(tools) is schemas and tool_schemas_for(copy.deepcopy(tools)) is schemas
    as_true = copy.deepcopy(tools)
    as_true[0]["function"]["parameters"]["properties"]["a"]["enum"] = [True]  # == [1], but another value to draw
    reordered = copy.deepcopy(tools)
    properties = reordered[0]["function"]["parameters"]["properties"]
    reordered[0]["function"]["parameters"]["properties"] = {"b": properties["b"], "a": properties["a"]}  # == as a dict
    for other in (as_true, reordered):
        assert other == tools and tool_schemas_for(other) is not schemas
    assert list(tool_schemas_for(reordered).properties("pick")) == ["b", "a"]
    assert tool_schemas_for(as_true).properties("pick")["a"]["enum"] == [True]
