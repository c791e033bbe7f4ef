"""Job configuration: one table of a TOML file, flag overrides on top, errors that name the file, the key or the flag.

Every job (``ee replay run``, ``ee datasets build``, ``ee train``, ``ee eval run``, ``ee eval gate``, ``ee improve``)
reads its settings with :func:`layered_values` and builds its typed object with :func:`build_config`, so each of them
gets the same rules:

- the file is UTF-8 (a byte-order mark is skipped) or UTF-16/32 with a byte-order mark (PowerShell 5's ``>``);
- the job's settings are in its own table; keys outside any table, and a file with tables for other jobs only, are
  refused (a file with an ``[improve]`` table, or read for ee improve's stages with ``nightly=True``, is the nightly
  job's, whose stage tables are optional);
- a value from the file has its setting's TOML type (``k = 8``, not ``k = "8"`` nor ``k = true``);
- flags override the file, tables (``--policy-setting``) key by key;
- an error about a value a flag gave names the flag as typed (``--tool-timeout``), not the setting behind it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ee_middleware._text import read_user_text
from ee_middleware.errors import ConfigError, MissingSettingError

if TYPE_CHECKING:
    from pydantic import BaseModel


KNOWN_TABLES = (
    "improve",
    "replay",
    "datasets",
    "train",
    "eval",
    "gate",
    "capture",
    "experience_eval",
    "experience_dataset",
    "curriculum",
    "curriculum_propose",
    "serve",
    "likelihood",
)
"""The tables ee reads from a configuration file (``ee improve`` reads them all from one file)."""

READ_BY = {
    "improve": "ee improve",
    "replay": "ee replay run",
    "datasets": "ee datasets build",
    "train": "ee train",
    "eval": "ee eval run",
    "gate": "ee eval gate --policy",
    "capture": "record_experience's capture config",
    "experience_eval": "ee experience eval",
    "experience_dataset": "ee experience dataset",
    "curriculum": "ee curriculum run",
    "curriculum_propose": "ee curriculum propose",
    "serve": "ee serve local and ee serve vllm",
    "likelihood": "ee eval likelihood",
}
"""Who reads each table (named in the errors about a file given to the wrong job)."""


def not_blank(value: Any) -> Any:
    """A config field's validator (``BeforeValidator``): a setting given as empty or blank text is refused. Read as a
    path it was the working directory (or a folder named " "), where the job then made its runs or its registry
    (``--runs "$RUNS_DIR"`` with the variable unset); stored as a name, no reader could select it."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{value!r} is empty or blank: give it a value (an unset variable in the command or the file?)")
    return value


def stripped_not_blank(value: Any) -> Any:
    """:func:`not_blank`, then the text without the blanks around it (a name: an app's)."""
    return not_blank(value).strip() if isinstance(value, str) else value


def finite_seconds(what: str, example: str) -> Any:
    """A config field's validator (``Annotated[float, finite_seconds(...)]``, beside its ``Field(gt=0)``): a number of
    seconds must be finite, since ``inf`` passes ``gt=0`` and then fails where it is used (a request's or a tool call's
    deadline). ``what`` the seconds bound, ``example`` values to suggest, both for the error."""
    import math

    from pydantic import AfterValidator

    def check(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number of seconds ({what}), e.g. {example} (there is no 'no limit')")
        return value

    return AfterValidator(check)


BLANK_PATH = "is empty or blank: name {what} (read as a path, an empty value is the working directory: an unset variable?)"
"""How an output path given as an empty or blank string is refused, by a config file's key (:func:`named_path`) and by
a command's flag (``ee_middleware.cli.common.path_given``)."""


def named_path(what: str) -> Any:
    """A config field's validator (``Annotated[Path, named_path("the output folder")]``): an empty or blank string is
    refused (:data:`BLANK_PATH`) rather than read as the working directory, where a build or a run would then have
    written its files (``out = ""``, ``out = "${OUT}"`` filled in from an unset variable)."""
    from pydantic import BeforeValidator

    def check(value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError(BLANK_PATH.format(what=what))
        return value

    return BeforeValidator(check)


def read_config_text(path: Path) -> str:
    """The text of the configuration file at ``path``, read as :func:`~ee_middleware._text.read_user_text` reads a
    file a user gives (UTF-8, or UTF-16/UTF-32 with a byte-order mark); errors name the file and how to save it as UTF-8."""
    return read_user_text(path, "Config file", "the TOML file", "TOML files are UTF-8.")


def read_toml(path: Path) -> dict[str, Any]:
    """The whole TOML file at ``path`` (read as :func:`read_config_text` reads it); errors name the file."""
    text = read_config_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}") from exc


def read_toml_table(path: Path, table: str, *, settings_for: str | None = None, nightly: bool = False) -> dict[str, Any]:
    """The ``[table]`` of the TOML file at ``path`` (empty when the file has none).

    ``settings_for`` (a job's name) marks ``path`` as the file given for that job: keys outside any table (read by no
    job), a table whose name is a near miss of ``table``, and a file with no ``[table]`` but other jobs' tables are a
    :class:`ConfigError` naming the fix instead of settings silently left out. An empty file sets nothing. ``nightly``
    says ``path`` is ee improve's file, read for one of its stages, which may leave any stage's table out (see
    :func:`_nightly_file`).
    """
    data = read_toml(path)
    if settings_for is not None:
        _check_layout(path, data, table, settings_for, nightly=nightly)
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"[{table}] in {path} must be a table.")
    return section


