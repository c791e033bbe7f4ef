"""The schema-driven mutation policy: plausible alternative tool calls without a model.

Two kinds of alternatives, mixed by ``same_tool_share``:

- another offered tool, with its required arguments (and sometimes optional ones) generated from its
  schema;
- the expert's own tool with one change: a value swapped for another of the right type, an
  optional argument dropped or added.

Values are drawn **by role** from what the decision point has seen (:mod:`.vocabulary`), so that
alternatives look like what an agent in that conversation might have tried: an identifier from
the identifiers that observations and user turns showed, matching the argument's name and format
(an ``order_id`` like ``#W1234567`` from the order ids seen, an ``email`` from the e-mail addresses
seen), free text from the user's turns, a number near the numbers seen. System prompts are a last
resort. A share ``invalid_share`` of the alternatives is deliberately invalid: one value is a
well-formed near miss (``#W1234567`` -> ``#W1234587``) or a word from the wrong role, so that the
rollouts also show what failure looks like; those candidates say so in their proposer settings
(``"deliberately_invalid": "<argument>"``).

Every candidate validates against the offered schemas; none equals the expert's action; all are
distinct. Calls are compared as the tool receives them (:meth:`~ee_middleware.replay.policies.schema.ToolSchemas.call_key`,
which the proposer compares too): an argument at its schema's ``default`` is the argument left out
(``{"order_id": "O-1", "fields": null}`` is ``{"order_id": "O-1"}`` when ``fields`` defaults to ``null``), and
numbers are compared as JSON compares them (``30.0`` is ``30``; ``true`` is not ``1``). Schemas are read through local ``$ref`` s and ``allOf`` (pydantic's schemas of
nested models; :func:`~ee_middleware.replay.policies.schema.resolve_schema`). Seeded: the same decision
point, ``k`` and ``seed`` give the same candidates.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import math
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from ee_middleware.errors import ConfigError
from ee_middleware.models.parsing import call_id_of, canonical_call
from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.policies.schema import ToolSchemas, step_fraction, tool_schemas_for
from ee_middleware.replay.policies.vocabulary import DATE, EMAIL, Harvester, Vocabulary, coarse_shape, is_identifier, is_placeholder, shape

__all__ = ["MutationPolicy", "Vocabulary"]

_MAX_DEPTH = 4
_REQUIRED_DEPTH = 32
_CLOSED = 1 << 30
"""Failure count of a mode that can never produce a candidate (no other tool offered, expert's tool unknown)."""
_SYNTHETIC = ("alpha", "beta", "gamma", "delta", "notes", "report", "draft", "test", "main", "data")
_SIZE_PARAMETER = re.compile(r"(precision|count|lines|limit|num|size|depth|times|repeat|max|min|length|digits|top|n$)", re.IGNORECASE)
_ID_NAME = re.compile(r"(^id$|_id$|[a-z]Id$|_ids$|_key$|^key$|_code$|^code$|symbol|sku|token|_ref$|^ref$)", re.IGNORECASE)
_PATH_HINTS = ("file", "path", "source", "destination", "dir", "folder")
_PHRASE_HINTS = (
    "message", "content", "body", "description", "summary", "comment", "note", "question", "prompt", "text", "reason", "address", "street",
)  # fmt: skip
_EXPRESSION_HINTS = ("expression", "formula", "equation")
_ARITHMETIC = re.compile(r"^[\d\s.+\-*/()%^]+$")
_WORD_HINTS = ("query", "keyword", "title", "subject", "search", "term", "tag", "label")


def string_role(name: str, schema: Mapping[str, Any], current: Any = None) -> str:
    """The role of a string argument, from its name, its schema and the expert's value if there is one.

    One of ``email``, ``phone``, ``date``, ``path``, ``identifier``, ``expression`` (arithmetic),
    ``phrase`` (free text), ``word`` (a search term or a title) and ``name`` (any other short value).
    """
    value = current if isinstance(current, str) else ""
    form = schema.get("format")
    if not isinstance(form, str):
        form = None  # only "email" and "date" matter; anything else (even unhashable) reads as no format
    return _string_role(name, form, value)


@functools.lru_cache(maxsize=8192)
def _string_role(name: str, form: str | None, value: str) -> str:
    """:func:`string_role` of a name, the schema's ``format`` and the expert's string value (cached: a pure function)."""
    lowered = name.lower()
    if any(hint in lowered for hint in _EXPRESSION_HINTS) or (
        " " in value and _ARITHMETIC.match(value) and any(c in value for c in "+-*/")
    ):
        return "expression"
    if form == "email" or "email" in lowered or EMAIL.fullmatch(value):
        return "email"
    if "phone" in lowered or "mobile" in lowered:
        return "phone"
    if form == "date" or lowered.endswith("date") or DATE.match(value):
        return "date"
    if any(hint in lowered for hint in _PATH_HINTS):
        return "path"
    if _ID_NAME.search(name) or (value and is_identifier(value) and " " not in value):
        return "identifier"
    if any(hint in lowered for hint in _PHRASE_HINTS) or " " in value.strip():
        return "phrase"
    if any(hint in lowered for hint in _WORD_HINTS):
        return "word"
    return "name"


class _Unseen(Exception):
    """No value of the argument's role was seen (an e-mail address where the conversation shows none), or no value can
    be made for its schema (a ``$ref`` that :func:`~ee_middleware.replay.policies.schema.resolve_schema` left)."""


class _ValueMaker:
    """Generates schema-conforming values, drawn by role from the vocabulary.

    While ``strict``, an id, e-mail or phone argument with no seen value of its role raises
    :class:`_Unseen` (the candidate is dropped); otherwise it gets a guess (a near miss of a seen
    value, or a word), and :attr:`guessed` names the argument.
    """

    def __init__(self, rng: random.Random, vocab: Vocabulary, optional_arg_rate: float) -> None:
        self.rng = rng
        self.choice = _chooser(rng)
        """``rng.choice``, drawing the same values (see :func:`_chooser`)."""
        self.vocab = vocab
        self.optional_arg_rate = optional_arg_rate
        self.strict = True
        self.guessed: str | None = None
        # What depends only on the vocabulary (never on the random draws), computed once per decision point.
        self._pool_cache: dict[tuple[str, str, str | None], list[list[str]]] = {}
        self._unclaimed: list[str] | None = None
        # Per schema object (kept with its entry, so that its id is never another object's): what each draw reads of it.
        self._fits: dict[int, tuple[Any, _Fits]] = {}
        self._fitting: dict[tuple[int, str | None, int], tuple[list[str], list[str]]] = {}
        self._shapes: dict[int, tuple[Any, Mapping[str, Any], frozenset[str]]] = {}
        self.other_tools: tuple[list[str], list[float]] | None = None
        """The tools other than the expert's and their cumulative input weights (set by the policy on first use)."""
        self.perturbations: _Perturbations | None = None
        """What the expert's own call allows changing (set by the policy on first use)."""

    def arguments(self, schema: Mapping[str, Any], invalid: bool = False) -> tuple[dict[str, Any], str | None]:
        """Required arguments, plus each optional one with probability ``optional_arg_rate``.

        With ``invalid``, one of the generated arguments (a string or a number) gets a deliberately
        invalid value; its name is returned with the arguments (``None`` when none could be).
        """
        props, required = self._object_shape(schema)
        keys = [key for key in props if key in required or self.rng.random() < self.optional_arg_rate]
        target = self._invalid_target(props, keys) if invalid else None
        return {key: self.value(props[key], key, 1, invalid=key == target) for key in keys}, target

    def _object_shape(self, schema: Mapping[str, Any]) -> tuple[Mapping[str, Any], frozenset[str]]:
        """An object schema's properties and required names (read once per schema and decision point)."""
        found = self._shapes.get(id(schema))
        if found is None or found[0] is not schema:
            props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
            found = self._shapes[id(schema)] = (schema, props, frozenset(schema.get("required") or ()))
        return found[1], found[2]

    def _invalid_target(self, props: Mapping[str, Any], keys: list[str]) -> str | None:
        fits = [key for key in keys if isinstance(props[key], Mapping) and props[key].get("type") in ("string", "integer", "number")]
        fits = [key for key in fits if "enum" not in props[key] and "const" not in props[key]]
        return self.choice(fits) if fits else None

    def value(self, schema: Any, name: str = "", depth: int = 0, *, current: Any = None, invalid: bool = False) -> Any:
        if not isinstance(schema, Mapping):
            return self._string({}, name, current, invalid)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.value(self.choice(schema[key]), name, depth + 1, current=current, invalid=invalid)
        kind = self._type(schema)
        if kind == "array" and depth > _MAX_DEPTH:
            return []
        if kind == "object":
            # past _MAX_DEPTH only what is required (a recursive schema's optional members would not end), and nothing
            # past _REQUIRED_DEPTH (one requiring itself has no finite value)
            props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
            required = set(schema.get("required") or ()) if depth <= _REQUIRED_DEPTH else set()
            return {
                k: self.value(sub, k, depth + 1)
                for k, sub in props.items()
                if k in required or (depth <= _MAX_DEPTH and self.rng.random() < self.optional_arg_rate)
            }
        if kind == "array":
            return self._array(schema, name, depth + 1)
        if kind == "integer":
            return self._int(schema, name, current, invalid)
        if kind == "number":
            return self._number(schema, name, current, invalid)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, name, current, invalid)

    def _type(self, schema: Mapping[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [k for k in kind if k != "null"] or ["null"]
            kind = self.choice(options)
        if isinstance(kind, str):
            return kind
        if "$ref" in schema:  # remote, naming nothing, or past the depth a recursive schema is followed to
            raise _Unseen(str(schema["$ref"]))
        if "properties" in schema:
            return "object"
        return "array" if "items" in schema or "prefixItems" in schema else "string"

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return [self.value(sub, name, depth) for sub in prefix]
        wanted = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(wanted, 2)))
        low = min(wanted, high)
        upper = max(low, min(high, 2))  # one or two items unless the schema needs more
        count = self.rng.randint(low, upper)
        singular = name[:-1] if name.endswith("s") else name
        return [self.value(schema.get("items", {}), singular, depth) for _ in range(count)]

    # -- numbers: near the numbers seen, under the same name first ------------------------------------

    def _int(self, schema: Mapping[str, Any], name: str, current: Any, invalid: bool) -> int:
        keyed = [v for v in self.vocab.keyed_values(name) if isinstance(v, int) and not isinstance(v, bool) and v != current]
        sized = _SIZE_PARAMETER.search(name) is not None
        if invalid:
            seen = keyed or self.vocab.ints or [7]
            if sized:  # out of range, but from a small base: precision=692387 runs for minutes in mpmath
                seen = [v for v in seen if abs(v) <= 100] or [self.rng.randint(0, 20)]
            base = self.choice(seen)
            value = -abs(base) - 1 if self.rng.random() < 0.5 else abs(base) * 10 + self.rng.randint(1, 9)
        elif sized:
            # Sizes, counts and precisions drawn from ids in the conversation (precision=94016) make
            # calls that run for seconds and that no model would propose; keep them small.
            value = self.choice([v for v in keyed if 0 <= v <= 100] or [self.rng.randint(0, 20)])
        elif _ID_NAME.search(name):
            value = self.choice(keyed or self._same_digits(current) or self.vocab.ints or [self.rng.randint(0, 10)])
        elif keyed and self.rng.random() < 0.6:
            value = self.choice(keyed) + self.choice((0, 0, -1, 1))
        elif self.vocab.ints and self.rng.random() < 0.6:
            value = self.choice(self.vocab.ints) + self.rng.randint(-2, 2)
        else:
            value = self.rng.randint(0, 10)
        low, high = _bounds(schema, integer=True)
        value = min(max(value, low), high)
        if "multipleOf" in schema and not invalid:
            value = _multiple(value, schema["multipleOf"], low, high, integer=True, also=_steps_kept(schema))
        return int(value)

    def _same_digits(self, current: Any) -> list[int]:
        if not isinstance(current, int):
            return []
        return [v for v in self.vocab.ints if v != current and len(str(abs(v))) == len(str(abs(current)))]

    def _number(self, schema: Mapping[str, Any], name: str, current: Any, invalid: bool) -> float:
        keyed = [float(v) for v in self.vocab.keyed_values(name) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        seen = keyed or self.vocab.numbers + [float(i) for i in self.vocab.ints]
        if invalid:
            value = -round(self.choice(seen or [1.0]) * 10 + 1, 2)
        elif seen and self.rng.random() < 0.75:
            value = round(self.choice(seen) * self.choice((0.5, 0.9, 1.0, 1.1, 1.5, 2.0)), 2)
        else:
            value = round(self.rng.uniform(0, 100), 2)
        low, high = _bounds(schema, integer=False)
        value = min(max(value, low), high)
        if "multipleOf" in schema and not invalid:
            value = _multiple(value, schema["multipleOf"], low, high, also=_steps_kept(schema))
        return float(value)

    # -- strings: by role -----------------------------------------------------------------------------

    def _string(self, schema: Mapping[str, Any], name: str, current: Any, invalid: bool) -> str:
        role = string_role(name, schema, current)
        pools = self._pools(role, name, current)
        fits = self._fits_of(schema)
        if invalid:
            # The first 50 fitting values (the pools hold hundreds; what fits past the 50th was never used).
            seeds = list(itertools.islice((v for pool in pools for v in pool if fits(v)), 50)) or list(
                itertools.islice((v for v in self.vocab.identifiers if fits(v)), 50)
            )
            broken = self._near_misses(seeds)
            broken = [v for v in broken if fits(v) and v != current] or [w for w in self.vocab.prose_words if fits(w)]
            if broken:
                return self.choice(broken)
        if role == "date" and isinstance(current, str) and DATE.match(current) and self.rng.random() < 0.5:
            shifted = _shift_date(current, self.choice((-7, -2, -1, 1, 2, 7)))
            if shifted and fits(shifted):
                return shifted
        if role == "expression":
            expression = self._expression()
            if fits(expression) and expression != current:
                return expression
        for pool in pools:
            fitting = self._others(fits, pool, current)
            if fitting:
                return self.choice(fitting)
        if role in ("email", "phone", "identifier"):  # nothing else seen: a near miss of what was, else any word
            if self.strict:
                raise _Unseen(name)
            self.guessed = self.guessed or name
            known = [*pools[0], *([current] if isinstance(current, str) and current and not is_placeholder(current) else [])]
            near = [_corrupt(self.rng, v, self.choice) for v in known]
            near = [v for v in near if v != current and fits(v)]
            for pool in [near] if near else [self.vocab.user_words, self.vocab.words]:
                fitting = fits.others(pool, current)
                if fitting:
                    return self.choice(fitting)
        if role == "date" and (schema.get("format") == "date" or (isinstance(current, str) and DATE.match(current))):
            made = self._new_date(current)  # no other date seen: one a date argument takes, not a word ("notes_35")
            if made is not None and fits(made):
                return made
        synthetic = f"{self.choice(_SYNTHETIC)}_{self.rng.randint(1, 99)}"
        return (synthetic + "x" * fits.low)[: max(fits.low, min(fits.high, len(synthetic)))]

    def _new_date(self, current: Any) -> str | None:
        """An ISO date other than ``current``: ``current`` moved by some days where it is a date, else a day of 2025-2026
        (fixed, so that proposals stay the same whatever day replay runs)."""
        if isinstance(current, str) and DATE.match(current):
            return _shift_date(current, self.choice((-30, -14, -3, 3, 14, 30)))
        return (_FIRST_NEW_DATE + dt.timedelta(days=self.rng.randint(0, 729))).isoformat()

    def _near_misses(self, values: list[str]) -> list[str]:
        """``[_corrupt(self.rng, v, self.choice) for v in values]``: for a plain ``random.Random``, the draws of
        :func:`_chooser` written out in one loop (the same ``getrandbits`` calls, so the same values)."""
        if type(self.rng) is not random.Random:
            return [_corrupt(self.rng, v, self.choice) for v in values]
        bits = self.rng.getrandbits
        out = []
        for value in values:
            digits, letters = _positions(value)
            positions, others, alphabet = (digits, _OTHER_DIGITS, _DIGITS) if digits else (letters, _OTHER_LETTERS, _LETTERS)
            if not positions:
                out.append(value + "x")
                continue
            n = len(positions)
            k = n.bit_length()
            r = bits(k)
            while r >= n:
                r = bits(k)
            i = positions[r]
            options = others.get(value[i] if digits else value[i].lower(), alphabet)
            n = len(options)
            k = n.bit_length()
            r = bits(k)
            while r >= n:
                r = bits(k)
            replacement = options[r]
            if not digits and value[i].isupper():
                replacement = replacement.upper()
            out.append(value[:i] + replacement + value[i + 1 :])
        return out

    def _fits_of(self, schema: Mapping[str, Any]) -> _Fits:
        found = self._fits.get(id(schema))
        if found is None or found[0] is not schema:
            found = self._fits[id(schema)] = (schema, _Fits(schema))
        return found[1]

    def _others(self, fits: _Fits, pool: list[str], current: Any) -> list[str]:
        """``fits.others(pool, current)`` for a pool of this point, listed once per pool, value and length bound (shared: read it only)."""
        if not fits.length_only or not (current is None or isinstance(current, str)):
            return fits.others(pool, current)
        key = (id(pool), current, fits.high)
        found = self._fitting.get(key)
        if found is None or found[0] is not pool:
            found = self._fitting[key] = (pool, fits.others(pool, current))
        return found[1]

    def _expression(self) -> str:
        """Arithmetic over numbers seen (``3 * 129.0``)."""
        numbers = [str(n) for n in [*self.vocab.ints, *self.vocab.numbers] if n >= 0] or ["1", "2"]
        return f"{self.choice(numbers)} {self.choice('+-*/')} {self.choice(numbers)}"

    def input_weight(self, schema: Mapping[str, Any]) -> float:
        """How readily an agent would call a tool with ``schema`` here: 4 when it takes ids, e-mails or phones
        and every required one has a seen value, 1 when it takes none, 0.5 when one has none seen."""
        return self._weight(_id_inputs(schema))

    def _weight(self, inputs: tuple[tuple[str, str], ...]) -> float:
        """:meth:`input_weight` from the schema's :func:`_id_inputs`."""
        for role, key in inputs:
            if not self._pools(role, key, None)[0]:
                return 0.5
        return 4.0 if inputs else 1.0

    def _pools(self, role: str, name: str, current: Any) -> list[list[str]]:
        """Candidate values for a string of ``role``, best first (the lists are shared: read them, never change them)."""
        key = (role, name, current if isinstance(current, str) else None)  # only a string ``current`` shapes the pools
        pools = self._pool_cache.get(key)
        if pools is None:
            pools = self._pool_cache[key] = self._make_pools(role, name, current)
        return pools

    def _make_pools(self, role: str, name: str, current: Any) -> list[list[str]]:
        v = self.vocab
        keyed = [str(x) for x in v.keyed_values(name) if isinstance(x, (str, int)) and not isinstance(x, bool)]
        if role == "email":
            return [keyed + v.emails]
        if role == "phone":
            return [keyed + v.phones]
        if role == "date":
            return [keyed + v.dates]
        if role == "path":
            return [_prefer_for_name(keyed + v.strings + v.words, name), v.user_words + v.words]
        if role == "identifier":
            return self._identifiers(keyed, current)
        if role == "phrase":
            return [keyed + v.phrases, v.user_words, v.words, v.strings, v.prose_words]
        if role == "word":
            return [keyed + v.user_words, v.words, v.strings, v.prose_words]
        return [keyed, v.user_words + v.strings, v.words, v.prose_words]

    def _identifiers(self, keyed: list[str], current: Any) -> list[list[str]]:
        """Identifiers seen under the argument's name, then others of the same form, finest match first."""
        references = [*keyed, *([current] if isinstance(current, str) and current else [])]
        if not references:
            if self._unclaimed is None:
                self._unclaimed = self.vocab.unclaimed_identifiers()
            return [self._unclaimed]
        shapes = {shape(r) for r in references}
        coarse = {coarse_shape(r) for r in references}
        same = [i for i in self.vocab.identifiers if shape(i) in shapes]
        similar = [i for i in self.vocab.identifiers if coarse_shape(i) in coarse]
        return [list(dict.fromkeys(keyed + same)), similar]


def _id_inputs(schema: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The required arguments of ``schema`` that take an e-mail address, a phone number or an identifier: (role, name), in order."""
    props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    inputs = []
    for key in schema.get("required") or ():
        sub = props.get(key)
        if not isinstance(sub, Mapping) or "enum" in sub or sub.get("type") not in ("string", None):
            continue
        role = string_role(key, sub)
        if role in ("email", "phone", "identifier"):
            inputs.append((role, key))
    return tuple(inputs)


class _Perturbations:
    """What the expert's own call allows: the operations, and the arguments each draws from (the same for every try at a point)."""

    def __init__(self, expert: ToolCall, schemas: ToolSchemas) -> None:
        self.props, self.required = schemas.arguments_of(expert.name)
        arguments, props, required = expert.arguments, self.props, self.required
        defaults = schemas.defaults(expert.name)
        self.changeable = [key for key in arguments if key in props]
        # Dropping an argument the expert set to its default gives the expert's call again.
        self.droppable = [key for key in arguments if key not in required and not (defaults and defaults.is_default(key, arguments[key]))]
        self.addable = [key for key in props if key not in arguments]
        self.ops = [op for op, keys in (("change", self.changeable), ("drop", self.droppable), ("add", self.addable)) if keys]


class _Fits:
    """Whether a string fits a schema's length and pattern constraints."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.low = int(schema.get("minLength", 0) or 0)
        self.high = int(schema.get("maxLength", 10_000) or 10_000)
        self.pattern = schema.get("pattern")
        self.length_only = self.low <= 0 and not isinstance(self.pattern, str)
        """Only a maximum length to check (most schemas): the hot loops compare lengths and call nothing."""

    def __call__(self, value: str) -> bool:
        return self.low <= len(value) <= self.high and _matches(self.pattern, value)

    def others(self, pool: list[str], current: Any) -> list[str]:
        """The values of ``pool`` that fit and differ from ``current``, in order."""
        if self.length_only:
            high = self.high
            return [v for v in pool if v != current and len(v) <= high]
        return [v for v in pool if v != current and self(v)]


def _chooser(rng: random.Random) -> Callable[[Sequence[Any]], Any]:
    """``rng.choice`` without its two Python calls per draw (``choice`` and ``_randbelow``), for a plain
    ``random.Random``: the same ``getrandbits`` draws, so the same values (a subclass keeps its own ``choice``)."""
    if type(rng) is not random.Random:
        return rng.choice
    bits = rng.getrandbits

    def choice(seq: Sequence[Any]) -> Any:
        n = len(seq)
        if not n:
            raise IndexError("Cannot choose from an empty sequence")
        k = n.bit_length()
        r = bits(k)
        while r >= n:
            r = bits(k)
        return seq[r]

    return choice


def _corrupt(rng: random.Random, value: str, choice: Callable[[Sequence[Any]], Any] | None = None) -> str:
    """A well-formed near miss of ``value``: one digit (else one letter) changed, the form kept (``choice``: ``rng``'s :func:`_chooser`)."""
    choice = choice or rng.choice
    digits, letters = _positions(value)
    if digits:
        i = choice(digits)
        replacement = choice(_OTHER_DIGITS.get(value[i], _DIGITS))
    elif letters:
        i = choice(letters)
        replacement = choice(_OTHER_LETTERS.get(value[i].lower(), _LETTERS))
        replacement = replacement.upper() if value[i].isupper() else replacement
    else:
        return value + "x"
    return value[:i] + replacement + value[i + 1 :]


_DIGITS = tuple("0123456789")
_LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
# The choices _corrupt draws from, made once (the same sequences, so the same draws, as building them per call).
_OTHER_DIGITS = {d: tuple(x for x in _DIGITS if x != d) for d in _DIGITS}
_OTHER_LETTERS = {c: tuple(x for x in _LETTERS if x != c) for c in _LETTERS}


@functools.lru_cache(maxsize=16384)
def _positions(value: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where ``value`` has digits and letters (``str.isdigit``/``isalpha``; cached: the same values are corrupted again and again)."""
    return tuple(i for i, c in enumerate(value) if c.isdigit()), tuple(i for i, c in enumerate(value) if c.isalpha())


_FIRST_NEW_DATE = dt.date(2025, 1, 1)


def _shift_date(value: str, days: int) -> str | None:
    try:
        return (dt.date.fromisoformat(value) + dt.timedelta(days=days)).isoformat()
    except ValueError:
        return None


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float, float]:
    step = 1 if integer else 0.01
    low = float("-inf")
    high = float("inf")
    if isinstance(schema.get("minimum"), (int, float)):
        low = schema["minimum"]
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        low = max(low, schema["exclusiveMinimum"] + step)
    if isinstance(schema.get("maximum"), (int, float)):
        high = schema["maximum"]
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        high = min(high, schema["exclusiveMaximum"] - step)
    return low, high


def _matches(pattern: Any, value: str) -> bool:
    if not isinstance(pattern, str):
        return True
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return True


def _prefer_for_name(options: list[str], name: str) -> list[str]:
    """File-ish parameters prefer file-ish values (``notes.txt``), folder-ish ones plain names, when there are any."""
    lowered = name.lower()
    options = list(dict.fromkeys(options))
    if any(hint in lowered for hint in ("file", "path", "source", "destination")):
        dotted = [o for o in options if "." in o or "/" in o]
        return dotted or options
    if any(hint in lowered for hint in ("dir", "folder")):
        plain = [o for o in options if "." not in o]
        return plain or options
    return options


class MutationPolicy:
    """Proposes schema-valid alternatives by generating and perturbing arguments; no model involved.

    ``same_tool_share`` is the fraction of candidates that keep the expert's tool and change its
    arguments (the rest call another offered tool); ``optional_arg_rate`` is the chance that a
    generated call also sets an optional argument; ``invalid_share`` is the fraction of candidates
    given one deliberately invalid value (a near miss of a seen id, a number out of the seen range;
    0 for none); ``patience`` is how many failed tries in a row (invalid, duplicate, or the
    expert's own action) one kind of candidate gets before it is given up.
    """

    def __init__(
        self,
        name: str = "mutate",
        *,
        same_tool_share: float = 0.5,
        optional_arg_rate: float = 0.3,
        invalid_share: float = 0.15,
        patience: int = 25,
    ) -> None:
        for option, value in (
            ("same_tool_share", same_tool_share),
            ("optional_arg_rate", optional_arg_rate),
            ("invalid_share", invalid_share),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{option} must be a number between 0 and 1, got {value!r}")
        self.name = name
        self.same_tool_share = float(same_tool_share)
        self.optional_arg_rate = float(optional_arg_rate)
        self.invalid_share = float(invalid_share)
        self.patience = patience
        self._local = threading.local()

    def describe(self) -> dict[str, Any]:
        """The settings that shape proposals."""
        return {
            "policy": self.name,
            "same_tool_share": self.same_tool_share,
            "optional_arg_rate": self.optional_arg_rate,
            "invalid_share": self.invalid_share,
        }

    def close(self) -> None:
        """Nothing to release."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}  # a policy crosses to worker processes without its caches

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _harvester(self) -> Harvester:
        """This thread's :class:`Harvester` (a trajectory's successive states are read incrementally)."""
        harvester = getattr(self._local, "harvester", None)
        if harvester is None:
            harvester = self._local.harvester = Harvester()
        return harvester

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        """Up to ``k`` distinct schema-valid calls, none equal to the expert's (fewer only when the schemas allow fewer)."""
        schemas = tool_schemas_for(point.tools)
        rng = random.Random(f"{self.name}:{seed}:{point.trajectory_id}:{point.step_index}")
        maker = _ValueMaker(rng, self._harvester().harvest(point), self.optional_arg_rate)
        settings = {"same_tool_share": self.same_tool_share, "invalid_share": self.invalid_share}
        # Calls as the tools receive them: an argument at its default is the argument left out, 30.0 is 30.
        seen = {schemas.call_key(point.expert.name, dict(point.expert.arguments))}
        failures = {"same": 0, "other": 0}
        if point.expert.name not in schemas:
            failures["same"] = _CLOSED
        if not [n for n in schemas.names if n != point.expert.name]:
            failures["other"] = _CLOSED
        candidates: list[Candidate] = []
        n_same = n_invalid = 0
        while len(candidates) < k:
            open_modes = [m for m, f in failures.items() if f < self.patience]
            if not open_modes and maker.strict:
                # Too few alternatives from seen values alone: allow guesses for ids never seen.
                maker.strict = False
                failures = {m: 0 if f < _CLOSED else f for m, f in failures.items()}
                open_modes = [m for m, f in failures.items() if f < self.patience]
            wants_same = (n_same + 0.5) / (len(candidates) + 1) <= self.same_tool_share
            mode = "same" if (wants_same and "same" in open_modes) or open_modes == ["same"] else "other"
            if not open_modes:
                break
            invalid = self.invalid_share > 0 and (n_invalid + 0.5) / (len(candidates) + 1) <= self.invalid_share
            maker.guessed = None
            try:
                name, arguments, broken = (
                    self._perturb(point.expert, schemas, maker, invalid)
                    if mode == "same"
                    else self._other_tool(point.expert, schemas, maker, invalid)
                )
            except _Unseen:
                failures[mode] += 1  # a failed try (as the expert's own call would be, which `seen` holds)
                continue
            key = canonical_call(name, arguments)
            received = schemas.call_key(name, arguments, key)
            if received in seen or not schemas.accepts(name, arguments):
                failures[mode] += 1
                continue
            failures[mode] = 0
            seen.add(received)
            n_same += mode == "same"
            n_invalid += bool(broken)
            call = ToolCall(id=call_id_of(key, len(candidates)), name=name, arguments=arguments)
            marks = {"deliberately_invalid": broken} if broken else {"guessed": maker.guessed} if maker.guessed else {}
            proposer = ProposerInfo(policy=self.name, seed=seed, settings={**settings, **marks})
            candidates.append(Candidate(call=call, proposer=proposer, checked=(schemas, key)))
        return Proposals(candidates)

    def _other_tool(
        self, expert: ToolCall, schemas: ToolSchemas, maker: _ValueMaker, invalid: bool
    ) -> tuple[str, dict[str, Any], str | None]:
        if maker.other_tools is None:
            others = [n for n in schemas.names if n != expert.name]
            # An agent calls tools it has the inputs for: those whose ids, e-mails and phones it has seen come first.
            weights = [maker._weight(_memo_id_inputs(schemas, n)) for n in others]
            maker.other_tools = (others, list(itertools.accumulate(weights)))  # what random.choices(others, weights) sums up
        others, cum_weights = maker.other_tools
        name = maker.rng.choices(others, cum_weights=cum_weights)[0]
        arguments, broken = maker.arguments(schemas.resolved(name), invalid)
        return name, arguments, broken

    def _perturb(self, expert: ToolCall, schemas: ToolSchemas, maker: _ValueMaker, invalid: bool) -> tuple[str, dict[str, Any], str | None]:
        plan = maker.perturbations
        if plan is None:
            plan = maker.perturbations = _Perturbations(expert, schemas)
        props, ops = plan.props, plan.ops
        arguments = dict(expert.arguments)
        if not ops:
            return expert.name, arguments, None
        op = "change" if invalid and "change" in ops else maker.choice(ops)
        if op == "change":
            key = maker.choice(plan.changeable)
            arguments[key] = self._different_value(props[key], key, arguments[key], maker, invalid)
            return expert.name, arguments, key if invalid and _breakable(props[key]) else None
        if op == "drop":
            del arguments[maker.choice(plan.droppable)]
        else:
            key = maker.choice(plan.addable)
            arguments[key] = maker.value(props[key], key)
        return expert.name, arguments, None

    @staticmethod
    def _different_value(schema: Any, name: str, current: Any, maker: _ValueMaker, invalid: bool) -> Any:
        if isinstance(current, bool) and isinstance(schema, Mapping) and schema.get("type") == "boolean":
            return not current
        value = current
        for _ in range(5):  # a few draws usually find a different value; the caller rejects a repeat
            value = maker.value(schema, name, current=current, invalid=invalid and _breakable(schema))
            if value != current:
                break
        return value


def _memo_id_inputs(schemas: ToolSchemas, name: str) -> tuple[tuple[str, str], ...]:
    """:func:`_id_inputs` of tool ``name``, kept with the schemas (it depends on them alone)."""
    key = ("mutate.id_inputs", name)
    found = schemas.memo.get(key)
    if found is None:
        found = schemas.memo[key] = _id_inputs(schemas.resolved(name))
    return found


def _multiple(value: float, step: Any, low: float, high: float, *, integer: bool = False, also: Sequence[Any] = ()) -> float:
    """``value`` moved to the nearest multiple of ``step`` within ``[low, high]`` that a validator takes for one, of the
    steps in ``also`` as well (``value`` when ``step`` is no positive number or no such multiple lies near).

    A decimal step's multiples are those of the decimal it spells (``0.07``: 7/100), and one that a validator's float
    division ``value / step`` does not take for a whole number (``0.07 * 3 / 0.07``) is passed over for the next nearest
    that it does. With ``integer``, only whole multiples: of 3 for a step of 1.5.
    """
    if not _is_step(step):
        return value
    steps = [step, *(s for s in also if _is_step(s))]
    unit = step_fraction(step)
    if integer:
        unit = Fraction(unit.numerator)  # n * p/q (in lowest terms) is whole when q divides n: the multiples of p
    first = math.ceil(Fraction(low) / unit) if math.isfinite(low) else None
    last = math.floor(Fraction(high) / unit) if math.isfinite(high) else None
    if first is not None and last is not None and first > last:
        return value
    n = round(Fraction(value) / unit) if math.isfinite(value) else (first if first is not None else 0)
    n = max(n, first) if first is not None else n
    n = min(n, last) if last is not None else n
    for offset in range(_MULTIPLE_TRIES):
        candidate = n + (offset + 1) // 2 * (1 if offset % 2 else -1)  # n, n + 1, n - 1, n + 2, ...
        if (first is not None and candidate < first) or (last is not None and candidate > last):
            continue
        exact = candidate * unit
        multiple = int(exact) if integer or (isinstance(value, int) and exact.denominator == 1) else float(exact)
        if low <= multiple <= high and all(_divides(multiple, s) for s in steps):
            return multiple
    return value


_MULTIPLE_TRIES = 41
"""How many multiples nearest the value :func:`_multiple` tries (for ``0.07`` about one in five is not taken)."""


def _is_step(step: Any) -> bool:
    return not isinstance(step, bool) and isinstance(step, (int, float)) and step > 0 and math.isfinite(step)


def _divides(value: float, step: float) -> bool:
    """Whether jsonschema (which validates every schema with ``multipleOf``) takes ``value`` for a multiple of ``step``."""
    if isinstance(step, float):
        quotient = value / step
        try:
            return int(quotient) == quotient
        except OverflowError:
            return (Fraction(value) / Fraction(step)).denominator == 1
    return value % step == 0


def _steps_kept(schema: Mapping[str, Any]) -> list[Any]:
    """The ``multipleOf`` s that :func:`~ee_middleware.replay.policies.schema.resolve_schema` kept in an ``allOf``
    besides the merged one."""
    members = schema.get("allOf")
    if not isinstance(members, list):
        return []
    return [m["multipleOf"] for m in members if isinstance(m, Mapping) and "multipleOf" in m]


def _breakable(schema: Any) -> bool:
    """Whether a value of ``schema`` can be made deliberately invalid (strings and numbers without an enum)."""
    return (
        isinstance(schema, Mapping)
        and schema.get("type") in ("string", "integer", "number")
        and "enum" not in schema
        and "const" not in schema
    )
