"""The schema-driven mutation policy: plausible alternative tool calls without a model.

Two kinds of alternatives, mixed by ``same_tool_share``:

- another offered tool, with its required arguments (and sometimes optional ones) generated from its
  schema;
- the expert's own tool with one change: a value swapped for another of the right type, an
  optional argument dropped or added.

Values are drawn, where the schema allows, from a vocabulary harvested from the state (the words,
file names, ids and numbers in the messages and in earlier tool calls) so that alternatives look like
what an agent in that conversation might have tried. Every candidate validates against the offered
schemas; none equals the expert's action; all are distinct. Seeded: the same decision point, ``k``
and ``seed`` give the same candidates.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.models.parsing import call_id, canonical_call
from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.policies.schema import ToolSchemas, tool_schemas_for

_WORD = re.compile(r"[A-Za-z0-9][\w.\-/]*\w")
_INT = re.compile(r"(?<![\w.])-?\d{1,9}(?![\w.])")
_STOPWORDS = frozenset(
    {
        "the",
        "and",
        "for",
        "are",
        "but",
        "not",
        "you",
        "your",
        "with",
        "this",
        "that",
        "have",
        "from",
        "they",
        "will",
        "would",
        "there",
        "their",
        "what",
        "about",
        "which",
        "when",
        "make",
        "like",
        "time",
        "just",
        "him",
        "know",
        "take",
        "into",
        "year",
        "them",
        "some",
        "could",
        "than",
        "then",
        "now",
        "look",
        "only",
        "come",
        "its",
        "over",
        "think",
        "also",
        "back",
        "after",
        "use",
        "two",
        "how",
        "our",
        "work",
        "first",
        "well",
        "way",
        "even",
        "new",
        "want",
        "because",
        "any",
        "these",
        "give",
        "day",
        "most",
        "can",
        "was",
        "has",
        "had",
        "please",
        "should",
        "were",
        "been",
        "being",
        "did",
        "does",
        "done",
        "here",
        "more",
        "other",
        "such",
        "very",
    }
)
_MAX_WORDS = 300
_MAX_DEPTH = 4
_SYNTHETIC = ("alpha", "beta", "gamma", "delta", "notes", "report", "draft", "test", "main", "data")


@dataclass
class Vocabulary:
    """Values seen at a decision point, to draw plausible arguments from."""

    words: list[str] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)
    """Whole string argument values of earlier tool calls and of the expert's action."""
    ints: list[int] = field(default_factory=list)
    numbers: list[float] = field(default_factory=list)

    @classmethod
    def harvest(cls, point: DecisionPoint) -> Vocabulary:
        """Collect words, argument strings and numbers from the state messages and the expert call."""
        vocab = cls()
        texts: list[str] = []
        for message in point.state:
            texts.extend(_message_texts(message))
            for arguments in _message_arguments(message):
                vocab._add_values(arguments)
        vocab._add_values(point.expert.arguments)
        for text in texts:
            vocab._add_text(text)
        vocab.words = list(dict.fromkeys(vocab.words))[:_MAX_WORDS]
        vocab.strings = list(dict.fromkeys(vocab.strings))
        vocab.ints = list(dict.fromkeys(vocab.ints))
        vocab.numbers = list(dict.fromkeys(vocab.numbers))
        return vocab

    def _add_text(self, text: str) -> None:
        for word in _WORD.findall(text):
            if 2 <= len(word) <= 40 and word.lower() not in _STOPWORDS:
                self.words.append(word)
        self.ints.extend(int(m) for m in _INT.findall(text))

    def _add_values(self, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            self.ints.append(value)
        elif isinstance(value, float):
            self.numbers.append(value)
        elif isinstance(value, str):
            if 0 < len(value) <= 80:
                self.strings.append(value)
            self._add_text(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                self._add_values(item)
        elif isinstance(value, list):
            for item in value:
                self._add_values(item)


def _message_texts(message: Mapping[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [str(part.get("text")) for part in content if isinstance(part, Mapping) and part.get("text")]
    return []


def _message_arguments(message: Mapping[str, Any]) -> Iterable[Any]:
    for item in message.get("tool_calls") or ():
        function = item.get("function", item) if isinstance(item, Mapping) else {}
        arguments = function.get("arguments", function.get("args")) if isinstance(function, Mapping) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                continue
        yield arguments


class _ValueMaker:
    """Generates schema-conforming values, preferring the vocabulary."""

    def __init__(self, rng: random.Random, vocab: Vocabulary, optional_arg_rate: float) -> None:
        self.rng = rng
        self.vocab = vocab
        self.optional_arg_rate = optional_arg_rate

    def arguments(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """Required arguments, plus each optional one with probability ``optional_arg_rate``."""
        return self._object(schema, 0)

    def value(self, schema: Any, name: str = "", depth: int = 0) -> Any:
        if not isinstance(schema, Mapping):
            return self._string({}, name)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.value(self.rng.choice(schema[key]), name, depth + 1)
        kind = self._type(schema)
        if depth > _MAX_DEPTH:
            return {"object": {}, "array": [], "integer": 0, "number": 0, "boolean": False, "null": None}.get(kind, "")
        if kind == "object":
            return self._object(schema, depth + 1)
        if kind == "array":
            return self._array(schema, name, depth + 1)
        if kind == "integer":
            return self._int(schema, name)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, name)

    def _type(self, schema: Mapping[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [k for k in kind if k != "null"] or ["null"]
            kind = self.rng.choice(options)
        if isinstance(kind, str):
            return kind
        if "properties" in schema:
            return "object"
        return "array" if "items" in schema or "prefixItems" in schema else "string"

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if key in required or self.rng.random() < self.optional_arg_rate:
                out[key] = self.value(sub, key, depth)
        return out

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

    def _int(self, schema: Mapping[str, Any], name: str = "") -> int:
        if _SIZE_PARAMETER.search(name):
            # Sizes, counts and precisions drawn from ids in the conversation (precision=94016) make
            # calls that run for seconds and that no model would propose; keep them small.
            value = self.rng.randint(0, 20)
        elif self.vocab.ints and self.rng.random() < 0.6:
            value = self.rng.choice(self.vocab.ints) + self.rng.randint(-2, 2)
        else:
            value = self.rng.randint(0, 10)
        low, high = _bounds(schema, integer=True)
        return int(min(max(value, low), high))

    def _number(self, schema: Mapping[str, Any]) -> float:
        seen = self.vocab.numbers + [float(i) for i in self.vocab.ints]
        if seen and self.rng.random() < 0.6:
            value = round(self.rng.choice(seen) * self.rng.choice((0.5, 0.9, 1.1, 1.5, 2.0)), 2)
        else:
            value = round(self.rng.uniform(0, 100), 2)
        low, high = _bounds(schema, integer=False)
        return float(min(max(value, low), high))

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        low = int(schema.get("minLength", 0) or 0)
        high = int(schema.get("maxLength", 10_000) or 10_000)
        pattern = schema.get("pattern")
        pools = [self.vocab.strings, self.vocab.words] if self.rng.random() < 0.4 else [self.vocab.words, self.vocab.strings]
        for pool in pools:
            unconstrained = pattern is None and low == 0 and high >= 10_000
            fitting = pool if unconstrained else [s for s in pool if low <= len(s) <= high and _matches(pattern, s)]
            if fitting:
                return self.rng.choice(_prefer_for_name(fitting, name))
        synthetic = f"{self.rng.choice(_SYNTHETIC)}_{self.rng.randint(1, 99)}"
        return (synthetic + "x" * low)[: max(low, min(high, len(synthetic)))]


_SIZE_PARAMETER = re.compile(r"(precision|count|lines|limit|num|size|depth|times|repeat|max|min|length|digits|top|n$)", re.IGNORECASE)


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
    """File-ish parameters prefer file-ish words (``notes.txt``), when there are any."""
    lowered = name.lower()
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
    generated call also sets an optional argument; ``patience`` is how many failed tries in a row
    (invalid, duplicate, or the expert's own action) one kind of candidate gets before it is given up.
    """

    def __init__(self, name: str = "mutate", *, same_tool_share: float = 0.5, optional_arg_rate: float = 0.3, patience: int = 25) -> None:
        if not 0.0 <= same_tool_share <= 1.0 or not 0.0 <= optional_arg_rate <= 1.0:
            raise ValueError("same_tool_share and optional_arg_rate must be between 0 and 1")
        self.name = name
        self.same_tool_share = same_tool_share
        self.optional_arg_rate = optional_arg_rate
        self.patience = patience

    def describe(self) -> dict[str, Any]:
        """The settings that shape proposals."""
        return {"policy": self.name, "same_tool_share": self.same_tool_share, "optional_arg_rate": self.optional_arg_rate}

    def close(self) -> None:
        """Nothing to release."""

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        """Up to ``k`` distinct schema-valid calls, none equal to the expert's (fewer only when the schemas allow fewer)."""
        schemas = tool_schemas_for(point.tools)
        rng = random.Random(f"{self.name}:{seed}:{point.trajectory_id}:{point.step_index}")
        maker = _ValueMaker(rng, Vocabulary.harvest(point), self.optional_arg_rate)
        proposer = ProposerInfo(policy=self.name, seed=seed, settings={"same_tool_share": self.same_tool_share})
        seen = {canonical_call(point.expert.name, point.expert.arguments)}
        failures = {"same": 0, "other": 0}
        if point.expert.name not in schemas:
            failures["same"] = self.patience
        if not [n for n in schemas.names if n != point.expert.name]:
            failures["other"] = self.patience
        candidates: list[Candidate] = []
        n_same = 0
        while len(candidates) < k:
            open_modes = [m for m, f in failures.items() if f < self.patience]
            if not open_modes:
                break
            wants_same = (n_same + 0.5) / (len(candidates) + 1) <= self.same_tool_share
            mode = "same" if (wants_same and "same" in open_modes) or open_modes == ["same"] else "other"
            name, arguments = (
                self._perturb(point.expert, schemas, maker) if mode == "same" else self._other_tool(point.expert, schemas, maker)
            )
            key = canonical_call(name, arguments)
            if key in seen or schemas.check(name, arguments) is not None:
                failures[mode] += 1
                continue
            failures[mode] = 0
            seen.add(key)
            n_same += mode == "same"
            call = ToolCall(id=call_id(name, arguments, len(candidates)), name=name, arguments=arguments)
            candidates.append(Candidate(call=call, proposer=proposer))
        return Proposals(candidates)

    def _other_tool(self, expert: ToolCall, schemas: ToolSchemas, maker: _ValueMaker) -> tuple[str, dict[str, Any]]:
        name = maker.rng.choice([n for n in schemas.names if n != expert.name])
        return name, maker.arguments(schemas.parameters(name))

    def _perturb(self, expert: ToolCall, schemas: ToolSchemas, maker: _ValueMaker) -> tuple[str, dict[str, Any]]:
        props = schemas.properties(expert.name)
        required = set(schemas.required(expert.name))
        arguments = dict(expert.arguments)
        ops = []
        if any(key in props for key in arguments):
            ops.append("change")
        if any(key not in required for key in arguments):
            ops.append("drop")
        if any(key not in arguments for key in props):
            ops.append("add")
        if not ops:
            return expert.name, arguments
        op = maker.rng.choice(ops)
        if op == "change":
            key = maker.rng.choice([key for key in arguments if key in props])
            arguments[key] = self._different_value(props[key], key, arguments[key], maker)
        elif op == "drop":
            del arguments[maker.rng.choice([key for key in arguments if key not in required])]
        else:
            key = maker.rng.choice([key for key in props if key not in arguments])
            arguments[key] = maker.value(props[key], key)
        return expert.name, arguments

    @staticmethod
    def _different_value(schema: Any, name: str, current: Any, maker: _ValueMaker) -> Any:
        if isinstance(current, bool) and isinstance(schema, Mapping) and schema.get("type") == "boolean":
            return not current
        value = current
        for _ in range(5):  # a few draws usually find a different value; the caller rejects a repeat
            value = maker.value(schema, name)
            if value != current:
                break
        return value
