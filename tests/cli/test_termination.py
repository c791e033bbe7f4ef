"""termination_as_interrupt: SIGTERM and SIGHUP end a command as Ctrl-C does, except where the command was told to
ignore them (nohup), and never twice during the clean-up."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ee_middleware.cli.common import termination_as_interrupt


@pytest.fixture(autouse=True)
def _signals_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_sigterm_is_a_keyboard_interrupt_and_a_second_one_does_not_cut_the_clean_up_short() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cleaned = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), termination_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # not reached: the handler raises as soon as the signal is taken
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a supervisor sending it again
            cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # as it was


def test_a_sighup_the_command_was_started_ignoring_stays_ignored() -> None:
    """``nohup ee improve ... &`` then logging out: the run goes on (it stopped before)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with termination_as_interrupt():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.01)  # a handler, had one been installed, would have raised by now
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
