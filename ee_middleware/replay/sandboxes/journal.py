"""A journal of writes for plain-data worlds, so that a restore undoes only what a call changed.

A world made of ``dict`` and ``list`` containers holding plain values (str, numbers, None, bytes,
dates, tuples of those...) -- a retail database of users, orders and products, say -- is adopted
once: each container becomes a :class:`JDict` or :class:`JList`, which behave exactly like
``dict`` and ``list`` (they are subclasses; ``json.dumps``, ``==`` and ``repr`` are unchanged) and
append the value they are about to overwrite to the sandbox's :class:`Journal`. A snapshot is then
a position in the journal, and restoring it pops and undoes the entries written since, in reverse:
microseconds for a call that wrote a few keys, nothing at all after a read-only call, whatever the
size of the world.

A snapshot stays exact whichever way the world moves: before undoing past a live snapshot (or
rebuilding the world), the sandbox materialises it as a full copy
(:class:`~ee_middleware.replay.sandboxes.python.WorldSnapshot`), so snapshots may be restored in
any order. Containers a call inserts (plain dicts and lists) are adopted when the next snapshot is
taken; a world that holds anything else (a set, a dataclass, a ``defaultdict``) is not journaled
and falls back to whole-world copies.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import fractions
import uuid
import weakref
from typing import Any

_MISSING: Any = object()
_REPLACE: Any = object()  # entry (container, _REPLACE, shallow copy of its old contents)
_TRUNCATE: Any = object()  # entry (list, _TRUNCATE, old length): undoes append/extend

_SCALARS = frozenset({str, int, float, bool, type(None), bytes, complex})
_IMMUTABLE = (
    str,
    int,
    float,
    complex,
    bytes,
    type(None),
    dt.date,
    dt.time,
    dt.timedelta,
    dt.tzinfo,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    enum.Enum,
    range,
)


class NotJournalable(Exception):
    """The world holds a value whose changes a journal cannot see."""


class Journal:
    """The writes made to one adopted world since it was adopted (entries ``(container, key, old)``)."""

    __slots__ = ("entries", "live", "sealed", "world")

    def __init__(self) -> None:
        self.world: Any = None
        self.entries: list[tuple[Any, Any, Any]] = []
        self.live: weakref.WeakSet[JournalSnapshot] = weakref.WeakSet()
        self.sealed = 0

    def undo_to(self, mark: int, redo: list[tuple[Any, Any, Any]] | None = None) -> None:
        """Undo the writes after ``mark``; with ``redo``, first note in it what each undone write had written
        (:meth:`redo` writes it again)."""
        entries = self.entries
        while len(entries) > mark:
            container, key, old = entries.pop()
            if redo is not None:
                redo.append((container, key, _current(container, key, old)))
            if key is _TRUNCATE:
                list.__delitem__(container, slice(old, None))
            else:
                _write(container, key, old)
        self.sealed = min(self.sealed, mark)

    def redo(self, redo: list[tuple[Any, Any, Any]], entries: list[tuple[Any, Any, Any]], sealed: int) -> None:
        """Write again what :meth:`undo_to` noted in ``redo``, and put back its ``entries`` (those it undid, in order)
        and the ``sealed`` position it had: the world and the journal as they were before the undo."""
        for container, key, new in reversed(redo):
            if key is _TRUNCATE:
                list.extend(container, new)
            else:
                _write(container, key, new)
        self.entries.extend(entries)
        self.sealed = sealed

    def position(self) -> tuple[int, Any]:
        """Where the journal is: how many entries it holds and the last of them (``None`` for none). Entries are never
        reused, so a position names the world's state for as long as undoing leads back to it (:meth:`leads_to`)."""
        return len(self.entries), self.entries[-1] if self.entries else None

    def leads_to(self, mark: int, token: Any) -> bool:
        """Whether undoing this journal leads back to the position ``(mark, token)`` (:meth:`position`)."""
        return len(self.entries) >= mark and (mark == 0 or self.entries[mark - 1] is token)

    def at(self, mark: int, token: Any) -> bool:
        """Whether this journal is at the position ``(mark, token)`` now."""
        return len(self.entries) == mark and self.leads_to(mark, token)

    def seal(self) -> None:
        """Adopt the plain containers inserted since the last seal (raises :class:`NotJournalable`)."""
        memo: dict[int, Any] = {}
        seen: set[int] = set()
        for container, key, _old in self.entries[self.sealed :]:
            if isinstance(container, dict):
                if key is _REPLACE:
                    if id(container) not in seen:
                        seen.add(id(container))
                        for k, v in dict.items(container):
                            if type(v) not in _SCALARS:
                                dict.__setitem__(container, k, adopt(v, self, memo))
                else:
                    v = dict.get(container, key, _MISSING)
                    if v is not _MISSING and type(v) not in _SCALARS:
                        dict.__setitem__(container, key, adopt(v, self, memo))
            elif id(container) not in seen:
                seen.add(id(container))
                for i, v in enumerate(list.__iter__(container)):
                    if type(v) not in _SCALARS:
                        list.__setitem__(container, i, adopt(v, self, memo))
        self.sealed = len(self.entries)


