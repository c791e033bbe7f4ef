"""A model client the eval tests write as one turn (``tests.evals.test_run_workers``, ``tests.evals.test_traces_redaction``
name theirs by spec, as a user names their own :class:`~ee_middleware.models.ChatClient`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ee_middleware.evals.clients import NoopClient
from ee_middleware.models.protocol import Choice, Sampling


class TurnClient(NoopClient):
    """A real :class:`~ee_middleware.models.ChatClient` (noop's, for ``describe`` and ``close``) whose answer is
    :meth:`turn`'s message: a test's client writes what it does at a turn, not the protocol's ``complete`` again."""

    def turn(self, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The assistant message answering ``messages``, or None for noop's text answer (the default)."""
        return None

    def complete(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        n: int = 1,
        sampling: Sampling = Sampling(),
    ) -> list[Choice]:
        message = self.turn(list(messages))
        if message is None:
            return super().complete(messages, tools=tools, n=n, sampling=sampling)
        return [Choice.from_message(message, finish_reason="tool_calls" if message.get("tool_calls") else "stop")]
