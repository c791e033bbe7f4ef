"""The proposer: turns what a policy proposes into exactly K valid, distinct alternatives.

Around any :class:`~ee_middleware.replay.policies.protocol.Policy` it parses nothing itself (the
policy already did) but checks every candidate, first come first served: unreadable output, an
unknown tool, arguments that fail the schema, a duplicate of an earlier candidate, or the expert's own
action are rejected and counted by reason. When fewer than K remain, the mutation policy tops the
list up (``refill``), and the refilled candidates say so in their proposer metadata.

An exception the policy raises at a state is counted (``policy_error``) and the state refilled, as is an answer outside
the policy protocol (:func:`answer_problem`: not ``Proposals`` of ``Candidate`` s whose call is a ``ToolCall`` and whose
proposer names the policy), whose
message names the policy, what it returned and what the protocol requires; the proposer keeps the
first few messages per trajectory, which :meth:`Proposer.settle` puts in its replay record
(``details["policy_error_examples"]``). A trajectory at every state of which the policy raised has only the refill's
alternatives: it fails (the next run replays it again, once the policy works) rather than being done. So does a
trajectory at none of whose states the policy's model gave a usable proposal (a server that answers with no choices,
with prose only, with arguments that are not JSON): its record's reason names why, by how many proposals.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ee_middleware.errors import ConfigError, MissingExtraError, ModelError, PolicyError
from ee_middleware.models.parsing import canonical_call
from ee_middleware.records import ProposerInfo, ToolCall, tool_schema_name
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Policy, Proposals
from ee_middleware.replay.policies.registry import settings_problem, value_kind
from ee_middleware.replay.policies.schema import tool_schemas_for

if TYPE_CHECKING:
    from ee_middleware.replay.runner import ReplayOutcome

MAX_POLICY_ERROR_EXAMPLES = 3
"""How many of a trajectory's policy errors its replay record keeps (``details["policy_error_examples"]``)."""

RejectReason = Literal["unparsable", "unknown_tool", "invalid_arguments", "duplicate", "expert_action", "policy_error"]
REJECT_REASONS: tuple[str, ...] = ("unparsable", "unknown_tool", "invalid_arguments", "duplicate", "expert_action", "policy_error")


@dataclass(frozen=True)
class Rejection:
    """A candidate (or a whole ``propose`` call, for ``policy_error``) that was not kept, and why."""

    reason: RejectReason
    detail: str
    candidate: Candidate | None = None
    refill: bool = False
    """True when the rejected candidate came from the refill policy rather than the policy itself."""


@dataclass
class ProposalResult:
    """The alternatives kept at one decision point, and everything that was dropped."""

    accepted: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    refilled: int = 0
    """How many of ``accepted`` came from the refill policy."""

    @property
    def counts(self) -> dict[str, int]:
        """Rejections of the policy's own proposals, by reason (refill rejections not included)."""
        return dict(Counter(r.reason for r in self.rejected if not r.refill))

    @property
    def refill_counts(self) -> dict[str, int]:
        """Rejections of refill candidates, by reason (usually duplicates of accepted ones)."""
        return dict(Counter(r.reason for r in self.rejected if r.refill))


@dataclass
class PolicyErrors:
    """The states of one trajectory at which the policy raised, and the first few messages."""

    states: set[int] = field(default_factory=set)
    examples: list[dict[str, Any]] = field(default_factory=list)
    """``{"step": STEP_INDEX, "error": "POLICY: TYPE: MESSAGE"}``, the first :data:`MAX_POLICY_ERROR_EXAMPLES`."""


@dataclass
class UnusableProposals:
    """The states of one trajectory, and why the policy's own proposals there were not usable: :attr:`usable` holds the
    states at which it gave at least one (a well-formed call of an offered tool, kept or not), :attr:`reasons` counts the
    others by reason."""

    states: set[int] = field(default_factory=set)
    usable: set[int] = field(default_factory=set)
    reasons: Counter[str] = field(default_factory=Counter)


UNUSABLE_REASONS: frozenset[str] = frozenset({"unparsable", "unknown_tool", "invalid_arguments"})
"""Rejections that say the policy's proposal was not usable (``duplicate`` and ``expert_action`` ones were calls)."""