def _check_layout(path: Path, data: Mapping[str, Any], table: str, job: str, *, nightly: bool = False) -> None:
    import difflib

    loose = [key for key, value in data.items() if not isinstance(value, dict)]
    if table in data:
        if loose:
            them = "it" if len(loose) == 1 else "them"
            raise ConfigError(
                f"{path}: {', '.join(loose)} {'is' if len(loose) == 1 else 'are'} outside any table (written above the first "
                f"[table] line), where no job reads {them}: the {job} reads its settings from [{table}]. Move {them} below "
                f"the [{table}] line."
            )
        return
    if loose:
        raise ConfigError(
            f"{path} has no [{table}] table, and {', '.join(loose)} {'is' if len(loose) == 1 else 'are'} outside any table: "
            f"the {job} reads its settings from [{table}]. Put a line [{table}] above them."
        )
    unknown = [key for key in data if key not in KNOWN_TABLES]
    close = difflib.get_close_matches(table, unknown, n=1, cutoff=0.6)
    if close:
        raise ConfigError(f"{path} has no [{table}] table but has [{close[0]}]: did you mean [{table}]? (the {job} reads [{table}].)")
    if not data or _nightly_file(data, table, nightly=nightly):
        return  # an empty file sets nothing; the nightly job's file may leave a stage's table out
    has = ", ".join(f"[{name}]" + (f" (read by {READ_BY[name]})" if name in READ_BY else " (read by no ee job)") for name in data)
    if len(unknown) == 1 and len(data) == 1:
        fix = f" If [{unknown[0]}] holds this job's settings, rename it [{table}]."
    else:
        fix = f" Give the {job} a file with a [{table}] table, or add one to this file."
        if table in NIGHTLY_STAGES and not _another_command_runs():
            fix += " (A file for ee improve has an [improve] table, which may be empty where flags give its settings.)"
    raise ConfigError(f"{path} has no [{table}] table, which the {job} reads its settings from; it has {has}.{fix}")


NIGHTLY_STAGES = ("replay", "datasets", "train", "eval", "gate")
"""The stage tables ``ee improve`` reads besides ``[improve]`` (each optional in its file)."""


def _nightly_file(data: Mapping[str, Any], table: str, *, nightly: bool) -> bool:
    """``data`` is ee improve's file, read for ``table``, which may then be left out: a stage's table, where the caller
    reads the file for ee improve's stage (``nightly``: ImproveConfig's stage loaders, whoever runs them: ``ee improve``,
    ``run_improve``, a command of the user's own), or in a file with an ``[improve]`` table unless another of ee's own
    commands was given it (``ee replay run --config improve.toml`` is refused); or the ``[improve]`` table of a file of
    stage tables (the flags, or the caller, give its settings)."""
    if table == "improve":
        return any(name in data for name in NIGHTLY_STAGES)
    if table not in NIGHTLY_STAGES:
        return False
    return nightly or ("improve" in data and not _another_command_runs())


def _click_context() -> Any:
    """The click context of the ``ee`` command running in this thread, if any. Only the CLI imports click (or the copy
    recent typer versions ship as ``typer._click``): a library caller has none. The command of another CLI (the user's
    own click or typer command calling ee's API) is not ee's: its flags set none of ee's settings, so it is ignored."""
    for name in ("typer._click.globals", "click"):
        module = sys.modules.get(name)
        ctx = module.get_current_context(silent=True) if hasattr(module, "get_current_context") else None
        callback = getattr(ctx.command, "callback", None) if ctx is not None else None
        if (getattr(callback, "__module__", None) or "").startswith("ee_middleware."):  # typer's wrapper keeps it
            return ctx
    return None


