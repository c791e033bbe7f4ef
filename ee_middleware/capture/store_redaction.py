"""The redaction a store's data was recorded with, kept with the store so every later writer applies it.

Capture and ingest write ``redaction.json`` when they first write to a store (beside ``redaction.key``, the
pseudonym salt), as metadata blobs the store keeps (:mod:`ee_middleware.store.metadata`: a plug-in store's
``read_meta``/``write_meta``, the local store's files ``<store>/redaction.json`` and ``<store>/redaction.key``)::

    {"format": "ee-redaction", "version": 4,
     "rules": {"defaults": true, "kinds": {"phone": false}, "patterns": {"ticket": "TCK-\\\\d+"}},
     "pseudonyms": true, "pseudonym_form": "canonical", "vault": "/data/experience.vault", "custom_function": null}

(``rules.keys``, the ``redaction_keys`` capture was given, is written only when there are some, with version 3 or above.)

``pseudonym_form`` says which text of a value its pseudonym tag is the keyed hash of: ``"canonical"`` (one tag for
every spelling of an e-mail address, card, IBAN, SSN or phone number: :func:`~ee_middleware.capture.redaction.canonical_form`),
what a store made from now on records, or ``"as_written"``, the tags of a store recorded before pseudonyms were canonical:
a ``redaction.json`` without the field was written by an older ee-middleware, whose tags were those of each value as
written, so its store keeps them (every writer, capture appending runs included, gives a value the tag its older runs
hold, and replay's re-redacted observations compare equal with the recorded ones). When settings are united, a store
stays ``as_written`` if either is: its data decides. A canonical file is version 4, so that an ee-middleware from before
this field refuses the store ("written by a newer ee-middleware") instead of reading it and appending runs whose tags
differ from the store's for the same value; an ``as_written`` one keeps the version of its content (1 to 3), which an
ee-middleware from before canonical pseudonyms reads and writes with the tags the store already has.

Replay (rollout observations and proposed arguments, replay records and their fidelity details),
the dataset builders (every row, held-out ones too) and the exports read it back with
:func:`store_redactor`, so they use the app's own kinds, patterns and salt: the same value gets the
same pseudonym everywhere in the store and its datasets.

A store written before this file existed, or by a writer that never recorded one, is treated as
recorded with the defaults (the built-in kinds that are on by default), the safe choice; where its runs hold pseudonym
tags beside its key (an ee-middleware from before this file made them), of values as written, which its next writer
records (``as_written``). A store that keeps no
metadata (neither the methods nor a local folder) is refused rules the defaults do not cover (its later writers
would write what they removed in plain text), and warned about what else it loses (pseudonyms per process):
:func:`record_store_redaction`. When two
recorders with different rules write to one store, the file keeps the union (every kind either
enabled, every pattern), since the store then holds data redacted under both. A ``redact_fn``
(a Python function) cannot be stored: its qualified name (``custom_function``, ``module.function``)
is, and every later writer imports it and applies it after the rules, as capture did, where it trusts that name
(:func:`check_trusted`: the file is data any writer of the store can change; a process trusts the function it was
given, and the names ``EE_TRUSTED_REDACT_FNS`` lists). Apps that
share a store with different ``redact_fn`` functions are all kept (``custom_function`` is then a list of
names, in the order they were recorded) and later writers apply every one, one after the other:
they cannot tell which app wrote a trajectory, and a scrubber left out would write what it removes
in plain text. A file with one name (or none) is written as before. One that
cannot be imported (a ``lambda``, a function of a script run as ``__main__``, a module not on the
import path) is never dropped: :meth:`StoreRedaction.redactor` raises a
:class:`~ee_middleware.errors.ConfigError` naming it and the fix.

Capture is a writer too: a recorder applies the union of its own settings and the store's recorded ones
(:func:`settings_in_force`, :func:`capture_custom_function`), so a second service or worker recording into the
store without the app's ``[capture]`` settings still redacts every kind, pattern, key name and ``redact_fn`` recorded
there. A recorded ``redact_fn`` it cannot import stops it from starting (a ``ConfigError`` naming the function: make it
importable, or pass it as ``redact_fn=``, or remove a lambda's or a script's function from ``custom_function``); a
recorder refuses its own ``redact_fn`` that no other process could import, before it writes anything
(:func:`~ee_middleware.capture.offload.refuse_unimportable_redact_fn`). A recorder reads the file when it starts, and again every
:data:`~ee_middleware.capture.offload.STORE_RULES_CHECK_S` seconds while it records, so rules another writer adds later
reach it within that time (the first run after the check: a run already being written keeps the rules it had; replay,
datasets, exports and ``ee traces show`` apply the store's rules again as they read). One recorded since that it
cannot import fails its runs (not stored, counted in ``stats.runs_failed``, logged naming it) rather than storing what
it removes. The union covers what is redacted, not the vault: a recorder without ``vault=`` adds no pseudonyms to the
store's vault, so replay cannot restore the values it redacted (those steps are flagged unrestorable).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ee_middleware.capture.redaction import PLACEHOLDER, SALT_FILE, RedactionRules, Redactor, store_salt
from ee_middleware.errors import ConfigError
from ee_middleware.store.metadata import (
    MetadataNotKeptWarning,
    has_meta_methods,
    keeps_metadata,
    meta_locked,
    meta_where,
    read_meta,
    write_meta,
)

if TYPE_CHECKING:
    from ee_middleware.records import Action, Rollout, Trajectory

logger = logging.getLogger("ee_middleware.capture")

REDACTION_FILE = "redaction.json"
FORMAT = "ee-redaction"
VERSION = 4
"""The newest redaction.json this version reads and writes (1: one redact_fn or none; 2: a list of them; 3: key names
whose values are secrets, ``rules.keys``, which an older reader would drop; 4: canonical pseudonyms, ``pseudonym_form``,
whose tags an older writer would not make)."""

CANONICAL = "canonical"
AS_WRITTEN = "as_written"
PSEUDONYM_FORMS = (CANONICAL, AS_WRITTEN)
"""The values of ``pseudonym_form`` (:attr:`StoreRedaction.pseudonym_form`)."""


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

    @property
    def canonical_pseudonyms(self) -> bool:
        """Whether pseudonym tags are those of the values' canonical forms (else of the values as written: a store
        recorded before pseudonyms were canonical); kept in :attr:`rules`, so that every redactor made of them has it."""
        return self.rules.canonical_pseudonyms

    @property
    def pseudonym_form(self) -> str:
        """``"canonical"`` or ``"as_written"`` (:attr:`canonical_pseudonyms`), as ``redaction.json`` says it."""
        return CANONICAL if self.canonical_pseudonyms else AS_WRITTEN

    def to_dict(self) -> dict[str, Any]:
        # 4: canonical pseudonyms (an older writer refuses the file rather than append runs with other tags);
        # 3: key names (an older reader refuses the file rather than drop them); 2: several redact_fns (a list)
        canonical = self.canonical_pseudonyms
        version = 4 if canonical else 3 if rule_keys(self.rules) else 2 if isinstance(self.custom_function, tuple) else 1
        rules = self.rules.to_dict()
        rules.pop("canonical_pseudonyms", None)  # said once, as pseudonym_form
        return {
            "format": FORMAT,
            "version": version,
            "rules": rules,
            "pseudonyms": self.pseudonyms,
            "pseudonym_form": self.pseudonym_form,
            "vault": self.vault,
            "custom_function": list(self.custom_function) if isinstance(self.custom_function, tuple) else self.custom_function,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = REDACTION_FILE) -> StoreRedaction:
        if data.get("format") != FORMAT:
            raise ConfigError(f"{where} is not a redaction settings file (format={data.get('format')!r}).")
        version = data.get("version", 1)
        if not isinstance(version, int) or version > VERSION:
            raise ConfigError(
                f"{where} has version {version!r}: it was written by a newer ee-middleware, which may redact in ways this one "
                f"does not (this one reads up to version {VERSION}). Upgrade ee-middleware on this machine before writing "
                "to this store."
            )
        rules = data.get("rules") or {}
        if not isinstance(rules, dict):
            raise ConfigError(f"{where}: rules must be an object, got {rules!r}.")
        _check_rules(rules, where)
        form = data.get("pseudonym_form", AS_WRITTEN)  # none: written by an ee from before canonical pseudonyms
        if form not in PSEUDONYM_FORMS:
            raise ConfigError(f"{where}: pseudonym_form must be one of {', '.join(map(repr, PSEUDONYM_FORMS))}, got {form!r}.")
        custom = data.get("custom_function")
        if not (custom is None or isinstance(custom, str) or (isinstance(custom, list) and all(isinstance(n, str) for n in custom))):
            raise ConfigError(
                f"{where}: custom_function must be a redact_fn's 'module.function' name, a list of them, or null; got {custom!r}."
            )
        for name, wanted in (("pseudonyms", "true or false"), ("vault", "the redaction vault's path, or null")):
            value = data.get(name)
            if value is not None and not isinstance(value, bool if name == "pseudonyms" else str):
                raise ConfigError(f"{where}: {name} must be {wanted}, got {value!r}.{_FIX}")
        try:
            rules_read = RedactionRules.from_dict({**rules, "canonical_pseudonyms": form == CANONICAL})
        except ConfigError as exc:  # (what the checks above let through: said as the file's)
            raise ConfigError(f"{where}: {exc}{_FIX}") from exc
        return cls(
            rules=rules_read,
            pseudonyms=bool(data.get("pseudonyms", True)),
            vault=data.get("vault"),
            custom_function=tuple(custom) if isinstance(custom, list) else custom,
        )

    def union(self, other: StoreRedaction) -> StoreRedaction:
        """Settings that redact everything either does (for a store written under both); pseudonyms as written if
        either settings make them so (a store recorded before pseudonyms were canonical keeps its tags)."""
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
        keys = rule_keys(self.rules) | rule_keys(other.rules)
        canonical = self.canonical_pseudonyms and other.canonical_pseudonyms
        same_kinds = kinds == sorted(self.rules.enabled_kinds())
        if same_kinds and patterns == dict(self.rules.patterns) and keys == rule_keys(self.rules):
            rules = self.rules if canonical == self.canonical_pseudonyms else replace(self.rules, canonical_pseudonyms=canonical)
        else:
            rules = _rules_for(kinds, patterns, keys, canonical=canonical)
        return StoreRedaction(
            rules=rules,
            pseudonyms=self.pseudonyms or other.pseudonyms,
            vault=self.vault or other.vault,
            custom_function=tuple(dict.fromkeys(self.custom_functions + other.custom_functions)),  # every one, each once
        )

    def redactor(self, salt: bytes | None) -> Redactor:
        """The redactor of these settings: the rules (the pseudonym form with them), ``salt`` (with pseudonyms), and
        every ``redact_fn`` capture applied (imported by its name; :class:`~ee_middleware.errors.ConfigError` when one
        cannot be)."""
        custom = load_custom_function(self.custom_function) if self.custom_function else None
        return Redactor(self.rules, salt=salt if self.pseudonyms else None, custom=custom)


_FIX = (
    " This file says how this store's data was redacted (every later writer redacts with it): correct the field, or restore "
    "the file from a backup of the store."
)


def _check_rules(rules: dict[str, Any], where: str) -> None:
    """Refuse a ``rules`` object (of ``redaction.json``, at ``where``) whose fields have not the shape ee writes, naming
    the file and the field, as :class:`~ee_middleware.capture.config.CaptureConfig` names a setting: ``defaults`` true or
    false, ``kinds`` an object of built-in kinds switched on or off, ``patterns`` an object of valid regular expressions
    by kind, ``keys`` a list of key names."""
    from ee_middleware.capture.redaction import KINDS, _user_rule

    defaults = rules.get("defaults")
    if defaults is not None and not isinstance(defaults, bool):
        raise ConfigError(f"{where}: rules.defaults must be true or false, got {defaults!r}.{_FIX}")
    kinds = rules.get("kinds")
    if kinds is not None and not isinstance(kinds, dict):
        raise ConfigError(
            f'{where}: rules.kinds must be an object of built-in kinds switched on or off, e.g. {{"phone": false}}; got {kinds!r}.{_FIX}'
        )
    for kind, on in (kinds or {}).items():
        if kind not in KINDS:
            raise ConfigError(f"{where}: rules.kinds.{kind}: unknown redaction kind {kind!r}. Built-in kinds: {', '.join(KINDS)}.{_FIX}")
        if not isinstance(on, bool):
            raise ConfigError(f"{where}: rules.kinds.{kind} must be true or false, got {on!r}.{_FIX}")
    patterns = rules.get("patterns")
    if patterns is not None and not isinstance(patterns, dict):
        raise ConfigError(
            f'{where}: rules.patterns must be an object of regular expressions by kind, e.g. {{"ticket": "TCK-\\\\d+"}}; '
            f"got {patterns!r}.{_FIX}"
        )
    for kind, regex in (patterns or {}).items():
        if not isinstance(regex, str):
            raise ConfigError(f"{where}: rules.patterns.{kind} must be a regular expression (a string), got {regex!r}.{_FIX}")
        try:
            _user_rule(kind, regex)
        except ConfigError as exc:
            raise ConfigError(f"{where}: rules.patterns.{kind}: {exc}.{_FIX}") from exc
    keys = rules.get("keys")
    if keys is not None and (isinstance(keys, str) or not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
        raise ConfigError(f"{where}: rules.keys must be a list of key names, got {keys!r}.{_FIX}")


def rule_keys(rules: RedactionRules) -> frozenset[str]:
    """The key names whose values ``rules`` always redact (``redaction_keys``)."""
    return rules.keys


def rules_with_keys(rules: RedactionRules, keys: Sequence[str] | frozenset[str]) -> RedactionRules:
    """``rules`` with key names whose values are always secrets (:func:`rule_keys`)."""
    return replace(rules, keys=frozenset(keys)) if keys else rules


def has_rules(rules: RedactionRules) -> bool:
    """Whether ``rules`` redact anything (a kind, a pattern or a key name): pseudonyms then need the store's salt."""
    return bool(rules.enabled_kinds() or rules.patterns or rule_keys(rules))