class JournalSnapshot:
    """A position in a world's journal; ``copy`` holds a full copy once the position can no longer be undone to."""

    __slots__ = ("__weakref__", "copy", "journal", "mark", "token")

    def __init__(self, journal: Journal) -> None:
        self.journal: Journal | None = journal
        self.mark, self.token = journal.position()
        self.copy: Any = None
        journal.live.add(self)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as a full copy (the form the subprocess sandbox sends its parent): taken now if the world is at this snapshot."""
        if self.copy is None:
            journal = self.journal
            if journal is None or not journal.at(self.mark, self.token):
                raise TypeError("a journal snapshot pickles only while its world is at it; pickle it right after snapshot()")
            from ee_middleware.replay.sandboxes.python import WorldSnapshot

            self.copy = WorldSnapshot(journal.world)
        return (_same, (self.copy,))

    def reachable(self, journal: Journal | None) -> bool:
        """Whether undoing ``journal`` leads back to this snapshot."""
        return journal is not None and self.journal is journal and journal.leads_to(self.mark, self.token)

    def rebind(self, journal: Journal) -> None:
        """This snapshot is the state ``journal`` starts from."""
        self.journal, self.mark, self.token = journal, 0, None
        journal.live.add(self)


def _same(value: Any) -> Any:
    return value


def _unowned(cls: type, contents: Any = ()) -> Any:
    """A journaling container outside any journal (unpickled or deep-copied), empty: pickle and ``copy`` then add its
    items (``__reduce__``), after remembering it, so that a world whose containers refer back to each other (an order
    naming its customer, whose list holds the order) copies as it is, not into endless recursion."""
    new = cls(contents)
    new._j = None
    return new


def _write(container: Any, key: Any, value: Any) -> None:
    """Make a journal entry's slot hold ``value`` (past the journaling methods): a container's whole contents
    (``_REPLACE``), a dict's key (``_MISSING``: no such key). Not for ``_TRUNCATE``, whose undo and redo differ."""
    if key is _REPLACE:
        if isinstance(container, dict):
            dict.clear(container)
            dict.update(container, value)
        else:
            list.__setitem__(container, slice(None), value)
    elif value is _MISSING:
        dict.pop(container, key, None)
    else:
        dict.__setitem__(container, key, value)


def _current(container: Any, key: Any, old: Any) -> Any:
    """What a journal entry's slot holds now (what undoing it overwrites): for :meth:`Journal.redo`."""
    if key is _REPLACE:
        return dict(container) if isinstance(container, dict) else list(list.__iter__(container))
    if key is _TRUNCATE:
        return list.__getitem__(container, slice(old, None))
    return dict.get(container, key, _MISSING)