def _another_command_runs() -> bool:
    """An ``ee`` command other than ``ee improve`` runs here (``ee replay run --config improve.toml``)."""
    ctx = _click_context()
    return ctx is not None and ctx.command.name != "improve"


class _Layered(dict[str, Any]):
    """A job's settings as :func:`layered_values` gathered them, with where they came from (for :func:`build_config`)."""

    path: Path | None
    table: str
    from_file: dict[str, Any]
    """The file's ``[table]`` as read."""
    overridden: frozenset[str]
    """The keys the overrides (flags, or the calling job) set."""
    given: dict[str, Any]
    """What the overrides set, by key (before tables were merged into the file's)."""


def layered_values(
    path: str | os.PathLike[str] | None, table: str, overrides: Mapping[str, Any], *, job: str, nightly: bool = False
) -> dict[str, Any]:
    """A job's settings: the TOML file's ``[table]`` (when a file is given) <- ``overrides`` (``None`` values ignored).

    A table given by ``overrides`` (``--policy-setting``) is merged into the file's key by key. The file may hold
    other jobs' tables besides ``[table]``; settings outside any table, a near miss of ``[table]``, or no ``[table]`` at
    all (another job's file) are an error naming the fix (see :func:`read_toml_table`); with ``nightly`` (ee improve's
    file, read for its stage) a stage's table may be left out."""
    values = _Layered()
    values.path, values.table, values.from_file = (Path(path) if path is not None else None), table, {}
    if values.path is not None:
        values.from_file = read_toml_table(values.path, table, settings_for=job, nightly=nightly)
        values.update(values.from_file)
    given = {k: v for k, v in overrides.items() if v is not None}
    values.overridden, values.given = frozenset(given), given
    for key, value in given.items():
        values[key] = _merged(values[key], value) if key in values else value
    return values


def _merged(base: Any, top: Any) -> Any:
    """``top`` over ``base``; tables key by key (recursively), anything else replaced."""
    if not (isinstance(base, Mapping) and isinstance(top, Mapping)):
        return top
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _merged(merged[key], value) if key in merged else value
    return merged


ModelT = TypeVar("ModelT", bound="BaseModel")


def build_config(cls: type[ModelT], values: Mapping[str, Any], job: str) -> ModelT:
    """``cls(**values)``, with validation problems turned into one :class:`ConfigError` naming each field.

    With ``values`` from :func:`layered_values`: a value the file gave must have its setting's TOML type (a string is
    not a number, a boolean is not an integer); the error names the file, the key, the value and the type. A problem
    with a value a flag gave names the flag as the user typed it."""
    from pydantic import ValidationError

    layered = values if isinstance(values, _Layered) else None
    if layered is not None and layered.path is not None:
        wrong = _wrong_types(cls, layered)
        if wrong:
            raise ConfigError(f"Invalid {job} configuration: {'; '.join(wrong)}")
        hidden = _wrong_types(cls, layered, overridden=True)
        if hidden:  # the flag's value is used now; a run without the flag (a scheduled one) fails on the file's
            raise ConfigError(
                f"Invalid {job} configuration: {'; '.join(hidden)} (overridden here, by a flag or the job, but the file is read as a "
                "whole: fix it)"
            )
    if layered is not None and layered.path is not None:
        values = _without_settings_of_another_part(cls, layered)
    try:
        return cls(**values)
    except ValidationError as exc:
        flags = _flags(cls, layered) if layered is not None else {}
        errors = exc.errors()
        problems = "; ".join(
            f"{_where(e['loc'], flags)}: {_said(e)}" + (_meant(cls, e) if e["type"] == "extra_forbidden" else _given(e)) for e in errors
        )
        message = f"Invalid {job} configuration: {problems}"
        if layered is not None and layered.path is not None:
            message = _in_file(message, errors, layered, flags)
        raise ConfigError(message) from None


def _part_kind(spec: str) -> str:
    """What kind of part a spec names, whose settings it takes: a factory (``package.module:factory``) itself; else the
    name before any ``:`` (``bm25``; ``openai`` of ``openai:URL#MODEL``, whose model or host may change and its
    settings, an ``api_key`` or a ``timeout_s``, still apply)."""
    from ee_middleware.plugins import FACTORY_SPEC

    text = spec.strip()
    return text if FACTORY_SPEC.match(text) else text.partition(":")[0].strip().lower()


