"""matplotlib's config folder for the charts ee writes to files (reports, histograms, loss curves).

A nightly job runs as a service user whose home may be missing or read-only (``HOME=/nonexistent``, a container's
read-only root): matplotlib then logs two warnings per process ("mkdir -p failed ...", "Matplotlib created a temporary
cache directory ... set the MPLCONFIGDIR environment variable"), into every job log. :func:`quiet_matplotlib_config`,
called before matplotlib is first imported, gives it a folder where its own cannot be written: ee's cache folder where
``EE_CACHE_DIR`` names one this user can write (kept: the font cache is built once), else a private temporary folder
removed at exit (what matplotlib itself falls back to, without the warnings). It never raises and changes nothing where
``MPLCONFIGDIR`` is set, matplotlib is already imported, or its folders can be written; where anything it checks fails
(no home, an unreadable path), matplotlib decides as it does without it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ee_middleware._files import cache_folder


def quiet_matplotlib_config() -> None:
    """Before ``import matplotlib``: set ``MPLCONFIGDIR`` to a folder this user can write where matplotlib's own config or
    cache folder cannot be (see the module docstring). Never raises."""
    if "matplotlib" in sys.modules or os.environ.get("MPLCONFIGDIR"):
        return
    try:
        if all(_writable_folder(folder) for folder in _default_folders()):
            return
        folder = _own_folder()
    except Exception:  # noqa: BLE001 - anything failing here leaves matplotlib to decide, as it does without this
        return
    os.environ["MPLCONFIGDIR"] = str(folder)


def _default_folders() -> list[Path]:
    """The config and cache folders matplotlib uses without ``MPLCONFIGDIR`` (``matplotlib.get_configdir`` and
    ``get_cachedir``): the XDG ones on Linux and FreeBSD, ``~/.matplotlib`` elsewhere (``Path.home()`` may raise)."""
    if sys.platform.startswith(("linux", "freebsd")):
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return [Path(config, "matplotlib").resolve(), Path(cache, "matplotlib").resolve()]
    return [(Path.home() / ".matplotlib").resolve()]


def _writable_folder(folder: Path) -> bool:
    """Whether ``folder`` is, or can be made (as matplotlib makes it on import), a folder this user can write."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK)


def _own_folder() -> Path:
    """``$EE_CACHE_DIR/matplotlib`` where ``EE_CACHE_DIR`` is set and it can be written; else a new private temporary
    folder, removed when the process exits."""
    if os.environ.get("EE_CACHE_DIR"):
        kept = cache_folder() / "matplotlib"
        if _writable_folder(kept):
            return kept
    made = tempfile.mkdtemp(prefix="matplotlib-")
    atexit.register(shutil.rmtree, made, True)
    return Path(made)