NO_TOOL_CALL_ADVICE = (
    "answered prose, no tool call: serve the model with a tool-call parser (vLLM: --enable-auto-tool-choice "
    "--tool-call-parser NAME), or use a model that calls tools"
)


def unusable_reason(rejection: Rejection) -> str:
    """Why ``rejection`` (of the policy's own proposal) was not usable, for a message that counts them by reason."""
    from ee_middleware.messages import one_line

    if rejection.reason == "unparsable" and rejection.detail.startswith("no tool call found"):
        return NO_TOOL_CALL_ADVICE
    detail = one_line(rejection.detail, 200)
    return detail if rejection.reason == "unparsable" else f"{rejection.reason}: {detail}"


PROPOSALS_REQUIRED = (
    "a policy's propose(point, k, *, seed) must return Proposals of Candidates whose call is a ToolCall (or None, with "
    "problem saying why) and whose proposer is a ProposerInfo naming the policy (policy=self.name), of JSON-able settings"
)
"""What the policy protocol requires of an answer, for the message of one that is not (see :func:`answer_problem`)."""

_ANSWERED = "propose() returned"
"""How every :func:`answer_problem` begins (:meth:`Proposer.settle` tells such a policy from one that raised)."""


def answer_problem(proposals: Any, policy_name: str | None = None) -> str | None:
    """What is wrong with ``proposals`` (what a policy's ``propose`` returned) as the protocol sees it, in words: not
    :class:`~ee_middleware.replay.policies.protocol.Proposals`, a candidate that is no
    :class:`~ee_middleware.replay.policies.protocol.Candidate`, a call that is no :class:`~ee_middleware.records.ToolCall`,
    a proposer that is no :class:`~ee_middleware.records.ProposerInfo`, whose settings are not JSON-able (replay
    records keep them) or that names another policy than ``policy_name`` (the policy's own name, where given: rollout
    records say by it who proposed each alternative); ``None`` when nothing is. The proposer counts such an answer as
    ``policy_error``, as it counts a policy that raised."""
    if not isinstance(proposals, Proposals):
        return f"{_ANSWERED} {value_kind(proposals)}, not Proposals"
    candidates = proposals.candidates
    if not isinstance(candidates, list | tuple):
        return f"{_ANSWERED} Proposals whose candidates are {value_kind(candidates)}, not a list of Candidates"
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, Candidate):
            return f"{_ANSWERED} Proposals whose candidate {index} is {value_kind(candidate)}, not a Candidate"
        if candidate.call is not None and not isinstance(candidate.call, ToolCall):
            return f"{_ANSWERED} a Candidate (candidate {index}) whose call is {value_kind(candidate.call)}, not a ToolCall"
        info = candidate.proposer
        if not isinstance(info, ProposerInfo):
            return f"{_ANSWERED} a Candidate (candidate {index}) whose proposer is {value_kind(info)}, not a ProposerInfo"
        if policy_name is not None and info.policy != policy_name:
            return (
                f"{_ANSWERED} a Candidate (candidate {index}) whose proposer names the policy {info.policy!r}, and the policy "
                f"is {policy_name!r}: rollout records say by proposer.policy who proposed each alternative (a refill says "
                "it is one). Build each candidate's ProposerInfo with policy=self.name; a policy that hands on another "
                "policy's candidates names itself and may keep the other's name in proposer.settings"
            )
        if info.settings:
            problem = settings_problem(info.settings)
            if problem is not None:
                return f"{_ANSWERED} a Candidate (candidate {index}) whose proposer.settings are not JSON-able: {problem}"
    return None


_DEFAULT_REFILL: Any = object()


def _default_refill(policy: Policy) -> MutationPolicy:
    """The mutation policy that tops up K: one with ``policy``'s settings where ``policy`` is a mutation policy (under
    the refill's own name, so its draws are the refill's), else one with the defaults."""
    if isinstance(policy, MutationPolicy):
        return MutationPolicy(
            same_tool_share=policy.same_tool_share,
            optional_arg_rate=policy.optional_arg_rate,
            invalid_share=policy.invalid_share,
            patience=policy.patience,
        )
    return MutationPolicy()


