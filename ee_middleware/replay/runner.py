"""Replay one trajectory: at every recorded state, execute K alternatives from exactly that state.

For each expert tool-call step s_i (in order): take a snapshot of the world, let the proposer
suggest K alternative calls, and for each one restore the snapshot, execute it in the sandbox and
keep the real observation as a :class:`~ee_middleware.records.Rollout`. Then restore the snapshot
once more and re-execute the expert's own call, which moves the world to s_{i+1} and checks the
sandbox's fidelity: the observation must equal the recorded one.

Safety: a call is executed only when the sandbox provides the tool. A proposed call to any other
tool is refused and counted (with the tool's name, for the run's report), never executed.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ee_middleware.errors import EnvironmentUnavailableError
from ee_middleware.records import Action, Observation, ReplayRecord, Rollout, Trajectory, utcnow
from ee_middleware.replay.policies.protocol import DecisionPoint

if TYPE_CHECKING:
    from ee_middleware.replay.policies.proposer import Proposer
    from ee_middleware.replay.sandboxes.protocol import Sandbox

MAX_MISMATCH_DETAILS = 5


@dataclass(frozen=True)
class ReplaySettings:
    """What identifies a replay configuration and shapes each trajectory's replay."""

    replay_id: str
    policy: str
    k: int
    seed: int = 0
    check_fidelity: bool = True
    max_observation_chars: int = 200_000


@dataclass
class ReplayOutcome:
    """The rollouts of one trajectory and its replay record."""

    record: ReplayRecord
    rollouts: list[Rollout] = field(default_factory=list)


def derive_seed(seed: int, trajectory_id: str, step_index: int) -> int:
    """A per-state seed that does not depend on which worker replays the state, or in which order."""
    digest = hashlib.blake2b(f"{seed}:{trajectory_id}:{step_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


def rollout_id(replay_id: str, trajectory_id: str, step_index: int, branch_index: int) -> str:
    """Deterministic rollout ids make a repeated replay idempotent in the store."""
    return hashlib.blake2b(f"{replay_id}:{trajectory_id}:{step_index}:{branch_index}".encode(), digest_size=12).hexdigest()


def _same_observation(recorded: Observation, replayed: Observation) -> bool:
    if recorded.truncated_chars:
        return replayed.content.startswith(recorded.content)
    return recorded.content == replayed.content


def replay_trajectory(trajectory: Trajectory, sandbox: Sandbox, proposer: Proposer, settings: ReplaySettings) -> ReplayOutcome:
    """Replay ``trajectory`` in ``sandbox`` with alternatives from ``proposer`` (see the module docstring)."""
    started = time.perf_counter()

    def finish(status: str, reason: str | None = None, **counts: Any) -> ReplayRecord:
        return ReplayRecord(
            replay_id=settings.replay_id,
            trajectory_id=trajectory.id,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            policy=settings.policy,
            sandbox=sandbox.kind,
            k=settings.k,
            seed=settings.seed,
            duration_s=time.perf_counter() - started,
            finished_at=utcnow(),
            **counts,
        )

    tool_steps = [s for s in trajectory.steps if s.action.kind == "tool_call" and s.action.tool_call is not None]
    if not tool_steps:
        return ReplayOutcome(finish("skipped", "the trajectory has no tool calls, so there is no state to branch from"))
    try:
        sandbox.reset(trajectory.environment)
    except EnvironmentUnavailableError as exc:
        return ReplayOutcome(finish("skipped", f"environment cannot be rebuilt: {exc}"))
    missing = sorted({s.action.tool_call.name for s in tool_steps if s.action.tool_call and not sandbox.covers(s.action.tool_call.name)})
    if missing:
        return ReplayOutcome(
            finish(
                "skipped",
                f"the expert calls {', '.join(missing)}, which sandbox {sandbox.kind!r} does not provide, so the recorded path cannot be "
                "followed. Add these tools to the sandbox (or list read-only ones in read_only_tools).",
            )
        )

    rollouts: list[Rollout] = []
    rejected: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    mismatches: list[dict[str, Any]] = []
    mismatch_count = 0
    for step in tool_steps:
        expert = step.action.tool_call
        assert expert is not None
        point = DecisionPoint(trajectory_id=trajectory.id, step_index=step.index, state=step.state, tools=trajectory.tools, expert=expert)
        proposals = proposer.propose(point, seed=derive_seed(settings.seed, trajectory.id, step.index))
        rejected.update(proposals.counts)
        snapshot = sandbox.snapshot()
        branched = False
        for branch, candidate in enumerate(proposals.accepted):
            call = candidate.call
            assert call is not None
            if not sandbox.covers(call.name):
                refused[call.name] += 1
                continue
            sandbox.restore(snapshot)
            branched = True
            t0 = time.perf_counter()
            observation = sandbox.execute(call)
            duration_ms = (time.perf_counter() - t0) * 1000
            rollouts.append(
                Rollout(
                    id=rollout_id(settings.replay_id, trajectory.id, step.index, branch),
                    replay_id=settings.replay_id,
                    trajectory_id=trajectory.id,
                    step_index=step.index,
                    branch_index=branch,
                    action=Action(kind="tool_call", tool_call=call),
                    proposer=candidate.proposer,
                    observation=observation.capped(settings.max_observation_chars),
                    is_error=observation.is_error,
                    synthetic=False,
                    sandbox=sandbox.kind,
                    duration_ms=duration_ms,
                )
            )
        if branched:
            sandbox.restore(snapshot)
        replayed = sandbox.execute(expert)
        if settings.check_fidelity and step.observation is not None and not _same_observation(step.observation, replayed):
            mismatch_count += 1
            if len(mismatches) < MAX_MISMATCH_DETAILS:
                mismatches.append(
                    {
                        "step": step.index,
                        "tool": expert.name,
                        "recorded": step.observation.content[:300],
                        "replayed": replayed.content[:300],
                    }
                )

    details: dict[str, Any] = {}
    if rejected:
        details["rejected_by_reason"] = dict(rejected)
    if refused:
        details["refused_tools"] = dict(refused)
    if mismatches:
        details["fidelity_mismatches"] = mismatches
    record = finish(
        "done",
        None,
        states=len(tool_steps),
        branches=len(rollouts),
        errors=sum(r.is_error for r in rollouts),
        rejected=sum(rejected.values()),
        refused=sum(refused.values()),
        fidelity_mismatches=mismatch_count,
        details=details,
    )
    return ReplayOutcome(record, rollouts)
