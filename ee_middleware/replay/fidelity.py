"""Where a replayed observation differs from the recorded one: the first differing position and a short diff.

The replay re-executes the expert's own call at every state and compares what the sandbox answers
with what production recorded. When they differ, "recorded X…, sandbox gave Y…" cut at a fixed
length hides the difference whenever it lies past the cut (an order's status deep inside a JSON
document). :func:`describe_mismatch` says where the texts part, and gives a unified diff of the
lines around it: JSON documents are compared pretty-printed, one field per line; other long lines
are broken after ``, ``, ``; `` and sentence ends, so that the diff shows the clause that changed. Where only the order
of the same items differs, it says so, and names the likely cause (:func:`order_hint`).
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

MAX_DIFF_LINES = 12
"""Lines of a diff kept (headers and hunk markers included); the rest is counted in one last line."""
MAX_LINE_CHARS = 160
_BREAK = re.compile(r"(?<=[,;.!?]) (?=\S)")


def first_difference(a: str, b: str) -> int:
    """The index of the first character where ``a`` and ``b`` differ (the shorter length when one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def describe_mismatch(recorded: str, replayed: str, *, recorded_is_prefix: bool = False) -> dict[str, Any]:
    """Where ``replayed`` parts from ``recorded``, for a fidelity report.

    Returns ``position`` (0-based character index), ``line`` and ``column`` (1-based, in the
    recorded text), both lengths, and ``diff``: a unified diff from ``recorded`` to ``replayed``
    of at most :data:`MAX_DIFF_LINES` lines. With ``recorded_is_prefix`` (the recorded observation
    was cut when it was stored), only the sandbox's first ``len(recorded)`` characters are compared.
    """
    compared = replayed[: len(recorded)] if recorded_is_prefix else replayed
    position = first_difference(recorded, compared)
    line = recorded.count("\n", 0, position) + 1
    column = position - (recorded.rfind("\n", 0, position) + 1) + 1
    report: dict[str, Any] = {
        "position": position,
        "line": line,
        "column": column,
        "recorded_chars": len(recorded),
        "replayed_chars": len(replayed),
        "diff": unified_diff(recorded, compared),
    }
    hint = None if recorded_is_prefix else order_hint(recorded, replayed)
    if hint is not None:
        report["hint"] = hint
    return report


SET_ORDER_HINT = (
    "only the order of the same items differs: likely a set the tool lists in its own order (list(s), str(s), a loop "
    "over it), which replay does not keep (a restored world's sets are rebuilt, and strings hash differently in every "
    "process); sort them in the tool, e.g. sorted(s) (docs/sandboxes.md, 'The clock, random numbers and state outside "
    "the world')"
)
KEY_ORDER_HINT = "only the order of an object's keys differs (the same keys and values): the tool built it in another order"


def order_hint(recorded: str, replayed: str) -> str | None:
    """What the difference between two observations likely comes from when they hold the same items in another order
    (:data:`SET_ORDER_HINT`, or :data:`KEY_ORDER_HINT` for a JSON object's keys alone); ``None`` when more differs.

    JSON documents are compared as values, with every list's items (and every object's keys) sorted; other texts by the
    items between their commas, semicolons, line ends and brackets, which must stand where they stood (a sentence whose
    words changed places is not a listing in another order)."""
    if recorded == replayed:
        return None
    documents = _json_documents(recorded, replayed)
    if documents is not None:
        old, new = (json.dumps(document, sort_keys=True) for document in documents)
        if old == new:  # the same values: only the order of keys (or the spacing) differs
            return KEY_ORDER_HINT if json.dumps(documents[0]) != json.dumps(documents[1]) else None
        old, new = (json.dumps(_unordered(document), sort_keys=True) for document in documents)
        return SET_ORDER_HINT if old == new else None
    old_items = [item.strip() for item in _ITEM.findall(recorded)]
    new_items = [item.strip() for item in _ITEM.findall(replayed)]
    if len(old_items) < 2 or _ITEM.sub("", recorded) != _ITEM.sub("", replayed):
        return None
    return SET_ORDER_HINT if Counter(old_items) == Counter(new_items) else None


_ITEM = re.compile(r"[^,;\n{}\[\]()]+")
"""An item of a listing: what lies between commas, semicolons, line ends and brackets (``{64, 3, 'a'}``)."""


def _json_documents(recorded: str, replayed: str) -> tuple[Any, Any] | None:
    """Both texts parsed, when both are JSON objects or arrays."""
    try:
        if recorded.strip()[:1] in ("{", "[") and replayed.strip()[:1] in ("{", "["):
            return json.loads(recorded), json.loads(replayed)
    except ValueError:
        pass
    return None


def _unordered(value: Any) -> Any:
    """``value`` with every list's items sorted (by their JSON), so that two orders of the same items compare equal."""
    if isinstance(value, dict):
        return {key: _unordered(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted((_unordered(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
    return value


def unified_diff(recorded: str, replayed: str, *, max_lines: int = MAX_DIFF_LINES, context: int = 1) -> str:
    """A short unified diff (``--- recorded`` / ``+++ sandbox``) of the two observations."""
    old, new = _diff_lines(recorded), _diff_lines(replayed)
    lines = [line.rstrip("\n") for line in difflib.unified_diff(old, new, "recorded", "sandbox", n=context, lineterm="")]
    if not lines:  # the texts differ only in what the splitting hides (trailing whitespace, line ends)
        lines = ["--- recorded", "+++ sandbox", f"-{recorded!r}"[:MAX_LINE_CHARS], f"+{replayed!r}"[:MAX_LINE_CHARS]]
    lines = [_clip(line) for line in lines]
    if len(lines) > max_lines:
        rest = len(lines) - (max_lines - 1)
        lines = [*lines[: max_lines - 1], f"… {rest} more diff line{'s' if rest != 1 else ''}"]
    return "\n".join(lines)


_HUNK = re.compile(r"@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")
_HEADERS = ("--- recorded", "+++ sandbox")


def redact_diff(diff: str, redact: Callable[[str], str]) -> str:
    """``diff`` (a :func:`unified_diff`) with each line's text redacted by ``redact`` without its ``-``/``+``/space marker,
    the headers and hunk markers kept: redacted whole, a marker and the text after it read as one value (``+2026-12-01``
    as a phone number) and the line lost its text. Redacting a diff of redacted texts again changes nothing."""
    out = []
    for n, line in enumerate(diff.split("\n")):
        if (n < 2 and line == _HEADERS[n]) or _HUNK.fullmatch(line):
            out.append(line)
        elif line[:1] in ("-", "+", " "):
            out.append(line[0] + redact(line[1:]))
        else:  # the count of diff lines left out, or a line of another shape
            out.append(redact(line))
    return "\n".join(out)


def _diff_lines(text: str) -> list[str]:
    """The units a diff compares: one JSON field per line for JSON documents, else lines broken at clause ends."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(json.loads(stripped), indent=1, ensure_ascii=False).splitlines()
        except ValueError:
            pass
    out: list[str] = []
    for line in text.splitlines() or [""]:
        out.extend(_BREAK.split(line) if len(line) > MAX_LINE_CHARS // 2 else [line])
    return out


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"
