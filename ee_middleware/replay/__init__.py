"""Replay: re-run recorded states with K alternative actions inside sandboxes (Early Experience).

The pieces, each replaceable:

* :class:`~ee_middleware.replay.sandboxes.protocol.Sandbox`: a tool environment that can be
  rebuilt from a trajectory's environment reference, branched and rewound (built-ins: in-process
  :class:`PythonSandbox`, :class:`SubprocessSandbox` isolation, the BFCL sandbox);
* :class:`~ee_middleware.replay.policies.protocol.Policy`: proposes alternatives (schema-driven
  mutation, a local transformers model, any OpenAI-compatible endpoint);
* :func:`replay_trajectory`: one trajectory; :func:`run_replay`: the resumable job over a store,
  on local worker processes or a Ray cluster.

Names load lazily: importing this package pulls in no model stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports

if TYPE_CHECKING:
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import ReplaySummary, run_replay
    from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Policy, Proposals
    from ee_middleware.replay.runner import ReplayOutcome, ReplaySettings, replay_trajectory
    from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox
    from ee_middleware.replay.sandboxes.protocol import Sandbox
    from ee_middleware.replay.sandboxes.python import PythonSandbox
    from ee_middleware.replay.sandboxes.registry import build_sandbox

_LAZY = {
    "ReplayConfig": "ee_middleware.replay.config",
    "ReplaySummary": "ee_middleware.replay.job",
    "run_replay": "ee_middleware.replay.job",
    "Candidate": "ee_middleware.replay.policies.protocol",
    "DecisionPoint": "ee_middleware.replay.policies.protocol",
    "Policy": "ee_middleware.replay.policies.protocol",
    "Proposals": "ee_middleware.replay.policies.protocol",
    "ReplayOutcome": "ee_middleware.replay.runner",
    "ReplaySettings": "ee_middleware.replay.runner",
    "replay_trajectory": "ee_middleware.replay.runner",
    "Sandbox": "ee_middleware.replay.sandboxes.protocol",
    "PythonSandbox": "ee_middleware.replay.sandboxes.python",
    "SubprocessSandbox": "ee_middleware.replay.sandboxes.isolated",
    "build_sandbox": "ee_middleware.replay.sandboxes.registry",
}

__all__ = [
    "Candidate",
    "DecisionPoint",
    "Policy",
    "Proposals",
    "PythonSandbox",
    "ReplayConfig",
    "ReplayOutcome",
    "ReplaySettings",
    "ReplaySummary",
    "Sandbox",
    "SubprocessSandbox",
    "build_sandbox",
    "replay_trajectory",
    "run_replay",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