def _without_settings_of_another_part(cls: type[BaseModel], layered: _Layered) -> dict[str, Any]:
    """``layered``'s values, less the file's ``KEY_settings`` where a flag (or the calling job) named another kind of
    part for ``KEY`` (:func:`_part_kind`) than the one the file's settings are for (its ``KEY``, else the setting's
    default): the options of the file's retriever, sandbox or policy are not the options of the one named instead
    ("bm25 takes no option foo"). The settings the flags gave are kept (not merged into the file's). Said with a warning
    naming the file, the table and the part."""
    values = dict(layered)
    for key in sorted(layered.overridden):
        settings = f"{key}_settings"
        if settings not in layered.from_file or key not in cls.model_fields:
            continue
        for_part = layered.from_file.get(key, cls.model_fields[key].default)
        named = values.get(key)
        if not isinstance(named, str) or not isinstance(for_part, str) or _part_kind(named) == _part_kind(for_part):
            continue
        if settings in layered.given:
            values[settings] = layered.given[settings]
        else:
            values.pop(settings, None)
        import warnings

        warnings.warn(
            f"{settings} in [{layered.table}] of {layered.path} are for the {key} {for_part!r}, not for {named!r}, named "
            f"instead (a flag or the job): they are left out. Give the settings of {named!r} with --{key.replace('_', '-')}-setting, or "
            "name it in the file.",
            UserWarning,
            stacklevel=4,
        )
    return values


def build_with_required(
    cls: type[ModelT],
    path: str | os.PathLike[str] | None,
    table: str,
    overrides: Mapping[str, Any],
    needed: Mapping[str, str],
    *,
    job: str,
    subject: str,
) -> ModelT:
    """:func:`build_config` of :func:`layered_values` (the file's ``[table]`` <- ``overrides``) for the ``job`` (``"curriculum
    run"``). A setting of ``needed`` (key -> the flag or argument that gives it) that neither gives is a
    :class:`ConfigError` saying "The ``subject`` needs FLAG (or KEY in the [table] table of the --config file)", raised
    after the file's own problems (a key spelled as its flag gets its 'did you mean')."""
    values = layered_values(path, table, overrides, job=f"{job} job")
    missing = [key for key in needed if values.get(key) is None]
    if missing:
        stand_ins = {**overrides, **dict.fromkeys(missing, "(not given)")}
        build_config(cls, layered_values(path, table, stand_ins, job=f"{job} job"), job)
        raise missing_settings(subject, table, {key: needed[key] for key in missing})
    return build_config(cls, values, job)


def missing_settings(subject: str, table: str, missing: Mapping[str, str]) -> MissingSettingError:
    """The error for settings (key -> the flag that gives it) that neither the command line nor the ``--config`` file's
    ``[table]`` gave: "The ``subject`` needs FLAG (or KEY in the [table] table of the --config file)"."""
    return MissingSettingError(
        f"The {subject} needs "
        + " and ".join(f"{flag} (or {key} in the [{table}] table of the --config file)" for key, flag in missing.items())
        + "."
    )


def _in_file(message: str, errors: list[Any], values: _Layered, flags: Mapping[str, str]) -> str:
    """``message`` with where in the file the keys it names are, when the file gave them (not a flag): the unknown keys'
    tables and the fix (:func:`naming_file`), else ``in [table] of PATH``."""
    from_file = [e for e in errors if e["loc"] and e["loc"][0] in values.from_file and e["loc"][0] not in flags]
    if not from_file:
        return message
    if any(e["type"] == "extra_forbidden" for e in from_file):
        tables, sub_tables = _tables_of_unknown_keys(message, values.table, values.path)
        fix = "remove the table, or correct its name" if sub_tables else "remove the key, or correct its name"
        return f"{message}: in {' and '.join(tables)} of {values.path} ({fix})"
    # a value in a sub-table the file wrote ([improve.budgets]) is named there, not in the table above it
    tables = dict.fromkeys(
        f"[{values.table}.{e['loc'][0]}]"
        if len(e["loc"]) > 1 and isinstance(values.from_file.get(e["loc"][0]), Mapping)
        else f"[{values.table}]"
        for e in from_file
    )
    return f"{message}: in {' and '.join(tables)} of {values.path}"


def _where(loc: tuple[Any, ...], flags: Mapping[str, str]) -> str:
    """An error's location as the user wrote it: the flag that gave the value, else the key (``budgets.max_minutes``)."""
    if loc and loc[0] in flags:
        return flags[loc[0]] + (f" ({'.'.join(str(p) for p in loc[1:])})" if len(loc) > 1 else "")
    sub = ".".join(str(p) for p in loc[:2])
    if len(loc) >= 2 and flags.get(sub):  # a sub-table's setting a flag gave (--launcher: vllm.launcher)
        return flags[sub] + (f" ({'.'.join(str(p) for p in loc[2:])})" if len(loc) > 2 else "")
    return ".".join(str(p) for p in loc) or "(config)"


