"""BFCL multi-turn entries, ground truth and tool schemas, read straight from the package's files."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ee_middleware.bfcl._package import INSTALL_HINT, import_bfcl, package_dir
from ee_middleware.errors import ConfigError

MULTI_TURN_CATEGORIES: tuple[str, ...] = (
    "multi_turn_base",
    "multi_turn_miss_func",
    "multi_turn_miss_param",
    "multi_turn_long_context",
)
"""The BFCL multi-turn categories with executable backends and ground truth."""

ADDITIONAL_FUNCTIONS_PROMPT = "I have updated some more functions you can choose from. What about now?"  # BFCL's holdout-turn prompt


@dataclass(frozen=True)
class BFCLEntry:
    """One multi-turn BFCL task: user turns, the world's initial state and the ground-truth calls."""

    id: str
    category: str
    turns: list[list[dict[str, Any]]]
    """User messages per turn (an empty turn is a holdout turn that adds ``missed_functions``)."""
    initial_config: dict[str, Any]
    involved_classes: list[str]
    ground_truth: list[list[str]]
    """Ground-truth calls per turn, as Python call expressions (``"mv(source='a', destination='b')"``)."""
    excluded_functions: list[str] = field(default_factory=list)
    missed_functions: dict[int, list[str]] = field(default_factory=dict)
    """Functions held out until a turn (``multi_turn_miss_func``): turn index -> names."""

    @property
    def long_context(self) -> bool:
        return "long_context" in self.category or "composite" in self.category

    @property
    def environment(self) -> dict[str, Any]:
        """The environment reference stored with the trajectory: all a sandbox needs to rebuild the world."""
        return {
            "kind": "bfcl",
            "entry_id": self.id,
            "category": self.category,
            "initial_config": self.initial_config,
            "involved_classes": self.involved_classes,
            "long_context": self.long_context,
        }

    def tools_at_turn(self, turn: int) -> list[dict[str, Any]]:
        """OpenAI tool schemas offered at ``turn`` (held-out functions appear from their turn on)."""
        hidden = {name for t, names in self.missed_functions.items() if t > turn for name in names}
        docs = [d for d in function_docs(tuple(self.involved_classes)) if d["name"] not in set(self.excluded_functions) | hidden]
        return [openai_tool(d) for d in docs]


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    path = package_dir() / "data" / name
    if not path.exists():
        raise ConfigError(f"BFCL data file {path} is missing. Reinstall bfcl-eval: {INSTALL_HINT}")
    rows = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except ValueError as exc:  # (UnicodeDecodeError too: a task's text altered, not loaded as if it were whole)
                raise ConfigError(
                    f"BFCL data file {path} is damaged: line {number} is not JSON ({exc}). Reinstall bfcl-eval: {INSTALL_HINT}"
                ) from exc
            if not isinstance(row, dict):
                raise ConfigError(
                    f"BFCL data file {path} is damaged: line {number} is not a JSON object. Reinstall bfcl-eval: {INSTALL_HINT}"
                )
            rows.append(row)
    return rows


def load_entries(category: str, *, limit: int | None = None, ids: Sequence[str] | None = None) -> list[BFCLEntry]:
    """The entries of a multi-turn category (in file order), optionally the first ``limit`` or the given ``ids``."""
    if category not in MULTI_TURN_CATEGORIES:
        raise ConfigError(f"Unknown BFCL multi-turn category {category!r}. Choose one of: {', '.join(MULTI_TURN_CATEGORIES)}.")
    questions = _read_jsonl(f"BFCL_v4_{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(f"possible_answer/BFCL_v4_{category}.json")}
    wanted = set(ids) if ids is not None else None
    entries = []
    for q in questions:
        if wanted is not None and q["id"] not in wanted:
            continue
        entries.append(
            BFCLEntry(
                id=q["id"],
                category=category,
                turns=q["question"],
                initial_config=q.get("initial_config", {}),
                involved_classes=list(q["involved_classes"]),
                ground_truth=answers[q["id"]],
                excluded_functions=list(q.get("excluded_function", [])),
                missed_functions={int(k): list(v) for k, v in q.get("missed_function", {}).items()},
            )
        )
        if limit is not None and len(entries) >= limit:
            break
    if wanted is not None and len(entries) < len(wanted):
        missing = sorted(wanted - {e.id for e in entries})
        raise ConfigError(f"No BFCL entries {missing} in {category}.")
    return entries


def iter_ground_truth_calls(entry: BFCLEntry) -> Iterator[tuple[int, str]]:
    """``(turn, call expression)`` for every ground-truth call, in order."""
    for turn, calls in enumerate(entry.ground_truth):
        for call in calls:
            yield turn, call


@cache
def function_docs(involved_classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """BFCL's function documents for the given backend classes (``name``, ``description``, ``parameters``)."""
    mapping = import_bfcl("constants.executable_backend_config").MULTI_TURN_FUNC_DOC_FILE_MAPPING
    docs: list[dict[str, Any]] = []
    for class_name in involved_classes:
        if class_name not in mapping:
            raise ConfigError(f"Unknown BFCL backend class {class_name!r}. Known: {', '.join(sorted(mapping))}.")
        docs.extend(_read_jsonl(f"multi_turn_func_doc/{mapping[class_name]}"))
    return docs


_TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array", "any": None}


def json_schema(schema: Any) -> Any:
    """BFCL's parameter schema as standard JSON Schema (``dict`` -> ``object``, ``float`` -> ``number``, ...)."""
    if isinstance(schema, list):
        return [json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            mapped = _TYPE_MAP.get(value, value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = json_schema(value)
        else:
            out[key] = value
    return out


def openai_tool(doc: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function document as an OpenAI tool schema."""
    parameters = json_schema(doc.get("parameters") or {"type": "object", "properties": {}})
    parameters.setdefault("type", "object")
    return {"type": "function", "function": {"name": doc["name"], "description": doc.get("description", ""), "parameters": parameters}}
