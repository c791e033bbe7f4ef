"""Runs still unwritten when capture's wait at exit runs out are said lost (a sweep of runaway agent loops).

Before: a run whose store write took longer than the exit's wait (a runaway loop of thousands of steps, a slow disk) was
lost without a word: ``stats`` counted no failure and nothing was printed. A real process, a real graph and store; the
store's writes are slowed, and the exit's wait shortened, so that the wait runs out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, time
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from ee_middleware import record_experience
from ee_middleware.capture import recorder
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel

class SlowStore(LocalExperienceStore):
    def write(self, trajectories):
        time.sleep(float(sys.argv[2]))  # a slow disk, or a run of thousands of steps
        return super().write(trajectories)

recorder.EXIT_FLUSH_S = 0.5
model = ScriptedChatModel(policy=lambda messages, tools: AIMessage("Noted."), model_name="m")
agent = record_experience(create_agent(model, []), app="slow", store=SlowStore(sys.argv[1]), offload="thread")
agent.invoke({"messages": [("user", "question")]})
print("ANSWERED", flush=True)
"""


def _exit(store: Path, write_s: float) -> str:
    done = subprocess.run([sys.executable, "-c", CHILD, str(store), str(write_s)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ANSWERED" in done.stdout, done.stderr
    return " ".join(done.stderr.split())


def test_runs_not_written_within_the_exit_wait_are_said_lost(tmp_path: Path) -> None:
    said = _exit(tmp_path / "slow", 5.0)
    assert "the recorded runs were not all written to the store within the 0.5 s capture waits at exit (app 'slow')" in said, said
    assert "call flush() on the recorded agent before the program ends" in said
    assert "not all written" not in _exit(tmp_path / "quick", 0.0), "a store that keeps up: nothing said"
