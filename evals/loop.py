"""The one agent loop every harness runs: user turn in, model answers, tool calls executed, repeat.

Per user turn the model is asked for an answer with the turn's tools offered; its tool calls are
read from structured ``tool_calls`` or, failing that, from its text (``<tool_call>`` blocks, JSON,
Python call syntax: :meth:`ee_middleware.models.Choice.tool_calls`); each call is executed in the
environment and its observation goes back as a ``tool`` message (errors included, formatted by the
environment, so the model sees what went wrong); the turn ends when an answer has no tool call or
after ``max_steps_per_turn`` answers. A model that cannot answer at all (server down, timed out,
refusing the request) or an environment that raises ends the conversation with an error, which the
harness scores as a failed task with that reason: a run never crashes on one task.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.errors import EEError, ModelError, ModelRequestError, ModelResponseError, ModelServerError, UnreadableAnswerError
from ee_middleware.evals.tasks import CUT_OFF, Conversation, Environment, EvalTask, Message, Step, Turn
from ee_middleware.models.parsing import ParseProblem, call_id, from_openai_message, parse_tool_calls
from ee_middleware.models.protocol import ChatClient, Sampling, message_text
from ee_middleware.records import ToolCall

PARSE_ERROR_PROMPT = "Your last message looked like a tool call but could not be read ({problem}). Write the call again as valid JSON."


@dataclass(frozen=True)
class LoopConfig:
    """How the loop talks to the model.

    ``max_steps_per_turn``: model answers per user turn before the turn is cut (BFCL uses 20).
    ``execute_tools``: false for single-turn categories scored on the calls alone (one answer per turn).
    ``parse_text_calls``: read calls from the text when a message has no structured ``tool_calls``.
    ``feed_back_parse_errors``: when an answer looks like a call but cannot be read, tell the model
    (as a user message) and let it try again within the step budget, instead of ending the turn; an answer cut off at
    ``max_tokens`` while still reasoning is never fed back (it ends the turn, counted in ``cut_answers``).
    ``end_at_max_steps``: a turn cut at ``max_steps_per_turn`` ends the conversation (no later user turn
    is run), as BFCL's multi-turn runner force-quits an entry.
    ``whole_answers``: an answer holding a call that cannot be read holds no call at all (none of its
    calls is run or scored), as BFCL decodes an answer as a whole.
    ``tool_message_names``: a tool result message carries the tool's ``name`` beside its ``tool_call_id``
    (BFCL's function-calling runner sends only ``tool_call_id`` and ``content``).
    ``bfcl_decoding``: read answers as bfcl-eval's function-calling runner does (BFCL's suites): a structured call's
    name as sent and its arguments by ``json.loads`` (anything but a JSON object is no call), and calls in a served
    model's text only from an answer that is wholly calls, never from one quoted in prose (``bfcl``/``whole`` of
    :mod:`ee_middleware.models.parsing`); a text-only model's answer (``local:`` models) as bfcl-eval's handlers for
    local models read it, its chat template's call blocks wherever they stand (``anywhere``). Every answer whose calls
    came from its text is marked (``Step.from_text``).
    """

    max_steps_per_turn: int = 20
    execute_tools: bool = True
    parse_text_calls: bool = True
    feed_back_parse_errors: bool = False
    end_at_max_steps: bool = False
    whole_answers: bool = False
    tool_message_names: bool = True
    bfcl_decoding: bool = False
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = 0
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.max_steps_per_turn < 1:
            raise ValueError(f"max_steps_per_turn must be >= 1, got {self.max_steps_per_turn}")

    def sampling(self, trial: int = 0) -> Sampling:
        """Sampling for ``trial``: the seed moves with the trial, so trials differ when sampling and repeat across runs."""
        seed = None if self.seed is None else self.seed + trial
        return Sampling(temperature=self.temperature, max_tokens=self.max_tokens, seed=seed)


@dataclass
class _State:
    conversation: Conversation = field(default_factory=Conversation)


def run_conversation(
    client: ChatClient,
    task: EvalTask,
    environment: Environment | None,
    config: LoopConfig = LoopConfig(),
    *,
    trial: int = 0,
    user: Any = None,
) -> Conversation:
    """Run ``task`` with ``client`` against ``environment``; never raises for model or tool failures.

    ``user`` optionally replaces the scripted user: an object with ``next_turn(conversation) ->
    list[Message] | None`` (None ends the conversation); by default the task's scripted turns are used.
    """
    conversation = Conversation()
    system = task.system or config.system_prompt
    if system:
        conversation.messages.append({"role": "system", "content": system})
    sampling = config.sampling(trial)
    index = 0
    while True:
        user_messages = _next_user_turn(task, index, conversation, user)
        if user_messages is None:
            break
        conversation.messages.extend(copy.deepcopy(user_messages))
        tools = task.tools[min(index, len(task.tools) - 1)] if task.tools else []
        turn = Turn()
        conversation.turns.append(turn)
        try:
            _run_turn(client, tools, environment, config, sampling, conversation, turn)
        except ModelError as exc:
            conversation.no_answer = gave_no_answer(exc)
            return _fail(conversation, turn, "model_error", f"the model could not answer: {exc}")
        except _ToolFailure as exc:
            return _fail(conversation, turn, "tool_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - a client bug is one task's failure, not the run's
            return _fail(conversation, turn, "client_error", f"the model client raised {type(exc).__name__}: {exc}")
        if config.end_at_max_steps and turn.stopped == "max_steps":
            break
        index += 1
    return conversation


def _next_user_turn(task: EvalTask, index: int, conversation: Conversation, user: Any) -> list[Message] | None:
    if user is not None:
        return user.next_turn(conversation)
    return task.turns[index] if index < len(task.turns) else None


class NoMessageError(ModelError):
    """The model server answered without a message: no choices, or a choice without a message object (the client's
    :attr:`~ee_middleware.models.protocol.Choice.problem`). The server gave no answer, as one that is down gives none:
    nothing the model wrote is scored (:func:`gave_no_answer`)."""


def gave_no_answer(exc: BaseException) -> bool:
    """Whether ``exc`` means the model server gave no answer (unreachable, timed out, 5xx after retries, an answer
    without a message: :class:`NoMessageError`, an answer that cannot be read at all,
    :class:`~ee_middleware.errors.UnreadableAnswerError`: a body a proxy cut off, emptied or replaced with a page, which
    no model writes; or a refusal for its setup that every request like it gets: llama-server without ``--jinja``,
    :attr:`ModelRequestError.setup`).

    Another refused request (4xx: a prompt longer than the context; an error sent in a readable answer, as a gateway's
    200 with ``{"error": {"code": "context_length_exceeded"}}``) is the model's or the settings' doing, and stays a
    plain failure."""
    if isinstance(exc, NoMessageError):
        return True
    if isinstance(exc, ModelRequestError):
        return exc.setup
    return isinstance(exc, ModelServerError) and (not isinstance(exc, ModelResponseError) or isinstance(exc, UnreadableAnswerError))


class _ToolFailure(Exception):
    """The environment raised instead of returning an error observation."""


def _fail(conversation: Conversation, turn: Turn, error_type: str, reason: str) -> Conversation:
    turn.stopped = "error"
    conversation.error = reason
    conversation.error_type = error_type
    return conversation


def _run_turn(
    client: ChatClient,
    tools: list[dict[str, Any]],
    environment: Environment | None,
    config: LoopConfig,
    sampling: Sampling,
    conversation: Conversation,
    turn: Turn,
) -> None:
    for _ in range(config.max_steps_per_turn):
        choices = client.complete(conversation.messages, tools=tools or None, n=1, sampling=sampling)
        if not choices:
            raise NoMessageError("the model returned no answer")
        if choices[0].problem is not None:  # no message at all: not an empty answer (irrelevance would score it a pass)
            raw = f" (it sent {choices[0].raw})" if choices[0].raw else ""
            raise NoMessageError(f"the server's answer holds no message: {choices[0].problem}{raw}")
        step = _read_answer(choices[0], config)
        step.calls = _with_unique_ids(step.calls, conversation.messages)
        turn.steps.append(step)
        conversation.messages.append(_assistant_message(step))
        if not step.calls:
            # Problems are kept only where the answer tried to call. One cut off at max_tokens while still reasoning ends
            # the turn, its problem kept for the reason: asked again, the model would be cut again, and the fix (more
            # max_tokens) is the operator's, not the model's.
            if step.problems and config.feed_back_parse_errors and choices[0].cut_while_reasoning() is None:
                conversation.messages.append({"role": "user", "content": PARSE_ERROR_PROMPT.format(problem=step.problems[0])})
                continue
            turn.stopped = "answer"
            return
        if not config.execute_tools or environment is None:
            turn.stopped = "answer"
            return
        for call in step.calls:
            result: Message = {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": _execute(environment, call)}
            if not config.tool_message_names:
                del result["name"]
            conversation.messages.append(result)
    turn.stopped = "max_steps"


def _read_answer(choice: Any, config: LoopConfig) -> Step:
    structured_calls = isinstance(choice.message, dict) and bool(choice.message.get("tool_calls"))
    if not (config.parse_text_calls or structured_calls):
        parsed = []
    elif config.bfcl_decoding:
        parsed = _as_bfcl_reads(choice, executed=config.execute_tools, max_tokens=config.max_tokens)
    else:
        parsed = choice.tool_calls()
    calls = [item for item in parsed if isinstance(item, ToolCall)]
    text = choice.text.strip()
    # Text without any call is an answer; problems count only where the answer tried to call (structured
    # tool_calls, or text that looks like one): a structured call whose arguments cannot be read is not silence.
    # BFCL decodes an answer as a whole: one cut off while still reasoning has not answered yet, and says so.
    tried = calls or structured_calls or _looks_like_call(text) or (config.bfcl_decoding and choice.cut_while_reasoning() is not None)
    problems = [item.problem for item in parsed if isinstance(item, ParseProblem)] if tried else []
    if problems and config.whole_answers:
        calls = []
    if calls and not structured_calls:
        text = ""  # the text was the calls themselves
    return Step(
        calls=calls,
        text=text,
        problems=problems,
        finish_reason=choice.finish_reason,
        from_text=not structured_calls,
        model=getattr(choice, "model", None),  # a plug-in client's choice objects may not have it
        reasoning=getattr(choice, "reasoning", None) or None,
    )


def _as_bfcl_reads(choice: Any, *, executed: bool, max_tokens: int) -> list[ToolCall | ParseProblem]:
    """:meth:`~ee_middleware.models.Choice.tool_calls` as bfcl-eval reads the answer (see :attr:`LoopConfig.bfcl_decoding`):
    a served model's as its function-calling runner, a text-only model's as its handlers for local models (Qwen FC,
    Phi FC, ...), their ``decode_execute`` where the calls are ``executed`` (multi-turn), else ``decode_ast``; a problem
    of an answer cut at ``max_tokens`` says so first, as there, and an answer cut off while still reasoning is that
    problem alone (:meth:`~ee_middleware.models.Choice.cut_while_reasoning`, naming ``max_tokens``)."""
    if choice.problem is not None:
        return [ParseProblem(choice.problem, choice.raw)]
    cut_reasoning = choice.cut_while_reasoning(max_tokens)
    if cut_reasoning is not None:
        return [ParseProblem(cut_reasoning, choice.raw)]
    parsed = (
        from_openai_message(choice.message, bfcl=True)
        if choice.structured
        # the content as written, as Choice.tool_calls reads it: the parser drops the reasoning itself
        else parse_tool_calls(message_text(choice.message, reasoning=True), anywhere=True, executed=executed)
    )
    if choice.finish_reason != CUT_OFF:
        return parsed
    cut = "the answer was cut off at max_tokens (finish_reason 'length'; give it more max_tokens)"
    return [ParseProblem(f"{cut}: {item.problem}", item.raw) if isinstance(item, ParseProblem) else item for item in parsed]


def _with_unique_ids(calls: list[ToolCall], messages: list[Message]) -> list[ToolCall]:
    """``calls`` with each id the conversation already holds (or an earlier call of the same answer took) replaced by a new
    one. Servers reuse ids (TGI sends ``"0"`` on every call, older Xinference one id for all the calls of an answer) and
    calls read from text get theirs from their name and arguments, while a tool result is paired with its call by id (by
    the model, and by :mod:`ee_middleware.evals.curriculum`, which keeps each call's observation under its id)."""
    used = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    used |= {c.get("id") for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or [] if isinstance(c, dict)}
    unique = []
    for call in calls:
        if not call.id or call.id in used:
            index = len(used)
            while (new_id := call_id(call.name, call.arguments, index, prefix=call.id or "call")) in used:
                index += 1
            call = call.model_copy(update={"id": new_id})
        used.add(call.id)
        unique.append(call)
    return unique


_CALL_MARKUP = ("<tool_call>", "<|tool_call|>", "<|python_tag|>", "[TOOL_CALLS]", "<function=")
"""Markup a model family writes its calls in (Hermes/Qwen, Phi, Llama 3.1, Mistral, Llama's function tags): text holding
one tried to call, and what kept its calls from being read is the reason, not that it made none."""


_FENCE_OPENING = re.compile(r"^```[A-Za-z0-9_-]*")
"""A code fence's opening line up to its language name (as the parser's fences are read)."""


def _looks_like_call(text: str) -> bool:
    """Whether an answer's text tried to call a tool: call markup anywhere, or JSON (also in a code fence) at its start."""
    stripped = text.lstrip()
    if stripped.startswith("```"):
        stripped = _FENCE_OPENING.sub("", stripped, count=1).lstrip()
    return any(marker in text for marker in _CALL_MARKUP) or stripped.startswith(("{", "["))


def _assistant_message(step: Step) -> Message:
    """The answer as the conversation's next prompts show it: as capture records an agent's (its reasoning as
    ``reasoning_content``, which templates of reasoning models render within the turn): a state the adapter was trained
    on, not one without the reasoning."""
    message: Message = {"role": "assistant", "content": step.text}
    if step.reasoning:
        message["reasoning_content"] = step.reasoning
    if step.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
            for c in step.calls
        ]
    return message


def _execute(environment: Environment, call: ToolCall) -> str:
    try:
        observation = environment.execute(call)
    except EEError as exc:
        raise _ToolFailure(f"the environment failed on tool {call.name!r}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise _ToolFailure(f"tool {call.name!r} raised {type(exc).__name__}: {exc}") from exc
    return observation.content
