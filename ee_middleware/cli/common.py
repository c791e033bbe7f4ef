"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ee_middleware.messages import one_line

if TYPE_CHECKING:
    from ee_middleware.store.protocol import ExperienceStore

STORE_HELP = "Experience store: a folder, or a store spec (local:PATH, NAME:LOCATION for a store plug-in)."
StoreOption = typer.Option(..., "--store", "-s", envvar="EE_STORE", help=STORE_HELP, show_envvar=True)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def open_existing_store(spec: str | Path) -> ExperienceStore:
    """The store ``spec`` names, which must exist already (a CLI command never creates one by mistake)."""
    from ee_middleware.store.registry import open_store

    return open_store(spec, create=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def console() -> Any:
    from rich.console import Console

    return Console()


short = one_line
"""Text on one line, cut to a width (for table cells)."""
