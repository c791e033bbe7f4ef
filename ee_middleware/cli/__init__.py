"""The ``ee`` command line."""

from __future__ import annotations

from typing import NoReturn


def main() -> None:
    """Entry point of the ``ee`` script: :func:`ee_middleware.cli.app.main`, loaded here so that a Ctrl-C while the
    command line is still loading (its first half second: typer, rich and every command group are imported) stops it
    as a Ctrl-C during a command does, with the ``interrupted:`` line and exit status 130, not a traceback of the import
    it cut. Nothing had started then, so there is nothing to clean up."""
    try:
        from ee_middleware.cli.app import main as run
    except KeyboardInterrupt:
        stopped_while_loading()
    run()


def stopped_while_loading() -> NoReturn:
    """Say that the command was stopped before it started and exit 130 (128 + SIGINT, as the shell reports a Ctrl-C)."""
    import sys

    try:
        sys.stderr.write("interrupted: stopped by SIGINT before the command started; nothing was done.\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr to write to
        pass
    raise SystemExit(130)


__all__ = ["main"]
