"""The console tables and reports print to: a terminal's width on a terminal, a wide page off one.

Off a terminal (a nightly job's log, CI, ``ee ... | less``), rich renders at 80 columns unless ``COLUMNS`` says otherwise,
and a table wider than that squeezes its columns until run ids, adapter names and scores end in "…" or fold over
several lines: the log then holds no id a later command can take. Off a terminal, and with no ``COLUMNS`` set, the
console is :data:`OFF_TERMINAL_WIDTH` columns wide instead (a table takes only the width its cells need), while section
rules and panels, which fill whatever width they are given, keep the 80 columns they had (the console's
``section_width``).
``COLUMNS`` still decides where it is set.
"""

from __future__ import annotations

import functools
import os
from typing import Any

OFF_TERMINAL_WIDTH = 200
"""Columns a console off a terminal renders tables at when ``COLUMNS`` is not set."""

SECTION_WIDTH = 80
"""Columns a console off a terminal draws rules and panels at when ``COLUMNS`` is not set (rich's own default)."""


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal: ``False`` for one replaced by an object without ``isatty``, or closed (rich's
    ``is_terminal`` is not asked: ``FORCE_COLOR`` makes it true for a pipe). The one check of the CLI's listings, its
    progress bars and the trainers' progress lines."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def make_console(*, stderr: bool = False) -> Any:
    """A rich console on stdout (``stderr``: on stderr) that prints no emoji codes (a redaction placeholder such as
    ``[REDACTED:email:049d4611]`` would otherwise print as ``[REDACTED✉049d4611]``), at :data:`OFF_TERMINAL_WIDTH`
    columns off a terminal when ``COLUMNS`` is not set, its rules and panels at :data:`SECTION_WIDTH` there."""
    out = _console_class()(stderr=stderr, emoji=False)
    if not _columns_given():
        if not out.is_terminal:
            out.width = OFF_TERMINAL_WIDTH
            out.section_width = SECTION_WIDTH
        elif out.width < 1:  # a terminal that says it has no columns (COLUMNS=0 reads so too): rich printed nothing
            out.width = SECTION_WIDTH
    return out


def _columns_given() -> bool:
    """Whether ``COLUMNS`` sets a width rich can print at (``COLUMNS=0`` had every table print nothing, exit 0)."""
    columns = os.environ.get("COLUMNS", "").strip()
    return columns.isdigit() and int(columns) > 0


@functools.cache
def _console_class() -> type:
    """rich's ``Console`` with :attr:`section_width` (built on first use: rich is imported only by what prints)."""
    from rich.console import Console
    from rich.rule import Rule

    class EEConsole(Console):
        section_width: int | None = None
        """The width rules (and panels printed with ``width=section_width``) take; ``None``: the console's."""

        def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line", align: Any = "center") -> None:
            self.print(Rule(title, characters=characters, style=style, align=align), width=self.section_width)

    return EEConsole
