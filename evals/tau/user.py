"""The LLM user simulator: a chat model plays the customer of a tau-style task (``--user-model``).

It gets the task's instruction as its system prompt and the conversation so far with the roles
swapped (the agent's replies are its "user" turns; tool calls and results are not shown: a customer
does not see them), and writes the customer's next message. It ends the conversation by writing
:data:`STOP` or an empty answer, or after ``max_turns`` messages; an answer cut off at ``max_tokens`` while still
reasoning, or one that holds no message at all (a response without choices), fails the task with the reason, as a model
that cannot answer does. The model is any
:mod:`ee_middleware.models` spec (``openai:BASE_URL#MODEL`` for an OpenAI-compatible endpoint), built with
:func:`~ee_middleware.models.build_chat_client`.
"""

from __future__ import annotations

from typing import Any

from ee_middleware.errors import ModelError
from ee_middleware.evals.loop import gave_no_answer
from ee_middleware.evals.tasks import Conversation, Message
from ee_middleware.models.protocol import ChatClient, Choice, Sampling

STOP = "###STOP###"
OPENING = "Hello! How can I help you today?"
PROMPT = """You are a customer talking to a support assistant. Play this customer:

{instruction}

Rules: write only what the customer says next, in one or two sentences. Give a detail only when it is
asked for or needed. Do not invent details the instruction does not give. When your goal is reached,
or it clearly cannot be reached, write {stop} and nothing else."""


class SimulatedUser:
    """``next_turn(conversation)`` for :func:`~ee_middleware.evals.loop.run_conversation`'s ``user``."""

    def __init__(self, client: ChatClient, instruction: str, *, sampling: Sampling, max_turns: int = 10) -> None:
        self.client = client
        self.instruction = instruction
        self.sampling = sampling
        self.max_turns = max_turns
        self.turns = 0
        self.error: str | None = None
        """Set when the simulator's model failed, gave no message or was cut off while still reasoning (the conversation
        then ends, and the task fails with this reason)."""

    def next_turn(self, conversation: Conversation) -> list[Message] | None:
        if self.turns >= self.max_turns or conversation.error is not None:
            return None
        try:
            choices = self.client.complete(self._messages(conversation), sampling=self.sampling)
        except ModelError as exc:
            conversation.no_answer = gave_no_answer(exc)
            self.error = f"the user simulator's model could not answer: {exc}"
            return None
        why = _why_no_message(choices, self.sampling.max_tokens)
        if why is not None:  # not the customer being done: the task fails with the reason, never scored on half a talk
            # an answer without a message is the server's giving none (NoMessageError); one cut off is the settings'
            conversation.no_answer = not choices or choices[0].problem is not None
            self.error = f"the user simulator's model wrote no message: {why}"
            return None
        text = choices[0].text.strip()
        if not text:
            # The conversation ends, as with STOP; not the simulator's failure: when the agent's reply was empty (its own
            # answer cut), the simulator's prompt ends on the customer's last line, and a server that continues a trailing
            # assistant message (llama-server, LMDeploy) answers nothing.
            return None
        if STOP in text:
            return None
        self.turns += 1
        return [{"role": "user", "content": text}]

    def _messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": PROMPT.format(instruction=self.instruction, stop=STOP)},
            {"role": "user", "content": OPENING},
        ]
        for message in conversation.messages:
            content = message.get("content")
            if not isinstance(content, str) or not content.strip():
                continue
            if message.get("role") == "user":
                messages.append({"role": "assistant", "content": content})
            elif message.get("role") == "assistant":
                messages.append({"role": "user", "content": content})
        return messages


def _why_no_message(choices: list[Choice], max_tokens: int) -> str | None:
    """Why the simulator's answer is no message at all: no answer, none with a message, or cut off at ``max_tokens``
    while still reasoning (the fix: more max_tokens); None for an answer with a message, an empty one included."""
    if not choices:
        return "the server returned no answer"
    choice = choices[0]
    if choice.problem is not None:
        return choice.problem
    cut = choice.cut_while_reasoning(max_tokens)
    # the fix's flag, and what else it moves: the simulator has no max_tokens of its own
    return f"{cut}; the simulator is asked with the eval's --max-tokens, the agent's limit too" if cut else None