def _names(custom_function: str | Sequence[str] | None) -> tuple[str, ...]:
    """``custom_function`` (one name, several, or none) as a tuple of names, each once."""
    if not custom_function:
        return ()
    return (custom_function,) if isinstance(custom_function, str) else tuple(dict.fromkeys(custom_function))


def _in_turn(functions: tuple[Callable[[str], str], ...], text: str) -> str:
    for function in functions:
        text = function(text)
    return text


TRUSTED_REDACT_FNS_ENV = "EE_TRUSTED_REDACT_FNS"
"""The ``redact_fn`` names (``module.function``, separated by commas or spaces; ``*``: every one) a process may import
where a store's ``redaction.json`` names them. A recorder or ingest given the function itself adds its name (and so
trusts it in the processes it starts: the capture process, replay's workers)."""


class UntrustedRedactFnError(ConfigError):
    """A store's ``redaction.json`` names a ``redact_fn`` this process was not told to trust (:func:`check_trusted`)."""


def trusted_redact_fns() -> list[str]:
    """The names :data:`TRUSTED_REDACT_FNS_ENV` lists."""
    return [name for name in os.environ.get(TRUSTED_REDACT_FNS_ENV, "").replace(",", " ").split() if name]


def trust_redact_fn(name: str) -> None:
    """Trust ``name`` here and in the processes this one starts from now on: this process was given the function itself
    (``redact_fn=``, an ingest's redactor), so the store naming it names the function its app wrote."""
    trusted = trusted_redact_fns()
    if name not in trusted and "*" not in trusted:
        os.environ[TRUSTED_REDACT_FNS_ENV] = ",".join([*trusted, name])


