"""Tool schemas offered at a decision point, and validation of tool calls against them.

Schemas come in the OpenAI form ``{"type": "function", "function": {"name", "description",
"parameters"}}`` (bare ``{"name", "parameters"}`` function docs are accepted too). BFCL's function
docs use non-standard JSON-schema types (``dict``, ``float``, ``tuple``, ``any``);
:func:`normalize_schema` maps them to standard ones before anything validates against them.
:func:`resolve_schema` inlines local ``$ref`` s and merges ``allOf`` for whatever generates values
from a schema (pydantic's schemas of nested models use both); validation reads the schema as offered.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import pickle
import threading
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ee_middleware.models.parsing import canonical_call, canonical_json

logger = logging.getLogger("ee_middleware.replay")

if TYPE_CHECKING:
    from ee_middleware.records import ToolCall, ToolSchema

_TYPE_ALIASES = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "int": "integer",
    "str": "string",
    "bool": "boolean",
    "list": "array",
}
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_SINGLE = ("additionalProperties", "items", "not", "contains")
_MAX_PROBLEM_CHARS = 300
_MAX_REF_DEPTH = 8
"""How many ``$ref`` s one path through a schema follows (a recursive model's schema refers to itself)."""


def normalize_schema(schema: Any) -> Any:
    """A copy of ``schema`` with BFCL's non-standard types mapped to JSON-schema ones, recursively.

    ``dict`` -> ``object``, ``float`` -> ``number``, ``tuple`` -> ``array``, ``any`` -> no type
    constraint; a list-valued ``items`` (draft-4 tuple form) becomes ``prefixItems``.
    """
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    if "type" in out:
        normalized = _normalize_type(out["type"])
        if normalized is None:
            del out["type"]
        else:
            out["type"] = normalized
    if isinstance(out.get("items"), list):
        out["prefixItems"] = out.pop("items")
    for key in _SUBSCHEMA_SINGLE:
        if isinstance(out.get(key), Mapping):
            out[key] = normalize_schema(out[key])
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {name: normalize_schema(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [normalize_schema(sub) for sub in out[key]]
    return out


def resolve_schema(schema: Any) -> Any:
    """``schema`` for generating values: local ``$ref`` s inlined and ``allOf`` merged, recursively.

    A ``$ref`` is a JSON pointer into the schema itself (``#/$defs/Line``, ``#/definitions/Line``,
    ``#`` for the root); its sibling keywords (a ``default``, a ``description``) are merged over the
    schema it names. One path follows at most :data:`_MAX_REF_DEPTH` references (a recursive
    model's schema refers to itself); past that, or for a reference that names nothing here (a
    remote one), the ``{"$ref": ...}`` is left as it is: no value can be made for it. ``allOf``
    members are merged into one schema: properties (a property in several, merged too), required
    names, types (those all allow), enums (the values all allow), the tighter bound of each of
    ``minimum``/``maximum``/``minLength``/... and ``multipleOf`` (their least common multiple; for decimal steps the
    steps themselves stay in an ``allOf``, see :func:`_common_multiple`); for other keywords the last member that has
    it wins, and the schema's own keywords win over its members'. A schema with neither keyword anywhere is returned
    as it is.
    """
    if not isinstance(schema, Mapping) or not _has_references(schema, 0):
        return schema
    return _Resolver(schema).resolve(schema, _MAX_REF_DEPTH)


def _has_references(schema: Any, depth: int) -> bool:
    """Whether ``$ref`` or ``allOf`` occurs anywhere in ``schema`` (nested ever deeper than JSON allows: reads as yes)."""
    if depth > 64:
        return True
    if isinstance(schema, Mapping):
        return "$ref" in schema or "allOf" in schema or any(_has_references(v, depth + 1) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_references(v, depth + 1) for v in schema)
    return False


class _Resolver:
    """Inlines one root schema's local references; the result of each (pointer, depth left) is made once and shared."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.made: dict[tuple[str, int], Any] = {}

    def resolve(self, schema: Any, depth: int) -> Any:
        if isinstance(schema, list):
            return [self.resolve(sub, depth) for sub in schema]
        if not isinstance(schema, Mapping):
            return schema
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in ("$defs", "definitions", "$ref", "allOf"):
                continue  # the definitions are inlined where they are used
            if key in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
                out[key] = {name: self.resolve(sub, depth) for name, sub in value.items()}
            elif key in _SUBSCHEMA_SINGLE or key in _SUBSCHEMA_LISTS:
                out[key] = self.resolve(value, depth)
            else:
                out[key] = value
        parts = []
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self._target(ref, depth)
            if target is None:
                return dict(schema)  # unresolvable here: left for the caller to see
            parts.append(target)
        members = schema.get("allOf")
        if isinstance(members, list):
            parts.extend(self.resolve(sub, depth) for sub in members if isinstance(sub, Mapping))
        if not parts:
            return out
        merged: dict[str, Any] = {}
        for part in [*parts, out]:
            merged = _merge(merged, part)
        return merged

    def _target(self, ref: str, depth: int) -> Any:
        """The resolved schema ``ref`` points at, or ``None`` (not a local pointer, names nothing, or too deep)."""
        if depth <= 0 or not ref.startswith("#"):
            return None
        found = self.made.get((ref, depth))
        if found is None:
            target = _pointer(self.root, ref[1:])
            if not isinstance(target, Mapping):
                return None
            found = self.made[(ref, depth)] = self.resolve(target, depth - 1)
        return found


def _pointer(root: Any, pointer: str) -> Any:
    """The value at a JSON pointer (``/$defs/Line``; ``~1`` is ``/``, ``~0`` is ``~``, ``%``-escapes decoded) in ``root``."""
    from urllib.parse import unquote

    node = root
    for token in unquote(pointer).split("/")[1:] if pointer else ():
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """One schema a value must satisfy for both ``a`` and ``b`` (as far as generation reads it; see :func:`resolve_schema`)."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
            continue
        mine = out[key]
        if key == "properties" and isinstance(mine, Mapping) and isinstance(value, Mapping):
            out[key] = {**mine, **{n: _merge(mine[n], s) if n in mine and _both_maps(mine[n], s) else s for n, s in value.items()}}
        elif key == "required" and isinstance(mine, list) and isinstance(value, list):
            out[key] = list(dict.fromkeys([*mine, *value]))
        elif key == "type":
            out[key] = _common_type(mine, value)
        elif key == "enum" and isinstance(mine, list) and isinstance(value, list):
            out[key] = [v for v in mine if v in value]
        elif key in _LOWER_BOUNDS and _is_number(mine) and _is_number(value):
            out[key] = max(mine, value)
        elif key in _UPPER_BOUNDS and _is_number(mine) and _is_number(value):
            out[key] = min(mine, value)
        elif key == "multipleOf" and _is_number(mine) and _is_number(value):
            out[key], kept = _common_multiple(mine, value)
            if kept:
                out["allOf"] = [*out.get("allOf", ()), *kept]
        elif key == "allOf" and isinstance(mine, list) and isinstance(value, list):
            out[key] = [*mine, *value]  # steps kept by _common_multiple, both halves'
        elif key in ("items", "additionalProperties") and _both_maps(mine, value):
            out[key] = _merge(mine, value)
        elif key == "additionalProperties" and (mine is False or value is False):
            out[key] = False
        else:
            out[key] = value
    return out


_MAX_STEP_DENOMINATOR = 10**9
"""A ``multipleOf`` with more decimals than this is not read as the decimal it spells (``0.3333333333333333``)."""


def _common_multiple(a: float, b: float) -> tuple[float, list[dict[str, Any]]]:
    """The ``multipleOf`` a value of both steps ``a`` and ``b`` is a multiple of, and the steps to keep checking besides it.

    Integers: their least common multiple, which is all. Decimal steps (``0.2`` and ``0.3``): the least common multiple of
    the decimals they spell (``0.6``), and both steps kept (``[{"multipleOf": 0.2}, {"multipleOf": 0.3}]``), since a
    validator divides in floating point (``1.8 / 0.2`` is ``9.000000000000002``: not a multiple). Steps with no short
    decimal form: the larger, and the smaller kept.
    """
    if isinstance(a, int) and isinstance(b, int):
        return math.lcm(a, b), []
    fa, fb = step_fraction(a), step_fraction(b)
    if fa.denominator > _MAX_STEP_DENOMINATOR or fb.denominator > _MAX_STEP_DENOMINATOR:
        large, small = (a, b) if a >= b else (b, a)
        return large, [{"multipleOf": small}]
    common = Fraction(math.lcm(fa.numerator, fb.numerator), math.gcd(fa.denominator, fb.denominator))
    step = int(common) if common.denominator == 1 else float(common)
    return step, [{"multipleOf": a}, {"multipleOf": b}]


def step_fraction(step: float) -> Fraction:
    """The exact rational a ``multipleOf`` spells: ``0.07`` is 7/100 (its shortest decimal form), not the binary float."""
    return Fraction(step) if isinstance(step, int) else Fraction(repr(float(step)))


def _both_maps(a: Any, b: Any) -> bool:
    return isinstance(a, Mapping) and isinstance(b, Mapping)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _common_type(a: Any, b: Any) -> Any:
    """The types both ``a`` and ``b`` allow (an integer is a number); ``b`` when they share none (no value fits then)."""
    left = a if isinstance(a, list) else [a]
    right = b if isinstance(b, list) else [b]
    common = [t for t in left if t in right or (t == "integer" and "number" in right)]
    common += [t for t in right if t == "integer" and "number" in left and t not in common]
    if not common:
        return b
    return common[0] if len(common) == 1 else common


_UNREAD: Any = object()
_MAX_DEFAULTS_DEPTH = 8
_NUMBERS = (int, float)


class Defaults:
    """A schema's declared ``default`` s, by property, and those of its nested objects: to compare calls as the tool
    receives them (a tool fills in what a call leaves out, as pydantic and LangChain's ``@tool`` do). Values are compared
    as JSON compares them (:func:`same_json`)."""

    __slots__ = ("defaults", "items", "nested")

    def __init__(self, defaults: dict[str, Any], nested: dict[str, Defaults], items: Defaults | None) -> None:
        self.defaults = defaults
        """Property -> its default, itself stripped of the defaults nested in it."""
        self.nested = nested
        """Property -> the defaults nested in its value (an object's, or an array's items')."""
        self.items = items
        """The defaults of an array's items."""

    def strip(self, value: Any) -> Any:
        """``value`` without the properties set to their defaults, at every level; ``value`` itself when it has none."""
        if type(value) is dict:
            out = None
            for key, plan in self.nested.items():
                if key in value:
                    sub = plan.strip(value[key])
                    if sub is not value[key]:
                        out = out if out is not None else dict(value)
                        out[key] = sub
            source = value if out is None else out
            for key, default in self.defaults.items():
                if key in source and same_json(source[key], default):
                    out = out if out is not None else dict(value)
                    del out[key]
            return value if out is None else out
        if type(value) is list and self.items is not None:
            stripped = [self.items.strip(v) for v in value]
            return value if all(a is b for a, b in zip(stripped, value, strict=True)) else stripped
        return value

    def is_default(self, key: str, value: Any) -> bool:
        """Whether property ``key`` set to ``value`` is the property left out."""
        if key not in self.defaults:
            return False
        plan = self.nested.get(key)
        return same_json(plan.strip(value) if plan else value, self.defaults[key])


def same_json(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same JSON value: numbers by value (``30 == 30.0``, as JSON Schema's ``const`` and
    ``enum`` compare them, and as a tool receives a number), other values by type too (``True`` is not ``1``, ``"1"`` is
    not ``1``, ``[]`` is not ``{}``), containers item by item."""
    kind = type(a)
    if kind is not type(b):
        return kind in _NUMBERS and type(b) in _NUMBERS and a == b
    if kind is dict:
        return len(a) == len(b) and all(k in b and same_json(v, b[k]) for k, v in a.items())
    if kind is list or kind is tuple:
        return len(a) == len(b) and all(map(same_json, a, b))
    return a == b


def json_numbers(value: Any) -> Any:
    """``value`` with every float that is a whole number written as an int (``30.0`` -> ``30``, at every level), so that
    :func:`canonical_call` gives equal text for values :func:`same_json` calls equal; ``value`` itself when it has none."""
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict:
        out = None
        for key, sub in value.items():
            new = json_numbers(sub)
            if new is not sub:
                out = out if out is not None else dict(value)
                out[key] = new
        return value if out is None else out
    if kind is list:
        items = [json_numbers(sub) for sub in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def defaults_of(schema: Any, depth: int = 0) -> Defaults | None:
    """The defaults declared in ``schema`` (a resolved one) and below it; ``None`` when it declares none."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEFAULTS_DEPTH:
        return None
    defaults: dict[str, Any] = {}
    nested: dict[str, Defaults] = {}
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for key, sub in props.items():
            plan = defaults_of(sub, depth + 1)
            if plan is not None:
                nested[key] = plan
            if isinstance(sub, Mapping) and "default" in sub:
                defaults[key] = plan.strip(sub["default"]) if plan else sub["default"]
    items = defaults_of(schema.get("items"), depth + 1)
    if not defaults and not nested and items is None:
        # Optional[Model] is anyOf [Model, null]: one branch with defaults is the one a value with them takes.
        branches = [plan for key in ("anyOf", "oneOf") for sub in schema.get(key) or () if (plan := defaults_of(sub, depth + 1))]
        return branches[0] if len(branches) == 1 else None
    return Defaults(defaults, nested, items)


def _normalize_type(value: Any) -> Any:
    if isinstance(value, str):
        if value == "any":
            return None
        return _TYPE_ALIASES.get(value, value)
    if isinstance(value, list):
        types = [_normalize_type(v) for v in value]
        return None if None in types else list(dict.fromkeys(types))
    return value


def _tool_function(tool: Mapping[str, Any]) -> Mapping[str, Any] | None:
    function = tool.get("function") if tool.get("type") == "function" or "function" in tool else tool
    return function if isinstance(function, Mapping) and isinstance(function.get("name"), str) else None


class ToolSchemas:
    """The tools offered at a decision point, by name, with their normalized parameter schemas.

    ``validate`` checks a :class:`~ee_middleware.records.ToolCall` and returns ``None`` when it
    fits, or a sentence saying what is wrong (unknown tool, missing or unexpected argument, wrong
    type, value outside an enum). Integers are accepted where a number is expected; booleans are
    never integers; ``3.0`` is not an integer. :meth:`call_key` is the identity of a call as the tool receives it,
    which whoever compares calls (the mutation policy, the proposer) compares.
    """

    def __init__(self, tools: Iterable[ToolSchema]) -> None:
        self._parameters: dict[str, dict[str, Any]] = {}
        self._descriptions: dict[str, str] = {}
        self._validators: dict[str, Any] = {}
        self._fast: dict[str, Any] = {}
        self._arguments: dict[str, tuple[Mapping[str, Any], frozenset[str]]] = {}
        self._resolved: dict[str, Any] = {}
        self._defaults: dict[str, Defaults | None] = {}
        self.memo: dict[Any, Any] = {}
        """What a policy derives from these schemas alone (never from a decision point), kept as long as they are."""
        for tool in tools:
            function = _tool_function(tool) if isinstance(tool, Mapping) else None
            if function is None:
                continue  # not a function tool (or malformed): nothing can call it
            params = function.get("parameters")
            normalized = normalize_schema(params) if isinstance(params, Mapping) else {"type": "object", "properties": {}}
            normalized.setdefault("type", "object")
            self._parameters[function["name"]] = normalized
            self._descriptions[function["name"]] = str(function.get("description") or "")

    @property
    def names(self) -> list[str]:
        """Tool names in the order they were offered."""
        return list(self._parameters)

    def __contains__(self, name: object) -> bool:
        return name in self._parameters

    def __len__(self) -> int:
        return len(self._parameters)

    def parameters(self, name: str) -> dict[str, Any]:
        """The normalized JSON schema of ``name``'s arguments (raises ``KeyError`` for an unknown tool)."""
        return self._parameters[name]

    def resolved(self, name: str) -> dict[str, Any]:
        """:meth:`parameters` of ``name`` with local ``$ref`` s inlined and ``allOf`` merged (:func:`resolve_schema`),
        made once: for generating values (validate against :meth:`parameters`); shared, so read it, never change it."""
        found = self._resolved.get(name)
        if found is None:
            found = resolve_schema(self._parameters[name])
            found = self._resolved[name] = found if isinstance(found, dict) else self._parameters[name]
        return found

    def properties(self, name: str) -> dict[str, Any]:
        """Argument name -> schema for ``name`` (empty when the schema lists none)."""
        props = self._parameters[name].get("properties")
        return dict(props) if isinstance(props, Mapping) else {}

    def required(self, name: str) -> list[str]:
        """The required argument names of ``name``."""
        req = self._parameters[name].get("required")
        return [r for r in req if isinstance(r, str)] if isinstance(req, list) else []

    def arguments_of(self, name: str) -> tuple[Mapping[str, Any], frozenset[str]]:
        """The properties and required names (a set) of :meth:`resolved` ``name``, computed once: shared, so read them,
        never change them."""
        found = self._arguments.get(name)
        if found is None:
            schema = self.resolved(name)
            props = schema.get("properties")
            required = schema.get("required")
            found = self._arguments[name] = (
                props if isinstance(props, Mapping) else {},
                frozenset(r for r in required if isinstance(r, str)) if isinstance(required, list) else frozenset(),
            )
        return found

    def defaults(self, name: str) -> Defaults | None:
        """The ``default`` s that :meth:`resolved` ``name`` declares, at every level (``None``: it declares none, or no
        such tool is offered), read once."""
        try:
            return self._defaults[name]
        except KeyError:
            found = self._defaults[name] = defaults_of(self.resolved(name)) if name in self._parameters else None
            return found

    def call_key(self, name: str, arguments: Mapping[str, Any], key: str | None = None) -> str:
        """The identity of a call as the tool receives it, to compare calls: its :func:`canonical_call` with every
        argument at its schema's ``default`` left out (``{"order_id": "O-1", "fields": null}`` is ``{"order_id":
        "O-1"}`` when ``fields`` defaults to ``null``) and numbers read as JSON reads them (``30.0`` is ``30``; ``true``
        is not ``1``). ``key``: the call's :func:`canonical_call`, when the caller has it (returned when nothing
        changes)."""
        plan = self._defaults.get(name, _UNREAD)
        if plan is _UNREAD:
            plan = self.defaults(name)
        received = plan.strip(arguments) if plan is not None else arguments
        received = json_numbers(received)
        if received is arguments and key is not None:
            return key
        return canonical_call(name, received)

    def description(self, name: str) -> str:
        """The tool's description ('' when it has none)."""
        return self._descriptions[name]

    def param_order(self) -> dict[str, list[str]]:
        """Tool name -> argument names in schema order (maps positional arguments of ``f(1, 2)``)."""
        return {name: list(self.properties(name)) for name in self._parameters}

    def validate(self, call: ToolCall) -> str | None:
        """``None`` when ``call`` fits the offered schemas, else a human-readable problem."""
        return self.check(call.name, call.arguments)

    def check(self, name: str, arguments: Mapping[str, Any]) -> str | None:
        """Like :meth:`validate`, for a name and an argument mapping."""
        return self._check(name, arguments, words=True)

    def accepts(self, name: str, arguments: Mapping[str, Any]) -> bool:
        """``check(name, arguments) is None``, without wording the problem when the fast validator already rejects it."""
        return self._check(name, arguments, words=False) is None

    def _check(self, name: str, arguments: Mapping[str, Any], *, words: bool) -> str | None:
        """``None`` when the call fits, else its problem (without ``words``: a stand-in when jsonschema_rs rejected it)."""
        if name not in self._parameters:
            known = ", ".join(self._parameters) or "(none offered)"
            return _clip(f"unknown tool {name!r}; the tools offered are: {known}")
        extra = self._unexpected(name, arguments)
        if extra:
            props = self.arguments_of(name)[0]
            return _clip(f"{name}: unexpected argument(s) {', '.join(map(repr, extra))}; it accepts: {', '.join(props)}")
        schema_json = self._schema_json(name)
        if schema_json is None:
            missing = [r for r in self.required(name) if r not in arguments]
            return f"{name}: missing required argument {missing[0]!r}" if missing else None
        verdict = self._fast_verdict(name, arguments)
        if verdict is True:
            return None
        if verdict is False and not words:
            return _REJECTED
        # jsonschema decides every call the fast validator does not accept, and says what is wrong.
        return _describe_error(name, _validator(schema_json), dict(arguments))

    def _unexpected(self, name: str, arguments: Mapping[str, Any]) -> list[str]:
        """Arguments the schema does not list, when it lists some and says nothing of others (no ``additionalProperties``).

        The properties are those of :meth:`resolved` ``name``: an ``allOf`` member's (an OpenAPI body composed of a
        ``$ref`` to a shared part and its own properties) are the tool's as much as the top level's."""
        props = self.arguments_of(name)[0]
        if not props or "additionalProperties" in self.resolved(name):
            return []
        return [key for key in arguments if key not in props]

    def _schema_json(self, name: str) -> str | None:
        """The canonical JSON of ``name``'s schema, or ``None`` when it is not a valid JSON schema (compiled on first use)."""
        if name not in self._validators:
            schema_json = canonical_json(self._parameters[name])
            self._fast[name] = _fast_validator(schema_json)
            valid = _valid_schema(schema_json)
            self._validators[name] = schema_json if valid else None
            if not valid:
                _warn_invalid_schema(name, schema_json)
        return self._validators[name]

    def _fast_verdict(self, name: str, arguments: Mapping[str, Any]) -> bool | None:
        """jsonschema_rs's verdict on arguments both validators read alike, else ``None``."""
        fast = self._fast[name]
        if fast is None or not _plain_json(arguments, 0, fast[1]):
            return None
        try:
            return bool(fast[0].is_valid(arguments))
        except Exception:  # noqa: BLE001 - anything the Rust validator cannot take (a lone surrogate) goes to jsonschema
            return None


_REJECTED = "rejected by the fast validator"


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_PROBLEM_CHARS else text[: _MAX_PROBLEM_CHARS - 3] + "..."


@functools.lru_cache(maxsize=1024)
def _schema_is_valid(schema_json: str) -> bool:
    """Whether jsonschema accepts the parameters schema as a Draft 2020-12 schema."""
    return _schema_problem(schema_json) is None


def _schema_problem(schema_json: str) -> str | None:
    """What jsonschema finds wrong with the parameters schema as a Draft 2020-12 schema, or ``None``."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(schema_json))
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        return _clip(f"{exc.message}" + (f" (at {where})" if where else ""))
    return None


@functools.lru_cache(maxsize=256)
def _warn_invalid_schema(name: str, schema_json: str) -> None:
    """Say once per process and schema that a tool's parameters are no valid JSON Schema: its calls are then checked
    for their required arguments only, so proposals for it may not fit what the tool accepts."""
    parsed = json.loads(schema_json)
    declared = parsed.get("$schema") if isinstance(parsed, dict) else None
    draft = f" (it declares {declared!r}; tool calling uses 2020-12, as OpenAI's and vLLM's do)" if isinstance(declared, str) else ""
    logger.warning(
        "ee-middleware: the parameters of tool %r are not a valid JSON Schema 2020-12%s (%s): its calls are checked for "
        "their required arguments only, and alternatives proposed for it may not fit what it accepts. Fix the tool's "
        "schema (its args_schema or parameters).",
        name,
        draft,
        _schema_problem(schema_json) or "jsonschema refused it",
    )


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Any:
    """jsonschema's validator for one parameters schema that :func:`_valid_schema` accepted (``ToolSchemas._schema_json``
    checked it once; only a schema it gave is validated against)."""
    return _strict_validator_class()(json.loads(schema_json))


def _valid_schema(schema_json: str) -> bool:
    # jsonschema_rs checks a schema against the 2020-12 meta-schema as it compiles it, with jsonschema's verdicts for
    # the keywords it is given (test_fast_validation.py), in microseconds instead of about a millisecond.
    return _fast_validator(schema_json) is not None or _schema_is_valid(schema_json)


# Keywords whose meaning jsonschema_rs and jsonschema share exactly on plain JSON values (tests/replay/policies/
# test_fast_validation.py compares both on every BFCL tool schema). ``pattern`` is not among them: Rust's regex
# and Python's ``re`` differ (``\d`` matches other digits in Python), so such schemas are validated by jsonschema.
_FAST_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "items", "prefixItems", "enum", "const", "additionalProperties",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "minLength", "maxLength",
        "anyOf", "oneOf", "allOf", "not", "description", "title", "default", "examples", "format",
    }
)  # fmt: skip
_INT64 = 1 << 63
_INF = float("inf")


@functools.lru_cache(maxsize=1024)
def _fast_validator(schema_json: str) -> Any:
    """A ``jsonschema_rs`` validator for a schema jsonschema accepts, and whether the schema names no ``integer`` type
    (then ``3.0`` means the same to both); ``None`` when not installed, when the schema is invalid, or when it has
    keywords outside :data:`_FAST_KEYWORDS`."""
    schema = json.loads(schema_json)
    if not _fast_schema(schema):
        return None
    try:
        import jsonschema_rs
    except ImportError:
        return None
    try:
        # Formats are annotations only, as for jsonschema without a format checker.
        validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=False)
    except Exception:  # noqa: BLE001 - a schema it cannot compile is left to jsonschema
        return None
    return validator, '"integer"' not in schema_json


def _fast_schema(schema: Any) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not _FAST_KEYWORDS.issuperset(schema):
        return False
    props = schema.get("properties", {})
    if not isinstance(props, dict) or not all(_fast_schema(sub) for sub in props.values()):
        return False
    for key in ("items", "additionalProperties", "not"):
        if key in schema and not _fast_schema(schema[key]):
            return False
    for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
        if key in schema and not (isinstance(schema[key], list) and all(_fast_schema(sub) for sub in schema[key])):
            return False
    return True


def _plain_json(value: Any, depth: int, integral_floats: bool = False) -> bool:
    """Whether both validators read ``value`` alike: exact JSON types only. Floats with an integral value (``3.0``:
    not an integer here, one for jsonschema_rs) only where the schema names no integer type (``integral_floats``),
    no ints beyond 64 bits, no tuples (arrays for jsonschema_rs, not for jsonschema), no subclasses."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_INT64 <= value < _INT64
    if kind is float:
        return value == value and abs(value) != _INF and (integral_floats or not value.is_integer())
    if depth > 32:
        return False
    if kind is dict:
        return all(type(k) is str and _plain_json(v, depth + 1, integral_floats) for k, v in value.items())
    if kind is list:
        return all(_plain_json(v, depth + 1, integral_floats) for v in value)
    return False


@functools.cache
def _strict_validator_class() -> Any:
    import jsonschema

    base = jsonschema.Draft202012Validator
    # JSON Schema lets 3.0 pass as an integer; a Python tool receiving 3.0 for an index or a count
    # behaves differently from 3, so only real ints count (and bools never do).
    checker = base.TYPE_CHECKER.redefine("integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def _describe_error(name: str, validator: Any, arguments: dict[str, Any]) -> str | None:
    import jsonschema
    import referencing.exceptions

    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except referencing.exceptions.Unresolvable as exc:
        # A remote $ref (or one naming nothing) on the path the arguments take: no call down that path can be checked.
        ref = str(getattr(exc, "ref", None) or exc)
        ref = ref if len(ref) <= 100 else ref[:97] + "..."
        return (
            f"{name}: its schema refers to {ref!r}, which cannot be resolved (only references into the tool's own schema "
            "are followed), so a call reaching it cannot be checked; put that schema under the tool's $defs and refer to "
            "it as '#/$defs/NAME'"
        )
    if error is None:
        return None
    if error.validator == "required" and not error.absolute_path:
        missing = [r for r in error.validator_value if r not in arguments]
        return f"{name}: missing required argument {(missing or error.validator_value)[0]!r}"
    where = _path_text(error.absolute_path)
    return _clip(f"{name}: argument {where}: {error.message}" if where else f"{name}: {error.message}")


def _path_text(path: Sequence[Any]) -> str:
    if not path:
        return ""
    text = repr(path[0])
    for part in list(path)[1:]:
        text += f"[{part!r}]"
    return text


CAPTURED_NO_SCHEMAS_FIX = (
    "record_experience recorded this run, and it reads the offered tools from each model call's invocation params: the "
    "chat model's bind_tools did not pass them there (a wrapper or custom BaseChatModel that keeps the tools itself "
    "instead of returning self.bind(tools=...)). Make bind_tools return self.bind(tools=[convert_to_openai_tool(t) "
    "for t in tools], **kwargs), or bind them so, then record the runs again."
)
"""What to do about a run ``record_experience`` captured without tool schemas: its model's calls carried no ``tools``."""

NO_SCHEMAS_FIX = (
    "Record the offered tools: capture with @record_experience, or with an instrumentation that writes them "
    "(gen_ai.tool.definitions, llm.tools, ai.prompt.tools), then ingest again. For runs record_experience captured "
    "(source record_experience in ee traces show): " + CAPTURED_NO_SCHEMAS_FIX
)
"""What to do about trajectories that recorded no tool schemas (OpenTelemetry's OpenAI v2 instrumentation, Strands and
OpenInference's Chat Completions spans carry no tool definitions; a chat model whose bind_tools keeps the tools): said
by the dataset build, whose trajectories may come from either."""


def no_schemas_fix(source: str | None) -> str:
    """What to do about one trajectory without tool schemas, by its ``source``: a run ``record_experience`` captured
    lost them at the model's bind_tools; an ingested one at an instrumentation that does not write them."""
    if source == "record_experience":
        return CAPTURED_NO_SCHEMAS_FIX
    return (
        "Record the offered tools: capture with @record_experience, or with an instrumentation that writes them "
        "(gen_ai.tool.definitions, llm.tools, ai.prompt.tools), then ingest again."
    )


_CACHE: collections.OrderedDict[int, tuple[Sequence[Any], ToolSchemas]] = collections.OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


_BY_CONTENT: collections.OrderedDict[bytes, ToolSchemas] = collections.OrderedDict()
"""Schemas by the pickled tool list: equal bytes are the same values of the same types in the same order (``==``
would take ``1`` for ``True`` and ignore the order of keys, which the mutation policy's draws follow)."""


def tool_schemas_for(tools: Sequence[Any]) -> ToolSchemas:
    """:class:`ToolSchemas` for ``tools``, reused while the same list object, or one with the same content, comes back.

    Every state of a trajectory offers the same tool list, and the trajectories of one app offer
    the same tools (each read from the store as its own list), so the replay compiles each distinct
    set of schemas once (normalising and compiling dominate proposal time), with what the policies
    derive from it (:attr:`ToolSchemas.memo`). The cache holds the list itself, so an id is never
    reused while cached; other lists are matched by their pickled bytes.
    """
    key = id(tools)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is tools:
            _CACHE.move_to_end(key)
            return hit[1]
    content = _content_key(tools)
    with _CACHE_LOCK:
        schemas = _BY_CONTENT.get(content) if content is not None else None
    if schemas is None:
        schemas = ToolSchemas(tools)
    with _CACHE_LOCK:
        if content is not None:
            _BY_CONTENT[content] = schemas
            _BY_CONTENT.move_to_end(content)
            while len(_BY_CONTENT) > _CACHE_SIZE:
                _BY_CONTENT.popitem(last=False)
        _CACHE[key] = (tools, schemas)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return schemas


def _content_key(tools: Sequence[Any]) -> bytes | None:
    """The pickled tool list (``None`` when it holds something pickle cannot write: then it is not cached by content)."""
    try:
        return pickle.dumps(list(tools), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - anything unpicklable is only cached by identity
        return None
