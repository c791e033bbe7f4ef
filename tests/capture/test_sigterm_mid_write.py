"""A trajectory being written to the store when SIGTERM arrives is stored whole or not at all, never half.

A real process records runs of a real ``create_agent`` graph in a loop into the real local store and is sent a real
SIGTERM while a trajectory's line is half written. The write is slowed so that the signal lands inside it: the spool's
``os.write`` of that line writes half of it and returns (a partial write, as POSIX allows for a large one), then waits
before the rest is written (a slow disk stands in, through a ``sitecustomize`` the test puts on the process's path, in the
capture process too). Every trajectory the store then holds must read whole: its record and every step."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture
from tests.capture.test_sigterm import _script

pytestmark = [
    pytest.mark.usefixtures("no_child_left"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the store's files through /proc/self/fd"),
]

SLOW_DISK = textwrap.dedent(
    """
    import os, time

    STORE = os.environ.get("EE_TEST_SLOW_STORE")
    if STORE:
        real_write, count = os.write, [0]

        def write(fd, data):
            # the Nth trajectory line written to the store: half of it now, the rest after a pause
            if b'"kind":"trajectory"' in bytes(data[:40]):
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    target = ""
                if target.startswith(STORE):
                    count[0] += 1
                    if count[0] == int(os.environ["EE_TEST_SLOW_AT"]):
                        done = real_write(fd, data[: len(data) // 2])
                        real_write(1, f"half written {done} of {len(data)}\\n".encode())
                        time.sleep(3)
                        return done
            return real_write(fd, data)

        os.write = write
    """
)

IN_A_LOOP = textwrap.dedent(
    """
    import sys
    from agent import ask, build, say

    agent = build(sys.argv[1], sys.argv[2])
    k = 0
    while True:
        ask(agent, f"run-{k}", f"A-{k}")
        say(f"answered run-{k}")
        k += 1
    """
)


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_trajectory_being_written_at_sigterm_is_stored_whole_slowed_disk(tmp_path: Path, offload: str) -> None:
    store = tmp_path / "experience"
    script = _script(tmp_path, "loop.py", IN_A_LOOP)
    (tmp_path / "sitecustomize.py").write_text(SLOW_DISK)
    env = {
        **__import__("os").environ,
        "PYTHONPATH": str(tmp_path),
        "EE_TEST_SLOW_STORE": str(store.resolve()),
        "EE_TEST_SLOW_AT": "4",
    }
    agent = subprocess.Popen([sys.executable, str(script), str(store), offload], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env)
    answered: list[str] = []
    try:
        assert agent.stdout is not None
        for line in agent.stdout:
            answered += [line.split()[1]] if line.startswith("answered") else []
            if line.startswith("half written"):
                break
        else:
            pytest.fail(f"the process ended (exit {agent.wait()}) before a trajectory was half written")
        agent.send_signal(signal.SIGTERM)  # while the line is half written, and the loop still records runs
        answered += [line.split()[1] for line in agent.stdout.read().splitlines() if line.startswith("answered")]
        assert agent.wait(timeout=60) == -signal.SIGTERM
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()

    opened = LocalExperienceStore(store)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a damaged (half) line would be read with a warning
            table = opened.trajectories()
            ids = table["id"].to_list()
            trajectories = [opened.get(trajectory_id) for trajectory_id in ids]
    finally:
        opened.close()
    assert len(set(ids)) == len(ids) >= 4  # the three written before, and the one being written: whole, not lost
    assert set(answered) <= {t.thread_id for t in trajectories}  # every run whose caller got its answer
    for t in trajectories:
        if t.status == "completed":  # a run SIGTERM cut off in its tool is stored interrupted, with its one call
            order = "A-" + t.thread_id.removeprefix("run-")  # type: ignore[union-attr]
            assert t.task == f"where is {order}"
            assert [s.action.kind for s in t.steps] == ["tool_call", "answer"]
            assert t.steps[0].observation.content == f"order {order}: shipped"  # type: ignore[union-attr]
            assert t.final_answer == f"Done: order {order}: shipped"
        else:
            assert (t.status, t.error) == ("interrupted", "terminated: SIGTERM")