# --- which flag gave a value ------------------------------------------------------------------------------------------


def _flags(cls: type[BaseModel], values: _Layered) -> dict[str, str]:
    """``{setting: flag}`` for the settings that flags (or their ``EE_*`` variables) of the running ``ee`` command gave.

    A flag spelled as its setting (``--k``, ``--max-steps-per-turn``) or whose parameter is named so gives it; a renamed one
    (``--tool-timeout`` for ``tool_timeout_s``) is the given flag whose value the setting holds."""
    ctx = _click_context()
    if ctx is None:
        return {}
    given_by = {"COMMANDLINE": "flag", "ENVIRONMENT": "env"}
    options = [p for p in ctx.command.params if getattr(p, "param_type_name", "") == "option" and p.name]
    fields = set(cls.model_fields)

    def shown(option: Any) -> str | None:
        source = ctx.get_parameter_source(option.name)
        how = given_by.get(getattr(source, "name", ""))
        if how == "env" and option.envvar:
            return option.envvar if isinstance(option.envvar, str) else option.envvar[0]
        return _typed_flag(ctx, option) if how else None

    named = {field: option for option in options for field in _option_names(option) & fields}
    renamed = [option for option in options if not _option_names(option) & fields and shown(option)]
    flags: dict[str, str] = {}
    for field in values.overridden & fields:
        option = named.get(field)
        if option is None or not shown(option):  # a renamed flag (or --model-spec beside an unused --model)
            same = [o for o in renamed if _same_value(ctx.params.get(o.name), values[field])]
            option = same[0] if len(same) == 1 else option
        flag = shown(option) if option is not None else None
        if flag:
            flags[field] = flag
    # a sub-table's settings that flags gave (``--launcher`` for ``vllm.launcher``): the flag named as its key
    for field in values.overridden & fields:
        given = values.given.get(field)
        if field in flags or not isinstance(given, Mapping):
            continue
        for key, value in given.items():
            if value is None:
                continue
            same = [o for o in options if key in _option_names(o) and shown(o) and _same_value(ctx.params.get(o.name), value)]
            if len(same) == 1:
                flags[f"{field}.{key}"] = shown(same[0]) or ""
    return flags


def _typed_flag(ctx: Any, option: Any) -> str:
    """The spelling of ``option`` the user typed (``--lr`` for ``--learning-rate``), where the command line says it: the
    process's arguments, after the running command's own name (click keeps no record of it). Else its longest name."""
    spellings = [*option.opts, *getattr(option, "secondary_opts", ())]
    longest = max((o for o in option.opts if o.startswith("--")), key=len, default=option.opts[0])
    if len(spellings) == 1:
        return longest
    words, name = sys.argv[1:], ctx.info_name
    after = len(words) - words[::-1].index(name) if name in words else None  # the command's arguments start here
    if after is None:  # not this process's command line (a test runner's, a host program's): not guessed from it
        return longest
    typed = {o for word in words[after:] for o in spellings if word == o or (o.startswith("--") and word.startswith(o + "="))}
    return typed.pop() if len(typed) == 1 else longest


def _same_value(given: Any, used: Any) -> bool:
    """A flag's value, as click parsed it, is the value the command passed on for a setting."""
    if given is None or isinstance(given, bool) != isinstance(used, bool):  # (--no-progress's False is no 0)
        return False
    return any(candidate == used or _both_nan(candidate, used) for candidate in (given, getattr(given, "value", given), str(given)))


def _both_nan(a: Any, b: Any) -> bool:
    """Whether both are the float NaN, which equals nothing, itself included (``--tool-timeout nan``)."""
    return isinstance(a, float) and isinstance(b, float) and a != a and b != b


# --- TOML types -------------------------------------------------------------------------------------------------------


def _wrong_types(cls: type[BaseModel], values: _Layered, *, overridden: bool = False) -> list[str]:
    """The file's values (those the job uses as read; with ``overridden``, those a flag replaced) whose TOML type is not
    their setting's, as error lines."""
    wrong: list[str] = []
    for key, value in values.from_file.items():
        if overridden:
            if key in values.overridden and not isinstance(value, dict):  # a table is merged with the flag's, checked as used
                _check_value(cls, key, value, (key,), values, wrong)
        elif key in values and values[key] is value:  # not replaced by a flag, nor rewritten by the job's load()
            _check_value(cls, key, value, (key,), values, wrong)
    return wrong


