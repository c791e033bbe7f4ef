"""A sandbox factory whose module raises (not an ImportError) in a process started as ``python -c`` (a replay job's
fork server) and imports anywhere else: it stands for a user's module that reads, as it is imported, what only the
application's own process has (its command line, a setting its ``main`` made)."""

from __future__ import annotations

import sys
from typing import Any

from ee_middleware.bfcl.sandbox import BFCLSandbox

if sys.argv[:1] == ["-c"]:
    raise RuntimeError("this module reads the application's command line")


def make_sandbox(**options: Any) -> BFCLSandbox:
    return BFCLSandbox(**options)
