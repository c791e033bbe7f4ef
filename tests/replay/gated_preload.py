"""Imported by a replay job's fork server in tests: holds the server (so the workers' start) until a file exists.

The file is named by ``EE_TEST_PRELOAD_GATE``; without it, or after 60 s, importing returns at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_gate = os.environ.get("EE_TEST_PRELOAD_GATE")
if _gate:
    _deadline = time.monotonic() + 60
    while not Path(_gate).exists() and time.monotonic() < _deadline:
        time.sleep(0.01)
