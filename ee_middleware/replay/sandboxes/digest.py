"""State digests: one short string per sandbox world, equal exactly when two worlds are in the same state.

What the ``traces:`` and tau-style eval suites compare: the world after the candidate agent's run
against the world after replaying the expert's (or the ground truth's) calls on a fresh copy. A
sandbox offers it as ``state_digest()`` (see :class:`~ee_middleware.replay.sandboxes.protocol.StatefulSandbox`).

The digest is the SHA-256 of a canonical JSON encoding of the world (:func:`canonical`):

* dicts with their keys sorted (non-string keys kept apart from strings: ``{1: x}`` is not ``{"1": x}``),
  lists and tuples in order, sets sorted, numbers, strings, booleans and ``None`` as JSON has them (a
  whole float is its int: ``2.0`` and ``2`` are one state, as RFC 8785's canonical JSON and ``==`` have it);
* objects as their class and their **public** attributes (names not starting with ``_``), which is
  what BFCL's state checker compares; a reference back to an object being encoded (a directory's
  parent) is written as a marker, so cyclic worlds encode;
* dates, decimals, UUIDs, enums and paths as their text.

Two processes give the same digest for the same state (no ``hash()``-ordered set iteration, no
addresses). A world with parts that have none of these shapes (a database connection) is digested
by its pickled bytes instead (:func:`digest_of`), which is exact for worlds whose pickle is canonical
(an in-memory SQLite database pickled as its serialized bytes, reached by the same calls).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import json
import pathlib
import pickle
import uuid
from typing import Any

__all__ = ["Unencodable", "canonical", "digest_of", "digest_text"]

_MAX_DEPTH = 200
_TEXT_TYPES = (dt.date, dt.time, dt.timedelta, decimal.Decimal, uuid.UUID, pathlib.PurePath)


class Unencodable(TypeError):
    """A value :func:`canonical` has no canonical form for (its type is named)."""


def canonical(value: Any, *, objects: bool = True) -> Any:
    """``value`` as plain JSON data with a single spelling per state (see the module docstring).

    ``objects=False`` refuses objects (only containers and scalars), for worlds that must be data.
    Raises :class:`Unencodable` naming the first part that has no canonical form.
    """
    return _Encoder(objects).encode(value, 0)


def digest_text(data: Any) -> str:
    """The SHA-256 of already canonical data's compact, key-sorted JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest_of(value: Any) -> str:
    """``json:<sha256>`` of the canonical form, or ``pickle:<sha256>`` of the pickled bytes when there is none.

    Raises :class:`Unencodable` when the value has no canonical form and does not pickle either.
    """
    try:
        return "json:" + digest_text(canonical(value))
    except Unencodable as first:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # anything pickle raises means "cannot digest"
            raise Unencodable(f"{first}; and the world does not pickle ({type(exc).__name__}: {exc})") from exc
        return "pickle:" + hashlib.sha256(data).hexdigest()


class _Encoder:
    def __init__(self, objects: bool) -> None:
        self.objects = objects
        self.path: set[int] = set()

    def encode(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, enum.Enum):
            return {"$enum": f"{type(value).__qualname__}.{value.name}"}
        if isinstance(value, float) and value.is_integer():
            return int(value)  # one number, as JSON (RFC 8785 writes 2.0 as 2) and Python's == have it
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, (bytes, bytearray)):
            return {"$bytes": bytes(value).hex()}
        if isinstance(value, _TEXT_TYPES):
            return {f"${type(value).__name__}": str(value)}
        if depth > _MAX_DEPTH:
            raise Unencodable(f"the world is nested deeper than {_MAX_DEPTH} levels")
        if id(value) in self.path:
            return {"$cycle": type(value).__qualname__}
        self.path.add(id(value))
        try:
            return self._container(value, depth + 1)
        finally:
            self.path.discard(id(value))

    def _container(self, value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            items = [(self.encode(k, depth), self.encode(v, depth)) for k, v in value.items()]
            if all(isinstance(k, str) for k, _ in items):
                return dict(items)
            return {"$dict": sorted(([k, v] for k, v in items), key=lambda kv: _sort_key(kv[0]))}
        if isinstance(value, (list, tuple)):
            return [self.encode(v, depth) for v in value]
        if isinstance(value, (set, frozenset)):
            return {"$set": sorted((self.encode(v, depth) for v in value), key=_sort_key)}
        if callable(value) and hasattr(value, "__qualname__"):
            return {"$callable": f"{getattr(value, '__module__', '')}.{value.__qualname__}"}
        attributes = getattr(value, "__dict__", None)
        if not self.objects or not isinstance(attributes, dict):
            raise Unencodable(f"a {type(value).__module__}.{type(value).__qualname__} has no canonical form")
        public = {k: self.encode(v, depth) for k, v in attributes.items() if isinstance(k, str) and not k.startswith("_")}
        return {"$object": f"{type(value).__module__}.{type(value).__qualname__}", "attributes": public}


def _sort_key(encoded: Any) -> str:
    return json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