def check_trusted(name: str) -> None:
    """Raise :class:`UntrustedRedactFnError` unless this process may import and run ``name``, a ``redact_fn`` a store's
    ``redaction.json`` names: the file is data, which anyone who can write the store (every host that records into
    it) can change, and the function it names runs on every text a reader of the store writes (``os.system`` too)."""
    trusted = trusted_redact_fns()
    if name in trusted or "*" in trusted:
        return
    raise UntrustedRedactFnError(
        f"This store's {REDACTION_FILE} names redact_fn={name}, a function every writer of the store (capture, replay, "
        "datasets, exports, ingest) runs on the text it writes, but this process was not told to trust it: ee runs a "
        "function a store's file names only where the process was given that function (record_experience(..., "
        f"redact_fn=...)) or {TRUSTED_REDACT_FNS_ENV} lists it, since anyone who can write the store's files could "
        f"otherwise make its readers run any function. If {name} is your app's scrubber, set "
        f"{TRUSTED_REDACT_FNS_ENV}={name} in this job's environment"
        + (f" (beside the names it lists: {','.join(trusted)},{name})" if trusted else "")
        + f" (names separated by commas; * trusts every name a store records); if you do not know it, look into the "
        f'store\'s {REDACTION_FILE} ("custom_function") first.'
    )


