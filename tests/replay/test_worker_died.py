"""A replay worker whose process a tool ends (``os._exit``, a segfault, the OOM killer) without isolation: the job ends
with an error naming the worker, the trajectories it held and ``--isolation subprocess``, and leaves no process. Was (a
sweep): ``unexpected BrokenProcessPool ... (a bug in ee-middleware ...)``, naming neither.

The real ``ee replay run`` with two real worker processes, a real PythonSandbox whose ``die()`` tool calls ``os._exit``
(tests/replay/sandbox_failure_world.py) and a real local store."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.store.local import LocalExperienceStore
from tests.replay.test_processes import Job, jobs, wait_until_none_left  # noqa: F401 - jobs: the fixture
from tests.trainers.datasets.test_sandbox_failures import _trajectory

pytestmark = pytest.mark.timeout(240)


class DiesPolicy:
    """Proposes ``die()`` at every state: the tool that ends the process it runs in."""

    name = "dies"

    def __init__(self, **sampling: Any) -> None:
        pass

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        call = ToolCall(id=f"alt_die_{point.step_index}", name="die", arguments={})
        return Proposals([Candidate(call=call, proposer=ProposerInfo(policy=self.name))])

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _replay_with(tmp_path: Path, jobs: list[Job], policy: type) -> tuple[Job, str]:  # noqa: F811
    """``ee replay run --workers 2`` of four approved trajectories with ``policy`` (a class of this module), run to its
    end; the job and what it said on stderr."""
    root = tmp_path / "store"
    store = LocalExperienceStore(root, create=True)
    store.write([_trajectory(i) for i in range(4)])
    store.approve([f"traj-{i}" for i in range(4)], by="test")
    store.close()
    spec = f"{__name__}:{policy.__name__}"
    job = Job(root, "--sandbox", "tests.replay.sandbox_failure_world:make_sandbox", "--policy", spec, "--workers", "2")
    jobs.append(job)
    job.proc.wait(120)
    return job, job.proc.stderr.read()


def test_a_worker_a_tool_ended_is_named_with_its_trajectories_and_the_fix(tmp_path: Path, jobs: list[Job]) -> None:  # noqa: F811
    job, stderr = _replay_with(tmp_path, jobs, DiesPolicy)
    assert job.proc.returncode == 1, stderr
    assert "unexpected" not in stderr and "BrokenProcessPool" not in stderr, stderr
    assert "replay worker " in stderr and " of 2 ended without answering while it held trajectories traj-" in stderr, stderr
    assert "a tool, the sandbox or the policy ended its process" in stderr and "--isolation subprocess" in stderr, stderr
    assert wait_until_none_left(job.marker) == []


class DiesBuildingPolicy(DiesPolicy):
    """A policy whose building ends the worker's process (a local model the memory cannot hold): in a worker only."""

    def __init__(self, **sampling: Any) -> None:
        if multiprocessing.current_process().name != "MainProcess":
            os._exit(7)


def test_a_worker_that_died_while_starting_blames_no_trajectory(tmp_path: Path, jobs: list[Job]) -> None:  # noqa: F811
    """The review of the first version: a worker dead in its policy's building was said to hold trajectories, one of them
    the cause, and --isolation subprocess (which does not help there) was offered."""
    job, stderr = _replay_with(tmp_path, jobs, DiesBuildingPolicy)
    assert job.proc.returncode == 1, stderr
    assert "unexpected" not in stderr and "BrokenProcessPool" not in stderr, stderr
    assert "ended without answering, while it started (building its policy and sandbox)" in stderr, stderr
    assert "held trajectories" not in stderr and "--isolation" not in stderr, stderr
    assert wait_until_none_left(job.marker) == []
