"""The ``ee`` command line."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


def main() -> None:
    """Entry point of the ``ee`` script: :func:`ee_middleware.cli.app.main`, loaded here so that a Ctrl-C, SIGTERM or
    SIGHUP while the command line is still loading (its first second: typer, rich and every command group are imported)
    stops it as one during a command does, with the ``interrupted:`` line and exit status 130, not a traceback of the
    import it cut (nor, for SIGTERM, a silent death by the signal). Nothing had started then, so there is nothing to
    clean up."""
    with _termination_while_loading():
        try:
            from ee_middleware.cli.app import main as run
        except KeyboardInterrupt as exc:
            stopped_while_loading(str(exc))
    run()


def stopped_while_loading(signal_name: str = "") -> NoReturn:
    """Say that the command was stopped (by ``signal_name``; empty: a Ctrl-C's SIGINT) before it started, and exit 130
    (128 + SIGINT, as the shell reports a Ctrl-C, and as a command stopped later exits)."""
    say_stopped_while_loading(signal_name)
    raise SystemExit(130)


def say_stopped_while_loading(signal_name: str = "") -> None:
    """The ``interrupted:`` line of a command stopped before it started (:func:`stopped_while_loading`)."""
    import sys

    try:
        sys.stderr.write(f"interrupted: stopped by {signal_name or 'SIGINT'} before the command started; nothing was done.\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr to write to
        pass


@contextmanager
def _termination_while_loading() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt(name)`` while the command line loads, as
    :func:`~ee_middleware._lifetime.termination_as_interrupt` makes them do once it runs; each is put back to its default
    afterwards, for that to take it. One the process was started ignoring (``nohup``) or that a caller handles is left as
    it is."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    taken = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is signal.SIG_DFL]
    for sig in taken:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, signal.SIG_DFL)


__all__ = ["main"]