def _check_value(model: Any, key: str, value: Any, loc: tuple[str, ...], values: _Layered, wrong: list[str]) -> None:
    field = model.model_fields.get(key)
    if field is None:
        return  # an unknown key: validation names it
    annotation = field.annotation
    if not _fits(annotation, value):
        wrong.append(_type_error(annotation, value, loc, values))
        return
    nested = _model_in(annotation)
    if nested is not None and isinstance(value, dict):
        for inner, inner_value in value.items():
            _check_value(nested, inner, inner_value, (*loc, inner), values, wrong)


def _args(annotation: Any) -> tuple[Any, Any, tuple[Any, ...]]:
    """``(annotation without Annotated, its origin, its arguments)``."""
    from typing import Annotated, get_args, get_origin

    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation, get_origin(annotation), get_args(annotation)


def _model_in(annotation: Any) -> Any:
    """The pydantic model an annotation takes (``Budgets``, ``Budgets | None``), if any."""
    import types
    from typing import Union

    from pydantic import BaseModel

    annotation, origin, args = _args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin is Union or origin is types.UnionType:
        models = [m for m in (_model_in(a) for a in args) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _fits(annotation: Any, value: Any) -> bool:
    """``value`` (as TOML reads it) has a type the setting takes; types the file cannot be checked against pass."""
    import collections.abc
    import datetime as dt
    import enum
    import types
    from pathlib import PurePath
    from typing import Any as AnyType
    from typing import Literal, Union

    from pydantic import BaseModel

    annotation, origin, args = _args(annotation)
    if annotation is AnyType or annotation is object:
        return True
    if origin is Union or origin is types.UnionType:
        return any(_fits(a, value) for a in args if a is not type(None))
    if origin is Literal:
        return any(_fits(type(choice), value) for choice in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, PurePath)):
        return isinstance(value, str)
    if annotation in (dt.datetime, dt.date, dt.time):  # a TOML date/time, or one written as a string
        return isinstance(value, dt.date | dt.time | str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return any(_fits(type(member.value), value) for member in annotation)
    sequences = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)
    if origin in sequences or annotation in sequences:
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(_fits(a, v) for a, v in zip(args, value, strict=True))
        return not args or all(_fits(args[0], v) for v in value)
    if origin in (dict, collections.abc.Mapping) or annotation in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and (len(args) != 2 or all(_fits(args[1], v) for v in value.values()))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return isinstance(value, dict)
    return True


def _described(annotation: Any) -> str:
    """What a setting takes, in validation's words (``a valid integer``)."""
    import collections.abc
    import datetime as dt
    import enum
    import types
    from pathlib import PurePath
    from typing import Literal, Union

    annotation, origin, args = _args(annotation)
    if origin is Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(_described(a) for a in args if a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    simple = {bool: "a valid boolean", int: "a valid integer", float: "a valid number", str: "a valid string"}
    if annotation in simple:
        return simple[annotation]
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "a valid string"
    if annotation in (dt.datetime, dt.date, dt.time):
        return f"a valid {annotation.__name__} (a TOML date-time, or an ISO 8601 string)"
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) or annotation in (list, tuple):
        return "a valid list" + (f" of {_plural(args[0])}" if args else "")
    return "a valid dictionary"  # a table: dict[...] and nested models


def _plural(annotation: Any) -> str:
    described = _described(annotation)
    for one, many in (("a valid boolean", "booleans"), ("a valid integer", "integers"), ("a valid number", "numbers")):
        described = described.replace(one, many)
    return described.replace("a valid string", "strings").replace("a valid ", "")


def _type_error(annotation: Any, value: Any, loc: tuple[str, ...], values: _Layered) -> str:
    """``KEY: Input should be TYPE (got VALUE): in [TABLE] of FILE, HOW TO WRITE IT``."""
    key = loc[-1]
    table = ".".join((values.table, *loc[:-1]))
    shown = _given({"type": "toml_type", "loc": loc, "input": value})
    if shown and isinstance(value, bool):
        shown = f" (got {str(value).lower()})"
    fix = _toml_fix(annotation, value, key, table, secret=any(_is_secret_name(part) for part in loc))
    return f"{'.'.join(loc)}: Input should be {_described(annotation)}{shown}: in [{table}] of {values.path}, {fix}"


