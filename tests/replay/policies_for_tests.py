"""Replay policies for tests, named by spec (``tests.replay.policies_for_tests:gated``) so that workers and Ray actors
build them too. ``gated`` and ``failing`` are the mutation policy with one difference:

- ``gated``: built at once in the process named by ``EE_TEST_GATE_PID`` and, in any other (a worker, a Ray actor), only
  once the file ``EE_TEST_POLICY_GATE`` exists (or after 60 s): it holds the workers' start-up while the job replays;
- ``failing``: raises :class:`PolicyError` (a policy that stopped working: the job stops) at the trajectory
  ``EE_TEST_FAIL_ON`` names;
- ``slow_to_build``: leaves a file named by its process's pid in ``EE_TEST_BUILD_DIR``, then takes
  ``EE_TEST_BUILD_DELAY`` seconds to build (a policy loading a model);
- ``slow_to_close``: its ``close`` (a worker ending) leaves a file named by its process's pid in
  ``EE_TEST_CLOSING_DIR``, takes ``EE_TEST_CLOSE_DELAY`` seconds (a model unloading, a connection draining), then leaves
  one in ``EE_TEST_CLOSED_DIR``: a test can stop the job while its workers close, and tell whether they closed to the end;
- ``dying``: its process dies (SIGKILL) at the trajectory ``EE_TEST_DIE_ON`` names, after writing its pid into the
  file ``EE_TEST_DIED_PID`` (a worker killed by the kernel's out-of-memory killer, or a native crash), once
  ``EE_TEST_DIE_WHEN_BUILT`` processes have built it (when set); each process that builds it leaves a file named by
  its pid in ``EE_TEST_BUILD_DIR`` (when set).

:class:`FixedCallsPolicy` is the base of tests' policies that propose the same calls at every state.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

from ee_middleware.errors import PolicyError
from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals


def gated(**options: Any) -> MutationPolicy:
    gate, owner = os.environ.get("EE_TEST_POLICY_GATE"), os.environ.get("EE_TEST_GATE_PID")
    if gate and owner and int(owner) != os.getpid():
        deadline = time.monotonic() + 60
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return MutationPolicy()  # the options a job passes a user policy (temperature, ...) are not the mutation policy's


class _Failing(MutationPolicy):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        if point.trajectory_id == os.environ.get("EE_TEST_FAIL_ON"):
            raise PolicyError(f"the policy server went away at {point.trajectory_id}")
        return super().propose(point, k, seed=seed)


def failing(**options: Any) -> MutationPolicy:
    return _Failing()


def slow_to_build(**options: Any) -> MutationPolicy:
    folder = os.environ.get("EE_TEST_BUILD_DIR")
    if folder:  # (the job's own process never builds a user's policy: only its workers do)
        Path(folder, str(os.getpid())).touch()
        time.sleep(float(os.environ.get("EE_TEST_BUILD_DELAY", "0")))
    return MutationPolicy()


class _SlowToClose(MutationPolicy):
    def close(self) -> None:
        for folder, delay in (("EE_TEST_CLOSING_DIR", "EE_TEST_CLOSE_DELAY"), ("EE_TEST_CLOSED_DIR", None)):
            if path := os.environ.get(folder):
                Path(path, str(os.getpid())).touch()
            if delay:
                time.sleep(float(os.environ.get(delay, "0")))
        super().close()


def slow_to_close(**options: Any) -> MutationPolicy:
    return _SlowToClose()


class _Dying(MutationPolicy):
    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        if point.trajectory_id == os.environ.get("EE_TEST_DIE_ON"):
            _wait_for_builds()
            Path(os.environ["EE_TEST_DIED_PID"]).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().propose(point, k, seed=seed)


def _wait_for_builds(timeout_s: float = 30.0) -> None:
    """Wait (at most ``timeout_s``) until ``EE_TEST_DIE_WHEN_BUILT`` processes have built the policy (files in
    ``EE_TEST_BUILD_DIR``): under load, the trajectory to die on can come before the job's other worker has started."""
    wanted, folder = int(os.environ.get("EE_TEST_DIE_WHEN_BUILT", "0")), os.environ.get("EE_TEST_BUILD_DIR")
    deadline = time.monotonic() + timeout_s
    while wanted and folder and len(list(Path(folder).iterdir())) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)


def dying(**options: Any) -> MutationPolicy:
    folder = os.environ.get("EE_TEST_BUILD_DIR")
    if folder:
        Path(folder, str(os.getpid())).touch()
    return _Dying()


class FixedCallsPolicy:
    """A replay policy proposing the same calls at every state, in order (``calls``: (tool, arguments) pairs, set by a
    subclass, whose ``package.module:Class`` spec the job builds with the options it passes to every policy)."""

    name = "fixed-calls"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, **options: Any) -> None:
        pass

    def propose(self, point: Any, k: int, *, seed: int) -> Proposals:
        return Proposals(
            [
                Candidate(call=ToolCall(id=f"alt-{i}", name=name, arguments=arguments), proposer=ProposerInfo(policy=self.name))
                for i, (name, arguments) in enumerate(self.calls)
            ][:k]
        )

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
