"""Locating and importing the ``bfcl-eval`` package safely."""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType

from ee_middleware.errors import MissingExtraError

INSTALL_HINT = "pip install --no-deps bfcl-eval==2026.3.23 mpmath==1.3.0"


@cache
def package_dir() -> Path:
    """The installed ``bfcl_eval`` folder (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"The BFCL environment needs the bfcl-eval package. Install it without its dependencies: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def import_bfcl(module: str) -> ModuleType:
    """Import a ``bfcl_eval`` submodule.

    ``BFCL_PROJECT_ROOT`` is pointed at a scratch folder first when it is unset: some bfcl-eval
    imports create folders there, and the default is site-packages.
    """
    package_dir()
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(tempfile.gettempdir()) / "ee-middleware-bfcl"))
    try:
        return importlib.import_module(f"bfcl_eval.{module}")
    except ImportError as exc:
        raise MissingExtraError(f"Could not import bfcl_eval.{module} ({exc}). Reinstall it: {INSTALL_HINT}") from exc
