"""The redaction a store's data was recorded with, kept with the store so every later writer applies it.

Capture and ingest write ``<store>/redaction.json`` when they first write to a store (beside
``redaction.key``, the pseudonym salt)::

    {"format": "ee-redaction", "version": 1,
     "rules": {"defaults": true, "kinds": {"phone": false}, "patterns": {"ticket": "TCK-\\\\d+"}},
     "pseudonyms": true, "vault": "/data/experience.vault", "custom_function": null}

Replay (rollout observations and proposed arguments, replay records and their fidelity details),
the dataset builders (every row, held-out ones too) and the exports read it back with
:func:`store_redactor`, so they use the app's own kinds, patterns and salt: the same value gets the
same pseudonym everywhere in the store and its datasets.

A store written before this file existed, or by a writer that never recorded one, is treated as
recorded with the defaults (the built-in kinds that are on by default), the safe choice. When two
recorders with different rules write to one store, the file keeps the union (every kind either
enabled, every pattern), since the store then holds data redacted under both. A ``redact_fn``
(a Python function) cannot be stored: its qualified name (``custom_function``, ``module.function``)
is, and every later writer imports it and applies it after the rules, as capture did. Apps that
share a store with different ``redact_fn`` functions are all kept (``custom_function`` is then a list of
names, in the order they were recorded) and later writers apply every one, one after the other:
they cannot tell which app wrote a trajectory, and a scrubber left out would write what it removes
in plain text. A file with one name (or none) is written as before. One that
cannot be imported (a ``lambda``, a function of a script run as ``__main__``, a module not on the
import path) is never dropped: :meth:`StoreRedaction.redactor` raises a
:class:`~ee_middleware.errors.ConfigError` naming it and the fix.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_write_text
from ee_middleware.capture.redaction import PLACEHOLDER, SALT_FILE, RedactionRules, Redactor, store_salt
from ee_middleware.errors import ConfigError

logger = logging.getLogger("ee_middleware.capture")

REDACTION_FILE = "redaction.json"
FORMAT = "ee-redaction"


@dataclass(frozen=True)
class StoreRedaction:
    """What a store's data was redacted with (see the module docstring)."""

    rules: RedactionRules = field(default_factory=RedactionRules)
    pseudonyms: bool = True
    vault: str | None = None
    """The redaction vault's path (absolute), when capture keeps one."""
    custom_function: str | tuple[str, ...] | None = None
    """The qualified name (``module.function``) of the ``redact_fn`` capture applied, or the names (a tuple, in the order
    recorded) when apps with different ones share the store; later writers import and apply every one."""
    recorded: bool = True
    """False when the store has no ``redaction.json`` (these are the assumed defaults)."""

    def __post_init__(self) -> None:
        # One form per value, so that settings compare equal however they were built: a lone name as its string.
        names = _names(self.custom_function)
        object.__setattr__(self, "custom_function", names[0] if len(names) == 1 else names or None)

    @property
    def custom_functions(self) -> tuple[str, ...]:
        """The names of every ``redact_fn`` recorded (empty for none), in the order later writers apply them."""
        return _names(self.custom_function)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "rules": self.rules.to_dict(),
            "pseudonyms": self.pseudonyms,
            "vault": self.vault,
            "custom_function": list(self.custom_function) if isinstance(self.custom_function, tuple) else self.custom_function,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = REDACTION_FILE) -> StoreRedaction:
        if data.get("format") != FORMAT:
            raise ConfigError(f"{where} is not a redaction settings file (format={data.get('format')!r}).")
        custom = data.get("custom_function")
        if not (custom is None or isinstance(custom, str) or (isinstance(custom, list) and all(isinstance(n, str) for n in custom))):
            raise ConfigError(
                f"{where}: custom_function must be a redact_fn's 'module.function' name, a list of them, or null; got {custom!r}."
            )
        return cls(
            rules=RedactionRules.from_dict(data.get("rules") or {}),
            pseudonyms=bool(data.get("pseudonyms", True)),
            vault=data.get("vault"),
            custom_function=tuple(custom) if isinstance(custom, list) else custom,
        )

    def union(self, other: StoreRedaction) -> StoreRedaction:
        """Settings that redact everything either does (for a store written under both)."""
        if self.vault and other.vault and Path(self.vault) != Path(other.vault):
            raise ConfigError(
                f"This store's redaction vault is {self.vault}; a recorder asked for {other.vault}. Use one vault per store "
                f"(vault=True, or vault={self.vault!r})."
            )
        kinds = sorted(set(self.rules.enabled_kinds()) | set(other.rules.enabled_kinds()))
        patterns = dict(self.rules.patterns)
        for name, regex in other.rules.patterns.items():
            if patterns.get(name, regex) != regex:
                name = next(f"{name}_{i}" for i in range(2, 1000) if patterns.get(f"{name}_{i}", regex) == regex)
            patterns[name] = regex
        same_kinds = kinds == sorted(self.rules.enabled_kinds())
        rules = self.rules if same_kinds and patterns == dict(self.rules.patterns) else _rules_for(kinds, patterns)
        return StoreRedaction(
            rules=rules,
            pseudonyms=self.pseudonyms or other.pseudonyms,
            vault=self.vault or other.vault,
            custom_function=tuple(dict.fromkeys(self.custom_functions + other.custom_functions)),  # every one, each once
        )

    def redactor(self, salt: bytes | None) -> Redactor:
        """The redactor of these settings: the rules, ``salt`` (with pseudonyms), and every ``redact_fn`` capture applied
        (imported by its name; :class:`~ee_middleware.errors.ConfigError` when one cannot be)."""
        custom = load_custom_function(self.custom_function) if self.custom_function else None
        return Redactor(self.rules, salt=salt if self.pseudonyms else None, custom=custom)


