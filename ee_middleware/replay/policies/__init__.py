"""Policies that propose K alternative tool calls at a recorded state, and the proposer around them.

Names are loaded lazily: importing this package imports neither torch nor httpx nor jsonschema.

- :class:`MutationPolicy` — schema-driven argument generation and perturbation, no model;
- :class:`ChatPolicy` — samples from any :class:`~ee_middleware.models.ChatClient`;
- :class:`TransformersPolicy` — one over a local model (``train`` extra);
- :class:`OpenAIPolicy` — one over an OpenAI-compatible server such as vLLM;
- :func:`build_policy` — any of these (or a user policy) from a spec string;
- :class:`Proposer` — validates, deduplicates, counts rejections and refills up to K.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports

if TYPE_CHECKING:
    from ee_middleware.replay.policies.chat import ChatPolicy, OpenAIPolicy, TransformersPolicy
    from ee_middleware.replay.policies.mutate import MutationPolicy
    from ee_middleware.replay.policies.proposer import ProposalResult, Proposer, Rejection
    from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Policy, Proposals
    from ee_middleware.replay.policies.registry import build_policy
    from ee_middleware.replay.policies.schema import ToolSchemas, normalize_schema

_LAZY = {
    "Candidate": ".protocol",
    "DecisionPoint": ".protocol",
    "Policy": ".protocol",
    "Proposals": ".protocol",
    "ToolSchemas": ".schema",
    "normalize_schema": ".schema",
    "MutationPolicy": ".mutate",
    "Proposer": ".proposer",
    "ProposalResult": ".proposer",
    "Rejection": ".proposer",
    "ChatPolicy": ".chat",
    "TransformersPolicy": ".chat",
    "OpenAIPolicy": ".chat",
    "build_policy": ".registry",
}

__all__ = [
    "Candidate",
    "ChatPolicy",
    "DecisionPoint",
    "MutationPolicy",
    "OpenAIPolicy",
    "Policy",
    "ProposalResult",
    "Proposals",
    "Proposer",
    "Rejection",
    "ToolSchemas",
    "TransformersPolicy",
    "build_policy",
    "normalize_schema",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
