"""Running the ``ee`` CLI from a benchmark script (the one installed beside this interpreter)."""

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