class JDict(dict):  # type: ignore[type-arg]
    """A ``dict`` that journals each write; unjournaled until adopted (``_j`` set)."""

    __slots__ = ("_j",)
    _j: Journal | None  # set by whoever makes one (no __init__: adopting a large world makes many, at C speed)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unowned, (JDict,), None, None, iter(dict.items(self)))

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._j is not None:
            self._j.entries.append((self, key, dict.get(self, key, _MISSING)))
        dict.__setitem__(self, key, value)

    def _removing(self, key: Any) -> None:
        # Re-inserting a key puts it last: exact only for the last key; otherwise keep the order by a copy. The undo puts
        # back the dict's own key object, not the one the caller removed it by (an int key popped by an equal float).
        last = next(reversed(self))
        if last is key or (last == key and hash(last) == hash(key)):
            self._j.entries.append((self, last, dict.__getitem__(self, last)))  # type: ignore[union-attr]
        else:
            self._j.entries.append((self, _REPLACE, dict(self)))  # type: ignore[union-attr]

    def __delitem__(self, key: Any) -> None:
        if self._j is not None and key in self:
            self._removing(key)
        dict.__delitem__(self, key)

    def pop(self, key: Any, *default: Any) -> Any:
        if self._j is not None and key in self:
            self._removing(key)
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[Any, Any]:
        key, value = dict.popitem(self)
        if self._j is not None:
            self._j.entries.append((self, key, value))
        return key, value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if self._j is not None and key not in self:
            self._j.entries.append((self, key, _MISSING))
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        if self._j is None or len(args) > 1:
            dict.update(self, *args, **kwargs)
            return
        if args and not (isinstance(args[0], dict) and type(args[0]).__iter__ is dict.__iter__):
            # pairs or a mapping of another kind: written one by one, as dict.update writes them, keeping those written
            # before an error (a generator that raises half way), as the tool's world in production keeps them
            self._update_one_by_one(args[0])
            args = ()
        items = dict(*args, **kwargs)  # a dict's items (and keywords): written whole, each key's old value noted first
        for key in items:
            self._j.entries.append((self, key, dict.get(self, key, _MISSING)))
        dict.update(self, items)

    def _update_one_by_one(self, other: Any) -> None:
        """``dict.update(self, other)`` for anything but a dict, in CPython's order and with its errors: a mapping's keys
        are read whole first (``keys()``), then each value looked up and written; pairs are written as they come."""
        if hasattr(other, "keys"):
            for key in list(other.keys()):
                self[key] = other[key]
            return
        for index, item in enumerate(other):
            try:
                pair = item if type(item) in (list, tuple) else list(item)
            except TypeError:
                raise TypeError(f"cannot convert dictionary update sequence element #{index} to a sequence")  # noqa: B904 - as CPython chains it
            if len(pair) != 2:
                raise ValueError(f"dictionary update sequence element #{index} has length {len(pair)}; 2 is required")
            self[pair[0]] = pair[1]

    def __ior__(self, other: Any) -> JDict:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        if self._j is not None:
            self._j.entries.append((self, _REPLACE, dict(self)))
        dict.clear(self)


def _replacing(name: str) -> Any:
    base = getattr(list, name)

    def method(self: JList, *args: Any, **kwargs: Any) -> Any:
        if self._j is not None:
            self._j.entries.append((self, _REPLACE, list(self)))
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


class JList(list):  # type: ignore[type-arg]
    """A ``list`` that journals each write; unjournaled until adopted (``_j`` set)."""

    __slots__ = ("_j",)
    _j: Journal | None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unowned, (JList,), None, iter(list(self)), None)

    def append(self, value: Any) -> None:
        if self._j is not None:
            self._j.entries.append((self, _TRUNCATE, len(self)))
        list.append(self, value)

    def extend(self, values: Any) -> None:
        if self._j is not None:  # noted first: list.extend keeps the items appended before an error (a generator that raises)
            self._j.entries.append((self, _TRUNCATE, len(self)))
        list.extend(self, values)

    def __iadd__(self, values: Any) -> JList:  # type: ignore[override,misc]
        self.extend(values)
        return self

    __setitem__ = _replacing("__setitem__")
    __delitem__ = _replacing("__delitem__")
    __imul__ = _replacing("__imul__")
    insert = _replacing("insert")
    pop = _replacing("pop")
    remove = _replacing("remove")
    clear = _replacing("clear")
    sort = _replacing("sort")
    reverse = _replacing("reverse")


def adopt(value: Any, journal: Journal, memo: dict[int, Any], *, claim: bool = False) -> Any:
    """``value`` with every dict and list journaled into ``journal`` (copies of plain containers; shared ones stay shared).

    ``claim``: take unowned journaled containers as they are (a world just unpickled) instead of copying them.
    Raises :class:`NotJournalable` for anything mutable that is not a plain dict or list.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is JDict or kind is JList:
        if value._j is journal:
            return value
        take = claim and value._j is None
    elif kind is dict or kind is list:
        take = False
    else:
        _check_immutable(value)
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    scalars = _SCALARS
    if isinstance(value, dict):
        new: Any = value if take else JDict(value)  # one C-level copy; then only the containers inside are visited
        memo[key] = new
        for k, v in dict.items(new):
            if type(v) not in scalars:
                dict.__setitem__(new, k, adopt(v, journal, memo, claim=claim))
    else:
        new = value if take else JList(value)
        memo[key] = new
        for i, v in enumerate(list.__iter__(new)):
            if type(v) not in scalars:
                list.__setitem__(new, i, adopt(v, journal, memo, claim=claim))
    new._j = journal
    return new


def _check_immutable(value: Any) -> None:
    if isinstance(value, (tuple, frozenset)) and type(value) in (tuple, frozenset):
        for item in value:
            if type(item) not in _SCALARS:
                _check_immutable(item)
        return
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        for item in value:
            _check_immutable(item)
        return
    if isinstance(value, _IMMUTABLE):
        return
    raise NotJournalable(f"a {type(value).__qualname__} (only dicts, lists and immutable values are journaled)")