def load_custom_function(name: str | tuple[str, ...]) -> Callable[[str], str]:
    """The ``redact_fn`` a store's ``redaction.json`` names (``custom_function``: ``module.function``), imported; for
    several names (apps with different ones sharing the store), one function applying each in turn.

    Raises :class:`UntrustedRedactFnError` for a name this process was not told to trust (:func:`check_trusted`), and
    :class:`~ee_middleware.errors.ConfigError` naming the function and how to make it importable when it cannot be
    imported: writing without it would store in plain text what it removed at capture."""
    for one in (name,) if isinstance(name, str) else _names(name):
        check_trusted(one)
    return _load_custom_function(name)


@functools.lru_cache(maxsize=16)
def _load_custom_function(name: str | tuple[str, ...]) -> Callable[[str], str]:
    if not isinstance(name, str):
        functions = tuple(_load_custom_function(one) for one in _names(name))
        return functions[0] if len(functions) == 1 else functools.partial(_in_turn, functions)
    function, why = _imported_function(name)
    if function is not None:
        return function
    raise ConfigError(
        f"This store was recorded with redact_fn={name}, which every later writer (replay, datasets, exports, ingest) "
        f"must apply as capture did, but it cannot be imported: {why}. Define it at module level in a module on the import "
        "path (install your app's package, set PYTHONPATH, or run from the folder holding it); if it moved, put its "
        f"'module.function' name in the store's {REDACTION_FILE} under \"custom_function\"."
    )


