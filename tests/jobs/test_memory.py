"""PeakMemory measures real processes: this one, and children started from it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ee_middleware.jobs.memory import PeakMemory, descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A child that touches MIB MiB, says so, and waits to be told to end.
HOLD = "import sys; b = bytearray({mib} << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); sys.stdin.readline()"


def _hold(mib: int) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLD.format(mib=mib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def _end(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.close()
    child.wait(timeout=30)


def test_a_small_child_of_a_large_process_is_measured_as_small() -> None:
    """ru_maxrss(RUSAGE_CHILDREN) reports at least the parent's size at the fork; PeakMemory does not."""
    ballast = bytearray(400 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    with PeakMemory(interval_s=0.02) as memory:
        child = _hold(1)
        _end(child)
    result = memory.result()
    del ballast
    assert result["self"] >= 400
    assert 0 < result["children"] < 200, result


def test_a_large_child_is_counted_even_if_it_ends_before_a_sample() -> None:
    with PeakMemory(interval_s=60) as memory:  # no sample between start and end: only the child's own VmHWM can show it
        child = _hold(300)
        assert child.pid in descendants(os.getpid())
        memory._sample()
        _end(child)
    assert memory.result()["children"] >= 300


def test_children_of_children_are_summed() -> None:
    code = HOLD.format(mib=150).replace(
        "print('ready'",
        f"import subprocess; c = subprocess.Popen([sys.executable, '-c', {HOLD.format(mib=150)!r}], stdin=subprocess.PIPE, "
        "stdout=subprocess.PIPE, text=True); assert c.stdout.readline().strip() == 'ready'; print('ready'",
    )
    code += "; c.stdin.close(); c.wait()"
    with PeakMemory(interval_s=0.02) as memory:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert len(descendants(os.getpid())) == 2
        memory._sample()
        _end(child)  # the grandchild's stdin closes with its parent: it ends too
    assert memory.result()["children"] >= 300


def test_the_own_peak_is_per_stage() -> None:
    ballast = bytearray(300 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    del ballast
    before = PeakMemory().result()["self"]  # the process's peak so far: with the ballast
    with PeakMemory() as memory:
        pass
    if not memory.per_stage:
        pytest.skip("this kernel cannot reset the peak (no /proc/self/clear_refs)")
    assert memory.result()["self"] < before - 250
