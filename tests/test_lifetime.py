"""second_signal_ends: a signal during the block never runs ``first`` or ``end_now`` inside the signal handler, where
it would wait forever for a lock the interrupted main thread holds.

Python runs a signal handler on the main thread, between two of its bytecodes: when that thread is inside the locked
region of the ``Event`` that ``first`` sets (or of any non-reentrant lock ``first`` or ``end_now`` takes), a handler that
takes the same lock waits for itself. Each case runs in a process of its own, with real signals (a deadlocked process
cannot be recovered from inside), and must end within :data:`ENDS_WITHIN_S`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ee_middleware import _lifetime
from ee_middleware._lifetime import second_signal_ends

ENDS_WITHIN_S = 30
"""Far past what each case takes (about a second); a case still running then has deadlocked."""

PRELUDE = """
import json, os, signal, subprocess, sys, threading, time
from ee_middleware._lifetime import parent_death_preexec, second_signal_ends, termination_as_interrupt

def spin(seconds):
    # bytecodes, not a blocking call: a signal's handler runs in here, inside whatever lock the caller holds
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass

def until(condition, what, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)

def sleeper():
    # the process a block waits on; killed with this one, should it deadlock (and be killed on its time-out)
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], preexec_fn=parent_death_preexec(signal.SIGKILL))

calls, result = [], {}
"""


def _run(script: str) -> dict:
    """Run ``script`` (after :data:`PRELUDE`) in a fresh Python; what it printed last, as JSON."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(script)], capture_output=True, text=True, timeout=ENDS_WITHIN_S
        )
    except subprocess.TimeoutExpired as timed_out:
        pytest.fail(f"deadlocked: the block had not ended after {ENDS_WITHIN_S} s; stderr: {timed_out.stderr!r}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_first_signal_while_the_main_thread_holds_the_lock_first_takes_ends_the_block_as_stopped() -> None:
    # ``stop`` is what the job's stop event is: a condition on a non-reentrant lock (threading.Event's, and
    # multiprocessing.Event's). The signal comes while the main thread is inside it, as in the job's own ``stop.set()``.
    result = _run(
        """
        stop = threading.Condition(threading.Lock())

        def first():
            with stop:
                calls.append("first")
                stop.notify_all()

        try:
            with termination_as_interrupt(), second_signal_ends(lambda: calls.append("end_now"), first=first):
                with stop:
                    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
                    spin(1.0)
                    result["in_the_lock"] = list(calls)  # first waits for the lock: it cannot have run yet
                with stop:
                    stop.wait_for(lambda: calls, timeout=10)
        except KeyboardInterrupt as stopped:
            result["interrupt"] = str(stopped)
        result["calls"] = calls
        result["threads"] = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
        print(json.dumps(result))
        """
    )
    assert result["in_the_lock"] == []
    assert result["calls"] == ["first"]
    assert result["interrupt"] == "SIGTERM", "the stop is delivered once the block is over (exit 130)"
    assert result["threads"] == [], "nothing the block started outlives it"


@pytest.mark.parametrize("first", ["first given", "no first"])
def test_a_second_signal_while_the_main_thread_holds_the_lock_end_now_takes_kills_what_the_block_waits_on(first: str) -> None:
    # The block waits on a real child process that only end_now ends (kills); end_now takes a lock (the job's stop
    # event) the main thread holds when the signal comes. "no first": the first signal already calls end_now.
    result = _run(
        f"""
        child = sleeper()
        stop = threading.Condition(threading.Lock())

        def end_now():
            with stop:
                calls.append("end_now")
                child.kill()

        first = (lambda: calls.append("first")) if {first == "first given"} else None
        try:
            with termination_as_interrupt(), second_signal_ends(end_now, first=first):
                if first is not None:
                    os.kill(os.getpid(), signal.SIGTERM)
                    until(lambda: calls == ["first"], "the first signal called first")
                with stop:
                    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
                    spin(1.0)
                until(lambda: child.poll() is not None, "end_now killed the child")
        except KeyboardInterrupt as stopped:
            result["interrupt"] = str(stopped)
        finally:
            child.kill()
        result["calls"] = calls
        result["child"] = child.wait()
        print(json.dumps(result))
        """
    )
    assert result["calls"] == (["first", "end_now"] if first == "first given" else ["end_now"])
    assert result["child"] == -9, "end_now killed the process the block waited on"
    if first == "first given":
        assert result["interrupt"] == "SIGTERM"
    else:
        assert "interrupt" not in result, "without first, a signal is not delivered again after the block"


def test_an_end_now_still_queued_when_the_block_ends_never_runs() -> None:
    # first waits for a lock the main thread holds until after the block; meanwhile a second signal asks for end_now.
    # The block ends first: the wait end_now would have cut short is over, and the child it would kill lives on.
    result = _run(
        """
        import ee_middleware._lifetime as lifetime
        lifetime.HANDOFF_JOIN_S = 0.5  # (the block's end waits this long for first, held below)
        child = sleeper()
        held = threading.Lock()

        def first():
            with held:
                calls.append("first")

        def end_now():
            calls.append("end_now")
            child.kill()

        try:
            with termination_as_interrupt():
                try:
                    with held:
                        with second_signal_ends(end_now, first=first):
                            os.kill(os.getpid(), signal.SIGTERM)
                            spin(0.3)
                            os.kill(os.getpid(), signal.SIGTERM)
                            spin(0.3)
                            result["in_the_block"] = list(calls)
                finally:
                    until(lambda: calls, "first ran once the lock was free")
                    time.sleep(0.5)
        except KeyboardInterrupt as stopped:
            result["interrupt"] = str(stopped)
        result["calls"] = calls
        result["child"] = child.poll()
        child.kill()
        print(json.dumps(result))
        """
    )
    assert result["in_the_block"] == []
    assert result["calls"] == ["first"], "end_now, asked for before the block ended, did not run after it"
    assert result["child"] is None
    assert result["interrupt"] == "SIGTERM"


def test_an_error_of_end_now_is_raised_once_the_block_is_over_not_in_its_middle() -> None:
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cleaned_up = []

    def end_now() -> None:
        raise OSError("no such process group")

    try:
        with pytest.raises(OSError, match="no such process group"), second_signal_ends(end_now):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)  # the signal's handler ran; end_now ran (and failed) on a thread of its own
            cleaned_up.append(True)
    finally:
        signal.signal(signal.SIGINT, before)
    assert cleaned_up == [True], "the clean-up went on to its end"
    assert [t for t in threading.enumerate() if t.name == _lifetime.HANDOFF_THREAD_NAME] == []


