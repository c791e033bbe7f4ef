"""Fidelity reports of observations nested deeper than Python recurses: a tool returning a tree, a recursive config or
a buggy tool's output thousands of levels deep gets a report like any other, never a ``RecursionError``."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from ee_middleware.replay import fidelity
from ee_middleware.replay.fidelity import KEY_ORDER_HINT, SET_ORDER_HINT, describe_mismatch, order_hint, unified_diff

DEPTH = 2_000  # past json's and this module's recursion at the default limit (1000)


def _nested_text(depth: int, leaf: str, *, tag_first: bool = True) -> str:
    """A JSON text of objects nested ``depth`` levels deep, each with a tag ``"a"`` and a list ``"z"`` holding the next
    level (the tag written after the list where not ``tag_first``), ``leaf`` in the innermost list."""
    if tag_first:
        return "".join(f'{{"a": "a{n}", "z": [' for n in range(depth)) + leaf + "]}" * depth
    return '{"z": [' * depth + leaf + "".join(f'], "a": "a{n}"}}' for n in reversed(range(depth)))


def _deep_object(depth: int, leaf: Any) -> Any:
    value = leaf
    for n in reversed(range(depth)):
        value = {"a": f"a{n}", "z": [value]}
    return value


def _with_recursion(work: Any, *args: Any) -> Any:
    """``work(*args)`` with the recursion limit raised: json's own functions as the reference for deep documents."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        return work(*args)
    finally:
        sys.setrecursionlimit(limit)


def test_the_texts_are_past_the_default_recursion_limit() -> None:
    """The premise: ``json.loads`` itself gives up on these texts."""
    assert sys.getrecursionlimit() < DEPTH
    with pytest.raises(RecursionError):
        json.loads(_nested_text(DEPTH, "1"))


def test_a_mismatch_deep_inside_a_document_nested_2000_levels_is_described_with_the_value_that_changed() -> None:
    recorded, replayed = _nested_text(DEPTH, '"in stock"'), _nested_text(DEPTH, '"sold out"')
    report = describe_mismatch(recorded, replayed)
    assert report["position"] == recorded.index('"in stock"') + 1
    assert (report["line"], report["column"]) == (1, report["position"] + 1)
    diff = report["diff"].splitlines()
    pad = " " * fidelity.MAX_INDENT
    assert diff[:2] == ["--- recorded", "+++ sandbox"]
    assert diff[3:] == [f' {pad}"z": [', f'-{pad}"in stock"', f'+{pad}"sold out"', f" {pad}]"], diff
    assert all(len(line) <= fidelity.MAX_LINE_CHARS for line in diff)
    assert "hint" not in report


def test_the_diff_of_a_deep_document_shows_the_field_that_changed_with_its_key() -> None:
    recorded = _deep_object(DEPTH, {"status": "ok", "qty": 3})
    replayed = _deep_object(DEPTH, {"status": "ok", "qty": 4})
    recorded_text, replayed_text = _with_recursion(json.dumps, recorded), _with_recursion(json.dumps, replayed)
    parsed = fidelity._json_document(recorded_text)  # at the default recursion limit
    assert _with_recursion(lambda: parsed == recorded)
    expected_lines = _with_recursion(lambda: json.dumps(recorded, indent=1, ensure_ascii=False).splitlines())
    lines = fidelity._diff_lines(recorded_text)
    assert len(lines) == len(expected_lines)
    assert [line.lstrip() for line in lines] == [line.lstrip() for line in expected_lines]
    assert max(len(line) - len(line.lstrip()) for line in lines) == fidelity.MAX_INDENT
    assert lines[: fidelity.MAX_INDENT] == expected_lines[: fidelity.MAX_INDENT]  # indented as json does, up to MAX_INDENT levels
    diff = unified_diff(recorded_text, replayed_text).splitlines()
    assert f'-{" " * fidelity.MAX_INDENT}"qty": 3' in diff and f'+{" " * fidelity.MAX_INDENT}"qty": 4' in diff, diff


def test_order_hints_on_documents_nested_2000_levels() -> None:
    recorded = _nested_text(DEPTH, "[1, 2, 3]")
    assert order_hint(recorded, _nested_text(DEPTH, "[3, 1, 2]")) == SET_ORDER_HINT
    assert order_hint(recorded, _nested_text(DEPTH, "[3, 1, 4]")) is None
    reordered_keys = _nested_text(DEPTH, "[1, 2, 3]", tag_first=False)
    assert order_hint(recorded, reordered_keys) == KEY_ORDER_HINT
    assert describe_mismatch(recorded, reordered_keys)["hint"] == KEY_ORDER_HINT


@pytest.mark.parametrize("depth", [995, 10_000, 100_000])
def test_lists_nested_at_any_depth_are_described(depth: int) -> None:
    recorded, replayed = "[" * depth + "1" + "]" * depth, "[" * depth + "2" + "]" * depth
    report = describe_mismatch(recorded, replayed, recorded_is_prefix=False)
    assert report["position"] == depth
    assert f"-{' ' * fidelity.MAX_INDENT}1" in report["diff"].splitlines()
    cut = describe_mismatch(recorded, replayed[: depth + 5], recorded_is_prefix=True)  # a cut text is not JSON
    assert cut["position"] == depth


def test_a_deep_text_that_is_not_json_is_compared_as_text() -> None:
    recorded, broken = "[" * DEPTH + "1," + "]" * DEPTH, "[" * DEPTH + "2," + "]" * DEPTH
    assert fidelity._json_document(recorded) is None
    report = describe_mismatch(recorded, broken)
    assert report["position"] == DEPTH
    assert report["diff"].splitlines()[2:] == [
        "@@ -1 +1 @@",
        "-" + recorded[: fidelity.MAX_LINE_CHARS - 2] + "…",
        "+" + broken[: fidelity.MAX_LINE_CHARS - 2] + "…",
    ]
