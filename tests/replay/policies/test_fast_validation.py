"""The Rust validator (jsonschema_rs) gives exactly jsonschema's verdicts wherever ToolSchemas uses it.

``ToolSchemas.check`` asks jsonschema_rs first and lets jsonschema decide (and word the problem)
whenever it does not accept a call, for schemas with the keywords both read alike and arguments of
plain JSON types. These tests compare both validators, verdict by verdict, on every BFCL
multi-turn tool schema with the mutation policy's own candidates (deliberately invalid ones
included) and broken variants of them, and on hand-made edge cases; and they check that
``check`` returns the very same text with and without the fast path.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import pytest

from ee_middleware.models.parsing import canonical_json
from ee_middleware.records import ToolCall
from ee_middleware.replay.policies import schema as schema_module
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.policies.schema import ToolSchemas, _describe_error, _fast_validator, _plain_json, _strict_validator_class

from .conftest import bfcl_func_doc_dir, function_tool

pytest.importorskip("jsonschema_rs", reason="the fast validator is the [fast] extra (installed with [dev])")

_STATE = [
    {
        "role": "user",
        "content": "Please help with account 4021 and card 7723, 2.5 units of NVDA at 18.75, route SFO to LAX on 2024-11-15, "
        "user alice@example.com, ticket 3, file notes.txt in folder temp, tweet 12 by john_doe.",
    }
]
# Values of every JSON type and the ones the validators could read differently.
_PROBES: list[Any] = [
    0, 1, -1, 7, 2**40, 2**63, -(2**63) - 1, 2**70, 3.0, -0.0, 2.5, 1e300, float("inf"), float("nan"), True, False, None,
    "", "x", "temp", "\u0661\u0662", "é" * 3, [], [1, 2], ["a", "b"], [1.0], [[1], [2]], (1, 2), {}, {"a": 1}, {"k": [1, "x"]},
]  # fmt: skip


def _reference(schema: dict[str, Any], arguments: Any) -> bool:
    """jsonschema's verdict, with the validator ToolSchemas used before jsonschema_rs (the schema checked first)."""
    return _describe_error("t", _reference_validator(canonical_json(schema)), arguments) is None


@functools.cache
def _reference_validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    jsonschema.Draft202012Validator.check_schema(schema)
    return _strict_validator_class()(schema)