def _toml_fix(annotation: Any, value: Any, key: str, table: str, *, secret: bool) -> str:
    """How to write ``key`` with its type, as TOML types values."""
    import json

    described = _described(annotation)
    written = json.dumps(value) if isinstance(value, str) else repr(value)
    if described.startswith("one of"):
        return f"write one of them, e.g. {key} = {json.dumps(_choices(annotation)[0])}"
    if isinstance(value, str) and ("integer" in described or "number" in described):
        number = _as_number(value, whole="number" not in described)
        if number is not None and not secret:
            return f"TOML is typed: {written} is a string; write {key} = {number} without quotes"
        return f"TOML is typed: {'a string' if secret else written + ' is a string'}; write a number without quotes, e.g. {key} = 1"
    if isinstance(value, str) and "boolean" in described:
        return f"TOML is typed: {'a string' if secret else written + ' is a string'}; write {key} = true or {key} = false, without quotes"
    if isinstance(value, bool) and ("integer" in described or "number" in described):
        return f"TOML is typed: {str(value).lower()} is a boolean; write a number, e.g. {key} = 1"
    if isinstance(value, float) and "integer" in described:
        return f"write a whole number, e.g. {key} = {round(value) if not secret else 1}"
    if isinstance(value, int | float | bool) and "string" in described and not isinstance(value, str):
        literal = str(value).lower() if isinstance(value, bool) else str(value)
        return f'TOML is typed: write a string in quotes, {key} = "{literal if not secret else "..."}"'
    if "list" in described:
        item = json.dumps(value) if isinstance(value, str) and not secret else '"..."'
        return f"write an array, e.g. {key} = [{item}]"
    if described == "a valid dictionary" or described.endswith("a valid dictionary"):
        return f"write a table: a line [{table}.{key}] with one name = value line per setting below it (or {key} = {{ name = value }})"
    return f"write {described.removeprefix('a valid ')}"


