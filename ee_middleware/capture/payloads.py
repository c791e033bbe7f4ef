"""Build span attributes from LangChain/LangGraph objects (runs on the finisher thread).

Model calls within one run resend the whole history, so each message is converted, redacted and
encoded once per run and its JSON fragment reused (``FragmentCache``): a model's reply is encoded
once for its own span's output, the next span's input and the run's final output.
"""

from __future__ import annotations

import dataclasses
import json
import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import genai_finish_reason, redact_and_cut, redact_tool_schemas, turn_question
from ee_middleware.capture.redaction import Redactor
from ee_middleware.messages import (
    content_to_text,
    dumps,
    langchain_to_openai,
    message_type,
    openai_to_genai,
    openai_tool_schemas,
    to_jsonable,
)

FragmentCache = dict[int, tuple[Any, str, bool, int]]
"""id(message) -> (message, its redacted GenAI JSON, whether it calls a tool, the characters cut from a tool message's
content); the message is kept so that its id is not reused."""


class PayloadEncoder:
    """Turns raw objects into redacted GenAI attribute values."""

    def __init__(self, redactor: Redactor, max_observation_chars: int) -> None:
        self.redactor = redactor
        self.max_observation_chars = max_observation_chars
        # A model bound to tools passes the same list on every call of every run: encode it once.
        self._tool_definitions: dict[tuple[int, ...], tuple[tuple[Any, ...], str]] = {}

    def _redact(self, value: Any) -> Any:
        return self.redactor.redact_value(value) if self.redactor.enabled else value

    def text(self, text: str) -> str:
        """Redacted text (for messages, errors and ids)."""
        return self.redactor.redact_text(text) if self.redactor.enabled else text

    def encode(self, value: Any) -> str:
        """Redacted JSON text of JSON-like ``value``.

        Redaction walks the data (not its JSON text): values under secret-named keys go whole, and
        strings holding JSON (a tool result like ``'{"password": ...}'``) are redacted as JSON.
        """
        return self.redactor.redact_json(value)

    _encode = encode

    def exception_attributes(self, error: BaseException) -> dict[str, str]:
        """The attributes of an OpenTelemetry ``exception`` event, message and stack trace redacted
        (``span.record_exception`` would put the raw message on every exporter)."""
        stacktrace = error.stacktrace if isinstance(error, CapturedError) else "".join(traceback.format_exception(error))
        return {
            "exception.type": type(error).__qualname__,
            "exception.message": self.text(error_text(error)),
            "exception.stacktrace": self.text(stacktrace),
            "exception.escaped": "False",
        }

    def messages(self, messages: Sequence[Any], cache: FragmentCache | None = None) -> str:
        """``gen_ai.input.messages`` for LangChain messages."""
        cache = {} if cache is None else cache
        return "[" + ",".join(self._fragment(cache, message)[1] for message in messages) + "]"

    def _fragment(self, cache: FragmentCache, message: Any) -> tuple[Any, str, bool]:
        """``message``'s cache entry, encoded on first use."""
        hit = cache.get(id(message))
        if hit is None or hit[0] is not message:
            [converted] = langchain_to_openai([message])
            cut = 0
            if converted["role"] == "tool":  # a huge result would otherwise repeat in every later span
                converted["content"], cut = self._cut(converted["content"])  # redacted, then cut
            [genai] = openai_to_genai([converted])
            hit = (message, self._encode(genai), any(p["type"] == "tool_call" for p in genai["parts"]), cut)
            cache[id(message)] = hit
        return hit

    def cut_tool_replies(self, messages: Sequence[Any], cache: FragmentCache) -> tuple[int, ...]:
        """:data:`~ee_middleware.capture.semconv.EE_TOOL_TRUNCATED` for ``messages`` as :meth:`messages` encoded them
        into ``cache``: the positions of the tool messages it cut, each with the characters cut."""
        pairs: list[int] = []
        for position, message in enumerate(messages):
            hit = cache.get(id(message))
            if hit is not None and hit[0] is message and hit[3]:
                pairs += (position, hit[3])
        return tuple(pairs)

    @property
    def _fragments_compose(self) -> bool:
        """Whether a message's fragment redacts exactly as it would inside a reply with its
        ``finish_reason``: true unless user rules or a custom function might match that member."""
        return not self.redactor.enabled or self.redactor.builtin_only

    def tool_definitions(self, tools: Sequence[Any] | None, cache: FragmentCache | None = None) -> str | None:
        """``gen_ai.tool.definitions`` for the tools a model was given (redacted: see :func:`_encode_tool_definitions`),
        encoded once for the same tool objects; ``None`` for none."""
        if not tools:
            return None
        # Each call gets a new list of the same schema objects: key on those (kept alive by the entry).
        key = tuple(map(id, tools))
        hit = self._tool_definitions.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], tools, strict=True)):
            if len(self._tool_definitions) >= 64:
                self._tool_definitions.pop(next(iter(self._tool_definitions)))
            hit = (tuple(tools), _encode_tool_definitions(tools, self.redactor))
            self._tool_definitions[key] = hit
        return hit[1]

    def chat_attributes(
        self,
        inputs: Sequence[Any],
        outputs: Sequence[Any],
        tools: Sequence[Any] | None,
        cache: FragmentCache | None = None,
        *,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        """A ``chat`` span's messages, tools and finish reasons. ``finish_reason``: why the model stopped, as its provider
        said (:func:`genai_finish_reason` writes it as the GenAI conventions do); where it did not say, each reply's is
        ``tool_call`` or ``stop`` by whether it calls a tool."""
        cache = {} if cache is None else cache
        attrs: dict[str, Any] = {sc.INPUT_MESSAGES: self.messages(inputs, cache)}
        said = genai_finish_reason(finish_reason) if finish_reason else None
        if self._fragments_compose and not any(message_type(m) == "tool" for m in outputs):
            # the reply's fragment, reused by the next span's input and the run's output
            replies = [self._fragment(cache, message) for message in outputs]
            reasons = tuple(said or ("tool_call" if calls else "stop") for _, _, calls, _ in replies)
            members = (
                f'{fragment[:-1]},"finish_reason":{json.dumps(reason, ensure_ascii=False)}}}'
                for (_, fragment, _, _), reason in zip(replies, reasons, strict=True)
            )
            attrs[sc.OUTPUT_MESSAGES] = "[" + ",".join(members) + "]"
            attrs[sc.RESPONSE_FINISH_REASONS] = reasons
        else:
            output = openai_to_genai(langchain_to_openai(outputs))
            for message in output:
                message["finish_reason"] = said or ("tool_call" if any(p["type"] == "tool_call" for p in message["parts"]) else "stop")
            attrs[sc.OUTPUT_MESSAGES] = self._encode(output)
            attrs[sc.RESPONSE_FINISH_REASONS] = tuple(m["finish_reason"] for m in output)
        definitions = self.tool_definitions(tools, cache)
        if definitions:
            attrs[sc.TOOL_DEFINITIONS] = definitions
        invalid = invalid_call_positions(outputs)
        if invalid:
            attrs[sc.EE_INVALID_TOOL_CALL_POSITIONS] = invalid
        errors = tool_error_positions(inputs)
        if errors:
            attrs[sc.EE_TOOL_ERROR_POSITIONS] = errors
        if cut := self.cut_tool_replies(inputs, cache):
            attrs[sc.EE_TOOL_TRUNCATED] = cut
        return attrs

    def tool_arguments(self, arguments: Any) -> str:
        return self._encode(arguments)

    def tool_result(self, output: Any) -> tuple[str, bool, int]:
        """(text, is_error, truncated_chars) for a tool's return value."""
        replies = _command_tool_messages(output)  # a Command's state update carries the reply the model sees
        if replies:
            is_error = any(getattr(m, "status", "success") == "error" for m in replies)
            text = "\n".join(content_to_text(m.content) for m in replies)
        elif hasattr(output, "tool_call_id") and hasattr(output, "content"):  # a ToolMessage
            is_error = getattr(output, "status", "success") == "error"
            text = content_to_text(output.content)
        else:
            is_error = False
            text = output if isinstance(output, str) else dumps(output)
        text, truncated = self._cut(text)
        return text, is_error, truncated

    def _cut(self, content: Any) -> tuple[Any, int]:
        """A tool result's text redacted, then cut to ``max_observation_chars`` (never inside a placeholder; a huge one
        redacted in a window past the cut: :func:`~ee_middleware.capture.assembler.redact_and_cut`), and the characters
        cut. Content blocks (a list: images, files) are kept to as many blocks, each block redacted when encoded."""
        if isinstance(content, str):
            return redact_and_cut(content, self.max_observation_chars, self._redact if self.redactor.enabled else None)
        if len(content) <= self.max_observation_chars:
            return content, 0
        return content[: self.max_observation_chars], len(content) - self.max_observation_chars

    def graph_input_attributes(self, graph_input: Any, cache: FragmentCache | None = None) -> dict[str, Any]:
        """The run's input messages and its task (the turn's question among them, :func:`turn_question`: the first user
        message unless earlier turns come before it): a state's conversation
        (:func:`state_messages`), the messages a Functional API ``@entrypoint`` was given, or, for one given a string,
        that string as the task. An input without messages (``{"question": q}``, an input schema's instance) has its
        text field as the task (:func:`input_text`). On a thread this is the turn's question, never the history the
        checkpointer adds."""
        if isinstance(graph_input, str):
            return {sc.EE_TASK: self._redact(graph_input)} if graph_input else {}
        messages = input_messages(graph_input)
        if not messages:
            text = input_text(graph_input)
            return {sc.EE_TASK: self._redact(text)} if text else {}
        attrs: dict[str, Any] = {sc.INPUT_MESSAGES: self.messages(messages, cache)}
        fields = _state_fields(graph_input)
        converted = langchain_to_openai(messages)
        # a history of earlier turns (ending on a reply) under another name than messages next to the question
        # ({"input": q, "chat_history": [...]}, the shape of LangChain's AgentExecutor): the question is the field, the
        # history's first question an earlier turn's. A list that ends on the user's question ({"chat": [q],
        # "instructions": ...}) is the turn itself: the field next to it is a system prompt or a document
        history = bool(converted) and converted[-1]["role"] == "assistant" and not converted[-1].get("tool_calls")
        text = _named_text(fields) if fields is not None and not fields.get("messages") and history else None
        if text is not None:
            attrs[sc.EE_TASK] = self._redact(text)
            return attrs
        # the turn's question: a thread's history the checkpointer adds is not in the input, but one given in it is (an
        # app that sends the whole conversation, an agent run as a node of a graph whose state holds earlier turns)
        task = turn_question(converted)
        if task:
            attrs[sc.EE_TASK] = self._redact(task)
        return attrs

    def graph_output_attributes(
        self,
        output: Any,
        cache: FragmentCache | None = None,
        *,
        paused: bool = False,
        resumed: bool = False,
        answer_fields: bool = False,
    ) -> dict[str, Any]:
        """The run's outcome: its final assistant message, or, when the run ends on tool messages
        (``create_agent`` with a ``response_format``, tools with ``return_direct``), those tool
        messages (the observations of the last calls); the answer is the state's structured response as JSON (its
        schema's aliases as keys, as the model wrote it) where this run gave it (any ``response_format``:
        ``create_agent``'s, ``create_react_agent``'s; see :func:`_structured_answer`), else the last message's text.

        A run that ends on tool messages without having finished (``paused``: an ``interrupted`` run, such as one
        stopped by ``interrupt()`` in one of several parallel tools; or one whose last assistant message has calls
        that no tool message answers) keeps those tool messages but has no answer: another tool's result is none.

        With ``answer_fields`` (capture's own runs), an output without a conversation, or whose conversation gives no
        answer (it holds only the question), has its answer read as an input's task is (:func:`output_text`): a string
        (a Functional API ``@entrypoint``'s return value) is the answer, a state's or dict's field named as an answer
        (:data:`ANSWER_FIELDS`, such as a map-reduce's ``answer`` that a reduce node wrote) holds it; else it has none,
        and the assembler never takes the reply of one of several model calls in its place (parallel ``Send``
        branches). A paused run has none.

        A ``resumed`` run (its input a ``Command`` or ``None``, which holds no message) also gets, as its input
        messages, the conversation it continued: the output's messages before its outcome (all of them where it paused
        on an assistant message's calls), so that a resume that calls no model (one that pauses again at the next
        ``interrupt()``) keeps its turn's messages and task."""
        messages = state_messages(output)
        if messages is None and (_is_message_list(output) or isinstance(output, BaseMessage)):
            messages = input_messages(output)  # an @entrypoint returning its messages
        if not messages:
            return self._output_answer(output) if answer_fields and not paused else {}
        attrs = self._outcome_attributes(messages, output, cache, paused=paused)
        if answer_fields and not paused and sc.EE_FINAL_ANSWER not in attrs:
            # a conversation that gives no answer (it holds only the question: the nodes call the model themselves)
            attrs.update(self._output_answer(output))
        if resumed:
            before = messages[: len(messages) - _outcome_length(messages)] if sc.OUTPUT_MESSAGES in attrs else messages
            if before:
                attrs[sc.INPUT_MESSAGES] = self.messages(before, cache)
        return attrs

    def _output_answer(self, output: Any) -> dict[str, Any]:
        """The answer of an output that holds no conversation (see :func:`output_text`), as attributes."""
        text = output_text(output)
        return {sc.EE_FINAL_ANSWER: self._redact(text)} if text else {}

    def _outcome_attributes(self, messages: Sequence[Any], output: Any, cache: FragmentCache | None, *, paused: bool) -> dict[str, Any]:
        """:meth:`graph_output_attributes` of an output whose conversation is ``messages``."""
        tail = 0
        while tail < len(messages) and message_type(messages[-1 - tail]) == "tool":
            tail += 1
        structured = _structured_answer(messages, tail, output.get("structured_response") if isinstance(output, Mapping) else None)
        if tail:
            tools, cut = [], []
            for position, message in enumerate(langchain_to_openai(messages[-tail:])):
                content, chars = self._cut(content_to_text(message["content"]))
                tools.append(dict(message, content=content))
                cut += (position, chars) if chars else ()
            attrs: dict[str, Any] = {sc.OUTPUT_MESSAGES: self._encode(openai_to_genai(tools))}
            if cut:
                attrs[sc.EE_TOOL_TRUNCATED] = tuple(cut)
            if not paused and not _unanswered_calls(messages, tail):
                answer = structured if structured is not None else content_to_text(tools[-1]["content"])
                attrs[sc.EE_FINAL_ANSWER] = self._redact(answer)
            errors = tool_error_positions(messages[-tail:])
            if errors:
                attrs[sc.EE_TOOL_ERROR_POSITIONS] = errors
            return attrs
        converted = langchain_to_openai(messages[-1:])
        last = converted[-1]
        if last["role"] != "assistant" or last.get("tool_calls"):
            return {}
        # a structured response asked for after the reply (create_react_agent's generate_structured_response node) or
        # parsed from it (create_agent's ProviderStrategy) is the answer, as with ToolStrategy above
        answer = structured if structured is not None else content_to_text(last["content"])
        return {
            sc.OUTPUT_MESSAGES: "[" + self._fragment({} if cache is None else cache, messages[-1])[1] + "]",
            sc.EE_FINAL_ANSWER: self._redact(answer),
        }


def _outcome_length(messages: Sequence[Any]) -> int:
    """How many of the last ``messages`` are a run's outcome (:meth:`PayloadEncoder.graph_output_attributes`'s output
    messages): the tool messages it ended on, else its last message."""
    tail = 0
    while tail < len(messages) and message_type(messages[-1 - tail]) == "tool":
        tail += 1
    return tail or 1


ANSWER_FIELDS = ("answer", "final_answer", "final_output")
"""The names that say which of an output's fields is its answer (:func:`output_text`), most telling first. Only names
that say nothing else: ``result``, ``output``, ``response`` or ``summary`` often hold a tool's raw rows, a request's
reply or a digest of the conversation beside the model's answer (an SQL agent's ``result`` beside its ``generation``)."""


def output_text(output: Any) -> str | None:
    """The answer in a graph's output that holds no conversation, read as :func:`input_text` reads an input's task: a
    string is the answer (a Functional API ``@entrypoint``'s return value); a dict, or a state schema's pydantic or
    dataclass instance, has it in its first field named as an answer (:data:`ANSWER_FIELDS`) that holds one: text, an
    assistant message's text, or other data as JSON (``{"answer": {"score": 8}}``). ``None`` for anything else: an
    output whose fields none is named as the answer says no answer (its only text field may be the input's question,
    a branch's note or a parameter), and the run then has none."""
    if isinstance(output, str):
        return output if output.strip() else None
    fields = _state_fields(output)
    if not fields:
        return None
    for name in ANSWER_FIELDS:
        value = fields.get(name)
        if value is None or isinstance(value, bytes):
            continue
        if isinstance(value, str):
            text: str | None = value
        elif isinstance(value, BaseMessage):
            text = content_to_text(value.content) if message_type(value) == "ai" else None
        elif isinstance(value, Mapping) and value.get("role") == "assistant" and "content" in value:
            text = content_to_text(value["content"])
        else:
            model_dump = getattr(value, "model_dump", None)
            try:
                data = (
                    model_dump(mode="json", by_alias=True) if callable(model_dump) and not isinstance(value, type) else to_jsonable(value)
                )
            except Exception:  # noqa: BLE001 - a model that cannot dump itself: to_jsonable's repr fallback
                data = to_jsonable(value)
            text = None if data in ([], {}, "") else dumps(data)
        if text and text.strip():
            return text
    return None


def _structured_answer(messages: Sequence[Any], tail: int, structured: Any) -> str | None:
    """The state's structured response as JSON where it is this run's answer, else ``None``.

    LangGraph keeps ``structured_response`` in a thread's checkpoint from turn to turn, so a later turn that ends without
    giving one (``ModelCallLimitMiddleware`` ending it, a guardrail jumping to the end with a refusal, ``return_direct``
    tools) still holds an earlier turn's. Only this turn's messages (after its user message) tell whether it gave one:
    an earlier turn's message carrying an equal value is no evidence, as a model may give the same answer twice.

    * A message of this turn carries it (:func:`_carried_as`: ``ToolStrategy``'s call arguments, ``ProviderStrategy``'s
      reply JSON): it is the answer where the latest such message is the one the run ended on (the last reply, or the
      call the closing tool messages answer); else it is an earlier call's (a validation retry's), and is not.
    * None does: it was asked for in a model call of its own (``create_react_agent``'s ``generate_structured_response``
      node, which gives a new one at the end of every turn, after the model's reply) and is the answer, unless an
      earlier turn's message carries it and this turn cannot have given it: that message is a ``ToolStrategy`` call
      (``create_react_agent`` never writes its call to the messages), or this turn did not end on a model's reply (a
      middleware's or guardrail's message, tool messages): ``create_agent`` kept an earlier turn's response.

    Limit: a state read back without the reply's metadata (ingest) cannot tell a model's reply from a middleware's; a
    response carried only by an earlier turn's reply text is then taken as kept, not given again.

    The JSON is the response dumped by its schema's aliases (``model_dump(mode="json", by_alias=True)``): the keys of
    the JSON schema the model was given and of the model's own reply."""
    if structured is None:
        return None
    ended = len(messages) - 1 - tail  # the reply the run ended on, or the call its closing tool messages answer
    turn_start = next((i + 1 for i in range(min(ended, len(messages) - 1), -1, -1) if message_type(messages[i]) == "human"), 0)
    carrier = next((i for i in range(min(ended, len(messages) - 1), turn_start - 1, -1) if _carried_as(messages[i], structured)), None)
    if carrier is not None:
        if carrier != ended:
            return None  # an earlier call's response of this turn (a validation retry's)
    else:
        earlier = next((how for m in reversed(messages[:turn_start]) if (how := _carried_as(m, structured))), None)
        if earlier == "call" or (earlier == "text" and not (tail == 0 and ended >= 0 and _model_reply(messages[ended]))):
            return None  # create_agent's response of an earlier turn, kept by the checkpoint
    model_dump = getattr(structured, "model_dump", None)
    if callable(model_dump) and not isinstance(structured, type):
        try:
            return dumps(model_dump(mode="json", by_alias=True))
        except Exception:  # noqa: BLE001 - a model that cannot dump itself: to_jsonable's repr fallback
            pass
    return dumps(to_jsonable(structured))


def _carried_as(message: Any, structured: Any) -> str | None:
    """How the assistant ``message`` carries ``structured``: ``"call"`` (one of its tool calls has it as arguments:
    ``ToolStrategy``), ``"text"`` (its text blocks are JSON for it: ``ProviderStrategy`` parses the reply's text,
    without reasoning or thinking blocks, :func:`_reply_text`), or ``None`` (not at all, or not an assistant message).
    A pydantic response is compared as its schema reads the data (aliases, coercion, defaults), anything else (a
    ``TypedDict``'s or JSON schema's dict, a value ingest read back from JSON) as JSON data."""
    if message_type(message) != "ai":
        return None
    calls = [c.get("args") for c in getattr(message, "tool_calls", None) or () if isinstance(c, Mapping)]
    if _carries_any(calls, structured):
        return "call"
    text = _reply_text(getattr(message, "content", None)).strip()
    if text.startswith(("{", "[")):
        try:
            if _carries_any([json.loads(text)], structured):
                return "text"
        except (ValueError, RecursionError):
            pass
    return None


def _model_reply(message: Any) -> bool:
    """Whether ``message`` came from a chat model call (it has the provider's metadata or usage), not from a middleware
    or guardrail writing an ``AIMessage`` itself."""
    return bool(getattr(message, "response_metadata", None)) or getattr(message, "usage_metadata", None) is not None


def _carries_any(candidates: Sequence[Any], structured: Any) -> bool:
    validate = getattr(type(structured), "model_validate", None)
    for candidate in candidates:
        if candidate is None:
            continue
        if callable(validate):
            try:
                if validate(candidate) == structured:
                    return True
            except Exception:  # noqa: BLE001 - not this schema's data: another call's arguments, another JSON
                continue
        elif to_jsonable(candidate) == to_jsonable(structured):
            return True
    return False


def _reply_text(content: Any) -> str:
    """A reply's text as ``ProviderStrategy`` parses it: a string as is, else its ``text`` blocks (and blocks with a
    string ``content``) joined, without reasoning or thinking blocks (LangChain's
    ``ProviderStrategyBinding._extract_text_content_from_message``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content if isinstance(content, list | tuple) else (content,):
        if isinstance(block, Mapping):
            if block.get("type") == "text" and "text" in block:
                parts.append(str(block["text"]))
            elif isinstance(block.get("content"), str):
                parts.append(block["content"])
        else:
            parts.append(str(block))
    return "".join(parts)


def _unanswered_calls(messages: Sequence[Any], tail: int) -> bool:
    """Whether the assistant message before the last ``tail`` (tool) messages made a call none of them answers: the run
    stopped before all its tools ran (``interrupt()`` in one of them)."""
    if tail >= len(messages):
        return False
    calls = getattr(messages[-1 - tail], "tool_calls", None) or ()
    answered = {getattr(m, "tool_call_id", None) for m in messages[-tail:]}
    return any(isinstance(c, Mapping) and c.get("id") and c["id"] not in answered for c in calls)


def invalid_call_positions(outputs: Sequence[Any]) -> tuple[int, ...]:
    """The positions, among the tool calls of a model's ``outputs`` as :func:`~ee_middleware.messages.langchain_to_openai`
    writes them (each AI message's ``tool_calls``, then its ``invalid_tool_calls``), of the invalid ones
    (:data:`~ee_middleware.capture.semconv.EE_INVALID_TOOL_CALL_POSITIONS`)."""
    positions: list[int] = []
    made = 0
    for message in outputs:
        if message_type(message) != "ai":
            continue
        made += len(getattr(message, "tool_calls", None) or ())
        invalid = len(getattr(message, "invalid_tool_calls", None) or ())
        positions.extend(range(made, made + invalid))
        made += invalid
    return tuple(positions)


def tool_error_positions(messages: Sequence[Any]) -> tuple[int, ...]:
    """The positions in ``messages`` of the tool messages that report an error (``status="error"``)."""
    return tuple(i for i, m in enumerate(messages) if message_type(m) == "tool" and getattr(m, "status", None) == "error")


def input_messages(graph_input: Any) -> Any:
    """The messages of a graph's input: its state's conversation (:func:`state_messages`), else the input itself where
    it is a list of messages or one message (a Functional API ``@entrypoint`` given them). ``None`` for other input."""
    messages = state_messages(graph_input)
    if messages is not None:
        return messages
    if _is_message_list(graph_input):
        return graph_input
    if isinstance(graph_input, BaseMessage):
        return [graph_input]
    return None


TASK_FIELDS = ("question", "query", "task", "input", "prompt", "request", "message", "user_input", "instruction", "instructions", "text")
"""The names that say which of an input's text fields is its question, most telling first."""


def input_text(graph_input: Any) -> str | None:
    """The question in a graph's input that holds no messages: its text field named as a question (:data:`TASK_FIELDS`),
    as in ``{"question": q}`` or ``{"query": q, "max_results": 3}``; else its only text field where that is a user
    message, or reads as a question (:func:`_reads_as_question`: a question mark, a sentence, not a parameter such as
    ``{"lang": "en"}``).
    The input is a dict or an input schema's pydantic or dataclass instance. ``None`` otherwise (``{"ticket_id":
    "T-1042"}``, several text fields none of which is named as the question): the run's task is then read from its
    model's input."""
    fields = _state_fields(graph_input)
    if not fields:
        return None
    named = _named_text(fields)
    if named is not None:
        return named
    texts = {name: text for name, value in fields.items() if (text := _field_text(value))}
    if len(texts) != 1:
        return None
    [(name, text)] = texts.items()
    return text if not isinstance(fields[name], str) or _reads_as_question(name, text) else None


def _named_text(fields: Mapping[str, Any]) -> str | None:
    """The text of the first field of ``fields`` named as a question (:data:`TASK_FIELDS`) that holds one."""
    for name in TASK_FIELDS:
        text = _field_text(fields[name]) if name in fields else None
        if text:
            return text
    return None


_IDENTIFIER_NAMES = frozenset(
    ("id", "ids", "uuid", "guid", "key", "token", "url", "uri", "link", "path", "file", "filename", "dir", "directory",
     "repo", "repository", "email", "hash", "sha", "slug", "code", "number", "no", "name", "ref")
)  # fmt: skip
"""The last word of a field name that holds an identifier, a location or a name, not a question (``ticket_id``,
``fileUrl``, ``repo``, ``user_name``)."""


def _reads_as_question(name: str, text: str) -> bool:
    """Whether a lone text field ``name`` holding ``text`` reads as the run's question, not as one of its parameters
    (``{"lang": "en"}``, ``{"city": "Paris"}``, ``{"customer": "Ann Lee"}``, ``{"ticket": "T-1042"}``): it ends with a
    question mark ("?" or the full-width U+FF1F), or is a sentence of at least :data:`_QUESTION_WORDS` words, or is written
    without spaces (Chinese, Japanese) in at least :data:`_QUESTION_CHARS` such characters; never under a name that is
    an id's, a file's or a name's (:data:`_IDENTIFIER_NAMES`). Anything else leaves the task to the model's input, as
    a field that is no question always did."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])", name) if w]
    if words and words[-1].lower() in _IDENTIFIER_NAMES:
        return False
    stripped = text.strip()
    if stripped.endswith(("?", "\uff1f")):
        return True
    if len(stripped.split()) >= _QUESTION_WORDS:
        return True
    return sum(1 for c in stripped if ord(c) >= 0x2E80) >= _QUESTION_CHARS  # CJK and the scripts written like it


_QUESTION_WORDS = 4
_QUESTION_CHARS = 6
"""A lone field's text is a question from this many words (space-separated), or this many characters of a script written
without spaces: fewer is a parameter ("New York", "退款") whose run's task the model's input says better."""


def _field_text(value: Any) -> str | None:
    """The text of an input field that is a question: a string, or one user message (LangChain, OpenAI dict or
    ``("user", text)`` tuple); ``None`` for anything else."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, BaseMessage):
        return content_to_text(value.content) if message_type(value) == "human" else None
    if isinstance(value, Mapping) and value.get("role") == "user" and "content" in value:
        return content_to_text(value["content"]) or None
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("user", "human") and isinstance(value[1], str):
        return value[1] or None
    return None


def state_messages(state: Any) -> Any:
    """The conversation in a graph's input or final state, as a list: its ``messages`` (``MessagesState``,
    ``create_agent``), else the value that is a list of messages under another key (a custom state's ``chat``); of
    several such lists, the first that holds a model's reply, else the first. The state is a dict, or an instance of a
    pydantic or dataclass state schema (a graph invoked with ``State(messages=[...])``). ``None`` for a state without one.

    ``messages`` holding one message (a message, a role dict, a ``("user", text)`` pair or a text: LangGraph's
    ``add_messages`` takes it so, and a channel without a reducer keeps the last message so) is that message's list; a
    ``messages`` that holds no conversation (a counter, a list of notices beside the conversation under another key) is
    passed over for that other key."""
    state = _state_fields(state)
    if state is None:
        return None
    kept = state.get("messages")
    if "messages" in state:
        if kept is None:
            return None
        if _is_one_message(kept):
            return [kept]
        if isinstance(kept, list | tuple) and (not kept or _is_message_list(kept)):
            return _as_list(kept)
    lists = [value for key, value in state.items() if key != "messages" and _is_message_list(value)]
    replied = [value for value in lists if any(message_type(m) == "ai" for m in value)]
    if replied or lists:
        return _as_list((replied or lists)[0])
    if isinstance(kept, list | tuple) and all(isinstance(item, str) for item in kept):
        return _as_list(kept)  # texts, which add_messages reads as user messages: the conversation there is
    return None


def _as_list(messages: Sequence[Any]) -> list[Any]:
    """``messages`` as a list: the state's own list object where it is one (its messages are found by identity)."""
    return messages if isinstance(messages, list) else list(messages)


def _is_one_message(value: Any) -> bool:
    """Whether ``value`` is one message as LangGraph's ``add_messages`` takes one: a LangChain message, an OpenAI-style
    role dict, a ``("user", text)`` pair or a text."""
    return isinstance(value, str) or _is_message(value)


def _state_fields(state: Any) -> Mapping[str, Any] | None:
    """``state``'s channels by name: a dict as it is, an instance of a pydantic model or dataclass (a state schema) as
    its fields; ``None`` for anything else (LangGraph's ``Command``, a dataclass too, is no state)."""
    if isinstance(state, Mapping):
        return state
    if isinstance(state, type) or type(state).__name__ == "Command":
        return None
    fields = getattr(type(state), "model_fields", None)  # pydantic v2
    if isinstance(fields, Mapping):
        return {name: getattr(state, name, None) for name in fields}
    if dataclasses.is_dataclass(state):
        return {field.name: getattr(state, field.name, None) for field in dataclasses.fields(state)}
    return None


def _is_message_list(value: Any) -> bool:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        return False
    return all(_is_message(m) for m in value)


def _is_message(value: Any) -> bool:
    """Whether ``value`` is a message: a LangChain message, an OpenAI-style role dict or a ``("user", "text")`` pair."""
    return (
        (hasattr(value, "type") and hasattr(value, "content"))
        or (isinstance(value, Mapping) and "role" in value and "content" in value)
        or (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str))
    )


def _command_tool_messages(output: Any) -> list[Any]:
    """The tool messages in the state update of a LangGraph ``Command`` a tool returned (a handoff,
    a tool that writes state); empty for anything else."""
    if type(output).__name__ != "Command" or not hasattr(output, "update"):
        return []
    update = output.update
    if isinstance(update, Mapping):  # a custom state's messages key (``chat``) too
        values: Any = update.get("messages") if "messages" in update else list(update.values())
    elif isinstance(update, Sequence) and not isinstance(update, str):  # [(channel, value), ...]
        channels = [item for item in update if isinstance(item, tuple) and len(item) == 2]
        named = [value for channel, value in channels if channel == "messages"]
        values = named if named else [value for _, value in channels]
    else:
        return []
    if values is None:
        return []
    if not isinstance(values, Sequence) or isinstance(values, str):
        values = [values]
    flat = [m for v in values for m in (v if isinstance(v, Sequence) and not isinstance(v, str) else [v])]
    return [m for m in flat if hasattr(m, "tool_call_id") and hasattr(m, "content")]


def _encode_tool_definitions(tools: Sequence[Any], redactor: Redactor) -> str:
    """``gen_ai.tool.definitions``: the tools' schemas, their descriptions and the values they give (defaults, examples,
    enums) redacted (:func:`~ee_middleware.capture.assembler.redact_tool_schemas`), names, types and structure kept."""
    schemas = redact_tool_schemas(openai_tool_schemas(tools), redactor)
    return dumps([{"type": "function", **schema["function"]} for schema in schemas])


class CapturedError(Exception):
    """A picklable stand-in for an exception of the agent's process, sent to the offload process:
    it keeps what spans record (the type's names through :func:`captured_error`'s subclass, the
    message, the formatted stack trace) and drops the objects the exception held."""

    stacktrace: str = ""

    def __reduce__(self) -> tuple[Any, ...]:
        cls = type(self)
        return (_rebuild_error, (cls.__qualname__, cls.__name__, str(self), self.stacktrace))


_ERROR_TYPES: dict[tuple[str, str], type[CapturedError]] = {}


def _rebuild_error(qualname: str, name: str, message: str, stacktrace: str) -> CapturedError:
    cls = _ERROR_TYPES.get((qualname, name))
    if cls is None:
        cls = _ERROR_TYPES[(qualname, name)] = type(name, (CapturedError,), {"__qualname__": qualname})
    error = cls(message)
    error.stacktrace = stacktrace
    return error


def error_text(error: BaseException) -> str:
    """``str(error)``; where the exception's own ``__str__`` raises (one that formats fields it never set), what Python's
    traceback prints then: the run it ended is still recorded, its error said as far as it can be."""
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - the user's exception class: any error of its __str__
        return "<exception str() failed>"


def captured_error(error: BaseException | None) -> CapturedError | None:
    """``error`` as a :class:`CapturedError` (its stack trace formatted now, where it happened)."""
    if error is None or isinstance(error, CapturedError):
        return error
    cls = type(error)
    return _rebuild_error(cls.__qualname__, cls.__name__, error_text(error), "".join(traceback.format_exception(error)))