def _names(custom_function: str | Sequence[str] | None) -> tuple[str, ...]:
    """``custom_function`` (one name, several, or none) as a tuple of names, each once."""
    if not custom_function:
        return ()
    return (custom_function,) if isinstance(custom_function, str) else tuple(dict.fromkeys(custom_function))


def _in_turn(functions: tuple[Callable[[str], str], ...], text: str) -> str:
    for function in functions:
        text = function(text)
    return text


@functools.lru_cache(maxsize=16)
def load_custom_function(name: str | tuple[str, ...]) -> Callable[[str], str]:
    """The ``redact_fn`` a store's ``redaction.json`` names (``custom_function``: ``module.function``), imported; for
    several names (apps with different ones sharing the store), one function applying each in turn.

    Raises :class:`~ee_middleware.errors.ConfigError` naming the function and how to make it importable when it cannot
    be imported: writing without it would store in plain text what it removed at capture."""
    if not isinstance(name, str):
        functions = tuple(load_custom_function(one) for one in _names(name))
        return functions[0] if len(functions) == 1 else functools.partial(_in_turn, functions)
    from ee_middleware.plugins import _import_from_installed_or_working_folder  # the one way ee imports the app's code

    parts = name.split(".")
    why = "its name has no module part"
    if "<" in name:  # a lambda, a function defined inside another (<locals>)
        why = "a lambda or a function defined inside another function cannot be imported"
    else:
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
            module = ".".join(parts[:cut])
            try:
                target: Any = _import_from_installed_or_working_folder(module)
            except ModuleNotFoundError as exc:  # try a shorter module; the shortest one's message is kept
                why = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the app's module failed on import: say so
                why = f"importing {module} raised {type(exc).__name__}: {exc}"
                break
            try:
                for attr in parts[cut:]:
                    target = getattr(target, attr)
            except AttributeError:
                why = f"module {module} has no {'.'.join(parts[cut:])}"
                if module == "__main__":
                    why += " (it was defined in the script that recorded, run as __main__)"
                break
            if not callable(target):
                why = f"{name} is a {type(target).__name__}, not a function"
                break
            return target  # type: ignore[no-any-return]
    raise ConfigError(
        f"This store was recorded with redact_fn={name}, which every later writer (replay, datasets, exports, ingest) "
        f"must apply as capture did, but it cannot be imported: {why}. Define it at module level in a module on the import "
        "path (install your app's package, set PYTHONPATH, or run from the folder holding it); if it moved, put its "
        f"'module.function' name in the store's {REDACTION_FILE} under \"custom_function\"."
    )


def _rules_for(kinds: list[str], patterns: dict[str, str]) -> RedactionRules:
    from ee_middleware.capture.redaction import KINDS

    return RedactionRules(defaults=False, kinds={k: k in kinds for k in KINDS}, patterns=patterns)


def _root(store: Any) -> Path | None:
    root = getattr(store, "root", None)
    return Path(root) if root is not None else None


def read_store_redaction(store: Any) -> StoreRedaction:
    """The settings in the store's ``redaction.json``; the defaults (``recorded=False``) when there is none."""
    root = _root(store)
    path = root / REDACTION_FILE if root is not None else None
    if path is None or not path.exists():
        return StoreRedaction(recorded=False)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc}). It says how this store's data is redacted; restore it, or delete it to use the defaults."
        ) from exc
    return StoreRedaction.from_dict(data, where=str(path))


def record_store_redaction(store: Any, settings: StoreRedaction) -> StoreRedaction:
    """Write ``settings`` into the store's ``redaction.json`` (the union with what is there); return what is in force.

    A store without a local folder keeps nothing (its writers must pass the same settings)."""
    root = _root(store)
    if root is None:
        return settings
    with _locked(root):
        current = read_store_redaction(store)
        merged = current.union(settings) if current.recorded else replace(settings, recorded=True)
        if merged != current:
            atomic_write_text(root / REDACTION_FILE, json.dumps(merged.to_dict(), indent=2) + "\n")
    return merged


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".redaction.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def store_redactor(store: Any, *, create_salt: bool = True) -> Redactor:
    """The redactor every writer after capture uses for ``store``: its recorded rules and its salt.

    ``create_salt=False`` (for readers such as exports) never writes a salt into the store: without
    one, what is left to redact becomes a plain ``[REDACTED:<kind>]``."""
    settings = read_store_redaction(store)
    salt = None
    if settings.pseudonyms and settings.rules.enabled_kinds() + list(settings.rules.patterns):
        salt = store_salt(store) if create_salt else _existing_salt(store)
    return settings.redactor(salt)


def _existing_salt(store: Any) -> bytes | None:
    root = _root(store)
    if root is None or not (root / SALT_FILE).exists():
        return None
    return store_salt(store)


def placeholders_in(text: str) -> list[str]:
    """The redaction placeholders in ``text``, in order."""
    return PLACEHOLDER.findall(text) if "[REDACTED:" in text else []


def is_pseudonym(placeholder: str) -> bool:
    """Whether a placeholder carries a tag (``[REDACTED:email:1a2b3c4d]``), i.e. names one value."""
    return placeholder.count(":") == 2
