"""How the conformance kits word a broken promise: the call, what it returned against what the protocol requires, the
promise and the fix (pytest does not rewrite the asserts of an installed package, so a kit's message is all a plug-in's
author sees)."""

from __future__ import annotations

from typing import Any

from ee_middleware.models.protocol import clip

__all__ = ["Said", "broken", "shown"]


class Said(str):
    """Text written for a failure's message, which :func:`shown` shows as it is (any other value: its repr)."""


def shown(value: Any, limit: int = 160) -> str:
    """A value as a failure shows it: its repr (text written for the message, :class:`Said`, as it is), clipped."""
    return clip(value if isinstance(value, Said) else repr(value), limit)


def broken(call: str, got: Any, wanted: Any, promise: str, fix: str) -> str:
    """A failure's message: the call the implementation answered, what it returned against what the protocol requires,
    the promise it broke and the fix (values as :func:`shown` writes them)."""
    return f"{call} returned {shown(got)} where the protocol requires {shown(wanted)}: {promise}. {fix}"
