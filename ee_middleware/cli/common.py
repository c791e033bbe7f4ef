"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

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


def short(text: str | None, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