def _imported_function(name: str) -> tuple[Callable[[str], str] | None, str]:
    """The function qualified name ``name`` (``module.function``) names, imported; else ``None`` and why not."""
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
            return target, ""
    return None, why


def function_name(function: Callable[..., Any]) -> str:
    """The qualified name (``module.function``) a ``redact_fn`` is recorded under (``custom_function``)."""
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def capture_custom_function(settings: StoreRedaction, own: Callable[[str], str] | None) -> Callable[[str], str] | None:
    """The ``redact_fn`` a recorder applies at capture: every one ``settings`` name (the union of its own settings and the
    store's recorded ones, :func:`settings_in_force`), in their order, its own (``own``) where its name comes, the others
    imported by name (:func:`load_custom_function`), so that capture removes what every later writer removes.

    Raises :class:`~ee_middleware.errors.ConfigError` naming a recorded function this process cannot import and the
    fixes (make it importable, or pass it as ``redact_fn=``): without it, the recorder would write in plain text what
    that function removed from the store's other runs."""
    mine = function_name(own) if own is not None else None
    functions: list[Callable[[str], str]] = []
    for name in settings.custom_functions:
        if name == mine and own is not None:
            functions.append(own)
            continue
        check_trusted(name)
        function, why = _imported_function(name)
        if function is None:
            raise ConfigError(
                f"This store's {REDACTION_FILE} says its runs were redacted with redact_fn={name}, which this recorder must "
                "apply too (a recorder applies the store's recorded rules besides its own, or it would write in plain text "
                f"what that function removes), but it cannot be imported here: {why}. Make it importable (define it at "
                "module level in a module on the import path: install your app's package, set PYTHONPATH, or run from the "
                f"folder holding it), or pass that function to this recorder: record_experience(..., redact_fn={name.rsplit('.', 1)[-1]})."
            )
        functions.append(function)
    if not functions:
        return None
    return functions[0] if len(functions) == 1 else functools.partial(_in_turn, tuple(functions))


def settings_in_force(store: Any, own: StoreRedaction) -> StoreRedaction:
    """What a recorder of ``own`` settings applies at capture: the union of ``own`` and the store's ``redaction.json`` (as
    recorded when this is called; ``own`` where the store has none). A :class:`~ee_middleware.errors.ConfigError` for a
    file that cannot be read, one from a newer ee-middleware, or another vault than ``own``'s."""
    recorded = read_store_redaction(store, tagged_before=True)
    return recorded.union(own) if recorded.recorded else _in_form_of(recorded, own)


def _in_form_of(unrecorded: StoreRedaction, settings: StoreRedaction) -> StoreRedaction:
    """``settings`` with the pseudonym form of a store without ``redaction.json`` (``unrecorded``): as written where an
    ee-middleware from before that file tagged its runs (:func:`_tagged_before_settings_were_kept`), else as they are."""
    if unrecorded.canonical_pseudonyms:
        return settings
    return replace(settings, rules=replace(settings.rules, canonical_pseudonyms=False))


def same_redaction(one: StoreRedaction, other: StoreRedaction) -> bool:
    """Whether ``one`` and ``other`` redact alike at capture (rules, pseudonym form and ``redact_fn`` names; not the vault
    or how the names are written)."""
    return (
        one.canonical_pseudonyms == other.canonical_pseudonyms
        and one.rules.enabled_kinds() == other.rules.enabled_kinds()
        and dict(one.rules.patterns) == dict(other.rules.patterns)
        and rule_keys(one.rules) == rule_keys(other.rules)
        and one.custom_functions == other.custom_functions
    )


def _rules_for(kinds: list[str], patterns: dict[str, str], keys: frozenset[str] = frozenset(), *, canonical: bool = True) -> RedactionRules:
    from ee_middleware.capture.redaction import KINDS

    rules = RedactionRules(defaults=False, kinds={k: k in kinds for k in KINDS}, patterns=patterns, canonical_pseudonyms=canonical)
    return rules_with_keys(rules, keys)


