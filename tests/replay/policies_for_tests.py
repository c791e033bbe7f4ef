"""Replay policies for tests, named by spec (``tests.replay.policies_for_tests:gated``) so that workers and Ray actors
build them too. Both are the mutation policy with one difference:

- ``gated``: built at once in the process named by ``EE_TEST_GATE_PID`` and, in any other (a worker, a Ray actor), only
  once the file ``EE_TEST_POLICY_GATE`` exists (or after 60 s): it holds the workers' start-up while the job replays;
- ``failing``: raises :class:`PolicyError` (a policy that stopped working: the job stops) at the trajectory
  ``EE_TEST_FAIL_ON`` names.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ee_middleware.errors import PolicyError
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import DecisionPoint, Proposals


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
