"""What benchmark scripts share: running the ``ee`` CLI (the one installed beside this interpreter), and whether the
project's modules load from bytecode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any


def ee(*args: Any) -> str:
    """Run ``ee ARGS...`` and return its standard output; exit with its stderr's tail if it fails."""
    command = [str(Path(sys.executable).with_name("ee")), *(str(a) for a in args)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def project_bytecode() -> str:
    """Whether the project's modules load from current bytecode (as from an installed wheel) or compile from source in
    every new process (an editable install where ``PYTHONDONTWRITEBYTECODE`` is set: `make install` compiles them):
    a fork server or worker then spends more of its start-up importing. ``"compiled"``, ``"source"`` or ``"mixed (N of
    M compiled)"``."""
    import importlib.util
    import os

    import ee_middleware

    sources = sorted(Path(ee_middleware.__file__).parent.rglob("*.py"))
    compiled = 0
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        compiled += cached.exists() and os.stat(cached).st_mtime >= os.stat(source).st_mtime
    if compiled == len(sources):
        return "compiled"
    return "source" if not compiled else f"mixed ({compiled} of {len(sources)} compiled)"
