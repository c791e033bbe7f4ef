"""Replay one trajectory: at every recorded state, execute K alternatives from exactly that state.

The proposer first suggests K alternative calls at every expert tool-call step (from the recording
alone). Then for each step s_i (in order): take a snapshot of the world, and for each alternative
at s_i restore the snapshot, execute it in the sandbox and keep the real observation as a
:class:`~ee_middleware.records.Rollout`. Then restore the snapshot once more and re-execute the expert's own call, which moves the world to s_{i+1} and checks the
sandbox's fidelity: the observation must equal the recorded one (a mismatch is kept with the first
differing position and a short diff, :mod:`ee_middleware.replay.fidelity`).

Redaction (:mod:`ee_middleware.replay.privacy`): every call is given the real values of its
redacted arguments at the sandbox boundary when the store's vault has them, and every observation
is redacted with the store's rules before it is compared or kept. An expert step whose arguments
cannot be restored is *unrestorable*: counted and listed, its observation not checked (the sandbox
answered the placeholder, which says nothing about the sandbox's fidelity). The trajectory's environment
reference is restored the same way before the sandbox is reset to it: when it keeps a placeholder, the world
was built from it, which matters only where the world's behaviour depends on that value (a world that never reads
it, or only repeats it in answers that are redacted anyway, behaves as the recorded one). So the expert's path is
checked as usual, and ``details["unrestored_environment"]`` says which keys and why: when every expert step observes
what was recorded, the rollouts are kept; at the first step that does not, that step and every later one are
unrestorable (listed with the environment's keys) instead of fidelity mismatches, and every rollout of the trajectory
carries the placeholders in ``Rollout.unrestored`` (dataset builders leave it out). A recorded observation is compared
after the store's current rules redact it too, so a rule added since capture is no mismatch.

Experience models (:mod:`ee_middleware.replay.sandboxes.experience`): a sandbox with ``at_step(trajectory, step)``
is told each recorded step before branching from it; one with ``provenance()`` says after each call
whether a model wrote the observation, and such a rollout is stored ``synthetic`` with that lineage
(model, retrieved transition ids, reasoning) in ``Rollout.synthetic_source``. A
prediction that is not a usable observation is counted by reason (``details["synthetic_failures"]``)
and never stored; the usable ones are counted too (``details["synthetic_branches"]``).

Sandbox failures: an alternative the sandbox got no answer for (it timed out, crashed or ran out of memory:
``Observation.sandbox_failure``) is stored with that mark, like any other rollout, and counted by kind
(``details["sandbox_failures"]``); dataset builders leave it out. An expert call the sandbox got no answer for ends the
trajectory's replay: the sandbox is back at the world before that call, so no later state could be branched from the
recorded one. The trajectory is recorded ``failed`` (the next run retries it) with the step, tool, kind of failure and
what the sandbox said (``details["expert_sandbox_failure"]``), and its rollouts are dropped, as every failed
trajectory's are: the retry replays it whole, under the same rollout ids. At the last tool-call step no later state
depends on that call (as for a tool the sandbox lacks there, below): the alternatives at its state ran, the trajectory
is ``done`` with its rollouts, and ``details["expert_sandbox_failure"]`` says which call failed and how.

Safety: a call is executed only when the sandbox provides the tool. A proposed call to any other
tool is refused and counted (with the tool's name, for the run's report), never executed; the refill then tops the
state's alternatives up to K with tools the sandbox provides (:meth:`~ee_middleware.replay.policies.proposer.Proposer.top_up`,
only at a state where something was refused: elsewhere the proposals are the same, draw for draw). The expert's own call
of such a tool is never executed either. A tool the sandbox declares to act only outside its world (it pages on-call,
sends an e-mail: the optional ``acts_outside_world(name)``, ``PythonSandbox(..., outside_world_tools=...)``) leaves the
world as it was, so its recorded observation stands for it (the states that follow are the recorded ones, as always):
the states before and after it are branched from as usual, and the call is listed in
``details["uncovered_calls_not_executed"]``. A trajectory whose expert calls any other tool the sandbox lacks is
skipped (the tool may change the world: a sandbox that lost a world tool would otherwise give every later branch a world
without its effect), except at its last tool-call step: no later state depends on that call (only the final answer, if
any, follows it: a structured answer given as a tool call, as LangChain's ``response_format=ToolStrategy(...)`` gives,
or a last action such as a notification), so it is left unexecuted and listed (``details["final_calls_not_replayed"]``).
A declared tool that does change the world shows in the expert's later calls as fidelity mismatches (their worlds lack
its effect), each of which then names the calls not executed before it as the likely cause (``hint``).

A world tool whose function takes first, where the world goes, an argument the recorded schemas list is a production
tool's own function: the sandbox's optional ``check_offered_tools(trajectory.tools)`` raises before anything of the
trajectory runs (see :meth:`~ee_middleware.replay.sandboxes.python.PythonSandbox.check_offered_tools`).

A call the model wrote malformed (every entry of LangChain's ``invalid_tool_calls``, whatever its arguments parse to:
text that is no JSON, ``null``, a list, an object a parser or schema check refused; and any call whose arguments were no
JSON object; stored with ``_raw`` as its only argument, a call that lost its name under a name no tool has) was answered
by the graph itself (``create_agent`` says it could not be executed), never by the tool: replay neither executes it in
the sandbox nor checks its observation, nor counts its tool as one the sandbox lacks; the world stays as it is and the
recorded observation leads to the next state; the alternatives at its state are replayed as at any other
(``details["malformed_calls_not_executed"]`` lists such calls). So is a call of a tool the run was never offered that
the graph answered with an error (a name the model made up: ``create_agent`` says it is not a valid tool;
``details["unoffered_calls_not_executed"]``). IL leaves out the same calls (:mod:`ee_middleware.replay.malformed`). Every observation a sandbox returns has its lone
surrogates replaced with U+FFFD before it is compared, stored or reported, as capture does (:func:`~ee_middleware.messages.clean_text`).

A run that paused for a human review (``HumanInTheLoopMiddleware``, a breakpoint, ``interrupt()`` in a tool) or was
cancelled from outside is an ``interrupted`` trajectory ending on calls without an observation: a call awaiting review
(which the reviewer may reject) or one the cancellation cut off. Replay never executes such a call: the alternatives at
its state are replayed as at any other (the world there is production's), but the world after it is no state production
had (the call never ran, or ran partway: a tool that called ``interrupt()``), so no later state is branched from
(``details["unanswered_calls_not_executed"]`` lists such calls, with why; ``details["states_not_reached"]`` the steps
of the states left out, which ``states`` does not count). The run that resumed the thread is a trajectory of its own,
and replays the reviewed turn as the reviewer decided it.

A trajectory that recorded no tool schemas (ingested from an instrumentation whose spans carry no tool definitions) is
skipped, saying so and how to record them: every alternative is proposed from, and checked against, the tools offered.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import Counter
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ee_middleware.errors import EnvironmentUnavailableError
from ee_middleware.messages import clean_text
from ee_middleware.records import Action, Observation, ReplayRecord, Rollout, Step, ToolCall, Trajectory, utcnow
from ee_middleware.replay.curriculum import world_environment
from ee_middleware.replay.fidelity import describe_mismatch, raised_as_recorded
from ee_middleware.replay.malformed import malformed_call, unoffered_call
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.replay.policies.schema import no_schemas_fix
from ee_middleware.replay.privacy import NO_PRIVACY, ReplayPrivacy, Unrestored, keys_holding
from ee_middleware.replay.sandboxes.experience import SyntheticObservationError
from ee_middleware.replay.sandboxes.protocol import acts_outside_world, check_offered_tools, executed

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ee_middleware.replay.policies.proposer import ProposalResult, Proposer
    from ee_middleware.replay.policies.protocol import Candidate
    from ee_middleware.replay.sandboxes.protocol import Sandbox

MAX_MISMATCH_DETAILS = 5
MAX_UNRESTORABLE_DETAILS = 20


@dataclass(frozen=True)
class ReplaySettings:
    """What identifies a replay configuration and shapes each trajectory's replay."""

    replay_id: str
    policy: str
    k: int
    seed: int = 0
    check_fidelity: bool = True
    max_observation_chars: int = 200_000
    privacy: ReplayPrivacy = NO_PRIVACY
    """The store's redaction and vault (:meth:`ReplayPrivacy.of_store`); the default redacts and restores nothing."""
    attempt_of: str | None = None
    """For an attempt after the first (``ee replay run --again``): the configuration's id (its first attempt's replay
    id), kept with ``attempt`` in each record's details so that builds tell which attempt supersedes which."""
    attempt: int = 1


