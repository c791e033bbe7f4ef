"""The console tables and reports print to: a terminal's width on a terminal, a wide page off one.

Off a terminal (a nightly job's log, CI, ``ee ... | less``), rich renders at 80 columns unless ``COLUMNS`` says otherwise,
and a table wider than that squeezes its columns until run ids, adapter names and scores end in "…": the log then
holds no id a later command can take. Off a terminal, and with no ``COLUMNS`` set, the console is
:data:`OFF_TERMINAL_WIDTH` columns wide instead; ``COLUMNS`` still decides where it is set.
"""

from __future__ import annotations

import os
from typing import Any

OFF_TERMINAL_WIDTH = 200
"""Columns a console off a terminal renders at when ``COLUMNS`` is not set."""


def make_console(*, stderr: bool = False) -> Any:
    """A rich console on stdout (``stderr``: on stderr) that prints no emoji codes (a redaction placeholder such as
    ``[REDACTED:email:049d4611]`` would otherwise print as ``[REDACTED✉049d4611]``), at :data:`OFF_TERMINAL_WIDTH`
    columns off a terminal when ``COLUMNS`` is not set."""
    from rich.console import Console

    out = Console(stderr=stderr, emoji=False)
    if not out.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        out.width = OFF_TERMINAL_WIDTH
    return out
