"""A batch of runs whose write fails because of one of them (here: a run larger than the largest file the process may
write, ``ulimit -f`` / systemd ``LimitFSIZE=``) stores the others: a store writes a batch whole or not at all, and the
runs recorded just before or after the oversized one were lost with it ("could not write 4 trajectories"). A real
limit, set in a child process, on a real LangGraph graph recorded with ``record_experience``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ee_middleware.store import LocalExperienceStore

RECORDING_UNDER_A_LIMIT = r"""
import json, resource, sys
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from ee_middleware import LocalExperienceStore, record_experience


class State(TypedDict):
    messages: Annotated[list, add_messages]


def reply(state):
    return {"messages": [("ai", "ok " + state["messages"][-1].content[:40])]}


builder = StateGraph(State)
builder.add_node("reply", reply)
builder.add_edge(START, "reply")
builder.add_edge("reply", END)
root, limit = sys.argv[1], int(sys.argv[2])
LocalExperienceStore(root).close()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
# one write per batch, every run of this script in it: the batch holds the oversized run and the small ones around it
agent = record_experience(builder.compile(), app="ops", store=root, strict=False, redact=False, offload="thread")
agent.recorder.processor._write_interval = 3600.0
tasks = ["before 0", "before 1", "huge " + "x" * (2 * limit), "after 0", "after 1"]
for task in tasks:
    agent.invoke({"messages": [("user", task)]})
agent.recorder.processor._write_interval = 0.0
flushed = agent.flush()
stats = agent.recorder.stats
print(json.dumps({"flushed": flushed, "written": stats.trajectories_written, "failed": stats.runs_failed, "errors": stats.errors}))
agent.recorder.close()
"""


def test_a_run_the_store_refuses_fails_alone_and_the_runs_batched_with_it_are_stored(tmp_path: Path) -> None:
    store_path, limit = tmp_path / "store", 64 * 1024
    done = subprocess.run(
        [sys.executable, "-c", RECORDING_UNDER_A_LIMIT, str(store_path), str(limit)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "EE_CAPTURE_STRICT": "0"},  # the failure is reported, not raised, as in production
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert (result["written"], result["failed"], result["flushed"]) == (4, 1, False), result
    assert any("more than the largest file this process may write" in e for e in result["errors"]), result["errors"]
    store = LocalExperienceStore(store_path)
    tasks = sorted(store.trajectories()["task"].to_list())
    store.close()
    assert tasks == ["after 0", "after 1", "before 0", "before 1"]
