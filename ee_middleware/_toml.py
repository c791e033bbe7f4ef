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


def read_toml_table(path: Path, table: str) -> dict[str, Any]:
    """The ``[table]`` of the TOML file at ``path`` (empty when the file has none)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}") from exc
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"[{table}] in {path} must be a table.")
    return section


def layered_values(path: str | os.PathLike[str] | None, table: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A job's settings: the TOML file's ``[table]`` (when a file is given) <- ``overrides`` (``None`` values ignored)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_toml_table(Path(path), table))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


ModelT = TypeVar("ModelT", bound="BaseModel")


def build_config(cls: type[ModelT], values: Mapping[str, Any], job: str) -> ModelT:
    """``cls(**values)``, with validation problems turned into one :class:`ConfigError` naming each field."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid {job} configuration: {problems}") from None
