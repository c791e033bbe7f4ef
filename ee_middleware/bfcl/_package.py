"""Locating and importing the ``bfcl-eval`` package safely."""

from __future__ import annotations

import importlib
import importlib.util
import os
import stat
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
    if "BFCL_PROJECT_ROOT" not in os.environ:
        os.environ["BFCL_PROJECT_ROOT"] = scratch_root()
    try:
        return importlib.import_module(f"bfcl_eval.{module}")
    except ImportError as exc:
        raise MissingExtraError(f"Could not import bfcl_eval.{module} ({exc}). Reinstall it: {INSTALL_HINT}") from exc


def scratch_root() -> str:
    """The folder bfcl-eval's imports create theirs in: this user's own in the temporary folder (``ee-middleware-bfcl-UID``,
    mode 0700), used only where it is a folder of this user's that no one else may write (not a link: a name every user
    shares in ``/tmp`` let another user plant a link there and have bfcl-eval write where it pointed); else a new one."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"ee-middleware-bfcl-{uid if uid is not None else 'user'}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(folder)
        if stat.S_ISDIR(found.st_mode) and (uid is None or found.st_uid == uid) and not found.st_mode & 0o022:
            return str(folder)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="ee-middleware-bfcl-")
