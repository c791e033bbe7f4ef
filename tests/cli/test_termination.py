"""termination_as_interrupt: SIGTERM and SIGHUP end a command as Ctrl-C does, except where the command was told to
ignore them (nohup), and never twice during the clean-up."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ee_middleware._lifetime import second_signal_ends, stopping_signal
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


def test_a_sigterm_after_a_ctrl_c_ends_a_clean_up_that_waits_on_other_processes() -> None:
    # A Ctrl-C (or a SIGINT to the job's pid) stopped the job; its clean-up waits on its workers. A supervisor's SIGTERM
    # then raised KeyboardInterrupt in the middle of it (and the wait went on) instead of ending the wait at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ended = []
    with termination_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)  # not reached
        except KeyboardInterrupt:
            assert stopping_signal() is None  # a Ctrl-C: no SIGTERM or SIGHUP took it
            with second_signal_ends(lambda: ended.append(True)):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
    assert ended == [True]


def test_the_signal_that_stopped_the_command_is_known_where_the_interrupt_lost_it() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with termination_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # not reached
        except KeyboardInterrupt:
            assert stopping_signal() == "SIGTERM"  # also where Ray's ray.wait raised it again as KeyboardInterrupt()
    assert stopping_signal() is None


def test_a_sighup_the_command_was_started_ignoring_stays_ignored() -> None:
    """``nohup ee improve ... &`` then logging out: the run goes on (it stopped before)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with termination_as_interrupt():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.01)  # a handler, had one been installed, would have raised by now
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_every_command_stops_on_sigterm_as_on_ctrl_c(tmp_path) -> None:
    """Only ``ee improve`` and ``ee serve vllm`` took SIGTERM: every other command (replay, datasets build, eval run,
    record-experts, train, ...) died at once, its progress bar leaving the terminal without a cursor and its partial
    output behind (found by the process sweep). Here ``ee eval run`` waits on a server that never answers (a socket that
    accepts and stays silent: a stand-in) and gets SIGTERM: it stops as Ctrl-C stops it, exit 130, no traceback."""
    import socket
    import subprocess
    import sys

    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    command = [sys.executable, "-m", "ee_middleware.cli", "eval", "run", "--suite", "bfcl:multi_turn_base:1"]
    command += ["--endpoint", f"http://127.0.0.1:{port}/v1", "--model", "m", "--out", str(tmp_path / "run"), "--timeout", "600"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        silent.settimeout(120)
        connection, _ = silent.accept()  # the command is now waiting for its answer
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        silent.close()
    connection.close()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr


def sandbox_stopped_on_the_way() -> object:
    """A sandbox factory whose library turns a SIGTERM that comes while it loads into an error of its own (as transformers'
    lazy imports do: "Could not import module 'LlamaConfig'")."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # a supervisor stops the command now
        time.sleep(2)
    except KeyboardInterrupt as exc:
        raise ModuleNotFoundError("Could not import module 'TicketWorld'") from exc
    raise AssertionError("the SIGTERM was not taken")


def test_an_error_a_library_made_of_a_sigterm_is_told_as_the_stop(tmp_path) -> None:
    """Before: "error: ... failed: ModuleNotFoundError: Could not import module ..." and exit 1 (for ee train, a base
    model said to be broken): a supervisor's stop read as a failure to alert on. Now: interrupted, exit 130."""
    import subprocess
    import sys
    from pathlib import Path

    from ee_middleware import LocalExperienceStore
    from ee_middleware.testing.store_conformance import sample_trajectory

    store = LocalExperienceStore(tmp_path / "experience")
    store.write([sample_trajectory("t1")])
    store.approve(["t1"], by="alice")
    store.close()
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "ee_middleware.cli", "replay", "run", "--store", str(tmp_path / "experience")]
    command += ["--sandbox", "tests.cli.test_termination:sandbox_stopped_on_the_way", "--k", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "interrupted: stopped by SIGTERM" in done.stderr and "error:" not in done.stderr, done.stderr