@dataclass
class ReplayOutcome:
    """The rollouts of one trajectory and its replay record."""

    record: ReplayRecord
    rollouts: list[Rollout] = field(default_factory=list)
    stored: bool = False
    """The worker wrote the rollouts and the record into the store itself; ``rollouts`` is then empty
    (they stay in the worker: only the record travels back to the job)."""


def derive_seed(seed: int, trajectory_id: str, step_index: int) -> int:
    """A per-state seed that does not depend on which worker replays the state, or in which order."""
    digest = hashlib.blake2b(f"{seed}:{trajectory_id}:{step_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


def rollout_id(replay_id: str, trajectory_id: str, step_index: int, branch_index: int) -> str:
    """Deterministic rollout ids make a repeated replay idempotent in the store."""
    return hashlib.blake2b(f"{replay_id}:{trajectory_id}:{step_index}:{branch_index}".encode(), digest_size=12).hexdigest()


def _same_observation(
    recorded: Observation, replayed: Observation, privacy: ReplayPrivacy = NO_PRIVACY, *, blocks_joined_close: bool = False
) -> bool:
    """Whether the replayed observation (redacted with the store's current rules) is the recorded one; a recording made
    under older rules (a rule added since capture: a card after an amount, a non-ASCII address) is compared redacted
    with the current rules too, only when the plain comparison fails (no cost on the common path).

    ``blocks_joined_close``: the recording joined a result's text blocks with nothing between them (records older than
    schema 1.5, :func:`_blocks_joined_close`), where the sandbox now puts them a line apart: the recorded text may then
    also be the replayed one with some of its ``"\n"`` left out."""
    if _same_text(recorded, recorded.content, replayed.content, blocks_joined_close):
        return True
    current = privacy.redact_data(recorded.content)
    return current != recorded.content and _same_text(recorded, current, replayed.content, blocks_joined_close)


def _same_text(recorded: Observation, recorded_text: str, replayed_text: str, blocks_joined_close: bool = False) -> bool:
    if replayed_text.startswith(recorded_text) if recorded.truncated_chars else recorded_text == replayed_text:
        return True
    return blocks_joined_close and _without_some_newlines(replayed_text, recorded_text, prefix=bool(recorded.truncated_chars))


_LINES_BETWEEN_BLOCKS_SINCE = (1, 5)
"""The record schema since which a message's text blocks are stored a line apart (``"\n"``, 41f3e1f); records older
than that hold them joined with nothing between them."""


def _blocks_joined_close(schema_version: str) -> bool:
    """Whether a trajectory of ``schema_version`` holds text blocks joined with nothing between them (older than 1.5);
    a version that is no ``MAJOR.MINOR`` is not taken as older."""
    try:
        return tuple(int(part) for part in schema_version.split(".")[:2]) < _LINES_BETWEEN_BLOCKS_SINCE
    except (ValueError, AttributeError):
        return False


def _without_some_newlines(text: str, shorter: str, *, prefix: bool = False) -> bool:
    """Whether ``shorter`` is ``text`` with some of its ``"\n"`` left out (with ``prefix``: the start of such a text).
    Linear: ``text``'s pieces between its line breaks must follow one another in ``shorter``, each break either there or
    left out; taking a break that is there is never wrong (a later one could stand for it only where all between are
    breaks left out)."""
    position = 0
    for index, piece in enumerate(text.split("\n")):
        if index and position < len(shorter) and shorter[position] == "\n":
            position += 1
        if prefix and len(shorter) - position <= len(piece):
            return piece.startswith(shorter[position:])
        if not shorter.startswith(piece, position):
            return False
        position += len(piece)
    return position == len(shorter)


@dataclass
class ProposingAhead:
    """A trajectory's proposals asked for before its replay (:func:`propose_ahead`): one future per state, in order."""

    trajectory_id: str
    proposer: Proposer
    futures: list[Future[ProposalResult]]

    def drop(self, *, wait_for_running: bool = True) -> None:
        """Cancel the requests not started and wait for the others (none outlives this). ``wait_for_running=False``: the
        job is stopping (Ctrl-C, SIGTERM), and a served model's answer can take minutes, so the requests already sent
        are left to end on their own threads; nothing they return is used."""
        for future in self.futures:
            future.cancel()
        if wait_for_running:
            wait(self.futures)


def propose_ahead(trajectory: Trajectory, proposer: Proposer, settings: ReplaySettings, requests: Executor) -> ProposingAhead | None:
    """Ask ``requests``'s threads for ``trajectory``'s proposals now, while another trajectory replays; ``None`` when
    it has no tool call. (Whether the sandbox provides its tools can only be told once it is reset to the trajectory's
    environment: a trajectory skipped for that has had its proposals asked for in vain.)"""
    steps = _tool_steps(trajectory)
    return _ask(trajectory, proposer, settings, steps, requests) if steps else None


def _ask(trajectory: Trajectory, proposer: Proposer, settings: ReplaySettings, steps: list[Step], requests: Executor) -> ProposingAhead:
    """The proposals at each of ``steps``, asked for from ``requests``'s threads now."""
    futures = [requests.submit(_proposals_at, trajectory, proposer, settings, step) for step in steps]
    return ProposingAhead(trajectory.id, proposer, futures)


def replay_trajectory(
    trajectory: Trajectory,
    sandbox: Sandbox,
    proposer: Proposer,
    settings: ReplaySettings,
    *,
    requests: Executor | None = None,
    ahead: ProposingAhead | None = None,
) -> ReplayOutcome:
    """Replay ``trajectory`` in ``sandbox`` with alternatives from ``proposer`` (see the module docstring).

    With ``requests`` (a thread pool), the states' proposals are asked for concurrently, as many at a time as it has
    threads: for a policy that waits on a model server, which answers concurrent requests together; ``ahead`` holds
    them when they were asked for before (:func:`propose_ahead`, by the same ``proposer``). The proposals, and so the
    rollouts, are the same as asked one after the other (each state's are seeded by the state alone).
    """
    if ahead is not None and (ahead.trajectory_id != trajectory.id or ahead.proposer is not proposer):
        ahead.drop()  # another trajectory's, or a proposer rebuilt since (after a failure): asked again below
        ahead = None
    run = _Run(trajectory, sandbox, proposer, settings)
    tool_steps = _tool_steps(trajectory)
    run.not_reached = [s.index for s in _tool_steps(trajectory, reachable=False)[len(tool_steps) :]]
    try:
        skipped = _reset_for_replay(run, tool_steps)
    except BaseException:
        if ahead is not None:
            ahead.drop()
        raise
    if skipped is not None:
        if ahead is not None:
            ahead.drop()
        return ReplayOutcome(run.record("skipped", skipped))
    # Every state's proposals first: they read the recording only, never the sandbox, so the policy's work and the
    # sandbox's each run in one stretch with their code and data warm in the CPU's caches (BFCL, K=8: ~7% less CPU
    # per branch than alternating the two at every state).
    proposed = _propose_all(run, tool_steps, requests, ahead)
    for step, proposals in zip(tool_steps, proposed, strict=True):
        expert = step.action.tool_call
        assert expert is not None
        at_step = getattr(sandbox, "at_step", None)
        if at_step is not None:
            at_step(trajectory, step)
        _branch(run, step, proposals)
        if _unanswered(trajectory, step):  # awaiting review or cut off: never run (the last state replay reaches)
            run.unanswered_not_executed.append({"step": step.index, "tool": expert.name, "why": _why_unanswered(trajectory)})
            continue
        if _malformed_by_the_model(trajectory, expert):  # answered by the graph, not the tool: the world is as it was
            run.malformed_not_executed.append({"step": step.index, "tool": expert.name})
            continue
        if _unoffered(trajectory, step):  # a name the model made up, answered by the graph: the world is as it was
            run.unoffered_not_executed.append({"step": step.index, "tool": expert.name})
            continue
        if not sandbox.covers(expert.name):  # declared outside the world, or the last step's: never called (module docstring)
            final = step is tool_steps[-1] and not acts_outside_world(sandbox, expert.name)  # (a declared one: said so, anywhere)
            (run.final_not_replayed if final else run.uncovered_not_executed).append({"step": step.index, "tool": expert.name})
            continue
        failed = _reexecute_expert(run, step, expert)
        if failed is not None and step is tool_steps[-1]:  # no later state depends on the world this call left
            run.final_sandbox_failure = failed
        elif failed is not None:  # the world is not the recorded one past this call: nothing further can be branched
            details = {"expert_sandbox_failure": settings.privacy.redact_data(failed)}
            return ReplayOutcome(run.record("failed", _expert_failure_reason(failed), details=details))
    if run.world_diverged:
        run.flag_environment()
    return ReplayOutcome(run.record("done", None, **run.counts(tool_steps)), run.rollouts)


@dataclass
class _Run:
    """One trajectory's replay: what it works with, and what it has produced and counted so far."""

    trajectory: Trajectory
    sandbox: Sandbox
    proposer: Proposer
    settings: ReplaySettings
    started: float = field(default_factory=time.perf_counter)
    rollouts: list[Rollout] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    """Proposals the proposer rejected, by reason."""
    refused: Counter[str] = field(default_factory=Counter)
    """Accepted proposals not executed because the sandbox does not provide the tool, by tool."""
    synthetic_failures: Counter[str] = field(default_factory=Counter)
    """Alternatives an experience model gave no usable observation for, by reason (nothing stored)."""
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    """The first :data:`MAX_MISMATCH_DETAILS` expert calls whose replayed observation differed."""
    mismatch_count: int = 0
    unrestorable: list[dict[str, Any]] = field(default_factory=list)
    """Expert calls whose redacted arguments could not be restored (the first :data:`MAX_UNRESTORABLE_DETAILS`)."""
    unrestorable_count: int = 0
    final_not_replayed: list[dict[str, Any]] = field(default_factory=list)
    """The expert's call at the last tool-call step when the sandbox does not provide its tool: not executed."""
    uncovered_not_executed: list[dict[str, Any]] = field(default_factory=list)
    """The expert's calls before the last tool-call step of tools the sandbox does not provide: not executed, their
    recorded observations standing for them (the sandbox declares them to act only outside the world)."""
    final_sandbox_failure: dict[str, Any] | None = None
    """The expert's call at the last tool-call step when the sandbox got no answer for it (:func:`_expert_failure`)."""
    malformed_not_executed: list[dict[str, Any]] = field(default_factory=list)
    """The expert's calls whose arguments the model wrote malformed (:func:`_malformed_by_the_model`): not executed."""
    unoffered_not_executed: list[dict[str, Any]] = field(default_factory=list)
    """The expert's calls of tools the run was never offered, answered by the graph (:func:`_unoffered`): not executed."""
    environment_unrestored: list[Unrestored] = field(default_factory=list)
    """Placeholders of the environment reference the vault could not restore: the sandbox's world was built with them."""
    unanswered_not_executed: list[dict[str, Any]] = field(default_factory=list)
    """The expert's call awaiting review, or cut off, that replay stopped at (:func:`_unanswered`): not executed."""
    not_reached: list[int] = field(default_factory=list)
    """The steps of the tool-call states after such a call: not branched from (:func:`_tool_steps`)."""
    world_diverged: bool = False
    """Whether an expert step observed something else than recorded in a world built with ``environment_unrestored``:
    from that step on the world is taken to differ from the recorded one (see the module docstring)."""

    def record(self, status: str, reason: str | None = None, **counts: Any) -> ReplayRecord:
        """The replay record of this trajectory, timed from the start of the run."""
        return ReplayRecord(
            replay_id=self.settings.replay_id,
            trajectory_id=self.trajectory.id,
            status=status,  # type: ignore[arg-type]
            reason=self.settings.privacy.redact_data(reason),
            policy=self.settings.policy,
            sandbox=self.sandbox.kind,
            k=self.settings.k,
            seed=self.settings.seed,
            duration_s=time.perf_counter() - self.started,
            finished_at=utcnow(),
            **self._with_attempt(counts),
        )

    def _with_attempt(self, counts: dict[str, Any]) -> dict[str, Any]:
        """``counts`` with, for an attempt after the first, the configuration and attempt in its details."""
        if self.settings.attempt_of is None:
            return counts
        attempt = {"attempt_of": self.settings.attempt_of, "attempt": self.settings.attempt}
        return {**counts, "details": {**counts.get("details", {}), **attempt}}

    def counts(self, states: list[Step]) -> dict[str, Any]:
        """The counts and details of a finished replay whose tool-call ``states`` were branched from, for :meth:`record`."""
        details: dict[str, Any] = {}
        stored = Counter(r.step_index for r in self.rollouts)
        short = [self.settings.k - stored[s.index] for s in states if stored[s.index] < self.settings.k]
        if short:  # the schemas allow fewer distinct calls than K there, the sandbox refused some, or predictions failed
            details["states_short_of_k"] = len(short)
            details["alternatives_short_of_k"] = sum(short)
        if self.rejected:
            details["rejected_by_reason"] = dict(self.rejected)
        if self.synthetic_failures:
            details["synthetic_failures"] = dict(self.synthetic_failures)
        refilled = sum(r.proposer.settings.get("refill_for") is not None for r in self.rollouts)
        if refilled:  # stored alternatives the refill proposed in place of the policy (see the summary's refilled_branches)
            details["refilled_branches"] = refilled
        synthetic = sum(r.synthetic for r in self.rollouts)
        if synthetic:
            details["synthetic_branches"] = synthetic  # beside the failures: whether the model gave anything usable at all
        mismatches = self.mismatches  # built from redacted texts (see _reexecute_expert): not redacted again
        if self.unrestorable:
            details["unrestorable_steps"] = self.unrestorable
        if self.final_not_replayed:
            details["final_calls_not_replayed"] = self.final_not_replayed
        if self.uncovered_not_executed:
            details["uncovered_calls_not_executed"] = self.uncovered_not_executed
        if self.final_sandbox_failure is not None:
            details["expert_sandbox_failure"] = self.final_sandbox_failure
        if self.malformed_not_executed:
            details["malformed_calls_not_executed"] = self.malformed_not_executed
        if self.unoffered_not_executed:
            details["unoffered_calls_not_executed"] = self.unoffered_not_executed
        if self.unanswered_not_executed:
            details["unanswered_calls_not_executed"] = self.unanswered_not_executed
        if self.not_reached:
            details["states_not_reached"] = self.not_reached
        unrestored = sum(bool(r.unrestored) for r in self.rollouts)
        if unrestored:
            details["unrestored_branches"] = unrestored
        if self.environment_unrestored:
            details["unrestored_environment"] = {
                "keys": keys_holding(world_environment(self.trajectory.environment), self.environment_unrestored),
                "placeholders": sorted({u.placeholder for u in self.environment_unrestored}),
                "reasons": sorted({u.reason for u in self.environment_unrestored}),
            }
        failures = Counter(r.observation.sandbox_failure for r in self.rollouts if r.observation.sandbox_failure)
        if failures:
            details["sandbox_failures"] = dict(failures)
        return {
            "states": len(states),
            "branches": len(self.rollouts),
            "errors": sum(r.is_error for r in self.rollouts),
            "rejected": sum(self.rejected.values()),
            "refused": sum(self.refused.values()),
            "fidelity_mismatches": self.mismatch_count,
            "unrestorable": self.unrestorable_count,
            "details": {
                **self.settings.privacy.redact_data(details),
                # counts by tool name, not redacted: a name is no data, and a secret rule would take reset_password's count
                **({"refused_tools": dict(self.refused)} if self.refused else {}),
                **({"fidelity_mismatches": mismatches} if mismatches else {}),
            },
        }

    def execute(self, call: ToolCall) -> tuple[Observation, list[Unrestored]]:
        """Execute ``call`` with its redacted arguments restored where the vault can; the observation redacted. What
        could not be restored: the call's placeholders, and those the environment (so the world) kept. The sandbox's text
        with its lone surrogates (a file name ``os.listdir`` decoded, a string cut inside an emoji) replaced as capture
        replaced them, so that it compares equal to the recorded one and can be stored and printed."""
        privacy = self.settings.privacy
        restored, unrestored = privacy.restore(call)
        if restored is call:  # the sandbox gets arguments of its own: one that changes them changes no record
            restored = call.model_copy()
            restored.arguments = _own_copy(call.arguments)  # ToolCall validates no assignment: a third of model_copy(update=)
        observation = executed(self.sandbox, restored)
        text = clean_text(observation.content)
        if text is not observation.content:
            observation = observation.model_copy(update={"content": text})
        return privacy.redact_observation(observation), unrestored

    def flag_environment(self) -> None:
        """Every rollout carries the environment's placeholders once the world is known to differ from the recorded one."""
        placeholders = {u.placeholder for u in self.environment_unrestored}
        for i, rollout in enumerate(self.rollouts):
            if not placeholders <= set(rollout.unrestored):
                self.rollouts[i] = rollout.model_copy(update={"unrestored": sorted(placeholders | set(rollout.unrestored))})


def _own_copy(value: Any) -> Any:
    """A copy of JSON-like ``value`` sharing no dict or list with it (strings and numbers are immutable): what
    ``copy.deepcopy`` gives for arguments, at a third of its cost."""
    kind = type(value)
    if kind is dict:
        return {key: _own_copy(item) for key, item in value.items()}
    if kind is list:
        return [_own_copy(item) for item in value]
    return copy.deepcopy(value) if kind not in _IMMUTABLE else value


_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


NO_TOOL_CALLS = "the trajectory has no tool calls, so there is no state to branch from"
"""Why a trajectory that called no tool is skipped: nothing to fix (a plain answer), unlike the other reasons."""


def _reset_for_replay(run: _Run, tool_steps: list[Step]) -> str | None:
    """Reset the sandbox to the trajectory's step 0; the reason to skip the trajectory when it cannot be replayed."""
    if not tool_steps:
        return NO_TOOL_CALLS
    if not run.trajectory.tools:
        return (
            "the trajectory records no tool schemas (its spans carried no tool definitions), so no alternative call can be "
            f"proposed or checked against the tools the model was offered. {no_schemas_fix(run.trajectory.source)}"
        )
    # (a curriculum trajectory's lineage is no world); its placeholders restored from the vault, as arguments are
    environment, unrestored = run.settings.privacy.restore_environment(world_environment(run.trajectory.environment))
    run.environment_unrestored = [
        Unrestored(u.placeholder, f"in the environment reference the sandbox's world is built from: {u.reason}") for u in unrestored
    ]
    try:
        run.sandbox.reset(environment)
    except EnvironmentUnavailableError as exc:
        return f"environment cannot be rebuilt: {exc}"
    check_offered_tools(run.sandbox, run.trajectory.tools)  # a production tool listed where the world goes raises, before anything runs
    # The last step's call moves the world to no state replay branches from (only the final answer, if any, follows it),
    # and a tool the sandbox declares outside its world leaves the world as it was: both are left unexecuted instead (see
    # the module docstring). Any other tool the sandbox lacks may change the world: the recorded path cannot be followed.
    missing = sorted(
        {
            call.name
            for s in tool_steps[:-1]
            if (call := s.action.tool_call)
            and not run.sandbox.covers(call.name)
            and not acts_outside_world(run.sandbox, call.name)
            and not _malformed_by_the_model(run.trajectory, call)
            and not _unoffered(run.trajectory, s)
        }
    )
    if missing:
        hint = getattr(run.sandbox, "refusal_hint", None)  # why a sandbox refuses a tool it has (optional, see its protocol)
        advice = [text for name in missing if hint is not None and (text := hint(name))]
        if len(advice) < len(missing):
            advice.append(
                "Add these tools to the sandbox with a world they act on (docs/sandboxes.md; a PythonSandbox also calls a tool that "
                "changes nothing anywhere directly when it is listed in read_only_tools); or, for a tool that acts only outside the "
                "world (it pages someone, sends an e-mail), declare it: PythonSandbox(..., outside_world_tools=[...]), or a "
                "sandbox's acts_outside_world(name), and replay leaves the expert's calls of it unexecuted, their recorded "
                "results standing for them."
            )
        return (
            f"the expert calls {', '.join(missing)}, which sandbox {run.sandbox.kind!r} does not provide, so the recorded path cannot be "
            f"followed. {' '.join(advice)}"
        )
    return None


# -- branching: K alternatives from the recorded state ------------------------------------------------


def _branch(run: _Run, step: Step, proposals: ProposalResult) -> None:
    """Execute each accepted alternative at ``step`` from a snapshot; the world is left at the recorded state. Where some
    were refused (the sandbox does not provide their tool), the refill's alternatives in their place follow them."""
    snapshot = run.sandbox.snapshot()
    branched, refused = _alternatives(run, step, proposals.accepted, 0, snapshot)
    if refused:
        point = _decision_point(run.trajectory, step)
        more = run.proposer.top_up(point, proposals, run.sandbox.covers, seed=derive_seed(run.settings.seed, run.trajectory.id, step.index))
        branched = _alternatives(run, step, more, len(proposals.accepted), snapshot)[0] or branched
    if branched:
        run.sandbox.restore(snapshot)


def _alternatives(run: _Run, step: Step, candidates: list[Candidate], first: int, snapshot: Any) -> tuple[bool, bool]:
    """Execute ``candidates`` (numbered from branch ``first``) from ``snapshot``, refusing and counting those whose tool the
    sandbox does not provide; whether any was executed, and whether any was refused."""
    branched = refused = False
    for branch, candidate in enumerate(candidates, first):
        call = candidate.call
        assert call is not None
        if not run.sandbox.covers(call.name):
            run.refused[call.name] += 1
            refused = True
            continue
        run.sandbox.restore(snapshot)
        branched = True
        try:
            run.rollouts.append(_execute_alternative(run, step, branch, candidate))
        except SyntheticObservationError as exc:
            run.synthetic_failures[exc.reason] += 1
    return branched, refused


def _malformed_by_the_model(trajectory: Trajectory, call: ToolCall) -> bool:
    """Whether ``call`` is one the model wrote malformed: the graph answered it itself, no tool ran. Capture's mark says
    it where it was set (``ToolCall.malformed``: every entry of LangChain's ``invalid_tool_calls`` no tool ran, even of a
    tool that declares ``_raw``); else its arguments (only ``_raw``, unless the tool's recorded schema declares it). The
    IL builder leaves out the same calls (:func:`~ee_middleware.replay.malformed.malformed_call`)."""
    return malformed_call(trajectory.tools, call)


def _unoffered(trajectory: Trajectory, step: Step) -> bool:
    """Whether ``step``'s call names a tool the run was never offered and the graph answered it with an error itself (a
    name the model made up: :func:`~ee_middleware.replay.malformed.unoffered_by_the_graph`). IL leaves out the same calls."""
    call = step.action.tool_call
    is_error = step.observation.is_error if step.observation else None
    return call is not None and unoffered_call(trajectory.tools, call, is_error, ran=step.latency_ms is not None)


def _tool_steps(trajectory: Trajectory, *, reachable: bool = True) -> list[Step]:
    """The expert's tool-call steps, the states replay branches from; with ``reachable``, those up to the first call
    without an observation of an ``interrupted`` trajectory (:func:`_unanswered`), included: the world after it is no
    state production had."""
    steps = [s for s in trajectory.steps if s.action.kind == "tool_call" and s.action.tool_call is not None]
    if reachable:
        for position, step in enumerate(steps):
            if _unanswered(trajectory, step):
                return steps[: position + 1]
    return steps


def _unanswered(trajectory: Trajectory, step: Step) -> bool:
    """Whether ``step``'s call is one a paused or cancelled run ended on: an ``interrupted`` trajectory's call without an
    observation, awaiting a human review (the reviewer may reject it) or cut off by the cancellation. It never ran as
    recorded, or ran partway (a tool that called ``interrupt()``), so replay does not execute it. (A call without an
    observation in a run that ended otherwise ran: it is executed, its observation unchecked.)"""
    return trajectory.status == "interrupted" and step.observation is None


def _why_unanswered(trajectory: Trajectory) -> str:
    """Why an interrupted trajectory's call has no observation: the run was stopped from outside (its ``error`` says how,
    ``cancelled: CancelledError``), or its turn paused for a review (no ``error``). A paused turn's calls all wait for
    its review (none ran, or one ran partway: a tool that called ``interrupt()``), the one under review and those
    beside it that nobody reviews (a ``HumanInTheLoopMiddleware`` that interrupts on ``note`` alone, in a turn
    ``[lookup, note]``); the trajectory does not say which is which, so the reason names the turn, not the call."""
    return f"cut off ({trajectory.error})" if trajectory.error else "a call of a turn paused for a review"


def _propose_all(run: _Run, steps: list[Step], requests: Executor | None, ahead: ProposingAhead | None = None) -> list[ProposalResult]:
    """The proposer's alternatives at every state in ``steps``, in order; rejections are counted by reason.

    With ``requests`` (or ``ahead``: asked for already), the states are proposed for concurrently. The first state (in
    order) whose proposing raised raises its error, as one after the other would, once the requests already sent have
    ended; the states not yet started are not asked for.
    """
    if ahead is None and (requests is None or len(steps) < 2):
        results = [_proposals_at(run.trajectory, run.proposer, run.settings, step) for step in steps]
    else:
        if ahead is None:
            assert requests is not None
            ahead = _ask(run.trajectory, run.proposer, run.settings, steps, requests)
        try:
            results = [future.result() for future in ahead.futures]
        except Exception:  # the states not started are dropped, and none still asks once this returns
            ahead.drop()
            raise
        except BaseException:  # stopped (Ctrl-C, SIGTERM): the requests in flight are not waited for
            ahead.drop(wait_for_running=False)
            raise
    for proposals in results:
        run.rejected.update(proposals.counts)
    return results


def _proposals_at(trajectory: Trajectory, proposer: Proposer, settings: ReplaySettings, step: Step) -> ProposalResult:
    """The proposer's alternatives at ``step``, seeded per state (safe to call from several threads at once)."""
    return proposer.propose(_decision_point(trajectory, step), seed=derive_seed(settings.seed, trajectory.id, step.index))


def _decision_point(trajectory: Trajectory, step: Step) -> DecisionPoint:
    """The recorded state at ``step``, as the policies see it."""
    expert = step.action.tool_call
    assert expert is not None
    # the tools the model was offered at this step (Step.tools: a middleware's per-call selection, a tool added later),
    # so that no alternative calls a tool it could not call there
    tools = trajectory.step_tools(step)
    return DecisionPoint(trajectory_id=trajectory.id, step_index=step.index, state=step.state, tools=tools, expert=expert)


def _execute_alternative(run: _Run, step: Step, branch: int, candidate: Candidate) -> Rollout:
    """Execute one accepted alternative in the sandbox and keep its real observation as a rollout."""
    call = candidate.call
    assert call is not None
    settings, trajectory_id = run.settings, run.trajectory.id
    t0 = time.perf_counter()
    observation, unrestored = run.execute(call)
    duration_ms = (time.perf_counter() - t0) * 1000
    provenance = getattr(run.sandbox, "provenance", None)
    lineage = provenance() if provenance is not None else None
    return Rollout(
        id=rollout_id(settings.replay_id, trajectory_id, step.index, branch),
        replay_id=settings.replay_id,
        trajectory_id=trajectory_id,
        step_index=step.index,
        branch_index=branch,
        action=Action(kind="tool_call", tool_call=settings.privacy.redact_call(call)),
        proposer=candidate.proposer,
        observation=observation.capped(settings.max_observation_chars),
        is_error=observation.is_error,
        synthetic=lineage is not None,
        synthetic_source=lineage,
        unrestored=sorted({u.placeholder for u in unrestored}),
        # a real sandbox inside an experience sandbox answered, or the recording did: that kind (the observation is real)
        sandbox=run.sandbox.kind if lineage is not None else getattr(run.sandbox, "answered_kind", None) or run.sandbox.kind,
        duration_ms=duration_ms,
    )


# -- expert re-execution: on to the next recorded state -----------------------------------------------


def _reexecute_expert(run: _Run, step: Step, expert: ToolCall) -> dict[str, Any] | None:
    """Execute the expert's own call (moving the world to the next state) and check it observes what was recorded.

    Returns what failed when the sandbox could not execute the call (``Observation.sandbox_failure``: it timed out,
    crashed or ran out of memory): the sandbox is then back at the world before the call, not at the next recorded
    state, and the trajectory's replay stops there (see the module docstring)."""
    replayed, unrestored = run.execute(expert)
    if replayed.sandbox_failure:
        return _expert_failure(step, expert, replayed)
    recorded = step.observation
    privacy = run.settings.privacy
    joined_close = _blocks_joined_close(run.trajectory.schema_version)
    matched = (
        recorded is None
        or _same_observation(recorded, replayed, privacy, blocks_joined_close=joined_close)
        or raised_as_recorded(run.trajectory, step, replayed, privacy.redact_data)  # an exception that ended the run: compared as raised
    )
    if run.environment_unrestored and (run.world_diverged or not matched):
        run.world_diverged = True  # the world built with the environment's placeholders is not the recorded one
        unrestored = unrestored + run.environment_unrestored
    if unrestored:
        _flag_unrestorable(run, step, expert, unrestored, matched=matched)
        return
    if not run.settings.check_fidelity or matched:
        return
    run.mismatch_count += 1
    if len(run.mismatches) < MAX_MISMATCH_DETAILS:
        # Both texts redacted before they are compared (the replayed one already is): a diff redacted afterwards lost
        # its markers to the patterns ('+123456789' read as a phone number), so the entries skip the last pass (counts).
        recorded_text = run.settings.privacy.redact_data(recorded.content)
        mismatch = {
            "step": step.index,
            "tool": expert.name,
            "recorded": recorded_text[:300],
            "replayed": replayed.content[:300],
            # where they part, and a short diff (of both texts in full, not of the 300-character excerpts)
            **describe_mismatch(recorded_text, replayed.content, recorded_is_prefix=bool(recorded.truncated_chars)),
        }
        if run.uncovered_not_executed:  # the likeliest cause: a world tool left out of the sandbox
            cause = run.settings.privacy.redact_data(_uncovered_cause(run))
            mismatch["hint"] = f"{mismatch['hint']} {cause}" if mismatch.get("hint") else cause
        run.mismatches.append(mismatch)
    return None


def _uncovered_cause(run: _Run) -> str:
    """Why an expert step after calls of tools the sandbox does not provide may observe something else than recorded:
    those calls were not executed, so a world tool among them (declared outside the world by mistake) left no effect."""
    calls: dict[str, list[int]] = {}
    for entry in run.uncovered_not_executed:
        calls.setdefault(entry["tool"], []).append(entry["step"])
    named = ", ".join(f"{tool} (step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))})" for tool, steps in calls.items())
    hint = getattr(run.sandbox, "refusal_hint", None)  # why a sandbox refuses a tool it has (optional, see its protocol)
    said = [text for tool in calls if hint is not None and (text := hint(tool))]
    it, its, one = ("them", "their", "one of them") if len(run.uncovered_not_executed) > 1 else ("it", "its", "it")
    return (
        f"The expert called {named} before this step, which sandbox {run.sandbox.kind!r} does not provide: replay did not "
        f"execute {it} and took {its} recorded result, as the sandbox declares {it} to act only outside the world "
        f"(outside_world_tools, acts_outside_world). If {one} changes the world the sandbox rebuilds, this is its effect "
        f"missing: add it to the sandbox's tools instead.{''.join(f' {text}' for text in said)}"
    )


def _expert_failure(step: Step, expert: ToolCall, replayed: Observation) -> dict[str, Any]:
    """Which expert call the sandbox failed on, how, and what it said (the details of the trajectory's ``failed`` record).
    A long text keeps its end, where a sandbox says which limit to raise."""
    text = replayed.content
    said = text if len(text) <= 300 else f"{text[:150]}…{text[-149:]}"
    return {"step": step.index, "tool": expert.name, "failure": replayed.sandbox_failure, "observation": said}


def _expert_failure_reason(failed: dict[str, Any]) -> str:
    """The ``failed`` record's reason for an expert call the sandbox failed on (:func:`_expert_failure`). The limit to
    raise is the one the failing sandbox names in what it said: the subprocess isolation's (``--tool-timeout``,
    ``--memory-mb``), an MCP sandbox's own ``timeout_s``, a plug-in sandbox's own; the runner cannot tell which of them
    ran out, so it names none itself."""
    return (
        f"the sandbox could not execute the expert's call at step {failed['step']} ({failed['tool']}): {failed['failure']}: "
        f"{failed['observation'].rstrip('.')}. Its world is then not the recorded one past that call, so the replay stopped "
        "there and kept none of its branches; the next run retries it."
    )


def _flag_unrestorable(run: _Run, step: Step, expert: ToolCall, unrestored: list[Unrestored], *, matched: bool) -> None:
    """Count and list an expert step the sandbox received placeholders for (its observation is not checked)."""
    run.unrestorable_count += 1
    if len(run.unrestorable) < MAX_UNRESTORABLE_DETAILS:
        placeholders = {u.placeholder for u in unrestored}
        entry: dict[str, Any] = {
            "step": step.index,
            "tool": expert.name,
            "arguments": keys_holding(expert.arguments, unrestored),
            "placeholders": sorted(placeholders),
            "reasons": sorted({u.reason for u in unrestored}),
            "observation_matched": matched,
        }
        if run.world_diverged:  # the world this step ran in was built with them, and differs from the recorded one
            entry["environment"] = keys_holding(world_environment(run.trajectory.environment), run.environment_unrestored)
        run.unrestorable.append(entry)
