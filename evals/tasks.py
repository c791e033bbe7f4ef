"""The records every harness shares: a task, a conversation, a scored result.

A harness (BFCL, tau-style, ``traces:``) turns its data into :class:`EvalTask` items, runs each one
through the one agent loop (:mod:`ee_middleware.evals.loop`) and scores the :class:`Conversation`
into a :class:`TaskResult`. Tasks are plain data (picklable, JSON-able) so they cross process
boundaries; environments and clients are built inside the worker that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ee_middleware.records import Observation, ToolCall

Message = dict[str, Any]


@dataclass(frozen=True)
class EvalTask:
    """One task of a suite.

    ``turns`` holds the scripted user messages of each turn; ``tools`` the tool schemas offered at
    each turn (one list per turn). ``reference`` is the ground truth as assistant messages per turn
    (what the ``oracle`` client replays). ``payload`` is what the harness needs to build the world
    and score (plain JSON-able data).
    """

    suite: str
    id: str
    category: str
    turns: list[list[Message]]
    tools: list[list[dict[str, Any]]]
    reference: list[list[Message]]
    payload: dict[str, Any] = field(default_factory=dict)
    system: str | None = None


CUT_OFF = "length"
"""The ``finish_reason`` of an answer that ended because it reached ``max_tokens`` (OpenAI's and vLLM's word)."""


@dataclass
class Step:
    """One model answer inside a turn: the calls it made (parsed) and what it wrote.

    ``finish_reason``: why the model's answer ended, as the client reported it (``stop``, ``tool_calls``, ``length``
    when it reached ``max_tokens``: :data:`CUT_OFF`; None when the client did not say). ``from_text``: the answer had
    no structured ``tool_calls``, so its calls (if any) were read from its text. ``model``: the model the server said
    answered (the response's ``model``; None when the client did not say). ``reasoning``: the reasoning the answer gave
    apart from its text (``reasoning_content``, or ``<think>`` written inline), kept in the conversation as capture
    records it; None when it gave none."""

    calls: list[ToolCall]
    text: str
    problems: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    from_text: bool = False
    model: str | None = None
    reasoning: str | None = None


@dataclass
class Turn:
    """What happened in one user turn; ``stopped`` is ``answer``, ``max_steps`` or ``error``."""

    steps: list[Step] = field(default_factory=list)
    stopped: str = "answer"

    @property
    def final_text(self) -> str:
        return self.steps[-1].text if self.steps else ""


@dataclass
class Conversation:
    """A whole run of the agent loop on one task. ``error`` is set when the run could not go on.

    ``no_answer``: the model server gave no answer at all (unreachable, timed out, failing after its
    retries), so the failure says nothing of the model: a resumed run runs that task again."""

    messages: list[Message] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    no_answer: bool = False

    @property
    def calls(self) -> list[ToolCall]:
        return [call for turn in self.turns for step in turn.steps for call in step.calls]

    @property
    def problems(self) -> list[str]:
        """Why calls the model tried to make could not be read (they were never executed), in order."""
        return [problem for turn in self.turns for step in turn.steps for problem in step.problems]

    @property
    def cut_answers(self) -> int:
        """How many of the model's answers ended because they reached ``max_tokens`` (finish reason :data:`CUT_OFF`)."""
        return sum(1 for turn in self.turns for step in turn.steps if step.finish_reason == CUT_OFF)

    @property
    def text_calls(self) -> int:
        """How many of the model's answers had their calls read from their text, not from structured ``tool_calls``
        (a local text model; a served model whose server has no tool parser)."""
        return sum(1 for turn in self.turns for step in turn.steps if step.from_text and step.calls)

    @property
    def served_models(self) -> list[str]:
        """The models the server said answered, each once, in order (empty when the client said none): one, unless
        the model behind the name changed during the conversation (a promote behind a router's alias)."""
        return list(dict.fromkeys(step.model for turn in self.turns for step in turn.steps if step.model))

    @property
    def replies(self) -> list[str]:
        """Every text the agent wrote, in order."""
        return [step.text for turn in self.turns for step in turn.steps if step.text]


@dataclass(frozen=True)
class TaskResult:
    """The score of one task and trial. ``reason`` says why it failed (None on success)."""

    suite: str
    category: str
    task_id: str
    trial: int
    success: bool
    reason: str | None
    error_type: str | None
    conversation: Conversation
    duration_s: float
    details: dict[str, Any] = field(default_factory=dict)


class Environment(Protocol):
    """What the agent loop executes tool calls against (a sandbox already reset to the task's world)."""

    def execute(self, call: ToolCall) -> Observation: ...
