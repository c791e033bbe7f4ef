"""Configuration of capture: one typed object, loadable from TOML, overridable by ``EE_*`` variables.

Precedence, lowest first: defaults, the TOML file's ``[capture]`` table, environment variables,
then keyword arguments given in code.

======================  ===========================  ===================================
field                   environment variable         meaning
======================  ===========================  ===================================
app                     ``EE_APP``                   app name stored with every run
app_version             ``EE_APP_VERSION``           app version stored with every run
store                   ``EE_STORE``                 experience store folder
redact                  ``EE_REDACT`` (on/off)       the built-in redaction kinds (default on)
redaction_kinds         (TOML only)                  ``{kind = true/false}``: one kind on or off
redaction_patterns      (TOML only)                  extra ``{kind = regex}`` rules
redaction_keys          (TOML only)                  ``["dob", ...]``: key names whose values are secrets
redaction_pseudonyms    ``EE_REDACTION_PSEUDONYMS``  ``[REDACTED:kind:tag]``, same value same tag
vault                   ``EE_VAULT`` (on/off, path)  opt-in: keep pseudonym -> value for replay
max_observation_chars   ``EE_MAX_OBSERVATION_CHARS`` longer tool results are cut
strict                  ``EE_CAPTURE_STRICT``        raise capture failures instead of logging (on/off)
offload                 ``EE_CAPTURE_OFFLOAD``       where capture's work runs: thread (default),
                                                     process or auto (opt-in: start a child process)
offload_nice            ``EE_CAPTURE_OFFLOAD_NICE``  that child process's nice value, 0-19 (default 19)
======================  ===========================  ===================================

An on/off variable takes 1, true, yes or on and 0, false, no or off (any case, spaces around ignored); anything else
is refused (:func:`env_flag`), never read as off. A value from the file, or given in code, must have its setting's type
(``max_observation_chars = 100000``, not ``"100000"``); the error names the file, the key, the value and the type.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware._toml import _described, _fits, _given, _type_error, layered_values
from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.errors import ConfigError

EnvironmentHook = Callable[[Any, Mapping[str, Any]], Mapping[str, Any] | None]

_ENV = {
    "app": "EE_APP",
    "app_version": "EE_APP_VERSION",
    "store": "EE_STORE",
    "redact": "EE_REDACT",
    "redaction_pseudonyms": "EE_REDACTION_PSEUDONYMS",
    "vault": "EE_VAULT",
    "max_observation_chars": "EE_MAX_OBSERVATION_CHARS",
    "strict": "EE_CAPTURE_STRICT",
    "offload": "EE_CAPTURE_OFFLOAD",
    "offload_nice": "EE_CAPTURE_OFFLOAD_NICE",
}

OFFLOAD_MODES = ("thread", "process", "auto")

FLAG_ON = ("1", "true", "yes", "on")
FLAG_OFF = ("0", "false", "no", "off")
"""How an on/off ``EE_*`` variable is spelt (any case, spaces around ignored): read by :func:`env_flag` alone."""


def env_flag(var: str, *, or_path: bool = False) -> bool | str | None:
    """The on/off environment variable ``var``: ``None`` when unset or blank, ``True`` for 1, true, yes or on,
    ``False`` for 0, false, no or off (any case, spaces around ignored).

    Anything else is a :class:`~ee_middleware.errors.ConfigError` naming the variable, its value and these spellings:
    never read as off (``EE_REDACT=ture`` must not store e-mails in plain text). With ``or_path`` (``EE_VAULT``) any
    other value is a path, returned as given, except one that looks like a misspelt switch (``ture``, ``of``), refused
    too (``./ture`` names a file of that name).
    """
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    word = raw.strip().lower()
    if word in FLAG_ON:
        return True
    if word in FLAG_OFF:
        return False
    spellings = (
        f"{var}=1 (or true, yes, on) switches it on, {var}=0 (or false, no, off) switches it off; case and spaces around do not matter"
    )
    if not or_path:
        raise ConfigError(f"{var}={raw!r} is neither on nor off: {spellings}.")
    if not any(sep in word for sep in ("/", "\\", ".")) and difflib.get_close_matches(word, FLAG_ON + FLAG_OFF, n=1, cutoff=0.6):
        raise ConfigError(
            f"{var}={raw!r} looks like a misspelt on/off value, not a path: {spellings}, and a path names the file "
            f"(write ./{raw.strip()} for a file of that name)."
        )
    return raw


@dataclass(frozen=True)
class CaptureConfig:
    """Everything :func:`~ee_middleware.record_experience` needs to know.

    ``environment`` is either a fixed dict or a hook ``(graph_input, config) -> dict | None`` called
    when a run starts; its result is stored as the trajectory's environment reference, which a
    replay sandbox uses to rebuild the world at step 0. A run can also pass one in
    ``config["configurable"]["ee_environment"]``.
    """

    app: str = "default-app"
    app_version: str | None = None
    store: str = "./experience"
    redact: bool = True
    redaction_kinds: Mapping[str, bool] = field(default_factory=dict)
    redaction_patterns: Mapping[str, str] = field(default_factory=dict)
    redaction_keys: Sequence[str] = ()
    """Extra key names whose values are always redacted as secrets wherever they are a key of JSON or of a dict (a tool's
    arguments, a JSON result, the environment), whatever the kinds say: ``["dob", "national_id", "tax_id"]`` (compared
    by their words: ``nationalId`` and ``National-ID`` are ``national_id``). A pattern sees each value alone, so it
    cannot tell a date of birth from any other date; a key name can. Recorded in the store's ``redaction.json`` as the
    patterns are (every later writer, and every recorder of the store, applies them)."""
    redaction_pseudonyms: bool = True
    redact_fn: Callable[[str], str] | None = None
    """A function ``(text) -> text`` applied last to every string of a run's data (its messages' texts, tool arguments
    and results, keys included), not to the message encoding's member names (``role``, ``parts``, ...) nor to its fixed
    values of ``role``, ``type`` and ``finish_reason`` (``assistant``, ``tool_call``, ``stop``:
    :data:`~ee_middleware.capture.redaction.ENCODING_WORDS`)."""
    vault: bool | str = False
    """Opt-in redaction vault (:mod:`ee_middleware.capture.vault`): ``True`` keeps it in
    ``<store>.vault`` beside the store folder, a string is its path. Replay then gives the sandbox
    the real values of redacted arguments. ``EE_VAULT_KEY`` encrypts it."""
    max_observation_chars: int = 200_000
    strict: bool = False
    environment: Mapping[str, Any] | EnvironmentHook | None = None
    offload: str = "thread"
    """Where encoding, redaction, spans, assembly and store writes run
    (:mod:`ee_middleware.capture.offload`): ``"thread"`` (default), background threads of the agent's
    process (deferred while runs are in flight, up to 2 s). Opt-in, because they start a process
    inside your application: ``"process"``, a child process started with the
    recorder (the agent's process only pickles each run: the low-overhead mode under sustained
    load; needs a recorder without the user's own ``tracer_provider``, a store given as a folder or spec, and
    ``redact_fn``/``approve_if`` that pickle); ``"auto"``, threads until the deferral
    bound is reached while runs are in flight (sustained load), then the child process where the
    process mode can be used and there are two CPUs."""
    offload_nice: int = 19
    """The capture process's nice value, 0 to 19: 19 (the lowest priority, default) lets it work on CPU time the agent
    does not want; on a machine kept busy by other work it then gets little CPU, and a ``flush()`` waits for it. A lower
    value gives it a larger share, taken from the agent's process when both want CPU."""

    def __post_init__(self) -> None:
        if _is_number(self.app_version):  # app_version=7 (or 7 in a file): recorded as "7", as before types were checked
            object.__setattr__(self, "app_version", _version_text(self.app_version))
        wrong = [
            f"CaptureConfig.{'.'.join(loc)}: Input should be {described}{_given({'type': 'type', 'loc': loc, 'input': value})}"
            for loc, described, _, value in _type_problems({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        ]
        if wrong:
            raise ConfigError("; ".join(wrong) + ".")
        for name in ("app", "app_version"):  # names without the blanks around them ("  shop  " is the app shop)
            value = getattr(self, name)
            object.__setattr__(self, name, _text(name, value.strip() if isinstance(value, str) else value))
        if not self.app:
            raise ConfigError("CaptureConfig.app must be a non-empty string naming the agent, e.g. app='support-bot'.")
        if self.app[0] == self.app[-1] and self.app[0] in "\"'" and len(self.app) > 1:
            raise ConfigError(
                f"CaptureConfig.app {self.app!r} is written in quotes, which would be part of its name (an env file whose "
                f"quotes are kept, EE_APP='\"support-bot\"'): give the name alone, e.g. EE_APP=support-bot."
            )
        if self.offload not in OFFLOAD_MODES:
            raise ConfigError(f"CaptureConfig.offload must be one of {', '.join(OFFLOAD_MODES)}; got {self.offload!r}.")
        if self.max_observation_chars < 1:
            raise ConfigError(f"CaptureConfig.max_observation_chars must be positive, got {self.max_observation_chars}.")
        if not 0 <= self.offload_nice <= 19:
            raise ConfigError(
                f"CaptureConfig.offload_nice must be a nice value from 0 to 19 (19: the lowest priority), got {self.offload_nice}."
            )
        keys = self.redaction_keys
        if not all(isinstance(key, str) and key.strip() for key in keys):
            raise ConfigError(f"CaptureConfig.redaction_keys must be a list of key names, e.g. ['dob', 'national_id']; got {list(keys)!r}.")
        object.__setattr__(self, "redaction_keys", tuple(dict.fromkeys(key.strip() for key in keys)))
        empty = [kind for kind, pattern in self.redaction_patterns.items() if pattern == ""]
        if empty:
            raise ConfigError(
                f"Redaction pattern for kind {empty[0]!r} is empty: it matches no text, so it would redact nothing (and be recorded "
                f"in the store's redaction.json): give a regular expression, e.g. {{{empty[0]!r}: 'TCK-\\\\d+'}}."
            )
        if isinstance(self.vault, (str, os.PathLike)) and not os.fspath(self.vault).strip():
            raise ConfigError(
                f"CaptureConfig.vault must be a file's path or True (the vault beside the store), got {self.vault!r}, empty or "
                "blank (an unset variable?): give the path, vault=True for <store>.vault, or vault=False for no vault."
            )
        self.redaction_rules()  # unknown kinds, bad patterns and key names fail here, not at the first run
        if self.vault and not self.redaction_pseudonyms:
            raise ConfigError(
                "CaptureConfig.vault needs redaction_pseudonyms=True: the vault maps each pseudonym to its value, and plain "
                "[REDACTED:kind] placeholders name no value."
            )

    def redaction_rules(self) -> RedactionRules:
        """What capture redacts (see :data:`~ee_middleware.capture.redaction.KINDS`)."""
        from ee_middleware.capture.store_redaction import rules_with_keys

        rules = RedactionRules(defaults=self.redact, kinds=dict(self.redaction_kinds), patterns=dict(self.redaction_patterns))
        return rules_with_keys(rules, self.redaction_keys)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> CaptureConfig:
        """Defaults <- TOML ``[capture]`` table <- ``EE_*`` environment <- ``overrides``.

        A value the file gives (and that is used) must have its setting's TOML type; the error names the file, the
        key, the value and the type, as the ``ee`` jobs' errors do."""
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ConfigError(
                f"CaptureConfig.load's path (record_experience's config=) must be the path of a TOML file with a [capture] "
                f"table (a str or os.PathLike; record_experience also takes a CaptureConfig), got {type(path).__name__} {path!r}."
            )
        values: dict[str, Any] = {}
        layered = layered_values(Path(path), "capture", {}, job="capture") if path is not None else None
        values.update(layered or {})
        values.update(_from_environment())
        values.update({k: v for k, v in overrides.items() if v is not None})
        if _is_number(values.get("app_version")):  # a version written as a number: its text (a whole number's)
            in_file = layered is not None and layered.from_file.get("app_version") is values["app_version"]  # type: ignore[attr-defined]
            values["app_version"] = _version_text(values["app_version"], f" (in [capture] of {path})" if in_file else "")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted((set(values) | set(overrides)) - known)  # a misspelled keyword given None too
        if unknown:
            raise ConfigError(_unknown_settings(unknown, known, layered.from_file if layered is not None else {}, path))  # type: ignore[attr-defined]
        if layered is not None:
            used = {key: value for key, value in layered.from_file.items() if values.get(key) is value}  # type: ignore[attr-defined]
            wrong = [
                f"{loc[0]}: Input should be {described}: in [capture] of {path}, "
                + (f"write a table [capture.{loc[0]}]; " if loc[0] == "environment" else "")
                + f"a function can only be given in code ({loc[0]}= to record_experience)"
                if loc[0] in _CALLABLE
                else _type_error(annotation, value, loc, layered)
                for loc, described, annotation, value in _type_problems(used)
            ]
            if wrong:
                raise ConfigError(f"Invalid capture configuration: {'; '.join(wrong)}")
        try:
            return cls(**values)
        except ConfigError as exc:
            patterns = layered.from_file.get("redaction_patterns") if layered is not None else None  # type: ignore[attr-defined]
            if patterns is not None and values.get("redaction_patterns") is patterns and "Redaction pattern" in str(exc):
                raise ConfigError(f"{exc} (in [capture.redaction_patterns] of {path}: correct it there).") from None
            raise


def _text(name: str, value: str | None) -> str | None:
    """``value`` as text every record can hold. A name read from bytes that were not text in this process's encoding
    (``EE_APP`` or an argument in an ASCII-locale Python: lone surrogates) is the UTF-8 text those bytes are where they
    are some; otherwise a :class:`ConfigError` (stored, it failed every run's record, and each run was lost)."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(value).decode("utf-8")
    except (UnicodeError, ValueError):
        raise ConfigError(
            f"CaptureConfig.{name} {value!r} holds bytes that are not UTF-8 text (read from an environment variable or a file "
            f"name in another encoding?): give it as text, e.g. {name}='support-bot'."
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _version_text(value: int | float, where: str = "") -> str:
    """An ``app_version`` given as a number: a whole number's text (``7``: ``"7"``). A float is refused (``where``: the
    file it came from, for the error): its digits are not the ones written (``1.10`` is read as 1.1, the version 1.1)."""
    if isinstance(value, float):
        raise ConfigError(
            f"CaptureConfig.app_version must be text, got the number {value!r}{where}: a version written as a number loses "
            'its digits (1.10 is read as 1.1). Write it in quotes: app_version = "1.10" in the file, app_version="1.10" in code.'
        )
    return str(value)


def _unknown_settings(unknown: list[str], known: set[str], from_file: Mapping[str, Any], path: Any) -> str:
    """The message for capture settings no one knows: each named, with where it came from (the file) and the setting or
    ``record_experience`` keyword it is a letter or two away from."""
    from ee_middleware._toml import _closest  # the rule config files' unknown keys are told with
    from ee_middleware.capture.recorder import RecordingOptions  # (every keyword record_experience takes)

    in_code = set(RecordingOptions.__annotations__) - known  # approve_if, tracer_provider, config: objects, no settings
    names = sorted(known | in_code)
    told, code_only = [], []
    for key in unknown:
        where = f" (in [capture] of {path})" if key in from_file else ""
        if key in in_code:
            code_only.append(f"{key}{where}")
            continue
        close = _closest(key, names)
        told.append(f"{key}{where}" + (f" (did you mean {close}?)" if close else ""))
    message = f"Unknown capture setting(s) {'; '.join(told)}. Known: {', '.join(names)}." if told else ""
    if code_only:
        listed = "; ".join(code_only)
        message += (" " if message else "") + (
            f"Not a capture setting: {listed}. It is a keyword of record_experience only, given in code "
            "(record_experience(graph, approve_if=..., tracer_provider=...)), not in a config file, the environment or "
            "CaptureConfig."
        )
    return message


def _from_environment() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, var in _ENV.items():
        if name in ("redact", "strict", "redaction_pseudonyms", "vault"):
            flag = env_flag(var, or_path=name == "vault")
            if flag is not None:
                values[name] = flag
            continue
        raw = os.environ.get(var)
        if raw is None or raw == "":
            continue
        if name == "max_observation_chars":
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not an integer.") from None
            if values[name] < 1:
                raise ConfigError(f"{var}={raw!r}: the most characters of a tool result kept must be positive, e.g. {var}=20000.")
        elif name == "offload_nice":
            try:
                values[name] = int(raw.strip())
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not an integer: give a nice value from 0 to 19, e.g. {var}=10.") from None
            if not 0 <= values[name] <= 19:
                raise ConfigError(f"{var}={raw!r}: a nice value is from 0 to 19 (19: the lowest priority), e.g. {var}=10.")
        elif name == "offload":  # a word, read as the on/off switches are: any case, spaces around ignored
            word = raw.strip().lower()
            if not word:
                continue
            if word not in OFFLOAD_MODES:
                raise ConfigError(f"{var}={raw!r} is not an offload mode: use one of {', '.join(OFFLOAD_MODES)} (any case).")
            values[name] = word
        elif name in ("app", "app_version"):  # a name with blanks around it is that name; blanks alone are none, as ""
            if raw.strip():
                values[name] = raw.strip()
        else:
            values[name] = raw
    return values


_CALLABLE = {"redact_fn": "a function (text) -> text", "environment": "a valid dictionary or a function (input, config) -> dict"}
"""Settings that take a function, which only code can give (the type check cannot tell a function's type)."""


@functools.cache
def _annotations() -> dict[str, Any]:
    return typing.get_type_hints(CaptureConfig)


def _type_problems(values: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str, Any, Any]]:
    """``(where, what it takes, annotation, value)`` for each of ``values`` (settings by name) that has not its setting's
    type; a table's wrong entries one by one (``redaction_kinds.email``). A path (``os.PathLike``) counts as a string
    and any mapping as a table, as code may give them."""
    problems: list[tuple[tuple[str, ...], str, Any, Any]] = []
    for name, value in values.items():
        annotation = _annotations().get(name)
        if annotation is None:
            continue
        if name in _CALLABLE:
            if value is not None and not callable(value) and not (name == "environment" and isinstance(value, Mapping)):
                problems.append(((name,), _CALLABLE[name], annotation, value))
            continue
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if (value is None and type(None) in args) or _fits(annotation, _as_read(value)):
            continue
        if origin is Mapping and isinstance(value, Mapping) and len(args) == 2:
            problems += [((name, str(k)), _described(args[1]), args[1], v) for k, v in value.items() if not _fits(args[1], _as_read(v))]
        else:
            problems.append(((name,), _described(annotation), annotation, value))
    return problems


def _as_read(value: Any) -> Any:
    """``value`` as a TOML file would give it: a path as its string, a tuple or a set as a list, a mapping as a dict."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (tuple, set, frozenset)):  # a list however code gives it (a set of key names)
        return list(value)
    return dict(value) if isinstance(value, Mapping) and not isinstance(value, dict) else value
