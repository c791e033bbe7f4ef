"""How the conformance kits word a broken promise: the call, what it returned against what the protocol requires, the
promise and the fix (pytest does not rewrite the asserts of an installed package, so a kit's message is all a plug-in's
author sees)."""

from __future__ import annotations

import json
from typing import Any

from ee_middleware.models.protocol import clip

__all__ = ["Said", "broken", "first_difference", "settings_text", "shown"]


class Said(str):
    """Text written for a failure's message, which :func:`shown` shows as it is (any other value: its repr)."""


def shown(value: Any, limit: int = 160) -> str:
    """A value as a failure shows it: its repr (text written for the message, :class:`Said`, as it is), clipped."""
    return clip(value if isinstance(value, Said) else repr(value), limit)


def broken(call: str, got: Any, wanted: Any, promise: str, fix: str) -> str:
    """A failure's message: the call the implementation answered, what it returned against what the protocol requires,
    the promise it broke and the fix (values as :func:`shown` writes them)."""
    return f"{call} returned {shown(got)} where the protocol requires {shown(wanted)}: {promise}. {fix}"


def settings_text(settings: Any) -> str:
    """``settings`` (what a part's ``describe()`` returned) as JSON with sorted keys: how a kit compares two answers."""
    return json.dumps(settings, sort_keys=True, default=repr)


def first_difference(wrote: Any, got: Any, path: str = "") -> str | None:
    """Where ``got`` first differs from ``wrote`` (records, as a store gave one back), as ``PATH: wrote X, got Y`` (``PATH``
    the field, item and key names down to it: ``steps[0].index``); ``None`` when they are equal. Records are compared
    field by field (pydantic models as their fields, in order), lists item by item, dicts key by key."""
    if wrote == got:
        return None
    fields = getattr(type(wrote), "model_fields", None)
    if fields is not None and type(got) is type(wrote):
        for name in fields:
            found = first_difference(getattr(wrote, name), getattr(got, name), f"{path}.{name}" if path else name)
            if found:
                return found
    elif isinstance(wrote, list | tuple) and isinstance(got, list | tuple):
        for index, (a, b) in enumerate(zip(wrote, got, strict=False)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        if len(wrote) != len(got):
            return f"{path or 'the record'}: wrote {len(wrote)} items, got {len(got)}"
    elif isinstance(wrote, dict) and isinstance(got, dict):
        for key in [*wrote, *(k for k in got if k not in wrote)]:
            if key not in got or key not in wrote:
                return f"{path}[{key!r}]: {'missing' if key not in got else 'not written'}"
            found = first_difference(wrote[key], got[key], f"{path}[{key!r}]")
            if found:
                return found
    return f"{path or 'the record'}: wrote {shown(wrote, 120)}, got {shown(got, 120)}"
