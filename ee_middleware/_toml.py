"""Reading one table of a TOML config file, with errors that name the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ee_middleware.errors import ConfigError


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
