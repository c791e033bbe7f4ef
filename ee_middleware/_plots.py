"""matplotlib for the charts ee writes to files (reports, histograms, loss curves): one way to load it.

A nightly job runs as a service user whose home may be missing or read-only (``HOME=/nonexistent``): matplotlib then warns
twice per process that it made a temporary config folder ("... is not a writable directory ... set MPLCONFIGDIR"), into
every job log. Where ``MPLCONFIGDIR`` is not set and matplotlib's own folder cannot be written, it is given one this user
can write (in ee's cache folder, else in the temporary folder), before matplotlib is first imported. The backend is Agg:
files, no display.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from ee_middleware._files import cache_folder


def matplotlib_for_files() -> ModuleType:
    """``matplotlib`` on the Agg backend, its config folder one this user can write (see the module docstring)."""
    if "MPLCONFIGDIR" not in os.environ and "matplotlib" not in sys.modules:
        folder = _writable_config_folder()
        if folder is not None:
            os.environ["MPLCONFIGDIR"] = str(folder)
    import matplotlib

    matplotlib.use("Agg", force=False)
    return matplotlib


def _writable_config_folder() -> Path | None:
    """None where matplotlib's own config folder can be written (or made); else a folder this user can write."""
    home = os.environ.get("HOME") or ""
    base = os.environ.get("XDG_CONFIG_HOME") or (os.path.join(home, ".config") if home else "")
    if base and _can_make(Path(base) / "matplotlib"):
        return None
    for candidate in (cache_folder() / "matplotlib", Path(tempfile.gettempdir()) / f"ee-matplotlib-{os.getuid()}"):
        try:
            candidate.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        info = candidate.stat()
        # this user's own, and no one else's to write (in a shared temporary folder another user could have made it)
        if info.st_uid == os.getuid() and not info.st_mode & 0o022 and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


def _can_make(folder: Path) -> bool:
    """Whether ``folder`` is, or can be made, a folder this user writes: it or its nearest existing parent is writable."""
    for path in (folder, *folder.parents):
        if path.exists():
            return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
    return False