class Proposer:
    """Asks ``policy`` for alternatives and keeps exactly ``k`` valid, distinct ones where it can.

    ``refill`` (the :class:`MutationPolicy` by default, with the policy's own settings where the policy is one: a user's
    ``invalid_share=0`` holds for the alternatives it tops up too; ``None`` for no refill) tops up the list
    when the policy's own candidates fall short, in up to ``max_refill_rounds`` rounds. Accepted calls
    get deterministic ids ``alt-{step_index}-{branch}``. An exception from ``policy.propose`` is
    counted as ``policy_error`` and the point is refilled, except :class:`PolicyError` and
    :class:`ModelError` and :class:`MissingExtraError` (the policy cannot work at all), which propagate.
    """

    def __init__(self, policy: Policy, *, k: int, refill: Policy | None = _DEFAULT_REFILL, max_refill_rounds: int = 3) -> None:
        if k < 0:
            raise ConfigError(f"k must be 0 or more, got {k}")
        self.policy = policy
        self.k = k
        self.refill: Policy | None = _default_refill(policy) if refill is _DEFAULT_REFILL else refill
        self.max_refill_rounds = max_refill_rounds
        self._policy_errors: dict[str, PolicyErrors] = {}
        self._unusable: dict[str, UnusableProposals] = {}
        self._lock = threading.Lock()  # states are proposed for from several threads at once (requests in flight)

    def describe(self) -> dict[str, Any]:
        """The policy's and the refill's settings, and K."""
        return {"k": self.k, "policy": self.policy.describe(), "refill": self.refill.describe() if self.refill else None}

    def close(self) -> None:
        """Close the policy and the refill policy."""
        self.policy.close()
        if self.refill is not None:
            self.refill.close()

    def propose(self, point: DecisionPoint, seed: int) -> ProposalResult:
        """Up to ``k`` accepted alternatives at ``point`` (exactly ``k`` unless even the refill runs out)."""
        state = _Selection(point, self.k)
        if self.k == 0:
            return state.result
        state.offer_from(self.policy, point, self.k, seed, refill=False)
        raised = next((r.detail for r in state.result.rejected if r.reason == "policy_error"), None)
        if raised is not None:
            self._note_policy_error(point, raised)
        else:
            self._note_usable(point, state.result)
        if self.refill is None:
            return state.result
        self._refill_rounds(state, point, self.k, seed, first_round=0)
        return state.result

    def _refill_rounds(self, state: _Selection, point: DecisionPoint, target: int, seed: int, *, first_round: int) -> None:
        """Up to ``max_refill_rounds`` rounds of the refill policy until ``state`` holds ``target`` accepted alternatives;
        round ``i`` (counted from ``first_round``) is seeded ``seed + 7919 * (i + 1)``."""
        assert self.refill is not None
        for round_index in range(first_round, first_round + self.max_refill_rounds):
            missing = target - len(state.result.accepted)
            if missing <= 0:
                break
            # Asking for missing + already-accepted distinct calls guarantees `missing` new ones
            # whenever the schemas allow that many.
            want = missing + len(state.accepted_keys)
            state.offer_from(self.refill, point, want, seed + 7919 * (round_index + 1), refill=True, refill_for=self.policy.name)

    def top_up(self, point: DecisionPoint, result: ProposalResult, covers: Callable[[str], bool], *, seed: int) -> list[Candidate]:
        """The refill's alternatives in place of those of ``result.accepted`` whose tool the sandbox does not provide
        (``covers`` false: replay refuses and counts them, never executes them), drawn from the tools it provides alone,
        so that ``k`` are executed where the schemas allow; distinct from every accepted one and from the expert's call,
        numbered after ``result.accepted`` (whose candidates keep their branches). Replay asks only at a state where it
        refused one; none without a refill policy."""
        kept = [c for c in result.accepted if c.call is not None and covers(c.call.name)]
        missing = self.k - len(kept)
        if self.refill is None or missing <= 0:
            return []
        tools = [schema for schema in point.tools if (name := tool_schema_name(schema)) is not None and covers(name)]
        covered = replace(point, tools=tools)
        state = _Selection(covered, missing, first_branch=len(result.accepted))
        for candidate in kept:
            assert candidate.call is not None
            state.accepted_keys.add(state.schemas.call_key(candidate.call.name, candidate.call.arguments))
        if tools:  # rounds seeded after propose's own, so none repeats one of its refill rounds' draws
            self._refill_rounds(state, covered, missing, seed, first_round=self.max_refill_rounds)
        return state.result.accepted

    def _note_policy_error(self, point: DecisionPoint, detail: str) -> None:
        with self._lock:
            errors = self._policy_errors.setdefault(point.trajectory_id, PolicyErrors())
            if point.step_index not in errors.states and len(errors.examples) < MAX_POLICY_ERROR_EXAMPLES:
                errors.examples.append({"step": point.step_index, "error": detail})
            errors.states.add(point.step_index)

    def _note_usable(self, point: DecisionPoint, result: ProposalResult) -> None:
        """Whether the policy's own proposals at ``point`` (nothing refilled yet) held a usable one, and why not."""
        own = [r for r in result.rejected if not r.refill]
        # a state the policy proposed nothing at is no unusable answer: a policy may have nothing to propose there (the
        # mutation policy with no argument to change); a server's empty answer is a rejected stand-in (NO_CHOICES)
        usable = bool(result.accepted) or not own or any(r.reason not in UNUSABLE_REASONS for r in own)
        with self._lock:
            noted = self._unusable.setdefault(point.trajectory_id, UnusableProposals())
            noted.states.add(point.step_index)
            if usable:
                noted.usable.add(point.step_index)
            else:
                noted.reasons.update(unusable_reason(r) for r in own)

    def unusable_proposals(self, trajectory_id: str) -> UnusableProposals | None:
        """Which of ``trajectory_id``'s states the policy gave usable proposals at, and why not at the others, forgotten
        here (``None``: it was asked at none, or raised at every one)."""
        with self._lock:
            return self._unusable.pop(trajectory_id, None)

    def policy_errors(self, trajectory_id: str) -> PolicyErrors | None:
        """The policy's errors at ``trajectory_id``'s states, forgotten here (``None``: it raised at none)."""
        with self._lock:
            return self._policy_errors.pop(trajectory_id, None)

    def settle(self, outcome: ReplayOutcome, redact: Callable[[Any], Any] = lambda value: value) -> ReplayOutcome:
        """``outcome`` with what the policy raised while proposing for its trajectory: the first messages in its record's
        ``details["policy_error_examples"]`` (``redact``: the store's redaction, as the record's other texts get), and,
        where the policy raised at every state, or its model gave no usable proposal at any (``details["unusable_proposals"]``:
        how many by reason), ``failed`` without rollouts: only the refill's alternatives were replayed, so the trajectory is
        not done for this policy, and the next run replays it again."""
        from ee_middleware.errors import hide_credentials
        from ee_middleware.messages import one_line, unusable_reasons
        from ee_middleware.replay.policies.registry import unusable_proposals_fix

        errors = self.policy_errors(outcome.record.trajectory_id)
        unusable = self.unusable_proposals(outcome.record.trajectory_id)
        record = outcome.record
        if (errors is None and unusable is None) or record.status == "skipped":
            return outcome
        details = dict(record.details)
        examples: list[dict[str, Any]] = []
        if errors is not None:
            examples = redact([{**example, "error": hide_credentials(one_line(example["error"], 500))} for example in errors.examples])
            details["policy_error_examples"] = examples
        raised = errors.states if errors is not None else set()
        asked = raised | (unusable.states if unusable is not None else set())
        none_usable = unusable is None or not unusable.usable
        if record.status != "done" or record.states == 0 or len(asked) < record.states or not none_usable:
            return (
                outcome
                if errors is None
                else type(outcome)(record.model_copy(update={"details": details}), outcome.rollouts, outcome.stored)
            )
        for replayed in ("synthetic_branches", "unrestored_branches", "sandbox_failures"):  # of the rollouts dropped
            details.pop(replayed, None)
        if unusable is None or not unusable.states:
            first = examples[0]["error"] if examples else ""
            failed = "answered outside the policy protocol" if f": {_ANSWERED} " in first else "raised"
            reason = (
                f"the policy {record.policy!r} {failed} at every state ({record.states}), so none of its alternatives was replayed "
                f"(the first: {examples[0]['error'] if examples else '?'}); fix the policy, then run the same command again"
            )
        else:
            reasons = Counter(unusable.reasons)
            if raised:
                reasons[f"raised: {examples[0]['error'] if examples else '?'}"] += len(raised)
            details["unusable_proposals"] = {str(redact(hide_credentials(why))): count for why, count in reasons.items()}
            reason = (
                f"the policy {record.policy!r} gave no usable proposal at any of the {record.states} state(s) "
                f"({unusable_reasons(details['unusable_proposals'])}), so none of its alternatives was replayed (only the "
                f"refill's would have been); {unusable_proposals_fix(record.policy)}, then run the same command again"
            )
        failed = record.model_copy(update={"status": "failed", "reason": redact(reason), "branches": 0, "errors": 0, "details": details})
        return type(outcome)(failed, [], outcome.stored)


