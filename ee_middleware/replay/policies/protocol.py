"""The policy protocol: who proposes the K alternative actions at a recorded state.

A policy returns candidate tool calls; it does not have to validate them. The
:class:`~ee_middleware.replay.policies.proposer.Proposer` around it parses, validates against the
offered tool schemas, drops duplicates and the expert's own action, counts every rejection, and
tops the list up to K with the schema-driven mutation policy when a model gives too few.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ee_middleware.records import Message, ProposerInfo, ToolCall, ToolSchema


@dataclass(frozen=True)
class DecisionPoint:
    """A recorded state at which alternatives are proposed: what the model saw, and what the expert did."""

    trajectory_id: str
    step_index: int
    state: list[Message]
    """The messages the model saw when it decided (OpenAI chat shapes)."""
    tools: list[ToolSchema]
    """The tool schemas offered at that point (OpenAI ``{"type": "function", ...}`` form)."""
    expert: ToolCall
    """The expert's tool call at this state; never proposed as an alternative."""


@dataclass(frozen=True)
class Candidate:
    """One proposed alternative: a tool call, or the raw text that could not be read as one."""

    call: ToolCall | None
    proposer: ProposerInfo
    raw: str | None = None
    """What the model produced (kept for rejects and debugging)."""
    problem: str | None = None
    """Why ``raw`` could not be parsed into a tool call (``call`` is then ``None``)."""
    checked: tuple[Any, str] | None = field(default=None, compare=False, repr=False)
    """Set by a policy that validated ``call`` itself: the :class:`~ee_middleware.replay.policies.schema.ToolSchemas`
    it fits (the object :func:`~ee_middleware.replay.policies.schema.tool_schemas_for` gave for the point's tools) and
    its :func:`~ee_middleware.models.parsing.canonical_call`. The proposer then does not validate it again."""


@dataclass
class Proposals:
    """What a policy proposed at one decision point."""

    candidates: list[Candidate] = field(default_factory=list)

    def extend(self, other: Proposals) -> None:
        self.candidates.extend(other.candidates)


@runtime_checkable
class Policy(Protocol):
    """Proposes alternative tool calls at a recorded state.

    ``name`` appears in rollout records as ``proposer.policy``. ``propose`` returns up to ``k`` candidates: calls of
    tools offered at the state, with valid arguments, none the expert's own action and no two the same; and it must be
    deterministic for a given ``seed`` where the backend allows it. The proposer keeps the first ``k`` usable, distinct
    candidates and drops the rest (more than ``k``, invalid, repeated), topping the list up with the mutation policy, so a
    policy that cannot promise usable candidates (one asking a model) still works; the conformance kit
    (:func:`~ee_middleware.testing.policy_conformance.check_policy`) holds a policy to the promise unless it is given
    ``require_usable=False``.
    """

    name: str

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals: ...

    def describe(self) -> dict[str, Any]:
        """The settings that shape proposals (model, temperature, ...), for the replay id."""
        ...

    def close(self) -> None: ...
