"""BFCL's Java and JavaScript categories (``simple_java``, ``simple_javascript``), as BFCL runs function-calling models.

BFCL offers these functions with every parameter typed ``string`` and a note in each description saying the
value is Java (or JavaScript) source in string representation (``add_language_specific_hint_to_function_doc``,
the same call its generation step makes); the model answers each argument as source text
(``"new ArrayList<>(Arrays.asList(101L, 202L))"``, ``"true"``, ``"{key: 'v'}"``); ``ast_checker`` with the
category's language converts the text back with BFCL's type converters and compares it with the possible
answers, against the functions' original types.

:func:`source_text` writes a possible answer's value as that source text, for the oracle: the forms BFCL's
converters read (a ``long`` with its ``L``, a Java ``float`` with its ``f``, array elements of type ``String``
without quotes, as ``parse_array`` keeps them).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ee_middleware.bfcl._package import import_bfcl

LANGUAGES: dict[str, str] = {"simple_java": "JAVA", "simple_javascript": "JAVASCRIPT"}
"""Category -> the name of its ``bfcl_eval.constants.enums.Language`` member (other categories: ``PYTHON``)."""


def checker_language(category: str) -> Any:
    """The ``Language`` BFCL's ``ast_checker`` reads ``category``'s answers in."""
    return getattr(import_bfcl("constants.enums").Language, LANGUAGES.get(category, "PYTHON"))


def offered_functions(entry_id: str, functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The function documents as BFCL offers them for ``entry_id``'s category, with its language note at the end of each
    description (Python: ``" Note that the provided function is in Python 3 syntax."``; Java/JavaScript: their notes and
    parameters as strings); a copy, the entry's own documents are left as they are (the checker reads those)."""
    entry = {"id": entry_id, "function": copy.deepcopy(functions)}
    processed: list[dict[str, Any]] = import_bfcl("utils").add_language_specific_hint_to_function_doc([entry])[0]["function"]
    return processed


def source_text(value: Any, schema: dict[str, Any], category: str) -> str:
    """``value`` (a possible answer's value) as the Java/JavaScript source text a model sends for a parameter of ``schema``."""
    kind = schema.get("type")
    item = (schema.get("items") or {}).get("type")
    if LANGUAGES[category] == "JAVA":
        return _java(value, kind, item)
    return _javascript(value, kind)


def _java(value: Any, kind: Any, item: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "long":
        return f"{value}L"
    if kind == "float":
        return f"{value}f"
    if kind in ("Array", "ArrayList") and isinstance(value, list):
        if kind == "Array":  # parse_array converts each element by the item type: a String element keeps no quotes
            return f"new {_java_array_type(item)}[]{{{', '.join(_java(v, item, None) for v in value)}}}"
        quoted = item in ("String", "char")  # parse_arraylist strips an element's quotes for these
        elements = ", ".join(_java_literal(v) if quoted or item is None else _java(v, item, None) for v in value)
        return f"new ArrayList<>(Arrays.asList({elements}))"
    if kind == "HashMap" and isinstance(value, dict):
        puts = " ".join(f'put("{key}", {_java_literal(v)});' for key, v in value.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    return value if isinstance(value, str) else json.dumps(value)


def _java_array_type(item: Any) -> str:
    return {"integer": "int", "long": "long", "double": "double", "float": "float", "boolean": "boolean", "char": "char"}.get(
        item, "String"
    )


def _java_literal(value: Any) -> str:
    """A value as ``parse_java_value`` reads it back (in a HashMap's ``put`` or an ArrayList of strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _javascript(value: Any, kind: Any) -> str:
    if kind == "Boolean" or isinstance(value, bool):
        return "true" if value else "false"
    if kind == "Bigint":
        return f"{value}n"
    if isinstance(value, (list, dict)):
        return _js_literal(value)
    return value if isinstance(value, str) else str(value)


def _js_literal(value: Any) -> str:
    """A value as ``parse_js_collection`` / ``parse_js_value`` read it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_js_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_js_literal(v)}" for key, v in value.items()) + "}"
    return str(value)
