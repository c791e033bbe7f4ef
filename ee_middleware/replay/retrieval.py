"""The experience replay buffer: real transitions from the store, searchable by (tool, arguments, state).

DreamGym's experience model predicts the next observation of a tool call with the top-k most similar
*real* transitions as in-context examples. A real transition is an expert step of a stored
trajectory (its recorded observation) or a non-synthetic rollout (the sandbox's real observation);
experience-model output is never indexed, so the model is never grounded on its own guesses.

Search is lexical BM25 (Okapi, k1=1.5, b=0.75) over the tool name, the arguments and the end of the
state, implemented here on an inverted index so that it needs no extra dependency and grows
incrementally: :meth:`TransitionIndex.add` indexes new transitions without rebuilding, and
:meth:`TransitionIndex.refresh` adds what the store gained since the last call.

Exclusions are part of every query: the ids of the transition being predicted and whole held-out
trajectories (``exclude_trajectories``), so fidelity measured on a held-out set is never helped by
retrieving its own answers.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.records import Rollout, Trajectory

DEFAULT_TOP_K = 3
_TOKEN = re.compile(r"[A-Za-z0-9_]+")
_STATE_CHARS = 600
"""How much of the end of the state (the last messages' text) goes into a transition's search text."""


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; ``camelCase`` and ``snake_case`` names are also split into their parts."""
    tokens: list[str] = []
    for word in _TOKEN.findall(text):
        low = word.lower()
        tokens.append(low)
        parts = [p.lower() for p in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", word.replace("_", " "))]
        if len(parts) > 1:
            tokens.extend(parts)
    return tokens


def state_text(messages: Sequence[dict[str, Any]], max_chars: int = _STATE_CHARS) -> str:
    """The text of the last messages of a state, at most ``max_chars`` characters (the end is kept)."""
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            parts.append(f"{message.get('role', '')}: {content}")
    text = "\n".join(parts)
    return text[-max_chars:]


@dataclass(frozen=True)
class Transition:
    """One real (state, action) -> observation, with where it came from."""

    id: str
    """``step:TRAJECTORY:INDEX`` for an expert step, ``rollout:ID`` for a real rollout."""
    trajectory_id: str
    step_index: int
    task: str
    state: str
    """The end of the state's text (see :func:`state_text`)."""
    tool: str
    arguments: dict[str, Any]
    observation: str
    is_error: bool
    reward: float | None = None
    """The trajectory's outcome (1.0 completed, 0.0 error) on its last tool step; ``None`` elsewhere."""

    @property
    def search_text(self) -> str:
        return f"{self.tool} {json.dumps(self.arguments, ensure_ascii=False, sort_keys=True)} {self.state}"

    def as_example(self, max_chars: int = 400) -> dict[str, Any]:
        """The transition as an in-context example (observation clipped)."""
        return {
            "tool": self.tool,
            "arguments": self.arguments,
            "observation": self.observation[:max_chars],
            "is_error": self.is_error,
        }


def trajectory_transitions(trajectory: Trajectory) -> list[Transition]:
    """The expert tool steps of ``trajectory`` that have a recorded observation."""
    tool_steps = [s for s in trajectory.steps if s.action.tool_call is not None and s.observation is not None]
    out = []
    for position, step in enumerate(tool_steps):
        call, obs = step.action.tool_call, step.observation
        assert call is not None and obs is not None
        last = position == len(tool_steps) - 1
        out.append(
            Transition(
                id=f"step:{trajectory.id}:{step.index}",
                trajectory_id=trajectory.id,
                step_index=step.index,
                task=trajectory.task or "",
                state=state_text(step.state),
                tool=call.name,
                arguments=dict(call.arguments),
                observation=obs.content,
                is_error=obs.is_error,
                reward=(1.0 if trajectory.status == "completed" else 0.0) if last else None,
            )
        )
    return out


def rollout_transition(rollout: Rollout, trajectory: Trajectory) -> Transition | None:
    """A real rollout as a transition (``None`` for a synthetic one or an answer)."""
    call = rollout.action.tool_call
    if rollout.synthetic or call is None:
        return None
    step = next((s for s in trajectory.steps if s.index == rollout.step_index), None)
    return Transition(
        id=f"rollout:{rollout.id}",
        trajectory_id=rollout.trajectory_id,
        step_index=rollout.step_index,
        task=trajectory.task or "",
        state=state_text(step.state) if step is not None else "",
        tool=call.name,
        arguments=dict(call.arguments),
        observation=rollout.observation.content,
        is_error=rollout.is_error,
    )


@dataclass
class TransitionIndex:
    """BM25 over real transitions, grown incrementally (see the module docstring)."""

    k1: float = 1.5
    b: float = 0.75
    transitions: list[Transition] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)
    _postings: dict[str, dict[int, int]] = field(default_factory=dict)
    _lengths: list[int] = field(default_factory=list)
    _seen_rollouts: set[str] = field(default_factory=set)
    _seen_trajectories: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.transitions)

    def add(self, transitions: Iterable[Transition]) -> int:
        """Index ``transitions`` not indexed yet; how many were added."""
        added = 0
        for transition in transitions:
            if transition.id in self._ids:
                continue
            doc = len(self.transitions)
            self.transitions.append(transition)
            self._ids.add(transition.id)
            counts = Counter(tokenize(transition.search_text))
            self._lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                self._postings.setdefault(term, {})[doc] = tf
            added += 1
        return added

    def refresh(self, store: Any) -> int:
        """Add the store's real transitions not indexed yet (rejected trajectories are left out); how many."""
        trajectories: dict[str, Trajectory] = {}
        added = 0
        for trajectory in store.iter_trajectories():
            if trajectory.approval.status == "rejected":
                continue
            trajectories[trajectory.id] = trajectory
            if trajectory.id not in self._seen_trajectories:
                self._seen_trajectories.add(trajectory.id)
                added += self.add(trajectory_transitions(trajectory))
        if trajectories:
            for rollout in store.iter_rollouts(list(trajectories)):
                if rollout.id in self._seen_rollouts:
                    continue
                self._seen_rollouts.add(rollout.id)
                transition = rollout_transition(rollout, trajectories[rollout.trajectory_id])
                if transition is not None:
                    added += self.add([transition])
        return added

    def search(
        self,
        tool: str,
        arguments: dict[str, Any],
        state: str = "",
        *,
        k: int = DEFAULT_TOP_K,
        exclude_ids: Iterable[str] = (),
        exclude_trajectories: Iterable[str] = (),
    ) -> list[Transition]:
        """The ``k`` best transitions for the query, best first; excluded ids and trajectories never come back.

        Transitions of the same tool rank above all others (an example of another tool says little
        about what this one returns); ties keep indexing order.
        """
        if k <= 0 or not self.transitions:
            return []
        skip_ids, skip_trajectories = set(exclude_ids), set(exclude_trajectories)
        query = Counter(tokenize(f"{tool} {json.dumps(arguments, ensure_ascii=False, sort_keys=True)} {state}"))
        n = len(self.transitions)
        avgdl = sum(self._lengths) / n or 1.0
        scores: dict[int, float] = {}
        for term in query:
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
            for doc, tf in postings.items():
                norm = tf + self.k1 * (1 - self.b + self.b * self._lengths[doc] / avgdl)
                scores[doc] = scores.get(doc, 0.0) + idf * tf * (self.k1 + 1) / norm
        ranked = sorted(scores, key=lambda d: (self.transitions[d].tool != tool, -scores[d], d))
        out = []
        for doc in ranked:
            transition = self.transitions[doc]
            if transition.id in skip_ids or transition.trajectory_id in skip_trajectories:
                continue
            out.append(transition)
            if len(out) == k:
                break
        return out