def permission_fix() -> str:
    """How to let this process read a store's redaction files that another user wrote (owner-only, as ee makes them)."""
    user = _user_name()
    return f"run as the user that owns it, or let this one ({user}) read it (a group both users are in: chgrp GROUP FILE; chmod g+r FILE)."


def _user_name() -> str:
    """This process's user name (its uid where it has none)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def read_store_redaction(store: Any, *, tagged_before: bool = False) -> StoreRedaction:
    """The settings in the store's ``redaction.json``; the defaults (``recorded=False``) when there is none, or the store
    keeps no metadata (:mod:`ee_middleware.store.metadata`). ``tagged_before`` (the writers that tag, and the jobs that
    compare or build from tags: capture, ingest, replay, dataset builds): where there is none, pseudonyms as written when
    an ee-middleware from before the file tagged the store's runs (:func:`_tagged_before_settings_were_kept`, which
    reads them; listings and approvals do not)."""
    try:
        raw = read_meta(store, REDACTION_FILE)
        data = json.loads(raw) if raw is not None else None
    except PermissionError as exc:  # the file is fine: this process may not read it (another service user's store)
        raise ConfigError(
            f"{meta_where(store, REDACTION_FILE)} cannot be read by this process ({exc}). It says how this store's data is "
            f"redacted: {permission_fix()} Do not delete it: later writers would redact less than the runs stored so far."
        ) from exc
    except OSError as exc:
        if has_meta_methods(store):  # the store's own read failed (its backend down, a time-out): nothing says the blob is bad
            raise ConfigError(
                f"{meta_where(store, REDACTION_FILE)} could not be read: the store's read_meta raised {type(exc).__name__}: {exc}. "
                "It says how this store's data is redacted, so nothing is read or written without it: try again once the "
                "store answers. Do not delete it: later writers would redact less than the runs stored so far."
            ) from exc
        raise ConfigError(
            f"{meta_where(store, REDACTION_FILE)} is unreadable ({exc}). It says how this store's data is redacted; restore it, "
            "or delete it to use the defaults."
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"{meta_where(store, REDACTION_FILE)} is unreadable ({exc}). It says how this store's data is redacted; restore it, "
            "or delete it to use the defaults."
        ) from exc
    if data is None:
        if tagged_before and _tagged_before_settings_were_kept(store):  # an ee from before this file: tags as written
            return StoreRedaction(rules=RedactionRules(canonical_pseudonyms=False), recorded=False)
        return StoreRedaction(recorded=False)
    if not isinstance(data, dict):
        raise ConfigError(f"{meta_where(store, REDACTION_FILE)} holds a JSON {type(data).__name__}, not a redaction settings object.")
    return StoreRedaction.from_dict(data, where=meta_where(store, REDACTION_FILE))


def record_store_redaction(store: Any, settings: StoreRedaction) -> StoreRedaction:
    """Keep ``settings`` as the store's ``redaction.json`` (the union with what is there); return what is in force.

    A store that keeps no metadata (neither ``read_meta``/``write_meta`` nor a local folder) keeps nothing: settings its
    later writers would lose (what the defaults do not redact) raise :class:`~ee_middleware.errors.ConfigError`, and
    pseudonyms (or rules narrower than the defaults) are warned about (:class:`MetadataNotKeptWarning`)."""
    if not keeps_metadata(store):
        _settings_not_kept(store, settings)
        return settings
    with meta_locked(store, LOCK_FILE):
        # A store's writers on one machine take turns (the lock); a plug-in store's writers elsewhere have no shared lock:
        # each reads back what is kept after writing and writes the union again while its own rules are missing from it.
        for _ in range(_WRITE_ATTEMPTS):
            current = read_store_redaction(store, tagged_before=True)
            merged = current.union(settings) if current.recorded else replace(_in_form_of(current, settings), recorded=True)
            if merged == current:
                break
            write_meta(store, REDACTION_FILE, (json.dumps(merged.to_dict(), indent=2) + "\n").encode())
    return merged


def _tagged_before_settings_were_kept(store: Any) -> bool:
    """Whether ``store``, which has no ``redaction.json``, holds runs an ee-middleware from before that file tagged: its
    pseudonym key is there and its trajectories or steps hold tags (every writer since records the file before it tags
    anything). Those tags are of each value as written, so the store keeps that form (a canonical tag for the same value
    would differ). Read once per store and process once its key is there (it reads the store's runs)."""
    if read_meta(store, SALT_FILE) is None:  # no tags without a key (asked again once there is one)
        return False
    where = meta_where(store, REDACTION_FILE)
    known = _TAGGED_BEFORE.get(where)
    if known is None:
        from ee_middleware.capture.redaction import _tagged_runs

        known = _TAGGED_BEFORE[where] = bool(_tagged_runs(store))
    return known


_TAGGED_BEFORE: dict[str, bool] = {}
""":func:`_tagged_before_settings_were_kept`'s answers in this process, by the file's place (a store's runs are read once)."""


LOCK_FILE = ".redaction.lock"
_WRITE_ATTEMPTS = 5


_WARNED: set[tuple[str, str, tuple[str, ...]]] = set()
"""The warnings :func:`_settings_not_kept` has given in this process: a store's class and what it loses."""


def _settings_not_kept(store: Any, settings: StoreRedaction) -> None:
    """Refuse ``settings`` a store that keeps no metadata would lose to its later writers, and warn about the rest."""
    defaults = RedactionRules()
    lost = [f"the kind {kind}" for kind in settings.rules.enabled_kinds() if kind not in defaults.enabled_kinds()]
    lost += [f"the pattern {name}" for name in settings.rules.patterns]
    lost += [f"the redaction key {name}" for name in sorted(rule_keys(settings.rules))]
    lost += [f"redact_fn={name}" for name in settings.custom_functions]
    fix = (
        f"Give {type(store).__name__} the two optional methods read_meta(name) -> bytes | None and write_meta(name, data, *, "
        "exclusive=False) -> bool (ee_middleware.store.protocol.KeepsMetadata; ee_middleware.testing.check_store checks them), "
        "or record into a local store folder"
    )
    if lost:
        raise ConfigError(
            f"Cannot record into {store!r} with {', '.join(lost)}: the store keeps no redaction settings (it has no "
            "read_meta()/write_meta() methods and no local root folder), so replay, dataset builds and exports would redact "
            f"with the default rules only and write what {'they' if len(lost) > 1 else 'it'} removed in plain text. {fix}."
        )
    losses = []
    if settings.pseudonyms and has_rules(settings.rules):
        losses.append(
            "pseudonyms are made with a salt of each recorder's own, so the same value gets another pseudonym in each process, "
            "and replay writes plain [REDACTED:<kind>] placeholders, so every redacted observation counts as a fidelity mismatch"
        )
    narrower = sorted(set(defaults.enabled_kinds()) - set(settings.rules.enabled_kinds()))
    if narrower:
        losses.append(f"replay, dataset builds and exports redact {', '.join(narrower)}, which capture left as it was")
    if settings.vault:
        losses.append(f"replay does not know the vault {settings.vault} (set EE_VAULT to it)")
    said = (type(store).__module__, type(store).__qualname__, tuple(losses))
    if losses and said not in _WARNED:  # once a process for a kind of store and what it loses (a recorder per request...)
        warnings.warn(
            f"{store!r} keeps no redaction settings or salt (it has no read_meta()/write_meta() methods and no local root "
            f"folder): {'; '.join(losses)}. {fix}{' (or set redaction_pseudonyms=False)' if settings.pseudonyms else ''}.",
            MetadataNotKeptWarning,
            stacklevel=3,
        )
        _WARNED.add(said)  # (after: a filter that makes the warning an error refuses every recorder, not the first)


def store_redactor(store: Any, *, create_salt: bool = True, tagged_before: bool = False) -> Redactor:
    """The redactor every writer after capture uses for ``store``: its recorded rules and its salt.

    ``create_salt=False`` (for readers such as exports) never writes a salt into the store: without
    one, what is left to redact becomes a plain ``[REDACTED:<kind>]``. ``tagged_before``: as
    :func:`read_store_redaction`'s (dataset builds)."""
    settings = read_store_redaction(store, tagged_before=tagged_before)
    salt = None
    if settings.pseudonyms and has_rules(settings.rules):
        salt = store_salt(store) if create_salt else _existing_salt(store)
    return settings.redactor(salt)


def _existing_salt(store: Any) -> bytes | None:
    return store_salt(store) if read_meta(store, SALT_FILE) is not None else None


def placeholders_in(text: str) -> list[str]:
    """The redaction placeholders in ``text``, in order."""
    return PLACEHOLDER.findall(text) if "[REDACTED:" in text else []


def is_pseudonym(placeholder: str) -> bool:
    """Whether a placeholder carries a tag (``[REDACTED:email:1a2b3c4d]``), i.e. names one value."""
    return placeholder.count(":") == 2


def current_redactor(store: Any) -> Redactor | None:
    """The store's redaction as it is now, for showing what it holds (``None`` where it redacts nothing): what capture
    stored under older rules, or a recorder without the store's rules, is shown as exports and dataset builds write it,
    so a rule added since (a recorder's new pattern) hides its values in every view too."""
    redactor = store_redactor(store, create_salt=False)
    return redactor if redactor.enabled else None


def redacted_trajectory(trajectory: Trajectory, redactor: Redactor | None, *, states: bool = True) -> Trajectory:
    """``trajectory`` with its user data (task, thread id, answer, error, messages, environment, tool schemas' text, its
    approval's reviewer and reason, each step's state, action and observation) redacted by ``redactor`` (``None``: as
    stored); ids, times, names and the schemas' structure as stored. ``states=False``: the steps' states as stored, for
    a view that does not show them. Each step's state holds the run's history up to it: the states' messages are
    redacted once each (:func:`_message_redactor`), not once per state (100 steps of 100 KB results: every state
    redacted whole took 48 s)."""
    if redactor is None:
        return trajectory
    from ee_middleware.capture.assembler import redact_tool_schemas

    redact = redactor.redact_value
    messages = _message_redactor(redact)  # (the run's conversation and the steps' states share their messages)
    update: dict[str, Any] = {
        key: redact(getattr(trajectory, key)) for key in ("task", "thread_id", "final_answer", "error", "environment")
    }
    update["messages"] = messages(trajectory.messages)
    update["tools"] = redact_tool_schemas(trajectory.tools, redactor)
    if trajectory.approval is not None:
        approval = trajectory.approval
        update["approval"] = approval.model_copy(update={"by": redact(approval.by), "reason": redact(approval.reason)})
    update["steps"] = [
        step.model_copy(
            update={
                "action": _redacted_action(step.action, redact),
                **({"state": messages(step.state)} if states else {}),
                **(
                    {"observation": step.observation.model_copy(update={"content": redact(step.observation.content)})}
                    if step.observation
                    else {}
                ),
            }
        )
        for step in trajectory.steps
    ]
    # (copies, not a dump and a validation of the whole record: the states alone are the square of the run's length)
    return trajectory.model_copy(update=update)


def _message_redactor(redact: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``redact`` for a list of messages (a step's state), each distinct message redacted once across the calls: the
    same as ``redact(messages)``, which walks a list one value at a time (with a deterministic ``redact_fn``; one that
    answers a text differently each time now shows one message one way everywhere). Messages are looked up by their
    JSON text and must equal the one remembered (``{1: ...}`` and ``{"1": ...}`` write the same text and are redacted
    apart); what JSON cannot write is redacted on its own."""
    done: dict[str, tuple[Any, Any]] = {}  # JSON text -> (the message, redacted)

    def messages(state: Any) -> Any:
        if not isinstance(state, list):
            return redact(state)
        out = []
        for message in state:
            try:
                key = json.dumps(message, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError, RecursionError):  # (not JSON data: redacted on its own, as the walk would)
                out.append(redact(message))
                continue
            hit = done.get(key)
            if hit is None:
                hit = done[key] = (message, redact(message))
            elif hit[0] != message:  # (same text, other data: keys of other types)
                hit = (message, redact(message))
            out.append(hit[1])
        return out

    return messages


def redacted_rollout(rollout: Rollout, redactor: Redactor | None) -> Rollout:
    """``rollout`` with its action, observation and an experience model's reasoning redacted by ``redactor`` (``None``:
    as stored), as :func:`redacted_trajectory` redacts a step's."""
    if redactor is None:
        return rollout
    redact = redactor.redact_value
    observation = rollout.observation.model_copy(update={"content": redact(rollout.observation.content)})
    update: dict[str, Any] = {"action": _redacted_action(rollout.action, redact), "observation": observation}
    if rollout.synthetic_source is not None and rollout.synthetic_source.reasoning:  # (an experience model's, shown)
        update["synthetic_source"] = rollout.synthetic_source.model_copy(update={"reasoning": redact(rollout.synthetic_source.reasoning)})
    return rollout.model_copy(update=update)


def _redacted_action(action: Action, redact: Callable[[Any], Any]) -> Action:
    update: dict[str, Any] = {"content": redact(action.content), "reasoning": redact(action.reasoning)}
    if action.tool_call is not None:
        update["tool_call"] = action.tool_call.model_copy(update={"arguments": redact(action.tool_call.arguments)})
    return action.model_copy(update=update)
