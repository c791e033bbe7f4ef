"""Comparisons the tau-style and ``traces:`` suites share: text a reply must contain, and where two worlds differ."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def normalize(text: str) -> str:
    """Lower case, thousands separators gone (``1,250.00`` -> ``1250.00``), as tau-bench compares outputs."""
    return text.lower().replace(",", "")


def missing_outputs(outputs: Iterable[str], replies: Iterable[str]) -> list[str]:
    """The required ``outputs`` that appear (normalized) in none of the ``replies``."""
    texts = [normalize(r) for r in replies]
    return [output for output in outputs if not any(normalize(output) in text for text in texts)]


def differences(actual: Any, expected: Any, *, limit: int = 3, path: str = "") -> list[str]:
    """Up to ``limit`` places where two JSON-like values differ, as ``path: got X, expected Y``."""
    found: list[str] = []
    _diff(actual, expected, path or "(root)", found, limit)
    return found


def _diff(actual: Any, expected: Any, path: str, found: list[str], limit: int) -> None:
    if len(found) >= limit or actual == expected:
        return
    if isinstance(actual, dict) and isinstance(expected, dict):
        for key in list(dict.fromkeys([*expected, *actual])):
            where = key if path == "(root)" else f"{path}.{key}"
            if key not in actual:
                found.append(f"{where}: missing, expected {_short(expected[key])}")
            elif key not in expected:
                found.append(f"{where}: {_short(actual[key])}, expected nothing there")
            else:
                _diff(actual[key], expected[key], where, found, limit)
            if len(found) >= limit:
                return
        return
    if isinstance(actual, list) and isinstance(expected, list) and len(actual) == len(expected):
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _diff(a, e, f"{path}[{i}]", found, limit)
        return
    found.append(f"{path}: {_short(actual)}, expected {_short(expected)}")


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
