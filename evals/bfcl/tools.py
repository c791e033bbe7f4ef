"""The tools the BFCL harness offers a model: those BFCL's own pipeline offers an OpenAI-compatible function-calling model.

The harness evaluates function-calling models (an ``openai:`` endpoint such as vLLM's, or a ``local:`` model whose chat
template renders the tools): BFCL runs such a model with its ``OpenAICompletionsHandler`` (model style
``OPENAI_COMPLETIONS``), which offers each entry's function documents as follows, so a score here means what BFCL's does:

* every description ends with BFCL's language note, ``" Note that the provided function is in Python 3 syntax."`` (Java
  and JavaScript: their own notes, parameters as strings; :func:`~ee_middleware.evals.bfcl.languages.offered_functions`
  adds them with BFCL's ``add_language_specific_hint_to_function_doc``, as its dataset loader does);
* the parameter types go through BFCL's ``GORILLA_TO_OPENAPI`` table for the properties (and the items' types) the way its
  ``convert_to_tool`` does: ``dict`` -> ``object``, ``tuple`` -> ``array``, ``any`` and any type the table lacks ->
  ``string``, a property with no type -> ``string``, and a ``float`` property -> ``number`` with ``"format": "float"`` and
  ``" This is a float type value."`` at the end of its description; everything else (``required``, ``enum``,
  ``default``, a multi-turn function's ``response`` schema) is offered as the document has it;
* ``.`` in a function name becomes ``_`` (OpenAI's rule for tool names);
* multi-turn entries offer every function of their backend classes, ``excluded_function`` included (BFCL's pipeline never
  reads that field); ``multi_turn_miss_func``'s held-out functions come at the end of the list from their turn on, without
  the language note (BFCL adds the notes after taking them out).

Key order is BFCL's too (a chat template writes the tools as JSON, so the prompt is the same text). The replay side keeps
its own schemas (:func:`ee_middleware.bfcl.data.openai_tool`): this conversion is the evaluation's alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from typing import Any

from ee_middleware.bfcl._package import import_bfcl
from ee_middleware.bfcl.data import BFCLEntry, function_docs
from ee_middleware.evals.bfcl.languages import offered_functions

FLOAT_NOTE = " This is a float type value."
"""What BFCL appends to the description of a parameter typed ``float``."""


@cache
def _openapi_types() -> Mapping[str, str]:
    """BFCL's type table for OpenAI-style schemas (``bfcl_eval.constants.type_mappings.GORILLA_TO_OPENAPI``)."""
    table: Mapping[str, str] = import_bfcl("constants.type_mappings").GORILLA_TO_OPENAPI
    return table


def tool_name(name: str) -> str:
    """A BFCL function name as offered to the model (``.`` is not allowed in OpenAI tool names)."""
    return name.replace(".", "_")


def bfcl_tool(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One BFCL function document (language note already added) as the OpenAI tool BFCL offers; ``doc`` is not changed."""
    function = copy.deepcopy(dict(doc))
    function["name"] = tool_name(function["name"])
    parameters = function.setdefault("parameters", {})
    parameters["type"] = "object"
    parameters["properties"] = _cast_properties(parameters.get("properties") or {})
    return {"type": "function", "function": function}


def _cast_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """``properties`` (changed in place) with BFCL's OpenAI types, recursing where BFCL's ``convert_to_tool`` does."""
    table = _openapi_types()
    for spec in properties.values():
        kind = spec.get("type")
        if kind is None:
            spec["type"] = "string"
        else:
            if kind == "float":
                spec["format"] = "float"
                spec["description"] = spec.get("description", "") + FLOAT_NOTE
            spec["type"] = table.get(kind, "string")
        if spec["type"] not in ("array", "object"):
            continue
        if "properties" in spec:
            spec["properties"] = _cast_properties(spec["properties"])
        elif isinstance(spec.get("items"), dict) and "type" in spec["items"]:
            items = spec["items"]
            items["type"] = table.get(items["type"], "string")
            if items["type"] == "array" and isinstance(items.get("items"), dict) and "type" in items["items"]:
                items["items"]["type"] = table.get(items["items"]["type"], "string")
            elif items["type"] == "object" and "properties" in items:
                items["properties"] = _cast_properties(items["properties"])
    return properties


def offered_tools(entry_id: str, functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools BFCL offers for a single-turn entry ``entry_id`` with these function documents (left unchanged)."""
    return [bfcl_tool(doc) for doc in offered_functions(entry_id, functions)]


def multi_turn_tools(entry: BFCLEntry) -> list[list[dict[str, Any]]]:
    """The tools BFCL offers at each turn of a multi-turn entry (held-out functions appended from their turn on)."""
    docs = copy.deepcopy(function_docs(tuple(entry.involved_classes)))
    held_out: dict[int, list[dict[str, Any]]] = {}
    for turn, names in entry.missed_functions.items():
        for name in names:
            index = next((i for i, doc in enumerate(docs) if doc["name"] == name), None)
            if index is not None:
                held_out.setdefault(turn, []).append(docs.pop(index))
    offered = [bfcl_tool(doc) for doc in offered_functions(entry.id, docs)]
    tools = []
    for turn in range(len(entry.turns)):
        offered = offered + [bfcl_tool(doc) for doc in held_out.get(turn, [])]
        tools.append(offered)
    return tools