def _variants(arguments: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate itself, each argument replaced by every probe, each argument dropped, and one unexpected argument added."""
    out = [dict(arguments)]
    props = schema.get("properties", {})
    for key in [*arguments, *props]:
        for probe in _PROBES:
            out.append({**arguments, key: probe})
        if key in arguments:
            out.append({k: v for k, v in arguments.items() if k != key})
        value = arguments.get(key)
        if isinstance(value, list):
            out.append({**arguments, key: [*value, *_PROBES[:3]]})
            out.append({**arguments, key: [[v] for v in value]})
    out.append({**arguments, "unexpected_argument": 1})
    return out


def _bfcl_tool_sets() -> list[tuple[str, list[dict[str, Any]]]]:
    folder = bfcl_func_doc_dir()
    if folder is None:
        pytest.skip("bfcl-eval is not installed")
    sets = []
    for path in sorted(folder.glob("*.json")):
        docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        sets.append((path.name, [function_tool(d["name"], d["description"], d["parameters"]) for d in docs]))
    assert len(sets) >= 8
    return sets


def _compare(schemas: ToolSchemas, name: str, arguments: dict[str, Any], counts: dict[str, int]) -> None:
    schema = schemas.parameters(name)
    fast = _fast_validator(canonical_json(schema))
    if fast is not None and _plain_json(arguments, 0, fast[1]):
        try:
            verdict = fast[0].is_valid(arguments)
        except Exception:
            verdict = None
        if verdict is not None:
            assert verdict == _reference(schema, arguments), (name, arguments, schema)
            counts["valid" if verdict else "invalid"] += 1
    else:
        counts["not_fast"] += 1


@pytest.mark.heavy  # every BFCL schema and thousands of candidates through both validators: about a minute
def test_every_bfcl_schema_and_mutation_candidate_gets_jsonschemas_verdict() -> None:
    counts = {"valid": 0, "invalid": 0, "not_fast": 0}
    fast_schemas = 0
    for _file, tools in _bfcl_tool_sets():
        schemas = ToolSchemas(tools)
        fast_schemas += sum(_fast_validator(canonical_json(schemas.parameters(n))) is not None for n in schemas.names)
        for name in schemas.names:
            only = [t for t in tools if t["function"]["name"] == name]
            for seed in range(3):
                first = MutationPolicy().propose(DecisionPoint("t", 0, _STATE, only, ToolCall(id="e", name="none")), 1, seed=seed)
                expert = first.candidates[0].call if first.candidates else ToolCall(id="e", name=name, arguments={})
                point = DecisionPoint(f"t{seed}", seed, _STATE, tools, expert)
                proposals = MutationPolicy(invalid_share=0.5).propose(point, 8, seed=seed).candidates
                for call in [expert, *(c.call for c in proposals if c.call is not None)]:
                    for arguments in _variants(call.arguments, schemas.parameters(call.name)):
                        _compare(schemas, call.name, arguments, counts)
    assert fast_schemas >= 150, "nearly every BFCL tool schema takes the fast path"
    assert counts["valid"] > 2000 and counts["invalid"] > 20000, counts


@pytest.mark.parametrize(
    ("schema", "values"),
    [
        ({"type": "integer"}, [3, 3.0, -0.0, 3.5, True, False, 2**63 - 1, 2**70, "3", None]),
        ({"type": "number", "minimum": 0, "exclusiveMaximum": 10}, [0, 0.0, -0.01, 9.99, 10, 10.0, True, float("inf"), "1"]),
        ({"type": "boolean"}, [True, False, 0, 1, "true", None]),
        ({"enum": [1, "a", None, [1, 2], {"x": 1}]}, [1, 1.0, True, "a", None, [1, 2], [1.0, 2], (1, 2), {"x": 1}, {"x": True}, "b"]),
        ({"enum": [1.5, True]}, [1.5, 1, True, 1.0]),
        ({"const": 0}, [0, 0.0, False, -0.0]),
        ({"type": "string", "minLength": 2, "maxLength": 3}, ["a", "ab", "abcd", "éé", "\u0661\u0662\u0663", "\U0001f600\U0001f600"]),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False},
            [{"a": 1}, {"a": 1, "b": 2}, {}, {"a": True}, {"a": 1.0}, [], "x"],
        ),
        (
            {"type": "object", "additionalProperties": {"type": "string"}},
            [{}, {"a": "x"}, {"a": 1}, {"a": "x", "b": None}],
        ),
        (
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1}, "maxItems": 2},
            [[], [[1]], [[1], [2, 3]], [[1], [2], [3]], [[]], [[1.0]], [[True]], [(1,)], ([1],), [[1, "x"]]],
        ),
        ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]}, [["a", 1], ["a", "b"], [1, 1], ["a"], ["a", 1, None]]),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, ["x", 1, 1.0, 1.5, None, True]),
        ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, [1, 1.5, 1.0, "x"]),
        ({"type": ["string", "null"], "format": "email"}, ["not an e-mail", None, 1, "a@b.c"]),
        ({"not": {"type": "string"}}, ["x", 1, None]),
    ],
)
def test_hand_made_edge_cases(schema: dict[str, Any], values: list[Any]) -> None:
    """Top-level and nested values alike: as the argument and inside an argument object."""
    wrapped = {"type": "object", "properties": {"v": schema}, "required": ["v"]}
    assert _fast_validator(canonical_json(wrapped)) is not None
    fast_path = reference_path = 0
    for value in values:
        arguments = {"v": value}
        reference = _reference(wrapped, arguments)
        counts = {"valid": 0, "invalid": 0, "not_fast": 0}
        _compare(ToolSchemas([function_tool("t", "", wrapped)]), "t", arguments, counts)
        fast_path += counts["valid"] + counts["invalid"]
        reference_path += counts["not_fast"]
        assert (ToolSchemas([function_tool("t", "", wrapped)]).check("t", arguments) is None) == reference, value
    assert fast_path > 0


def test_check_words_every_problem_as_jsonschema_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """``check`` returns the same text (or None) with the fast path and without it."""
    cases = []
    for _file, tools in _bfcl_tool_sets()[:4]:
        schemas = ToolSchemas(tools)
        for name in schemas.names:
            point = DecisionPoint("t", 0, _STATE, tools, ToolCall(id="e", name=name, arguments={}))
            for candidate in MutationPolicy(invalid_share=0.5).propose(point, 4, seed=1).candidates:
                assert candidate.call is not None
                cases += [
                    (candidate.call.name, v) for v in _variants(candidate.call.arguments, schemas.parameters(candidate.call.name))[:40]
                ]
        fast = ToolSchemas(tools)
        with monkeypatch.context() as patched:
            patched.setattr(schema_module, "_fast_validator", lambda _schema_json: None)
            reference = ToolSchemas(tools)
            expected = [reference.check(name, arguments) for name, arguments in cases]
        assert [fast.check(name, arguments) for name, arguments in cases] == expected
        assert [fast.accepts(name, arguments) for name, arguments in cases] == [e is None for e in expected]
        assert any(e is None for e in expected) and any(e is not None for e in expected)
        cases.clear()


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^\\d+$"},  # Python's \d matches other scripts' digits, Rust's regex does not
        {"type": "array", "uniqueItems": True},
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
    ],
)
def test_schemas_with_other_keywords_stay_with_jsonschema(schema: dict[str, Any]) -> None:
    wrapped = {"type": "object", "properties": {"v": schema}}
    assert _fast_validator(canonical_json(wrapped)) is None


def test_a_pattern_is_matched_as_python_matches_it() -> None:
    """Arabic-Indic digits match ``\\d`` in Python's ``re`` (jsonschema) but not in Rust's regex."""
    import jsonschema_rs

    pattern = {"type": "object", "properties": {"v": {"type": "string", "pattern": "^\\d+$"}}}
    assert not jsonschema_rs.Draft202012Validator(pattern).is_valid({"v": "\u0661\u0662"})
    assert ToolSchemas([function_tool("t", "", pattern)]).check("t", {"v": "\u0661\u0662"}) is None


def test_integral_floats_take_the_fast_path_only_where_no_integer_type_is_named() -> None:
    numbers = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "array", "items": {"type": "number"}}}}
    mixed = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": ["integer", "null"]}}}
    assert _fast_validator(canonical_json(numbers))[1] is True
    assert _fast_validator(canonical_json(mixed))[1] is False
    for schema in (numbers, mixed):
        tools = ToolSchemas([function_tool("t", "", schema)])
        for arguments in ({"a": 3.0}, {"a": -0.0, "b": [2.0, 1e300]}, {"b": 3.0}, {"b": [3.0]}, {"a": True}):
            assert tools.accepts("t", arguments) == _reference(schema, arguments), (schema, arguments)


def test_values_the_validators_read_differently_are_not_plain() -> None:
    for value in (3.0, -0.0, float("inf"), float("nan"), (1, 2), 2**63, -(2**63) - 1, {1: "x"}, [1, (2,)], {"a": {"b": 3.0}}):
        assert not _plain_json({"v": value}, 0), value
    for value in (3, 2.5, True, None, "x", [1, [2.5]], {"a": {"b": "c"}}, 2**63 - 1):
        assert _plain_json({"v": value}, 0), value


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "float"}, {"type": "invalid"}, {"type": ["string", "string"]}, {"type": []}, {"required": "a"},
        {"required": ["a", "a"]}, {"required": [1]}, {"properties": []}, {"properties": {"a": 5}}, {"minItems": -1},
        {"minItems": 1.5}, {"minItems": 2.0}, {"enum": 5}, {"enum": []}, {"items": 5}, {"items": [{}]}, {"prefixItems": {}},
        {"prefixItems": []}, {"anyOf": []}, {"maximum": "5"}, {"additionalProperties": 5}, {"minLength": "2"}, {"format": 5},
        {"description": 5}, {"title": 5}, {"exclusiveMinimum": True}, {"not": 5}, {"const": None}, {"examples": 5},
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": "0"}}},
    ],
)  # fmt: skip
def test_a_schema_is_valid_for_both_or_for_neither(schema: dict[str, Any]) -> None:
    """jsonschema_rs compiles exactly the schemas jsonschema's check_schema accepts; an invalid one is checked for required arguments only."""
    schemas = ToolSchemas([function_tool("t", "", {"type": "object", "properties": {"v": schema}, "required": ["v"]})])
    wrapped = schemas.parameters("t")  # as ToolSchemas normalized it (BFCL's "float" is a "number")
    try:
        jsonschema.Draft202012Validator.check_schema(wrapped)
        valid = True
    except jsonschema.SchemaError:
        valid = False
    assert (_fast_validator(canonical_json(wrapped)) is not None) == valid
    assert schemas.accepts("t", {}) is False and "missing required argument 'v'" in (schemas.check("t", {}) or "")
    if not valid:
        assert schemas.accepts("t", {"v": object()}), "an invalid schema checks only that required arguments are there"
    for value in (1, 2.5, "x", [1, 2], {"a": 1}, None):
        assert schemas.accepts("t", {"v": value}) == (schemas.check("t", {"v": value}) is None)
