"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from ee_middleware.messages import one_line

StoreOption = typer.Option(..., "--store", "-s", envvar="EE_STORE", help="Experience store folder.", show_envvar=True)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def open_existing_store(path: Path) -> Any:
    from ee_middleware.store.local import LocalExperienceStore

    return LocalExperienceStore(path, create=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def console() -> Any:
    from rich.console import Console

    return Console()


short = one_line
"""Text on one line, cut to a width (for table cells)."""
