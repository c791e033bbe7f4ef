"""PeakMemory measures real processes: this one, and children started from it.

Each scenario runs in a fresh interpreter, so the children it counts are only the ones it starts
(the test process may hold other tests' servers)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PRELUDE = """
import json, os, subprocess, sys
from ee_middleware.jobs.memory import PeakMemory, descendants

# A child that touches MIB MiB, says so, and waits for a line on stdin (or its end) to finish.
HOLD = "import sys; b = bytearray({mib} << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); sys.stdin.readline()"

def hold(code):
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child

def end(child):
    child.stdin.close()
    child.wait(timeout=30)

def ballast(mib):
    b = bytearray(mib << 20)
    b[::4096] = b"x" * len(b[::4096])
    return b
"""


def _run(scenario: str) -> dict[str, float]:
    """Run ``scenario`` (after PRELUDE) in a fresh interpreter; the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(scenario)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_small_child_of_a_large_process_is_measured_as_small() -> None:
    """ru_maxrss(RUSAGE_CHILDREN) reports at least the parent's size at the fork; PeakMemory does not."""
    result = _run(
        """
        import resource, time
        big = ballast(400)
        with PeakMemory(interval_s=0.02) as memory:
            child = hold(HOLD.format(mib=1))
            deadline = time.monotonic() + 10  # a loaded machine may not run the sampler in the child's short life
            while memory.result()["children"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            end(child)
        print(json.dumps({**memory.result(), "rusage_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
        """
    )
    assert result["rusage_children"] >= 400, "the old measure: the parent's size"
    assert result["self"] >= 400 and 0 < result["children"] < 200, result


def test_a_large_child_is_counted_and_one_running_before_the_stage_is_not() -> None:
    result = _run(
        """
        earlier = hold(HOLD.format(mib=200))  # an earlier stage's server
        with PeakMemory(interval_s=60) as memory:
            child = hold(HOLD.format(mib=300))
            assert set(descendants(os.getpid())) == {earlier.pid, child.pid}
            memory._sample()
            end(child)
        end(earlier)
        print(json.dumps(memory.result()))
        """
    )
    assert 300 <= result["children"] < 450, result


def test_forked_children_are_not_counted_at_the_parents_size_each() -> None:
    result = _run(
        """
        import multiprocessing
        big = ballast(400)
        ctx = multiprocessing.get_context("fork")
        with PeakMemory(interval_s=60) as memory:
            ready, go = ctx.Event(), ctx.Event()
            workers = [ctx.Process(target=lambda: (ready.set(), go.wait(30))) for _ in range(3)]
            for w in workers:
                w.start()
            ready.wait(30)
            memory._sample()
            go.set()
            for w in workers:
                w.join(30)
        print(json.dumps(memory.result()))
        """
    )
    assert result["children"] < 400, f"3 forks of a 400 MiB process share its pages: {result}"


def test_children_of_children_are_summed() -> None:
    result = _run(
        """
        inner = HOLD.format(mib=150)
        middle = HOLD.format(mib=150).replace(
            "print('ready'",
            f"import subprocess; c = subprocess.Popen([sys.executable, '-c', {inner!r}], stdin=subprocess.PIPE, "
            "stdout=subprocess.PIPE, text=True); assert c.stdout.readline().strip() == 'ready'; print('ready'",
        ) + "; c.stdin.close(); c.wait()"
        with PeakMemory(interval_s=0.02) as memory:
            child = hold(middle)
            assert len(descendants(os.getpid())) == 2
            memory._sample()
            end(child)
        print(json.dumps(memory.result()))
        """
    )
    assert result["children"] >= 300, result


def test_the_own_peak_is_the_stages_and_the_process_mark_is_left_alone() -> None:
    result = _run(
        """
        from ee_middleware.jobs.memory import process_peak_mib
        big = ballast(300)
        del big
        before = process_peak_mib()  # the process's peak so far: with the ballast
        with PeakMemory() as small:
            pass
        with PeakMemory(interval_s=60) as large:  # no timed sample: the risen high-water mark shows the stage's peak
            bigger = ballast(500)
            del bigger
        print(json.dumps({"before": before, "small": small.result()["self"], "after": process_peak_mib(),
                          "large": large.result()["self"], "per_stage": small.per_stage}))
        """
    )
    assert result["per_stage"], result
    assert result["small"] < result["before"] - 250, result
    assert result["large"] >= result["before"] + 150 and abs(result["large"] - result["after"]) < 0.1, result