class _Selection:
    """The running selection at one decision point."""

    def __init__(self, point: DecisionPoint, k: int, *, first_branch: int = 0) -> None:
        self.point = point
        self.k = k
        self.first_branch = first_branch
        """The branch of the first candidate accepted (:meth:`Proposer.top_up`'s follow those proposed before)."""
        self.schemas = tool_schemas_for(point.tools)
        # Calls are compared as the tool receives them (ToolSchemas.call_key): an argument at its default is the argument
        # left out, 30.0 is 30; so a model's get_order(order_id="O-1", fields=None) is the expert's get_order(order_id="O-1").
        self.expert_key = self.schemas.call_key(point.expert.name, point.expert.arguments)
        self.accepted_keys: set[str] = set()
        self.result = ProposalResult()

    def offer_from(
        self, policy: Policy, point: DecisionPoint, want: int, seed: int, *, refill: bool, refill_for: str | None = None
    ) -> None:
        try:
            proposals = policy.propose(point, want, seed=seed)
        except (PolicyError, ModelError, MissingExtraError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad state must not end the replay; the error is counted
            self.result.rejected.append(Rejection("policy_error", f"{policy.name}: {type(exc).__name__}: {exc}", refill=refill))
            return
        problem = answer_problem(proposals, policy.name)
        if problem is not None:  # counted as a policy that raised is: the whole answer, the state refilled
            self.result.rejected.append(Rejection("policy_error", f"{policy.name}: {problem}; {PROPOSALS_REQUIRED}", refill=refill))
            return
        for candidate in proposals.candidates:
            if len(self.result.accepted) >= self.k:
                return
            if refill_for is not None:
                settings = {**candidate.proposer.settings, "refill_for": refill_for}
                candidate = Candidate(
                    candidate.call,
                    candidate.proposer.model_copy(update={"settings": settings}),
                    candidate.raw,
                    candidate.problem,
                    candidate.checked,
                )
            self._offer(candidate, refill=refill)

    def _offer(self, candidate: Candidate, *, refill: bool) -> None:
        key, rejection = self._check(candidate)
        if rejection is not None:
            self.result.rejected.append(Rejection(rejection[0], rejection[1], candidate, refill=refill))
            return
        assert candidate.call is not None and key is not None
        self.accepted_keys.add(key)
        branch = self.first_branch + len(self.result.accepted)
        call = candidate.call.model_copy(update={"id": f"alt-{self.point.step_index}-{branch}"})
        self.result.accepted.append(Candidate(call, candidate.proposer, candidate.raw, candidate.problem))
        self.result.refilled += int(refill)

    def _check(self, candidate: Candidate) -> tuple[str | None, tuple[RejectReason, str] | None]:
        """The candidate's :meth:`~ee_middleware.replay.policies.schema.ToolSchemas.call_key` (when it has a call) and why
        it is rejected (``None``: accepted)."""
        call = candidate.call
        if call is None:
            return None, ("unparsable", candidate.problem or "the policy returned no tool call")
        checked = candidate.checked
        if checked is not None and checked[0] is self.schemas:
            key = checked[1]  # the policy validated it against these very schemas (the mutation policy does)
        else:
            if call.name not in self.schemas:
                return None, ("unknown_tool", self.schemas.validate(call) or call.name)
            problem = self.schemas.validate(call)
            if problem is not None:
                return None, ("invalid_arguments", problem)
            key = canonical_call(call.name, call.arguments)
        key = self.schemas.call_key(call.name, call.arguments, key)
        if key == self.expert_key:
            return key, ("expert_action", f"{call.name} with the expert's own arguments (as the tool receives them: {_AS_RECEIVED})")
        if key in self.accepted_keys:
            return key, (
                "duplicate",
                f"{call.name} was already proposed with the same arguments (as the tool receives them: {_AS_RECEIVED})",
            )
        return key, None


_AS_RECEIVED = "an argument at its schema's default is the argument left out, and 30.0 is 30"
