"""A second Ctrl-C while the runs are written at exit is said and waited out (sweep X).

Before: in thread mode, a second Ctrl-C a moment after the first (the usual way to stop a program) landed in the exit's
flush and ended it: every run that had finished in the last seconds was lost (0 of 80 stored), their answers already
given, with only a traceback to tell (a third Ctrl-C quits without them). A real process, a real graph and store; the
store's writes are slowed so that the second signal lands while they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ee_middleware.store import LocalExperienceStore

CHILD = r"""
import os, signal, sys, threading, time
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel

class SlowStore(LocalExperienceStore):
    def write(self, trajectories):
        time.sleep(0.5)  # a slow disk: the exit's flush takes a while
        return super().write(trajectories)

signals = int(sys.argv[2])
model = ScriptedChatModel(policy=lambda messages, tools: AIMessage("Noted."), model_name="m")
agent = record_experience(create_agent(model, []), app="ctrl-c", store=SlowStore(sys.argv[1]), offload="thread")
for i in range(5):
    agent.invoke({"messages": [("user", f"question {i}")]})
print("ANSWERED", flush=True)

def more_interrupts():
    for _ in range(signals):
        time.sleep(0.2)  # while the exit's flush writes
        os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=more_interrupts, daemon=True).start()
raise KeyboardInterrupt  # the first Ctrl-C ends the program
"""


def _run(store: Path, signals: int) -> tuple[subprocess.CompletedProcess[str], int]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(store), str(signals)], capture_output=True, text=True, timeout=120)
    assert "ANSWERED" in done.stdout, done.stderr
    opened = LocalExperienceStore(store)
    try:
        return done, sum(1 for _ in opened.iter_trajectories(status=None))
    finally:
        opened.close()


def test_a_second_ctrl_c_during_the_exit_flush_is_waited_out_and_every_answered_run_is_stored(tmp_path: Path) -> None:
    done, stored = _run(tmp_path / "store", signals=1)
    assert stored == 5, done.stderr
    assert "press Ctrl-C again to quit without them" in done.stderr