def _choices(annotation: Any) -> list[Any]:
    """The values a ``Literal`` or an enum (or either or ``None``) takes."""
    import enum
    import types
    from typing import Literal, Union

    annotation, origin, args = _args(annotation)
    if origin is Literal:
        return list(args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    if origin is Union or origin is types.UnionType:
        return [choice for a in args for choice in _choices(a)]
    return []


def _as_number(text: str, *, whole: bool) -> str | None:
    """``text`` as the TOML number it spells (``"4"``, ``"2e-4"``), if it spells one."""
    try:
        return str(int(text.strip())) if whole else (text.strip() if float(text.strip()) == float(text.strip()) else None)
    except ValueError:
        return None


# --- errors -----------------------------------------------------------------------------------------------------------


def _is_secret_name(name: str) -> bool:
    """A setting's name says its value is a secret: ``api_key``, ``token``, ``hf_token``, ``client_secret``, ``password``,
    ``authorization``, ``credentials``; not a count of tokens (``max_tokens``, ``iwm_max_observation_tokens``)."""
    import re

    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word.endswith(("key", "token", "secret", "password", "passwd", "pwd")) or word.startswith("auth") or "credential" in word:
            return True
    return False


_BOUNDS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _said(error: Any) -> str:
    """Pydantic's message for a validation error, but for NaN against a bound: NaN compares false with every number, so
    pydantic said "Input should be less than or equal to 1" of a value that is no number at all."""
    value = error.get("input")
    if error["type"] in _BOUNDS and isinstance(value, float) and value != value:
        return "Input should be a number, not NaN"
    return error["msg"]


def _given(error: Any) -> str:
    """`` (got VALUE)``: the value a setting was given, for an error about a value (not a missing or unknown key); never
    for a setting whose name says it is a secret, and with credentials in it hidden (:func:`hide_credentials`)."""
    if error["type"] == "missing" or "input" not in error or isinstance(error["input"], dict):
        return ""
    if any(_is_secret_name(str(part)) for part in error["loc"]):
        return ""
    from ee_middleware.errors import hide_credentials

    shown = hide_credentials(repr(error["input"]))
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def _meant(cls: type[BaseModel], error: Any) -> str:
    """`` (did you mean NAME?)`` for an unknown key close to a setting of the (nested) table it is in; else nothing.

    A key spelled as a flag of the running command (``lr`` for ``ee train --lr``) names the setting that flag sets; one
    spelled as a flag whose setting has a longer name (``heldout_after`` for ``--heldout-after``, which sets
    ``heldout_started_after``; ``tool_timeout`` for ``tool_timeout_s``) names that setting."""
    from pydantic import BaseModel

    model: Any = cls
    for part in error["loc"][:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = _model_in(field.annotation) if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    key, names = str(error["loc"][-1]), list(model.model_fields)
    close = (_flag_setting(key, names) if model is cls else None) or _closest(key, names)
    if close:
        return f" (did you mean {close}?)"
    # a key of one of its sub-tables written in the table itself, a letter or two away ([improve] max_minute for
    # [improve.budgets] max_minutes; not lora_rank for serving.max_lora_rank, another setting): said as a key of that
    # sub-table (a dotted key there would be refused where the file also has the sub-table's own [section])
    import difflib

    for name, field in model.model_fields.items():
        inner = _model_in(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            close = difflib.get_close_matches(key, list(inner.model_fields), n=1, cutoff=0.85)
            if close:
                return f" (did you mean {close[0]}, a setting of its {name} sub-table?)"
    return ""


def _option_names(option: Any) -> set[str]:
    """A click option's parameter name and its flags as keys (``--max-steps-per-turn`` -> ``max_steps_per_turn``)."""
    return {option.name, *(opt.lstrip("-").replace("-", "_") for opt in option.opts)}


def _flag_setting(key: str, names: list[str]) -> str | None:
    """The setting that the running command's flag spelled ``key`` sets, where another of its names is that setting's."""
    ctx = _click_context()
    for option in ctx.command.params if ctx is not None else ():
        if getattr(option, "param_type_name", "") == "option" and key in _option_names(option):
            settings = [name for name in names if name in _option_names(option)]
            if len(settings) == 1:
                return settings[0]
    return None


def _closest(key: str, names: list[str]) -> str | None:
    """The setting ``key`` most likely means: the one name holding all of its words in order (``heldout_after`` ->
    ``heldout_started_after``), else a name a letter or two away (``worker`` -> ``workers``), else the one name whose
    words it holds (``model_spec`` -> ``model``), else the closest spelling (``schedul`` -> ``schedule``)."""
    import difflib

    def within(words: list[str], other: list[str]) -> bool:
        rest = iter(other)
        return all(word in rest for word in words)

    words = key.lower().split("_")
    found = [name for name in names if within(words, name.split("_"))]
    if len(found) == 1:
        return found[0]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.85)  # a letter away: worker, suite, policy_setting
    if close:
        return close[0]
    found = [name for name in names if within(name.split("_"), words)]
    if len(found) == 1:
        return found[0]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    return close[0] if close else None


# --- naming the file an error's key came from -------------------------------------------------------------------------


@contextlib.contextmanager
def naming_file(table: str, path: Path | None) -> Iterator[None]:
    """An unknown key in ``[table]`` of the config file at ``path`` is refused naming the file, as a value of the wrong
    type is (pydantic's 'Extra inputs are not permitted' named the key only: with several config files, or a file
    beside the run's copies, which one was not said)."""
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        if path is None or str(path) in text or re.search(rf"in \[{re.escape(table)}(\.[^\]]+)?\] of ", text) or _UNKNOWN_KEY not in text:
            raise  # (named already, its table or a sub-table of it: build_config names the file as the command line gave it)
        tables, sub_tables = _tables_of_unknown_keys(text, table, path)
        fix = "remove the table, or correct its name" if sub_tables else "remove the key, or correct its name"
        raise ConfigError(f"{text}: in {' and '.join(tables)} of {path} ({fix})") from exc


_UNKNOWN_KEY = "Extra inputs are not permitted"


def _tables_of_unknown_keys(text: str, table: str, path: Path) -> tuple[list[str], bool]:
    """The tables of ``path`` (``[improve.serving]``, ``[train.lora]``) that hold the unknown keys ``text`` names by their
    path from ``[table]`` (``serving.servrs``, ``lora``), and whether each is itself a table the user wrote (``[train.lora]``
    where [train] has no setting ``lora``)."""
    import re

    try:
        root: Any = read_toml(path).get(table, {})
    except Exception:  # noqa: BLE001 - the file was read once already; its table is named as it was written
        root = {}
    named: list[str] = []
    whole_tables = True
    for location in re.findall(rf"(?:^|: |; )([^\s:;()]+): {_UNKNOWN_KEY}", text):
        node, names = root, [table]
        *parents, last = location.split(".")
        for part in parents:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                break
            node = node[part]
            names.append(part)
        is_table = len(names) == len(parents) + 1 and isinstance(node, dict) and isinstance(node.get(last), dict)
        whole_tables &= is_table
        shown = "[" + ".".join([*names, last] if is_table else names) + "]"
        if shown not in named:
            named.append(shown)
    return named or [f"[{table}]"], bool(named) and whole_tables
