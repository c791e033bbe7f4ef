"""Model clients for evaluation: any :mod:`ee_middleware.models` spec, plus ``oracle`` and ``noop``.

* ``oracle`` replays each task's ground truth (``EvalTask.reference``) through the same agent loop
  a real model goes through, so a harness that does not score it 100% is wrong;
* ``noop`` answers every turn with text and never calls a tool, so it must score 0 wherever the
  task requires a call;
* everything else is a model spec (``openai:BASE_URL#MODEL``, ``local:DIR[@ADAPTER]``,
  ``package.module:factory``) built by :func:`ee_middleware.models.build_chat_client`.

A client that needs to know the task (the oracle) has ``for_task(task)``, which returns a client
bound to that task; :func:`bind` calls it when present.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ee_middleware.evals.tasks import EvalTask, Message
from ee_middleware.models.protocol import ChatClient, Choice, Sampling

ORACLE_DONE = "Done."
NOOP_ANSWER = "I cannot help with that."
BUILTIN_CLIENTS = ("oracle", "noop")


class OracleClient:
    """Replays a task's reference answers, one per model step: the harness's 100% check.

    Unbound (``oracle``) it only knows how to bind; :meth:`for_task` gives the replaying client. The
    turn is the last of the task's scripted turns whose messages the conversation holds (a turn may
    itself hold a chat history with assistant messages), else the number of user turns seen (a
    simulated user); the step is the number of assistant messages since; past the reference of a
    turn it answers ``Done.``.
    """

    model = "oracle"

    def __init__(self, reference: list[list[Message]] | None = None, turns: list[list[Message]] | None = None) -> None:
        self._reference = reference
        self._turns = turns or []

    def for_task(self, task: EvalTask) -> OracleClient:
        return OracleClient(task.reference, task.turns)

    def describe(self) -> dict[str, Any]:
        return {"model": "oracle"}

    def close(self) -> None:
        pass

    def complete(
        self, messages: Sequence[Message], *, tools: Sequence[dict[str, Any]] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        if self._reference is None:
            raise RuntimeError("the oracle client answers only for a task: bind it with for_task(task) (the harness does)")
        turn, step = scripted_position(messages, self._turns) or position(messages)
        steps = self._reference[turn] if 0 <= turn < len(self._reference) else []
        message = copy.deepcopy(steps[step]) if step < len(steps) else {"role": "assistant", "content": ORACLE_DONE}
        return [Choice.from_message(message, finish_reason="tool_calls" if message.get("tool_calls") else "stop")] * max(1, n)


class NoopClient:
    """Answers every turn with text and never calls a tool."""

    model = "noop"

    def describe(self) -> dict[str, Any]:
        return {"model": "noop"}

    def close(self) -> None:
        pass

    def complete(
        self, messages: Sequence[Message], *, tools: Sequence[dict[str, Any]] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        return [Choice.from_message({"role": "assistant", "content": NOOP_ANSWER}, finish_reason="stop")] * max(1, n)


def position(messages: Sequence[Message]) -> tuple[int, int]:
    """``(turn, step)``: user turns seen minus one, and assistant messages since the last user message."""
    turn, step, in_user = -1, 0, False
    for message in messages:
        role = message.get("role")
        if role == "user":
            if not in_user:
                turn, step = turn + 1, 0
            in_user = True
        elif role == "assistant":
            step += 1
            in_user = False
        elif role == "tool":
            in_user = False
    return max(turn, 0), step


def scripted_position(messages: Sequence[Message], turns: Sequence[Sequence[Message]]) -> tuple[int, int] | None:
    """``(turn, step)`` with the turns the task scripted: the last turn whose messages appear whole, in order, and the
    assistant messages after them; None when no turn does (the user was simulated)."""
    turn, step, index, next_turn = -1, 0, 0, 0
    while index < len(messages):
        expected = turns[next_turn] if next_turn < len(turns) else None
        if expected and list(messages[index : index + len(expected)]) == list(expected):
            turn, step, index, next_turn = next_turn, 0, index + len(expected), next_turn + 1
            continue
        step += messages[index].get("role") == "assistant"
        index += 1
    return (turn, step) if turn >= 0 else None


def build_eval_client(spec: str, **options: Any) -> ChatClient:
    """``oracle``, ``noop``, or any model spec (``options`` go to the model client: ``timeout_s``, ``retries``...)."""
    if spec == "oracle":
        return OracleClient()
    if spec == "noop":
        return NoopClient()
    from ee_middleware.models.spec import build_chat_client

    return build_chat_client(spec, **options)


def bind(client: ChatClient, task: EvalTask) -> ChatClient:
    """The client to use for ``task`` (a task-aware client binds itself; others are used as they are)."""
    for_task = getattr(client, "for_task", None)
    return for_task(task) if callable(for_task) else client