def test_a_parent_killed_as_the_group_watchdog_starts_still_has_its_group_ended() -> None:
    """Review R14 L3: the watchdog's parent-death signal was SIGTERM, whose default action killed the watchdog when the
    parent died in the ~0.1 s before its interpreter had installed a handler, and the server's children outlived both."""
    psutil = pytest.importorskip("psutil")
    parent = textwrap.dedent(
        """
        import os, signal, subprocess, sys
        from ee_middleware._lifetime import parent_death_preexec, start_group_watchdog
        server = subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, preexec_fn=parent_death_preexec(signal.SIGTERM))
        watchdog = start_group_watchdog(server.pid)
        print(server.pid, watchdog.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    server, watchdog = (int(pid) for pid in done.stdout.split())
    deadline = time.monotonic() + 20
    group = []
    while time.monotonic() < deadline:
        group = [p for p in psutil.process_iter(["pid"]) if _in_group(p, server)]
        if not group and not psutil.pid_exists(watchdog):
            break
        time.sleep(0.2)
    for process in group:  # (a failure leaves nothing behind either)
        process.kill()
    assert not group, [p.pid for p in group]


def _in_group(process: object, pgid: int) -> bool:
    try:
        return os.getpgid(process.pid) == pgid  # type: ignore[attr-defined]
    except (ProcessLookupError, PermissionError):
        return False


HELD_IMPORT = textwrap.dedent(
    """
    import sys
    from ee_middleware._lifetime import termination_as_interrupt
    from ee_middleware._optional import import_optional

    class Announce:  # says when torch's import has begun (the first finder asked), and finds nothing itself
        def find_spec(self, name, path, target=None):
            if name == "torch":
                print("importing", flush=True)
            return None

    sys.meta_path.insert(0, Announce())
    with termination_as_interrupt():
        try:
            import_optional("torch", extra="train", purpose="train")
            print("imported, no signal", flush=True)
        except KeyboardInterrupt as exc:
            torch = sys.modules.get("torch")
            print("stopped", repr(str(exc)), "after the import:", torch is not None and hasattr(torch, "nn"), flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_torch_is_imported_is_raised_once_the_import_is_done(sig: signal.Signals) -> None:
    """Before: a SIGTERM (a supervisor's stop) or Ctrl-C while the train stage imported torch was raised inside torch's
    native start-up: the process aborted (exit 134, pybind11's "terminate called after throwing ... KeyboardInterrupt")
    or the import failed and the run was recorded as failed with a broken base model. Now it is held until the import is
    done, then raised: the command stops as any stop does."""
    pytest.importorskip("torch")
    child = subprocess.Popen(
        [sys.executable, "-c", HELD_IMPORT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "importing"
    child.send_signal(sig)  # torch's import takes a second or more: this lands in it
    output = child.stdout.read()
    assert child.wait(timeout=120) == 0, output
    name = "''" if sig == signal.SIGINT else "'SIGTERM'"
    assert f"stopped {name} after the import: True" in output, output


def test_signals_held_in_a_block_are_raised_at_its_end_and_none_is_lost() -> None:
    from ee_middleware._lifetime import interrupts_held, termination_as_interrupt

    # as in a command's process: a handler an earlier test left (capture's, which ends the process) or the test runner's
    # (a worker ignoring Ctrl-C) put aside
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    before_ctrl_c = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with termination_as_interrupt(), pytest.raises(KeyboardInterrupt, match="SIGTERM"), interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # (the handler runs at the next bytecode: here, inside the block)
            reached = True
        assert reached
        inner_done = False
        with pytest.raises(KeyboardInterrupt), interrupts_held():
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            inner_done = True  # the inner block's end raised nothing: the outer's does
        assert inner_done and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_ctrl_c)


def test_stop_for_is_the_one_rule_of_an_error_raised_after_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule termination_as_interrupt, the CLI and ee improve share (it was written out in two places)."""
    from ee_middleware import _lifetime

    class ChosenExit(Exception):
        exit_code = 3

    monkeypatch.setattr(_lifetime, "_STOPPED_BY", [])
    assert _lifetime.stop_for(ValueError("Could not import module 'LlamaConfig'")) is None  # no signal: an error
    monkeypatch.setattr(_lifetime, "_STOPPED_BY", ["SIGTERM"])
    stop = _lifetime.stop_for(ValueError("Could not import module 'LlamaConfig'"))
    assert isinstance(stop, KeyboardInterrupt) and str(stop) == "SIGTERM"
    assert _lifetime.stop_for(ChosenExit()) is None  # an exit the command chose stays as it is
    assert _lifetime.stop_for(KeyboardInterrupt("SIGTERM")) is None and _lifetime.stop_for(SystemExit(1)) is None
