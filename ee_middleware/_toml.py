"""Job configuration: one table of a TOML file, flag overrides on top, errors that name the file or field."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ee_middleware.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel


KNOWN_TABLES = ("improve", "replay", "datasets", "train", "eval", "gate", "capture")
"""The tables ee reads from a configuration file (``ee improve`` reads them all from one file)."""


def read_toml_table(path: Path, table: str, *, settings_for: str | None = None) -> dict[str, Any]:
    """The ``[table]`` of the TOML file at ``path`` (empty when the file has none).

    ``settings_for`` (a job's name) marks ``path`` as the file given for that job alone: one with no
    ``[table]`` but settings outside any table, or a table whose name is a near miss of ``table``, is
    a :class:`ConfigError` instead of the job running on its defaults.
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}") from exc
    if table not in data and settings_for is not None:
        _check_missing_table(path, data, table, settings_for)
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"[{table}] in {path} must be a table.")
    return section


def _check_missing_table(path: Path, data: Mapping[str, Any], table: str, job: str) -> None:
    import difflib

    loose = [key for key, value in data.items() if not isinstance(value, dict)]
    if loose:
        raise ConfigError(
            f"{path} has no [{table}] table, and {', '.join(loose)} {'is' if len(loose) == 1 else 'are'} outside any table: "
            f"the {job} reads its settings from [{table}]. Put a line [{table}] above them."
        )
    unknown = [key for key in data if key not in KNOWN_TABLES]
    close = difflib.get_close_matches(table, unknown, n=1, cutoff=0.6)
    if close:
        raise ConfigError(f"{path} has no [{table}] table but has [{close[0]}]: did you mean [{table}]? (the {job} reads [{table}].)")


def layered_values(path: str | os.PathLike[str] | None, table: str, overrides: Mapping[str, Any], *, job: str) -> dict[str, Any]:
    """A job's settings: the TOML file's ``[table]`` (when a file is given) <- ``overrides`` (``None`` values ignored).

    The file may hold other jobs' tables and no ``[table]`` (the job then runs on its defaults), but
    settings outside any table, or a near miss of ``[table]``, are an error naming the fix."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_toml_table(Path(path), table, settings_for=job))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


ModelT = TypeVar("ModelT", bound="BaseModel")


def build_config(cls: type[ModelT], values: Mapping[str, Any], job: str) -> ModelT:
    """``cls(**values)``, with validation problems turned into one :class:`ConfigError` naming each field."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}"
            + (_meant(cls, e) if e["type"] == "extra_forbidden" else _given(e))
            for e in exc.errors()
        )
        raise ConfigError(f"Invalid {job} configuration: {problems}") from None


_SECRET_NAMES = ("key", "token", "secret", "password", "passwd", "auth", "credential")


def _given(error: Any) -> str:
    """`` (got VALUE)``: the value a setting was given, for an error about a value (not a missing or unknown key); never
    for a setting whose name says it is a secret, and with credentials in it hidden (:func:`hide_credentials`)."""
    if error["type"] == "missing" or "input" not in error or isinstance(error["input"], dict):
        return ""
    if any(word in str(part).lower() for part in error["loc"] for word in _SECRET_NAMES):
        return ""
    from ee_middleware.errors import hide_credentials

    shown = hide_credentials(repr(error["input"]))
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def _meant(cls: type[BaseModel], error: Any) -> str:
    """`` (did you mean NAME?)`` for an unknown key close to a setting of the (nested) table it is in; else nothing."""
    import difflib

    from pydantic import BaseModel

    model: Any = cls
    for part in error["loc"][:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    close = difflib.get_close_matches(str(error["loc"][-1]), list(model.model_fields), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
