"""Trace shapes that :mod:`ee_middleware.capture.normalize` does not read, adapted before runs are grouped.

Only spans read from files meet these (live capture sees its own spans), so ingest adapts them here
and leaves what it does not change untouched:

* **Messages in span events** (the GenAI conventions' event form, semconv 1.27-1.36, as Azure AI
  Inference, Semantic Kernel and others write it on spans): ``gen_ai.{system,user,assistant,tool}.message``
  events are the model's input and ``gen_ai.choice`` events its output, each message as JSON in
  ``gen_ai.event.content`` (or, where an SDK flattens the body, in the event's ``content`` /
  ``tool_calls`` / ``id`` attributes). A body that names no role takes it from the event name; a tool
  message's ``id`` is its ``tool_call_id``. semconv 1.26's ``gen_ai.content.prompt`` /
  ``gen_ai.content.completion`` events carry the whole list in ``gen_ai.prompt`` / ``gen_ai.completion``.
  They become ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (OpenAI's chat shape, which the
  assembler reads under those names), unless the span already has them or another dialect's
  indexed attributes.
* **GenAI list attributes as an OTLP array of JSON strings** (one per message, part or tool definition, where the
  conventions write one JSON text): read as the list.
* **The semconv 1.37+ event form** (``gen_ai.client.inference.operation.details``, as Strands Agents writes it
  on spans under ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``): the event's
  ``gen_ai.input.messages`` / ``gen_ai.output.messages`` / ``gen_ai.system_instructions`` /
  ``gen_ai.tool.definitions`` are the span's (Strands writes one event per attribute; lists in several
  events are joined in order). On a tool span, the call's ``tool_call`` part gives its arguments and its
  ``tool_call_response`` part its result when the span has no ``gen_ai.tool.call.*`` attributes.
* **Converse content blocks** (Strands Agents' default events, AWS Bedrock's message shape): a message's
  content is a JSON list of blocks ``{"text"}``, ``{"toolUse": {"toolUseId", "name", "input"}}``,
  ``{"toolResult": {"toolUseId", "status", "content": [...]}}`` (``{"text"}`` / ``{"json"}`` inside),
  media blocks; each ``toolResult`` is a tool message of its own, one with ``"status": "error"`` an error observation
  where no tool span says so (see :data:`FAILED_RESULT`). Strands' tool spans carry the arguments
  in a ``gen_ai.tool.message`` event and the result blocks in a ``gen_ai.choice`` event (``message``),
  or, in the latest conventions, the result blocks as ``gen_ai.tool.call.result``: the result is their text.
* **Tool definitions with ``inputSchema``** (MCP's name for the schema; Strands' and Bedrock's tool specs nest it
  under ``inputSchema.json``): the schema is the definition's ``parameters``. Strands writes its definitions
  (``gen_ai_tool_definitions``) on the ``invoke_agent`` span only; :mod:`.runs` gives them to its model spans.
* **OpenLLMetry's indexed messages holding content blocks** (``gen_ai.prompt.{i}.*`` / ``gen_ai.completion.{i}.*``):
  its instrumentations write content that is not a string, or not all text, as the JSON of its blocks. Its Anthropic
  instrumentation (an ``anthropic.chat`` span with ``llm.request.type = "completion"`` and no operation name: a model
  call) writes Anthropic's blocks (``text``, ``tool_use`` in an assistant's message, ``tool_result`` in the user's
  message after it, ``thinking``, images), newer versions an assistant's calls also as ``tool_calls.{j}.*``, a
  reply's ``thinking`` block as a completion of its own with role ``thinking``, and the tools' schemas as
  ``llm.request.functions.{i}.input_schema``; its OpenAI instrumentation writes list content (text parts, images).
  Such messages are read block by block: the calls, the tool results (tool messages), the reasoning, the text, media
  as their placeholders. A ``tool_result`` marked ``is_error`` (the app told the model its tool failed) is an error
  observation where no tool span says so: see :data:`FAILED_RESULT`.
* **OpenInference content parts**: a message whose content is a list of parts is written as
  ``llm.{input,output}_messages.{i}.message.contents.{j}.message_content.type|text`` instead of
  ``message.content``; its text parts, joined in order, become the message's content.
* **OpenInference's GenAI attributes** (``OPENINFERENCE_ENABLE_GENAI_SEMCONV=true``): a tool result whose text parses as
  JSON is written in ``gen_ai.input.messages`` as the parsed value, its spacing and number spelling lost; the same span's
  ``llm.input_messages.{i}.message.content`` holds the text the model saw, which is then the part's ``response``
  (matched by call id, where it parses to the same value). Without it the value is JSON re-encoded
  (:func:`~ee_middleware.messages.genai_to_openai`).
* **OpenInference's CrewAI event listener** (its LLM spans): a reply of tool calls only as ``output.value`` (OpenAI's
  JSON list), tool call names in quotes (their ``repr``), the tools as one ``llm.tools`` JSON list with ``repr``
  property schemas: read as the calls, the names and the schemas they are.
* **pydantic-ai**: tool results in messages are ``tool_call_response`` parts with ``result`` where the
  conventions say ``response``; its version-2 tool spans put the call's arguments and result in
  ``tool_arguments`` / ``tool_response``.
* **LangSmith's OpenTelemetry export** (``LANGSMITH_OTEL_ENABLED``; spans marked ``langsmith.span.kind``)
  names operations as the conventions do but writes the LangChain run's inputs and outputs as JSON in
  ``gen_ai.prompt`` / ``gen_ai.completion``: a model span's ``{"messages": [[message, ...]]}`` and
  ``{"generations": [[{"message": ...}]]}`` (LangChain messages, serialized or dumped), a tool span's
  arguments and ``{"output": <ToolMessage>}``. The thread is ``langsmith.metadata.thread_id``. An ``exception`` event's
  message is the exception's ``repr`` and its Python traceback: it becomes the exception's type and message.
* **Langfuse** (3+, OpenTelemetry-based; spans marked ``langfuse.observation.type``) names no GenAI
  operation: a ``generation`` is a model call (``langfuse.observation.model.name``) whose
  ``langfuse.observation.input`` is its list of messages, the tools it was given appended as
  ``{"role": "tool", "content": <tool definition>}``, and whose ``langfuse.observation.output`` is the
  reply; a ``tool`` is a tool call (its name the span's, its arguments the input, its result the
  output's ToolMessage). Tool calls in these messages are LangChain's (``name`` / ``args``). The thread
  is ``langfuse.trace.metadata.thread_id`` (JSON text).
* **MLflow tracing** (``mlflow.langchain.autolog`` with its OTLP export; spans marked ``mlflow.spanType``,
  every value JSON text): a ``CHAT_MODEL`` / ``LLM`` span is a model call whose ``mlflow.spanInputs`` is
  ``{"messages": [...]}`` and ``mlflow.spanOutputs`` ``{"choices": [{"message": ...}]}`` (OpenAI's shape,
  with nulls), its tools ``mlflow.chat.tools``, its model ``mlflow.llm.model``; a ``TOOL`` span is a tool
  call (``tool_call_id``, its result the output's ToolMessage). The thread is ``metadata``'s ``thread_id``.
* **The Vercel AI SDK** (``experimental_telemetry``; spans marked ``ai.operationId``): ``ai.generateText`` /
  ``ai.streamText`` (and ``*Object``) is the run; its ``.doGenerate`` / ``.doStream`` span a model call whose
  ``ai.prompt.messages`` is the AI SDK's prompt (content parts ``text``, ``tool-call`` with ``input`` or
  v4's ``args``, ``tool-result`` with v5+'s ``output: {type, value}`` or v4's ``result``; one whose ``output`` is
  ``error-text`` / ``error-json``, or v4's marked ``isError``, an error observation: see :data:`FAILED_RESULT`), its reply
  ``ai.response.text`` and ``ai.response.toolCalls``, its tools ``ai.prompt.tools`` (JSON text each,
  ``inputSchema`` or ``parameters``); an ``ai.toolCall`` span is a tool call (``ai.toolCall.name|id|args|result``,
  the result JSON). The thread is the first of ``ai.telemetry.metadata.threadId`` / ``thread_id`` /
  ``sessionId`` / ``session_id`` / ``conversationId`` / ``conversation_id``; the agent's name ``ai.telemetry.functionId``.
* **The OpenAI Agents SDK traced by Logfire** (``logfire.instrument_openai_agents()``; spans named by their
  ``logfire.msg_template``, ``gen_ai.system`` ``openai``): a ``Responses API`` span's messages are one ``events``
  attribute (a JSON list of ``{"event.name": "gen_ai.{role}.message", "role", "content" | "tool_calls" | "id"}``,
  one per content part or function call, the reply's trailing), a ``Chat completion with`` span's its ``input`` /
  ``output`` (OpenAI's chat shape); ``Function:`` spans are the tool calls, a ``Task:`` span (one per
  ``Runner.run``; ``Agent run:`` where there is none) the run; the trace's span has the thread as ``group_id``.
* **Google ADK's legacy spans** (ADK 1.x; 2.x under ``ADK_TELEMETRY_SCHEMA_VERSION_OPT_IN=1``; its default schema
  follows the conventions): a ``call_llm`` span's ``gcp.vertex.agent.llm_request`` / ``llm_response`` hold
  google-genai ``Content`` (``function_call`` / ``function_response`` parts), the system instruction and the
  function declarations; tool spans' ``gcp.vertex.agent.tool_call_args`` / ``tool_response``.
* **LiteLLM's OpenTelemetry callback** (``callbacks=["otel"]``; spans marked ``litellm.call_id``): messages are text
  parts with OpenAI's ``tool_calls`` / ``tool_call_id`` beside them; a reply's tool calls are
  ``gen_ai.completion.{i}.function_call.*`` (their ids from the next call's history, in :mod:`.runs`). Each call also
  has a ``raw_gen_ai_request`` child whose ``llm.{provider}.*`` attributes are the provider's request and response as
  Python ``repr`` text (read as literals, never run): in OpenAI's chat shape, each is the call (:func:`litellm_raw_calls`:
  the span above it is no call of its own then). With a span active and ``USE_OTEL_LITELLM_REQUEST_SPAN`` unset
  LiteLLM writes every call onto that span, so its raw spans are the only record of each call; where they cannot be
  read :func:`run_problem` says so.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.normalize import operation_of, unflatten
from ee_middleware.capture.spandata import SpanData
from ee_middleware.messages import (
    arguments_json,
    content_to_text,
    dumps,
    genai_arguments,
    genai_to_openai,
    langchain_to_openai,
    media_placeholder,
)

_MESSAGE_EVENTS = {f"gen_ai.{role}.message": role for role in ("system", "user", "assistant", "tool")}
_CHOICE = "gen_ai.choice"
_DETAILS = "gen_ai.client.inference.operation.details"
_DETAILS_KEYS = (sc.INPUT_MESSAGES, sc.OUTPUT_MESSAGES, sc.SYSTEM_INSTRUCTIONS, sc.TOOL_DEFINITIONS)
_STRANDS = "strands-agents"
_EVENT_CONTENT = "gen_ai.event.content"
_FLAT_BODY = ("role", "content", "tool_calls", "id", "tool_call_id", "message", "index", "finish_reason")
_LEGACY = {"gen_ai.content.prompt": ("gen_ai.prompt", "user"), "gen_ai.content.completion": ("gen_ai.completion", "assistant")}
_CONTENT_PART = re.compile(r"^(llm\.(?:input|output)_messages\.\d+\.message)\.contents\.(\d+)\.message_content\.(.+)$")
_INDEXED = {
    sc.INPUT_MESSAGES: ("gen_ai.prompt.", "llm.input_messages."),
    sc.OUTPUT_MESSAGES: ("gen_ai.completion.", "llm.output_messages."),
}


def may_name_operation(attributes: Mapping[str, Any]) -> bool:
    """Whether :func:`adapt` may give a span with these ``attributes`` a GenAI operation they do not name (its dialect's
    keys are among them: a cheap look before :func:`adapted_operation`, which the live span processor asks then)."""
    if any(key in attributes for key in _OPERATION_KEYS):
        return True
    return any(_PROMPT_ROLE.match(key) or _RAW_MESSAGES.match(key) for key in attributes)


def adapted_operation(span: SpanData) -> str | None:
    """The GenAI operation ``span`` has once adapted (a Langfuse generation's ``chat``; ``None`` for the other spans of
    its dialect, such as Logfire's web requests, which carry its keys too)."""
    return operation_of(adapt(span).attributes)


def adapt(span: SpanData) -> SpanData:
    """``span`` with the shapes above rewritten into the GenAI attributes the assembler reads."""
    span = _with_resume_mark(span)
    choices = _output_choices(span)
    if _LANGFUSE_TYPE in span.attributes:
        span = _from_langfuse(span)
    elif _LANGSMITH_KIND in span.attributes:
        span = _from_langsmith(span)
    elif _MLFLOW_TYPE in span.attributes:
        span = _from_mlflow(span)
    elif _VERCEL_OP in span.attributes:
        span = _from_vercel_ai(span)
    elif _LOGFIRE_TEMPLATE in span.attributes:
        span = _from_logfire_openai_agents(span)
    elif _ADK_REQUEST in span.attributes or _ADK_TOOL_ARGS in span.attributes:
        span = _from_adk_legacy(span)
    elif LITELLM_CALL in span.attributes:
        span = _from_litellm(span)
    elif (provider := litellm_raw_provider(span)) is not None and operation_of(span.attributes) is None:
        span = _from_litellm_raw(span, provider)
    elif any(_PROMPT_ROLE.match(key) for key in span.attributes):
        span = _from_openllmetry_blocks(span)
    op = operation_of(span.attributes)
    if op in sc.MODEL_OPERATIONS:
        attrs = _with_details_events(span, _with_json_items(span.attributes))
        attrs = _with_event_messages(span, attrs)
        attrs = _with_tool_responses(attrs)
        attrs = _with_content_parts(attrs)
        attrs = _with_exact_tool_text(attrs)
        attrs = _with_openinference_calls(attrs)
        attrs = _with_tool_parameters(attrs)
        attrs = _with_tool_error_positions(attrs)
        if choices > 1:
            attrs = {**attrs, OUTPUT_CHOICES: choices}
    elif op == sc.OP_EXECUTE_TOOL:
        attrs = _with_details_events(span, span.attributes)
        attrs = _with_tool_events(span, attrs)
        attrs = _with_tool_span_keys(attrs)
        attrs = _with_failed_tool_message(attrs)
    elif op == sc.OP_INVOKE_AGENT:
        attrs = _with_tool_parameters(span.attributes)  # an agent span's tools may be its model spans' (see runs)
    else:
        return span
    return span if attrs is span.attributes else replace(span, attributes=attrs)


OUTPUT_CHOICES = "ee.ingest.output_choices"
"""How many alternative replies (choices, candidates: a request's ``n`` > 1) a model span holds, where it holds more
than one: each of its output messages is one (:func:`_output_choices`). :func:`~ee_middleware.ingest.runs.chosen_replies`
keeps the one the run went on with and drops the mark."""


def _output_choices(span: SpanData) -> int:
    """How many choices a model span's reply holds, as its dialect writes them (before :func:`adapt` reads them): the
    GenAI conventions' ``gen_ai.output.messages`` (each message one choice, also in the details event), ``gen_ai.choice``
    events, OpenLLMetry's ``gen_ai.completion.{i}`` (a ``thinking`` one is a part of the reply, not a choice),
    OpenInference's ``llm.output_messages.{i}``, LangSmith's ``generations[0]``, MLflow's ``choices``. 0 for capture's own
    spans (their output is one decision's messages) and for dialects whose several output messages are one reply's parts
    (Logfire's OpenAI Agents spans: one per output item)."""
    attrs = span.attributes
    if sc.EE_RECORDER in attrs or _LOGFIRE_TEMPLATE in attrs or operation_of(attrs) not in (*sc.MODEL_OPERATIONS, None):
        return 0
    raw = attrs.get(sc.OUTPUT_MESSAGES)
    if raw in (None, ""):
        raw = next(
            (event.get(sc.OUTPUT_MESSAGES) for name, event in span.events if name == _DETAILS and event.get(sc.OUTPUT_MESSAGES)), None
        )
    if raw not in (None, ""):
        decoded = _decoded(raw) if isinstance(raw, str) else raw
        return len(decoded) if isinstance(decoded, list | tuple) else 0
    if _LANGSMITH_KIND in attrs:
        completion = _decoded(attrs.get("gen_ai.completion"))
        generations = completion.get("generations") if isinstance(completion, Mapping) else None
        first = generations[0] if isinstance(generations, list) and generations and isinstance(generations[0], list) else None
        return len(first) if first is not None else 0
    if _MLFLOW_TYPE in attrs:
        output = _decoded(attrs.get("mlflow.spanOutputs"))
        choices = output.get("choices") if isinstance(output, Mapping) else None
        return len(choices) if isinstance(choices, list) else 0
    events = sum(1 for name, _ in span.events if name == _CHOICE)
    if events:
        return events
    for prefix in ("gen_ai.completion.", "llm.output_messages."):
        indexes: dict[str, bool] = {}
        for key, value in attrs.items():
            if key.startswith(prefix):
                index, _, rest = key[len(prefix) :].partition(".")
                if index.isdigit():
                    thinking = rest in ("role", "message.role") and value == "thinking"
                    indexes[index] = indexes.get(index, False) or thinking
        if indexes:
            return sum(1 for thinking in indexes.values() if not thinking)
    return 0


def _with_resume_mark(span: SpanData) -> SpanData:
    """A graph run that continues its thread from its checkpoint (after a human review or a breakpoint) marked
    ``ee.langgraph.resumed``, as capture marks it, so its first steps are the reviewed turn it ran: a graph invoked with
    ``None`` or a ``Command`` (``Command(resume=...)`` after ``interrupt()``: see :func:`_resumes`) as its input.
    OpenInference writes that input as ``input.value``, OpenLLMetry as ``traceloop.entity.input``'s ``inputs`` (on its
    workflow span, below the run's ``invoke_agent`` span: :mod:`.runs` carries the mark up to the run's root),
    LangSmith as ``gen_ai.prompt``'s ``input`` (spans without a parent only)."""
    attrs = span.attributes
    if span.parent_span_id is not None and span.parent_remote is not True and _TRACELOOP_INPUT not in attrs:
        return span  # OpenLLMetry's graph span may sit under an app's span
    if sc.EE_RESUMED in attrs or sc.EE_STATUS in attrs:
        return span  # capture's own spans say it themselves
    resumed = False
    if "input.value" in attrs and str(attrs.get("openinference.span.kind") or "").upper() in ("AGENT", "CHAIN"):
        resumed = _resumes(_decoded(attrs["input.value"]))
    if not resumed and _TRACELOOP_INPUT in attrs:
        value = _decoded(attrs[_TRACELOOP_INPUT])
        resumed = isinstance(value, Mapping) and "inputs" in value and _resumes(value["inputs"])
    if not resumed and _LANGSMITH_KIND in attrs:
        value = _decoded(attrs.get("gen_ai.prompt"))
        resumed = isinstance(value, Mapping) and set(value) == {"input"} and _resumes(value["input"])
    return replace(span, attributes={**attrs, sc.EE_RESUMED: True}) if resumed else span


_COMMAND_FIELDS = frozenset({"graph", "update", "resume", "goto"})
"""The fields of LangGraph's ``Command`` (``langgraph.types``), as the instrumentations serialize one: a JSON object of
exactly these keys (``{"graph": null, "update": null, "resume": "ok", "goto": []}``)."""


def _resumes(graph_input: Any) -> bool:
    """Whether a graph's input, as an instrumentation serialized it, continues the thread from its checkpoint rather
    than starting from new input: ``None``, or a ``Command`` (:data:`_COMMAND_FIELDS`), as capture tells it
    (:func:`~ee_middleware.capture.callbacks.resumes_from_checkpoint`)."""
    return graph_input is None or (isinstance(graph_input, Mapping) and set(graph_input) == _COMMAND_FIELDS)


_TRACELOOP_INPUT = "traceloop.entity.input"
_TRACELOOP_OUTPUT = "traceloop.entity.output"


def graph_run_attributes(span: SpanData) -> dict[str, Any]:
    """The attributes capture writes on a LangGraph run's root span from the graph's input and what it returned
    (``ee.task`` and ``gen_ai.input.messages``; ``ee.final_answer``, ``gen_ai.output.messages`` and
    ``ee.tool_call.error_positions``: see :meth:`~ee_middleware.capture.payloads.PayloadEncoder.graph_input_attributes`
    and ``graph_output_attributes``), read from the span of that graph run as another instrumentation wrote it:
    OpenInference's ``input.value`` / ``output.value`` (JSON), OpenLLMetry's ``traceloop.entity.input``'s ``inputs`` /
    ``traceloop.entity.output``'s ``outputs``. The messages in them (LangChain's ``{"type", "data"}`` dicts, its
    ``lc`` serialization, ``[role, text]`` pairs, OpenAI's role dicts) are read back as LangChain messages, so that the
    run's task is the user's question (not a ``Send`` branch's), its answer what the graph returned (a node that rewrote
    the model's reply, ``create_agent``'s structured response) and its closing tool messages the observations of its
    last calls. A value that is no graph state (not a JSON object, or messages that do not read) is left alone; a run
    resumed from its checkpoint (``Command``, ``None``) has no task, as in capture. :mod:`.runs` calls this for the
    span that holds a run's graph input (its root, or OpenLLMetry's workflow span under it)."""
    from ee_middleware.capture.payloads import PayloadEncoder  # imports LangChain: only where a graph's values are read
    from ee_middleware.capture.redaction import Redactor

    attrs = span.attributes
    graph_input: Any = _MISSING
    graph_output: Any = _MISSING
    if "input.value" in attrs or "output.value" in attrs:
        if attrs.get("input.mime_type") == "application/json":
            graph_input = _decoded(attrs.get("input.value"))
        if attrs.get("output.mime_type") == "application/json":
            graph_output = _decoded(attrs.get("output.value"))
    elif _TRACELOOP_INPUT in attrs or _TRACELOOP_OUTPUT in attrs:
        value = _decoded(attrs.get(_TRACELOOP_INPUT))
        if isinstance(value, Mapping) and "inputs" in value:
            graph_input = value["inputs"]
        value = _decoded(attrs.get(_TRACELOOP_OUTPUT))
        if isinstance(value, Mapping) and "outputs" in value:
            graph_output = value["outputs"]
    elif _LANGSMITH_KIND in attrs:  # the graph's chain run: its inputs and outputs as JSON (see _from_langsmith)
        graph_input, graph_output = _decoded(attrs.get("gen_ai.prompt")), _decoded(attrs.get("gen_ai.completion"))
    # no redaction and no cut here: the assembler redacts and caps what it reads from the root, as for capture's spans
    encoder = PayloadEncoder(Redactor(defaults=False), _UNCUT)
    found: dict[str, Any] = {}
    state = _graph_state(graph_input) if isinstance(graph_input, Mapping) and not _resumes(graph_input) else None
    if state is not None:
        found.update(encoder.graph_input_attributes(state))
    state = _graph_state(graph_output) if isinstance(graph_output, Mapping) else None
    if state is not None:
        paused = _INTERRUPTS in state  # LangGraph returns the pending interrupts with the state it paused in
        found.update(encoder.graph_output_attributes({k: v for k, v in state.items() if k != _INTERRUPTS}, paused=paused))
    return found


_MISSING = object()
_UNCUT = 2**62
_INTERRUPTS = "__interrupt__"
_LC_TYPES = {"HumanMessage": "human", "AIMessage": "ai", "SystemMessage": "system", "ToolMessage": "tool", "ChatMessage": "chat"}
_LC_TYPES |= {"FunctionMessage": "function", "RemoveMessage": "remove"}


def _graph_state(value: Mapping[str, Any]) -> dict[str, Any] | None:
    """A graph's state (its input or output) as an instrumentation serialized it, each list of messages and each single
    message in it read back as LangChain messages (:func:`_serialized_message`); ``None`` where a value that looks like
    messages does not read as them (then the values are not what capture would have seen)."""
    from langchain_core.messages import convert_to_messages, messages_from_dict

    def read(message: Any) -> Any:
        if isinstance(message, Mapping) and message.get("lc") == 1:
            name = str((message.get("id") or ["?"])[-1])
            message = {"type": _LC_TYPES.get(name, name), "data": message.get("kwargs")}
        elif _dumped_message(message):
            message = {"type": message["type"], "data": message}
        if isinstance(message, Mapping) and isinstance(message.get("data"), Mapping) and "role" not in message:
            [read_back] = messages_from_dict([message])
            return read_back
        [read_back] = convert_to_messages([tuple(message) if isinstance(message, list) else message])
        return read_back

    state: dict[str, Any] = {}
    for key, item in value.items():
        try:
            if isinstance(item, list) and item and all(_serialized_message(m) for m in item):
                state[key] = [read(m) for m in item]
            elif isinstance(item, Mapping) and _serialized_message(item) and "role" not in item:
                state[key] = read(item)
            elif not (isinstance(item, Mapping) and item.get("lc") == 1 and item.get("type") == "not_implemented"):
                state[key] = item  # (an object LangChain's serializer wrote as its repr is not the value capture read)
        except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError):
            return None  # shaped like messages but not LangChain's: not a state capture would have read
    return state


def _serialized_message(value: Any) -> bool:
    """Whether ``value`` is a LangChain message as OpenInference (``{"type": "human", "data": {...}}``), OpenLLMetry
    (``{"lc": 1, "type": "constructor", "id": [..., "HumanMessage"], "kwargs": {...}}``) or JSON itself (a ``("user",
    text)`` pair as a list, an OpenAI role dict) writes it."""
    if isinstance(value, Mapping):
        if value.get("lc") == 1:
            return value.get("type") == "constructor" and isinstance(value.get("kwargs"), Mapping) and isinstance(value.get("id"), list)
        if isinstance(value.get("type"), str) and isinstance(value.get("data"), Mapping):
            return "content" in value["data"]
        return (isinstance(value.get("role"), str) and "content" in value) or _dumped_message(value)
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], str | list)


def _dumped_message(value: Any) -> bool:
    """Whether ``value`` is a LangChain message's ``model_dump()`` (``{"content": ..., "type": "human", ...}``), as
    LangSmith's OpenTelemetry export writes a graph's messages."""
    return isinstance(value, Mapping) and value.get("type") in _DUMPED_TYPES and "content" in value and "role" not in value


_DUMPED_TYPES = frozenset({*_LC_TYPES.values(), "AIMessageChunk", "HumanMessageChunk", "ToolMessageChunk", "SystemMessageChunk"})


FAILED_RESULT = "is_error"
"""The mark a dialect puts on a tool result its messages say failed (a ``tool_call_response`` part, or an OpenAI-shaped
tool message): Anthropic's ``tool_result`` block names it so; Converse's ``toolResult`` says ``"status": "error"``, the
AI SDK's ``tool-result`` an ``output`` of type ``error-text`` / ``error-json`` (v4: ``isError``). No part of a message
(:func:`genai_to_openai` leaves it out): :func:`_with_tool_error_positions` makes it the span's
``ee.tool_call.error_positions``."""


TOOL_MESSAGE_OUTPUTS = (
    "output.value",
    _TRACELOOP_OUTPUT,
    "gen_ai.completion",
    "langfuse.observation.output",
    "mlflow.spanOutputs",
    sc.TOOL_CALL_RESULT,
)
"""Where a tool span of a LangChain tool holds the ``ToolMessage`` the tool returned (dumped, serialized with ``lc``, or
under ``output``): OpenInference, OpenLLMetry, LangSmith, Langfuse, MLflow, and the GenAI result of any of them."""


def _with_failed_tool_message(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """A tool span whose ``ToolMessage`` says ``"status": "error"`` marked failed (``error.type`` ``tool_error``, as
    capture marks the same tool call), so its observation is an error: a tool error the tool handled
    (``ToolException`` with ``handle_tool_error``, ``ToolNode``'s default handling, ``ToolRetryMiddleware``) ends the
    tool's run without an exception, its span's status OK, and only the message the model is given says it failed.
    A span already marked failed keeps its own mark."""
    if attrs.get(sc.ERROR_TYPE):
        return attrs
    for key in TOOL_MESSAGE_OUTPUTS:
        raw = attrs.get(key)
        if isinstance(raw, str) and '"status"' in raw and '"error"' in raw and _tool_message_status(_decoded(raw)) == "error":
            return {**attrs, sc.ERROR_TYPE: "tool_error"}
    return attrs


def _tool_message_status(value: Any) -> Any:
    """The ``status`` of a LangChain ``ToolMessage`` in the shapes instrumentations write it (``{"type": "tool", "data":
    {...}}``, ``{"lc": 1, ..., "kwargs": {...}}``, the message's fields, any of them under ``output``), else None."""
    if isinstance(value, Mapping) and set(value) >= {"output"} and isinstance(value.get("output"), Mapping):
        value = value["output"]
    if isinstance(value, Mapping) and value.get("type") == "tool" and isinstance(value.get("data"), Mapping):
        value = {"type": "tool", **value["data"]}
    fields = _lc_fields(value)
    if isinstance(fields, Mapping) and fields.get("type") == "tool" and "tool_call_id" in fields:
        return fields.get("status")
    return None


def _with_tool_error_positions(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """A model span's input messages holding tool results marked failed (:data:`FAILED_RESULT`), with their positions
    among the messages as the assembler reads them (``ee.tool_call.error_positions``, as capture writes it for a
    ``ToolMessage`` with ``status="error"``), so a step answered by one is an error where no tool span says so (model
    spans only). A span that already has positions keeps them."""
    raw = attrs.get(sc.INPUT_MESSAGES)
    if not isinstance(raw, str) or f'"{FAILED_RESULT}"' not in raw or sc.EE_TOOL_ERROR_POSITIONS in attrs:
        return attrs
    messages = _decoded(raw)
    if not isinstance(messages, list):
        return attrs  # the span's own check reports it
    positions: list[int] = []
    at = 0
    for message in messages:
        if not isinstance(message, Mapping):
            return attrs
        try:
            converted = genai_to_openai([message])
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
            return attrs  # the span's own check reports it
        if isinstance(message.get("parts"), list):  # a tool message per response part, first (see genai_to_openai)
            responses = [p for p in message["parts"] if isinstance(p, Mapping) and p.get("type") == "tool_call_response"]
            positions += [at + i for i, part in enumerate(responses) if part.get(FAILED_RESULT) is True]
        elif message.get("role") == "tool" and message.get(FAILED_RESULT) is True:
            positions.append(at)
        at += len(converted)
    return {**attrs, sc.EE_TOOL_ERROR_POSITIONS: tuple(positions)} if positions else attrs


def _with_json_items(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """GenAI list attributes written as an OTLP ``arrayValue`` of JSON strings (one per message, part or tool) as the
    lists they are; plain strings in ``gen_ai.system_instructions`` are its text parts. (An ``arrayValue`` of
    ``kvlistValue`` objects is read as it is.)"""
    new: dict[str, Any] = {}
    for key in _DETAILS_KEYS:
        value = attrs.get(key)
        if not (isinstance(value, list | tuple) and value and all(isinstance(item, str) for item in value)):
            continue
        decoded = [_decoded(item) if item.lstrip().startswith("{") else item for item in value]
        if all(isinstance(item, Mapping) for item in decoded):
            new[key] = dumps(decoded)
        elif key == sc.SYSTEM_INSTRUCTIONS and all(isinstance(item, str) for item in decoded):
            new[key] = dumps([{"type": "text", "content": item} for item in decoded])
    return {**attrs, **new} if new else attrs


def _with_details_events(span: SpanData, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``gen_ai.client.inference.operation.details`` events' attributes the span does not have."""
    found: dict[str, list[Any]] = {}
    for name, event in span.events:
        if name == _DETAILS:
            for key in _DETAILS_KEYS:
                if event.get(key) not in (None, ""):
                    found.setdefault(key, []).append(_decoded(event[key]))
    new = {}
    for key, values in found.items():
        if attrs.get(key) not in (None, "") or (key in _INDEXED and _has_messages(attrs, key)):
            continue
        joined = [item for value in values for item in value] if all(isinstance(v, list) for v in values) else values[0]
        new[key] = joined if isinstance(joined, str) else dumps(joined)
    return {**attrs, **new} if new else attrs


def _with_event_messages(span: SpanData, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    if not span.events:
        return attrs
    found: dict[str, list[dict[str, Any]]] = {sc.INPUT_MESSAGES: [], sc.OUTPUT_MESSAGES: []}
    choices: list[tuple[int, list[dict[str, Any]]]] = []
    for name, event in span.events:
        if name in _MESSAGE_EVENTS:
            found[sc.INPUT_MESSAGES].extend(_messages(_MESSAGE_EVENTS[name], _body(event)))
        elif name == _CHOICE:
            body = _body(event)
            index = body.get("index") if isinstance(body, Mapping) else None
            message = body.get("message", {}) if isinstance(body, Mapping) and "message" in body else body
            choices.append((index if isinstance(index, int) else len(choices), _messages("assistant", message)))
        elif name in _LEGACY:
            key, role = _LEGACY[name]
            value = _decoded(event.get(key))
            items = value if isinstance(value, list) else [value] if value is not None else []
            target = sc.INPUT_MESSAGES if role == "user" else sc.OUTPUT_MESSAGES
            found[target].extend(m for item in items for m in _messages(role, item))
    found[sc.OUTPUT_MESSAGES].extend(m for _, messages in sorted(choices, key=lambda c: c[0]) for m in messages)
    new = {key: messages for key, messages in found.items() if messages and not _has_messages(attrs, key)}
    if not new:
        return attrs
    return {**attrs, **{key: dumps(messages) for key, messages in new.items()}}


def _has_messages(attrs: Mapping[str, Any], key: str) -> bool:
    return attrs.get(key) not in (None, "") or any(k.startswith(_INDEXED[key]) for k in attrs)


def _body(event: Mapping[str, Any]) -> Any:
    if _EVENT_CONTENT in event:
        return _decoded(event[_EVENT_CONTENT])
    return {key: _decoded(event[key]) if key in ("tool_calls", "message") else event[key] for key in _FLAT_BODY if key in event}


def _decoded(value: Any) -> Any:
    """JSON text decoded; text that is not JSON is kept as it is (a message's plain text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def _messages(role: str, body: Any) -> list[dict[str, Any]]:
    """One event's message in OpenAI's chat shape; Converse content blocks may make several (a tool
    message per ``toolResult``)."""
    blocks = _converse_blocks(body.get("content") if isinstance(body, Mapping) else body)
    if blocks is None:
        return [_message(role, body)]
    named = body.get("role") if isinstance(body, Mapping) else None
    return _converse_messages(str(named or role), blocks)


_CONVERSE_KINDS = frozenset(
    {
        "text",
        "toolUse",
        "toolResult",
        "image",
        "document",
        "video",
        "json",
        "reasoningContent",
        "cachePoint",
        "guardContent",
        "citationsContent",
    }
)
_CONVERSE_SKIPPED = frozenset({"reasoningContent", "cachePoint"})


def _converse_blocks(value: Any) -> list[Mapping[str, Any]] | None:
    """``value`` (or its JSON text) when it is a list of Converse content blocks (Strands, Bedrock):
    each block an object with one key naming its kind; else None."""
    if isinstance(value, str) and value.startswith("[{"):
        value = _decoded(value)
    if not (isinstance(value, list) and value):
        return None
    if all(isinstance(b, Mapping) and len(b) == 1 and next(iter(b)) in _CONVERSE_KINDS for b in value):
        return value
    return None


def _converse_messages(role: str, blocks: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    texts: list[Any] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in blocks:
        ((kind, value),) = block.items()
        if kind == "toolUse" and isinstance(value, Mapping):
            function = {"name": str(value.get("name") or ""), "arguments": arguments_json(value.get("input"))}
            calls.append({"id": str(value.get("toolUseId") or ""), "type": "function", "function": function})
        elif kind == "toolResult" and isinstance(value, Mapping):
            result = {"role": "tool", "tool_call_id": str(value.get("toolUseId") or ""), "content": _converse_text(value.get("content"))}
            results.append({**result, FAILED_RESULT: True} if value.get("status") == "error" else result)
        elif kind not in _CONVERSE_SKIPPED:
            texts.append(_converse_block(kind, value))
    if results and not texts and not calls:
        return results
    message: dict[str, Any] = {"role": role, "content": content_to_text(texts)}
    if calls:
        message["tool_calls"] = calls
    return [*results, message]


def _converse_block(kind: str, value: Any) -> Any:
    """A Converse block as a content block :func:`~ee_middleware.messages.content_to_text` reads."""
    if kind == "text":
        return value if isinstance(value, str) else dumps(value)
    if kind == "json":
        return dumps(value)
    return {"type": kind, **value} if isinstance(value, Mapping) else {"type": kind, "content": value}


def _converse_text(content: Any) -> str:
    """The text a ``toolResult``'s content blocks (``{"text"}``, ``{"json"}``, media) give the model."""
    blocks = _converse_blocks(content)
    if blocks is None:
        return content_to_text(content)
    return content_to_text([_converse_block(*next(iter(b.items()))) for b in blocks if next(iter(b)) not in _CONVERSE_SKIPPED])


def _message(role: str, body: Any) -> dict[str, Any]:
    """One message in OpenAI's chat shape (checked later like any other span's messages)."""
    if not isinstance(body, Mapping):
        return {"role": role, "content": body if isinstance(body, str) or body is None else dumps(body)}
    message = {**body, "role": body.get("role") or role}
    if message["role"] == "tool" and "tool_call_id" not in message and "id" in message:
        message["tool_call_id"] = message.pop("id")
    return message


def _with_tool_responses(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """``tool_call_response`` parts: pydantic-ai's carry ``result`` (the conventions say ``response``); Strands' response
    is the result's Converse blocks (read as their text); OpenLLMetry's (its GenAI messages, 0.62) is the JSON of a
    tool message's text blocks where the tool returned blocks (read as their text, as capture reads them)."""
    changed = {}
    openllmetry = any(key.startswith("traceloop.") for key in attrs)
    for key in (sc.INPUT_MESSAGES, sc.OUTPUT_MESSAGES):
        raw = attrs.get(key)
        if isinstance(raw, str) and (
            '"tool_call_response"' not in raw or ('"result"' not in raw and '[{"' not in raw and not (openllmetry and '"[{\\"' in raw))
        ):
            continue
        messages = _decoded(raw)
        if not isinstance(messages, list):
            continue  # the span's own check reports it
        fixed = [_message_with_responses(m, text_blocks=openllmetry) for m in messages]
        if any(a is not b for a, b in zip(fixed, messages, strict=True)):
            changed[key] = dumps(fixed) if isinstance(raw, str) else fixed
    return {**attrs, **changed} if changed else attrs


def _message_with_responses(message: Any, *, text_blocks: bool = False) -> Any:
    parts = message.get("parts") if isinstance(message, Mapping) else None
    if not isinstance(parts, list):
        return message
    fixed = [
        _response_part(part, text_blocks=text_blocks) if isinstance(part, Mapping) and part.get("type") == "tool_call_response" else part
        for part in parts
    ]
    return {**message, "parts": fixed} if any(a is not b for a, b in zip(fixed, parts, strict=True)) else message


def _with_tool_events(span: SpanData, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """A tool span's arguments and result from its events (Strands), and Converse result blocks as their text."""
    new: dict[str, Any] = {}
    for name, event in span.events:
        if name == "gen_ai.tool.message" and event.get("content") is not None:
            new.setdefault(sc.TOOL_CALL_ARGUMENTS, event["content"])
        elif name == _CHOICE and event.get("message") is not None:
            new.setdefault(sc.TOOL_CALL_RESULT, event["message"])
        if event.get("id") and name in ("gen_ai.tool.message", _CHOICE):
            new.setdefault(sc.TOOL_CALL_ID, event["id"])
    for key, kind, field in ((sc.INPUT_MESSAGES, "tool_call", "arguments"), (sc.OUTPUT_MESSAGES, "tool_call_response", "response")):
        part = _first_part(attrs.get(key), kind)
        if part is not None and part.get(field) is not None:
            value = part[field]
            new.setdefault(
                sc.TOOL_CALL_ARGUMENTS if kind == "tool_call" else sc.TOOL_CALL_RESULT, value if isinstance(value, str) else dumps(value)
            )
    added = {key: value for key, value in new.items() if attrs.get(key) in (None, "")}
    merged = {**attrs, **added}
    result = merged.get(sc.TOOL_CALL_RESULT)
    if _STRANDS in (merged.get("gen_ai.system"), merged.get(sc.PROVIDER_NAME)) and _converse_blocks(result) is not None:
        added[sc.TOOL_CALL_RESULT] = _converse_text(result)
    return {**attrs, **added} if added else attrs


def _first_part(raw: Any, kind: str) -> Mapping[str, Any] | None:
    """The first part of type ``kind`` in GenAI messages (JSON text or decoded)."""
    messages = _decoded(raw)
    for message in messages if isinstance(messages, list) else []:
        for part in message.get("parts") or [] if isinstance(message, Mapping) else []:
            if isinstance(part, Mapping) and part.get("type") == kind:
                return part
    return None


def _response_part(part: Mapping[str, Any], *, text_blocks: bool = False) -> Mapping[str, Any]:
    if "response" not in part and "result" in part:
        return {**part, "response": part["result"]}
    if _converse_blocks(part.get("response")) is not None:  # Strands: the result's Converse blocks
        return {**part, "response": _converse_text(part["response"])}
    blocks = _blocks(part.get("response")) if text_blocks else None
    if blocks is not None and all(block.get("type") == "text" for block in blocks):  # OpenLLMetry: the blocks' JSON
        return {**part, "response": content_to_text(blocks)}
    return part


def _with_tool_parameters(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Tool definitions whose schema is ``inputSchema`` (MCP's name; Strands' and Bedrock's tool specs nest it under
    ``inputSchema.json``) with that schema as ``parameters``, as the conventions' (and OpenAI's) definitions name it."""
    raw = attrs.get(sc.TOOL_DEFINITIONS)
    if raw in (None, "") or (isinstance(raw, str) and '"inputSchema"' not in raw):
        return attrs
    tools = _decoded(raw)
    if not isinstance(tools, list):
        return attrs  # the span's own check reports it
    fixed = [_tool_with_parameters(t) for t in tools]
    if all(a is b for a, b in zip(fixed, tools, strict=True)):
        return attrs
    return {**attrs, sc.TOOL_DEFINITIONS: dumps(fixed)}


def _tool_with_parameters(tool: Any) -> Any:
    if not isinstance(tool, Mapping) or "parameters" in tool or not isinstance(tool.get("inputSchema"), Mapping):
        return tool
    schema = tool["inputSchema"]
    schema = schema["json"] if len(schema) == 1 and isinstance(schema.get("json"), Mapping) else schema
    return {**{k: v for k, v in tool.items() if k not in ("inputSchema", "outputSchema")}, "parameters": schema}


def _with_tool_span_keys(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """pydantic-ai's version-2 tool spans: ``tool_arguments`` / ``tool_response``. OpenLLMetry's: the LangChain tool
    run's whole input (``{"input_str": ..., "tags": ..., "metadata": ..., "inputs": {...}, "kwargs": ...}``) as
    ``gen_ai.tool.call.arguments``, whose ``inputs`` are the arguments the tool ran with."""
    changed = {
        target: attrs[source]
        for source, target in (("tool_arguments", sc.TOOL_CALL_ARGUMENTS), ("tool_response", sc.TOOL_CALL_RESULT))
        if source in attrs and target not in attrs
    }
    if _TRACELOOP_INPUT in attrs and isinstance(attrs.get(sc.TOOL_CALL_ARGUMENTS), str):
        wrapped = _decoded(attrs[sc.TOOL_CALL_ARGUMENTS])
        if isinstance(wrapped, Mapping) and "input_str" in wrapped and isinstance(wrapped.get("inputs"), Mapping):
            changed[sc.TOOL_CALL_ARGUMENTS] = dumps(wrapped["inputs"])
    return {**attrs, **changed} if changed else attrs


def _with_content_parts(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """OpenInference's ``message.contents.{j}.message_content.*`` parts joined into ``message.content``: text
    parts as their text, an image part (``message_content.image.image.url``) as every dialect's image is said
    (:func:`~ee_middleware.messages.content_to_text`)."""
    parts: dict[str, dict[int, dict[str, Any]]] = {}
    for key, value in attrs.items():
        match = _CONTENT_PART.match(key) if ".contents." in key else None
        if match and f"{match.group(1)}.content" not in attrs:
            parts.setdefault(match.group(1), {}).setdefault(int(match.group(2)), {})[match.group(3)] = value
    if not parts:
        return attrs
    return {
        **attrs,
        **{f"{message}.content": content_to_text([_content_block(found[j]) for j in sorted(found)]) for message, found in parts.items()},
    }


_OI_MESSAGE = re.compile(r"^llm\.input_messages\.(\d+)\.message\.(role|content|tool_call_id)$")


def _with_exact_tool_text(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """``tool_call_response`` parts of ``gen_ai.input.messages`` holding a parsed JSON value with the text the model saw,
    where OpenInference's ``llm.input_messages.{i}.message.*`` on the same span hold it for the same call id and it
    parses to that value (the order of a reused id's results is kept)."""
    raw = attrs.get(sc.INPUT_MESSAGES)
    if not isinstance(raw, str) or '"tool_call_response"' not in raw:
        return attrs
    indexed: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        match = _OI_MESSAGE.match(key) if key.startswith("llm.input_messages.") else None
        if match:
            indexed.setdefault(int(match.group(1)), {})[match.group(2)] = value
    texts: dict[str, list[str]] = {}
    for _, message in sorted(indexed.items()):
        if message.get("role") == "tool" and isinstance(message.get("content"), str) and message.get("tool_call_id"):
            texts.setdefault(str(message["tool_call_id"]), []).append(message["content"])
    if not texts:
        return attrs
    messages = _decoded(raw)
    if not isinstance(messages, list):
        return attrs  # the span's own check reports it
    changed = False
    fixed_messages = []
    for message in messages:
        parts = message.get("parts") if isinstance(message, Mapping) else None
        if not isinstance(parts, list):
            fixed_messages.append(message)
            continue
        fixed = []
        for part in parts:
            if isinstance(part, Mapping) and part.get("type") == "tool_call_response" and texts.get(str(part.get("id"))):
                text = texts[str(part.get("id"))].pop(0)
                response = part.get("response")
                if not isinstance(response, str) and dumps(_decoded(text)) == dumps(response):
                    part, changed = {**part, "response": text}, True
            fixed.append(part)
        fixed_messages.append({**message, "parts": fixed})
    return {**attrs, sc.INPUT_MESSAGES: dumps(fixed_messages)} if changed else attrs


_OI_CALL_NAME = re.compile(r"^llm\.(?:input|output)_messages\.\d+\.message\.tool_calls\.\d+\.tool_call\.function\.name$")


def _with_openinference_calls(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """What OpenInference's CrewAI event listener writes unlike its conventions (other OpenInference spans are left as
    they are):

    * a reply of tool calls has no ``llm.output_messages``, only ``output.value``: the calls as OpenAI's JSON list;
    * a tool call's function name in ``llm.*_messages`` is its ``repr`` (``'check_stock'``: a function name never
      holds quotes);
    * the tools are one ``llm.tools`` JSON list of OpenAI definitions (not ``llm.tools.{i}.tool.json_schema``), their
      property schemas ``repr`` text (``"{'type': 'string'}"``) and required names quoted.
    """
    if str(attrs.get("openinference.span.kind") or "").upper() != "LLM":
        return attrs
    new: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" and _OI_CALL_NAME.match(key):
            new[key] = value[1:-1]
    output = _decoded(attrs.get("output.value")) if attrs.get("output.mime_type") == "application/json" else None
    has_output = any(k.startswith("llm.output_messages.") for k in attrs) or attrs.get(sc.OUTPUT_MESSAGES)
    if not has_output and isinstance(output, list) and output and all(_is_openai_call(c) for c in output):
        new[sc.OUTPUT_MESSAGES] = dumps([{"role": "assistant", "content": "", "tool_calls": output}])
    tools = _decoded(attrs.get("llm.tools"))
    if isinstance(tools, list) and sc.TOOL_DEFINITIONS not in attrs:
        new[sc.TOOL_DEFINITIONS] = dumps([_repaired_tool(t) for t in tools if isinstance(t, Mapping)])
    return {**attrs, **new} if new else attrs


def _is_openai_call(call: Any) -> bool:
    return isinstance(call, Mapping) and isinstance(call.get("function"), Mapping) and bool(call["function"].get("name"))


def _repaired_tool(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """An OpenAI tool definition whose parameters' property schemas are ``repr`` text and required names quoted, repaired."""
    function = tool.get("function") if isinstance(tool.get("function"), Mapping) else None
    parameters = function.get("parameters") if function is not None else None
    if not isinstance(parameters, Mapping):
        return tool
    properties = parameters.get("properties")
    fixed = dict(parameters)
    if isinstance(properties, Mapping):
        fixed["properties"] = {name: _python_literal(schema) for name, schema in properties.items()}
    if isinstance(parameters.get("required"), list):
        fixed["required"] = [_unquoted(r) for r in parameters["required"]]
    return {**tool, "function": {**function, "parameters": fixed}}


def _python_literal(value: Any) -> Any:
    """A dict written as its Python ``repr`` (``"{'type': 'string'}"``) as the dict; anything else as it is."""
    if not (isinstance(value, str) and value.startswith("{") and value.endswith("}") and len(value) <= 10_000):
        return value
    parsed = python_literal(value)
    return parsed if isinstance(parsed, dict) else value


_NOT_LITERAL = object()
MAX_LITERAL_CHARS = 20_000_000
"""Longest ``repr`` text :func:`python_literal` reads (a model call's whole history)."""


def python_literal(text: Any) -> Any:
    """Data written as its Python ``repr`` (``str()`` of a list of dicts, as LiteLLM writes attributes), or None where
    the text is not one. Read from the syntax tree, never run (``ast.literal_eval``'s rules): literals, lists, tuples,
    sets, dicts, and a call with keyword arguments only (``Message(content=None, role='assistant')``, the ``repr`` of
    a pydantic model or dataclass) as the dict of its fields. JSON text is read as JSON."""
    if not isinstance(text, str) or len(text) > MAX_LITERAL_CHARS:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        value = _literal_node(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    return None if value is _NOT_LITERAL else value


def _literal_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value if node.value is None or isinstance(node.value, str | int | float) else _NOT_LITERAL
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        items = [_literal_node(item) for item in node.elts]
        return _NOT_LITERAL if _NOT_LITERAL in items else items
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):  # {**other}
            return _NOT_LITERAL
        pairs = [(_literal_node(k), _literal_node(v)) for k, v in zip(node.keys, node.values, strict=True)]  # type: ignore[arg-type]
        if any(_NOT_LITERAL in pair for pair in pairs):
            return _NOT_LITERAL
        return dict(pairs)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd) and isinstance(node.operand, ast.Constant):
        value = node.operand.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
        return _NOT_LITERAL
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute) and not node.args:
        if any(keyword.arg is None for keyword in node.keywords):  # Model(**fields)
            return _NOT_LITERAL
        fields = {keyword.arg: _literal_node(keyword.value) for keyword in node.keywords}
        return _NOT_LITERAL if _NOT_LITERAL in fields.values() else fields
    return _NOT_LITERAL


def _unquoted(value: Any) -> Any:
    return value[1:-1] if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def _content_block(part: Mapping[str, Any]) -> Any:
    """One OpenInference content part (its ``message_content.*`` fields) as a content block."""
    if isinstance(part.get("text"), str):
        return part["text"]
    kind = str(part.get("type") or "")
    url = part.get(f"{kind}.{kind}.url")
    block = {"type": kind, "url": url} if isinstance(url, str) else {"type": kind}
    return block if media_placeholder(block) is not None else ""  # a part of a kind not known: left out, as before


_PROMPT_ROLE = re.compile(r"^gen_ai\.prompt\.\d+\.role$")
_BLOCK_KINDS = frozenset(
    {"text", "tool_use", "tool_result", "thinking", "redacted_thinking", "image", "image_url", "input_audio", "document", "file"}
)


def _from_openllmetry_blocks(span: SpanData) -> SpanData:
    """OpenLLMetry's indexed messages whose content is the JSON of content blocks (see the module's docstring) as the
    GenAI messages they are; an Anthropic span's operation (``llm.request.type = "completion"`` with chat messages) and
    tools' ``input_schema``. Indexed messages without blocks are left to :func:`~ee_middleware.capture.normalize.normalize`."""
    attrs = span.attributes
    if attrs.get(sc.INPUT_MESSAGES) not in (None, ""):
        return span
    new: dict[str, Any] = {}
    op = operation_of(attrs)
    if op is None and str(attrs.get("llm.request.type") or "").lower() == "completion":
        new[sc.OPERATION_NAME] = sc.OP_CHAT  # the Messages API call (a chat model's), which the instrumentation names a completion
    elif op not in sc.MODEL_OPERATIONS:
        return span
    prompts, completions = unflatten(attrs, "gen_ai.prompt"), unflatten(attrs, "gen_ai.completion")
    if any(_blocks(m.get("content")) is not None for m in [*prompts, *completions]) or any(
        m.get("role") == "thinking" for m in completions
    ):
        new[sc.INPUT_MESSAGES] = dumps([_indexed_message(m, "user") for m in prompts])
        replies = [_indexed_message(m, "assistant") for m in completions if m.get("role") != "thinking"]
        thoughts = [str(m["content"]) for m in completions if m.get("role") == "thinking" and m.get("content")]
        if replies and thoughts:
            replies[0]["parts"].insert(0, {"type": "reasoning", "content": "\n\n".join(thoughts)})
        if replies:
            new[sc.OUTPUT_MESSAGES] = dumps(replies)
    tools = unflatten(attrs, "llm.request.functions")
    if attrs.get(sc.TOOL_DEFINITIONS) in (None, "") and any("input_schema" in t for t in tools):
        new[sc.TOOL_DEFINITIONS] = dumps(
            [
                {
                    "name": t.get("name"),
                    "description": t.get("description") or "",
                    "parameters": _decoded(t.get("input_schema", t.get("parameters"))) or {},
                }
                for t in tools
            ]
        )
    return _filled(span, new) if new else span


def _blocks(content: Any) -> list[Mapping[str, Any]] | None:
    """The content blocks a message's content is the JSON of, or None (text, or JSON that is not a list of blocks)."""
    if not isinstance(content, str) or not content.startswith("["):
        return None
    decoded = _decoded(content)
    if isinstance(decoded, list) and decoded and all(isinstance(b, Mapping) and b.get("type") in _BLOCK_KINDS for b in decoded):
        return decoded
    return None


def _indexed_message(message: Mapping[str, Any], role: str) -> dict[str, Any]:
    """One indexed message (``unflatten``'s item) as a GenAI message: its content's blocks as parts, the calls its
    ``tool_calls.{j}.*`` name that no ``tool_use`` block holds, an OpenAI tool message's result."""
    role = str(message.get("role") or role)
    content = message.get("content")
    if message.get("tool_call_id"):  # OpenAI's tool message
        return {"role": role, "parts": [{"type": "tool_call_response", "id": str(message["tool_call_id"]), "response": content or ""}]}
    blocks = _blocks(content)
    parts: list[dict[str, Any]] = []
    for block in blocks if blocks is not None else [{"type": "text", "text": content}] if content else []:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "content": content_to_text([block])})
        elif kind == "thinking":
            parts.append({"type": "reasoning", "content": str(block.get("thinking") or "")})
        elif kind == "tool_use":
            parts.append({"type": "tool_call", "id": block.get("id"), "name": block.get("name"), "arguments": block.get("input") or {}})
        elif kind == "tool_result":
            part = {"type": "tool_call_response", "id": block.get("tool_use_id"), "response": block.get("content") or ""}
            parts.append({**part, FAILED_RESULT: True} if block.get("is_error") is True else part)
        elif kind != "redacted_thinking":  # media: said by its placeholder
            parts.append(dict(block))
    made = {p.get("id") for p in parts if p["type"] == "tool_call"}
    for call in message.get("tool_calls") or []:
        if isinstance(call, Mapping) and call.get("name") and (not call.get("id") or call.get("id") not in made):
            parts.append(
                {"type": "tool_call", "id": call.get("id"), "name": call["name"], "arguments": genai_arguments(call.get("arguments"))}
            )
    return {"role": role, "parts": parts}


_LANGSMITH_KIND = "langsmith.span.kind"
_LANGFUSE_TYPE = "langfuse.observation.type"
_LANGFUSE_OPS = {"generation": sc.OP_CHAT, "tool": sc.OP_EXECUTE_TOOL}
_MLFLOW_TYPE = "mlflow.spanType"
_MLFLOW_OPS = {"CHAT_MODEL": sc.OP_CHAT, "LLM": sc.OP_CHAT, "TOOL": sc.OP_EXECUTE_TOOL}


def _from_langsmith(span: SpanData) -> SpanData:
    """LangSmith's ``gen_ai.prompt`` / ``gen_ai.completion`` JSON as the GenAI attributes."""
    attrs = span.attributes
    prompt, completion = _decoded(attrs.get("gen_ai.prompt")), _decoded(attrs.get("gen_ai.completion"))
    new: dict[str, Any] = {}
    op = operation_of(attrs)
    if op in sc.MODEL_OPERATIONS:
        batch = prompt.get("messages") if isinstance(prompt, Mapping) else None
        inputs = batch[0] if isinstance(batch, list) and batch and isinstance(batch[0], list) else batch
        generations = completion.get("generations") if isinstance(completion, Mapping) else None
        first = generations[0] if isinstance(generations, list) and generations and isinstance(generations[0], list) else generations
        outputs = [g.get("message") or {"type": "ai", "content": g.get("text", "")} for g in first or [] if isinstance(g, Mapping)]
        new = {sc.INPUT_MESSAGES: _openai_messages(inputs), sc.OUTPUT_MESSAGES: _openai_messages(outputs)}
    elif op == sc.OP_EXECUTE_TOOL:
        output = completion.get("output") if isinstance(completion, Mapping) else None
        new = {sc.TOOL_CALL_ARGUMENTS: attrs.get("gen_ai.prompt"), sc.TOOL_CALL_RESULT: _tool_message_content(output)}
    new[sc.CONVERSATION_ID] = attrs.get("langsmith.metadata.thread_id")
    return _filled(_without_tracebacks(span), new)


_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_REPR = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)", re.DOTALL)


def _without_tracebacks(span: SpanData) -> SpanData:
    """LangSmith's ``exception`` events as the OpenTelemetry SDK writes them: LangSmith's ``exception.message`` is the
    exception's ``repr`` followed by its Python traceback (local paths, source lines) and its ``exception.type`` is
    ``Exception``; they become the exception's type and message (``RuntimeError`` / ``Karte abgelehnt``)."""
    events = []
    for name, event in span.events:
        message = event.get("exception.message")
        if name == "exception" and isinstance(message, str) and _TRACEBACK in message:
            kind, text = _exception_parts(message, event.get("exception.type"))
            event = {**event, "exception.type": kind, "exception.message": text}
        events.append((name, event))
    return replace(span, events=tuple(events)) if any(a is not b for a, b in zip(events, span.events, strict=True)) else span


def _exception_parts(message: str, kind: Any) -> tuple[Any, str]:
    """The type and message of an exception written as its ``repr`` and traceback (:func:`_without_tracebacks`): the
    ``repr``'s class and its single argument; else the text before the traceback, or the traceback's last line."""
    head, _, trace = message.partition(_TRACEBACK)
    head = head.strip()
    match = _EXCEPTION_REPR.fullmatch(head)
    if match:
        args = python_literal(f"({match.group(2)},)") if match.group(2).strip() else []
        if isinstance(args, list) and all(isinstance(a, str | int | float) for a in args):
            return match.group(1), str(args[0]) if len(args) == 1 else str(tuple(args)) if args else ""
    last = next((line.strip() for line in reversed(trace.splitlines()) if line.strip()), "")
    named, colon, text = last.partition(": ")  # Python's last line: "module.Error: message"
    named_last = colon and named.replace(".", "").isidentifier()
    if head and not (named_last and match and named.rpartition(".")[2] == match.group(1)):
        return kind, head
    # the traceback's last line names the class of the repr (whose arguments are no literals: LangGraph's
    # GraphInterrupt((Interrupt(...),))), or there is no repr
    return (named.rpartition(".")[2], text) if named_last else (kind, last)


def _from_langfuse(span: SpanData) -> SpanData:
    """A Langfuse observation as the GenAI span it is (a model call or a tool call)."""
    attrs = span.attributes
    op = _LANGFUSE_OPS.get(str(attrs[_LANGFUSE_TYPE]))
    given, output = _decoded(attrs.get("langfuse.observation.input")), _decoded(attrs.get("langfuse.observation.output"))
    new: dict[str, Any] = {sc.OPERATION_NAME: op}
    if op == sc.OP_CHAT:
        messages = given if isinstance(given, list) else []
        tools = [m["content"] for m in messages if _is_tool_definition(m)]
        new[sc.INPUT_MESSAGES] = _openai_messages([m for m in messages if not _is_tool_definition(m)])
        new[sc.OUTPUT_MESSAGES] = _openai_messages(output if isinstance(output, list) else [output] if output else [])
        new[sc.TOOL_DEFINITIONS] = dumps(tools) if tools else None
        new[sc.REQUEST_MODEL] = attrs.get("langfuse.observation.model.name")
    elif op == sc.OP_EXECUTE_TOOL:
        new[sc.TOOL_NAME] = span.name
        new[sc.TOOL_CALL_ARGUMENTS] = attrs.get("langfuse.observation.input")
        new[sc.TOOL_CALL_RESULT] = _tool_message_content(output)
        message = _lc_fields(output)  # a ToolMessage dumped, or serialized with ``lc`` (its fields under "kwargs")
        new[sc.TOOL_CALL_ID] = message.get("tool_call_id") if isinstance(message, Mapping) else None
    thread = _decoded(attrs.get("langfuse.trace.metadata.thread_id") or attrs.get("langfuse.observation.metadata.thread_id"))
    new[sc.CONVERSATION_ID] = thread if isinstance(thread, str) else None
    return _filled(span, new)


def _from_mlflow(span: SpanData) -> SpanData:
    """An MLflow span (its attributes JSON text) as the GenAI span it is (a model call or a tool call)."""
    attrs = span.attributes
    op = _MLFLOW_OPS.get(str(_decoded(attrs[_MLFLOW_TYPE])))
    given, output = _decoded(attrs.get("mlflow.spanInputs")), _decoded(attrs.get("mlflow.spanOutputs"))
    new: dict[str, Any] = {sc.OPERATION_NAME: op}
    if op == sc.OP_CHAT:
        choices = output.get("choices") if isinstance(output, Mapping) else None
        replies = [c.get("message") for c in choices or [] if isinstance(c, Mapping)]
        new[sc.INPUT_MESSAGES] = _openai_messages(_without_nulls(given.get("messages") if isinstance(given, Mapping) else None))
        new[sc.OUTPUT_MESSAGES] = _openai_messages(_without_nulls(replies))
        new[sc.TOOL_DEFINITIONS] = attrs.get("mlflow.chat.tools")
        new[sc.REQUEST_MODEL] = _decoded(attrs.get("mlflow.llm.model"))
    elif op == sc.OP_EXECUTE_TOOL:
        new[sc.TOOL_NAME] = span.name
        new[sc.TOOL_CALL_ARGUMENTS] = attrs.get("mlflow.spanInputs")
        new[sc.TOOL_CALL_RESULT] = _tool_message_content(output)
        new[sc.TOOL_CALL_ID] = _decoded(attrs.get("tool_call_id"))
    metadata = _decoded(attrs.get("metadata"))
    new[sc.CONVERSATION_ID] = metadata.get("thread_id") if isinstance(metadata, Mapping) else None
    return _filled(span, new)


_VERCEL_OP = "ai.operationId"
_VERCEL_MODEL_CALLS = frozenset(
    {"ai.generateText.doGenerate", "ai.streamText.doStream", "ai.generateObject.doGenerate", "ai.streamObject.doStream"}
)
_VERCEL_RUNS = frozenset({"ai.generateText", "ai.streamText", "ai.generateObject", "ai.streamObject"})
_VERCEL_THREAD_KEYS = ("threadId", "thread_id", "sessionId", "session_id", "conversationId", "conversation_id")


def _from_vercel_ai(span: SpanData) -> SpanData:
    """A span of the Vercel AI SDK's telemetry (``experimental_telemetry``) as the GenAI span it is."""
    attrs = span.attributes
    operation = str(attrs[_VERCEL_OP])
    new: dict[str, Any] = {}
    if operation in _VERCEL_MODEL_CALLS:
        new[sc.OPERATION_NAME] = sc.OP_CHAT
        new[sc.INPUT_MESSAGES] = _vercel_messages(_decoded(attrs.get("ai.prompt.messages")))
        reply: dict[str, Any] = {"role": "assistant", "content": attrs.get("ai.response.text") or ""}
        calls = _decoded(attrs.get("ai.response.toolCalls"))
        if isinstance(calls, list) and calls:
            reply["tool_calls"] = [_vercel_call(call) for call in calls if isinstance(call, Mapping)]
        if reply["content"] or reply.get("tool_calls"):
            new[sc.OUTPUT_MESSAGES] = dumps([reply])
        tools = attrs.get("ai.prompt.tools")  # each tool's JSON text: {"type", "name", "description", "inputSchema" (v5+) or "parameters"}
        if isinstance(tools, list):
            decoded = [_decoded(t) for t in tools]
            new[sc.TOOL_DEFINITIONS] = dumps([_vercel_tool(t) for t in decoded if isinstance(t, Mapping)])
        new[sc.REQUEST_MODEL] = attrs.get("ai.model.id")
    elif operation == "ai.toolCall":
        new[sc.OPERATION_NAME] = sc.OP_EXECUTE_TOOL
        new[sc.TOOL_NAME] = attrs.get("ai.toolCall.name")
        new[sc.TOOL_CALL_ID] = attrs.get("ai.toolCall.id")
        new[sc.TOOL_CALL_ARGUMENTS] = attrs.get("ai.toolCall.args") or attrs.get("ai.toolCall.input")
        result = attrs.get("ai.toolCall.result", attrs.get("ai.toolCall.output"))
        decoded = _decoded(result)  # the tool's return value as JSON: a string result is its text
        new[sc.TOOL_CALL_RESULT] = decoded if isinstance(decoded, str) else result
    elif operation in _VERCEL_RUNS:
        new[sc.OPERATION_NAME] = sc.OP_INVOKE_AGENT
        new[sc.AGENT_NAME] = attrs.get("ai.telemetry.functionId")
    else:
        return span  # embeddings and the rest: not an agent's step
    new[sc.CONVERSATION_ID] = next(
        (attrs[f"ai.telemetry.metadata.{k}"] for k in _VERCEL_THREAD_KEYS if attrs.get(f"ai.telemetry.metadata.{k}")), None
    )
    return _filled(span, new)


def _vercel_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    schema = tool.get("inputSchema", tool.get("parameters"))
    return {
        **{k: v for k, v in tool.items() if k not in ("inputSchema", "parameters")},
        "parameters": schema if isinstance(schema, Mapping) else {},
    }


def _vercel_messages(messages: Any) -> str | None:
    """The AI SDK's prompt (``ai.prompt.messages``: content parts ``text``, ``tool-call``, ``tool-result``, media)
    in OpenAI's chat shape; each ``tool-result`` a tool message."""
    if not isinstance(messages, list) or not messages:
        return None
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            return None  # not the AI SDK's prompt after all: the span's own check reports it
        role, content = str(message.get("role") or "user"), message.get("content")
        if not isinstance(content, list):
            out.append({"role": role, "content": content_to_text(content)})
            continue
        texts: list[Any] = []
        calls: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "tool-call":
                calls.append(_vercel_call(part))
            elif kind == "tool-result":
                result = {"role": "tool", "tool_call_id": str(part.get("toolCallId") or ""), "content": _vercel_output(part)}
                out.append({**result, FAILED_RESULT: True} if _vercel_failed(part) else result)
            elif kind == "text" or kind in ("image", "file"):
                texts.append(part if kind != "text" else str(part.get("text") or ""))
        if calls or texts or role != "tool":
            converted: dict[str, Any] = {"role": role, "content": content_to_text(texts)}
            if calls:
                converted["tool_calls"] = calls
            out.append(converted)
    return dumps(out)


def _vercel_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """An AI SDK tool call (``toolCallId``, ``toolName``, ``input`` (v5+) or ``args``; an object or JSON text)."""
    arguments = call.get("input", call.get("args"))
    function = {"name": str(call.get("toolName") or ""), "arguments": arguments_json(arguments)}
    return {"id": str(call.get("toolCallId") or ""), "type": "function", "function": function}


def _vercel_output(part: Mapping[str, Any]) -> str:
    """A ``tool-result`` part's result as the model saw it: v5+'s ``output`` (``{"type": "text" | "json" |
    "error-text" | "error-json" | "content", "value"}``) or v4's ``result``."""
    output = part.get("output")
    if isinstance(output, Mapping) and "value" in output:
        value = output["value"]
        if output.get("type") == "content" and isinstance(value, list):
            return content_to_text([{**v, "type": "text"} if v.get("type") == "text" else v for v in value if isinstance(v, Mapping)])
        return value if isinstance(value, str) else dumps(value)
    result = part.get("result", output)
    return result if isinstance(result, str) else dumps(result)


_VERCEL_ERROR_OUTPUTS = frozenset({"error-text", "error-json"})


def _vercel_failed(part: Mapping[str, Any]) -> bool:
    """Whether a ``tool-result`` part tells the model its tool failed: v5+'s ``output`` of type ``error-text`` /
    ``error-json`` (what the SDK sends for a tool that threw), v4's ``isError: true``."""
    output = part.get("output")
    return (isinstance(output, Mapping) and output.get("type") in _VERCEL_ERROR_OUTPUTS) or part.get("isError") is True


_LOGFIRE_TEMPLATE = "logfire.msg_template"
_LOGFIRE_AGENTS_OPS = {
    "Chat completion with {gen_ai.request.model!r}": sc.OP_CHAT,  # the SDK's generation span (Chat Completions)
    "Function: {name}": sc.OP_EXECUTE_TOOL,
    "Agent run: {name!r}": sc.OP_INVOKE_AGENT,
}
_LOGFIRE_TRACE = "OpenAI Agents trace: {name}"


def _from_logfire_openai_agents(span: SpanData) -> SpanData:
    """A span of Logfire's OpenAI Agents SDK integration (``logfire.instrument_openai_agents``) as the GenAI span it is.

    Logfire names each span by its message template. ``Responses API...`` (the Responses model; already a ``chat``)
    writes the call's messages as one ``events`` attribute, a JSON list of ``{"event.name": "gen_ai.{role}.message",
    "role", "content" | "tool_calls" | "id" (a tool message's call id)}`` whose trailing assistant events (one per part
    of the ``response``'s output items) are the reply; the ``response`` echoes the tools. ``Chat completion with...``
    (Chat Completions) has ``input`` / ``output`` in OpenAI's chat shape; ``Function: {name}`` is a tool call
    (``name``, ``input``, ``output``); ``Task: ...`` (``sdk_span_type`` ``task``: one per ``Runner.run``) and
    ``Agent run: ...`` are the run and its agents; the trace's span (``OpenAI Agents trace: ...``) has the thread as
    ``group_id``."""
    attrs = span.attributes
    template = str(attrs[_LOGFIRE_TEMPLATE])
    op = _LOGFIRE_AGENTS_OPS.get(template)
    if attrs.get("gen_ai.system") != "openai" and template != _LOGFIRE_TRACE:
        return span  # another of Logfire's integrations: not the Agents SDK's
    new: dict[str, Any] = {}
    if template.startswith("Responses API"):
        new = _logfire_response_attrs(attrs)
    elif op == sc.OP_CHAT:
        new[sc.INPUT_MESSAGES] = _openai_json(_without_nulls(_decoded(attrs.get("input"))))
        new[sc.OUTPUT_MESSAGES] = _openai_json(_without_nulls(_decoded(attrs.get("output"))))
    elif op == sc.OP_EXECUTE_TOOL:
        output = attrs.get("output")
        new = {sc.TOOL_NAME: attrs.get("name"), sc.TOOL_CALL_ARGUMENTS: attrs.get("input")}
        new[sc.TOOL_CALL_RESULT] = output if isinstance(output, str) or output is None else dumps(output)
    elif op == sc.OP_INVOKE_AGENT:
        new[sc.AGENT_NAME] = attrs.get("name")
    elif template.startswith("Task: ") and attrs.get("sdk_span_type") == "task":
        op = sc.OP_INVOKE_AGENT  # one Runner.run: its agents (handoffs too) and their turns
    elif template == _LOGFIRE_TRACE:
        new[sc.CONVERSATION_ID] = attrs.get("group_id")
    else:
        return span
    if op is not None:
        new[sc.OPERATION_NAME] = op
    return _filled(span, new)


def _logfire_response_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Responses API`` span's ``events`` split into the call's input and its reply, and the tools it was given."""
    events = _decoded(attrs.get("events"))
    if not isinstance(events, list) or not all(isinstance(e, Mapping) for e in events):
        return {}
    response = _decoded(attrs.get("response"))
    output = response.get("output") if isinstance(response, Mapping) else None
    if isinstance(output, list):
        replies = sum(_logfire_output_events(item) for item in output)
    else:  # no response recorded: the reply is the trailing assistant events
        replies = next((i for i, e in enumerate(reversed(events)) if e.get("role") != "assistant"), len(events))
    split = len(events) - min(replies, len(events))
    new = {sc.INPUT_MESSAGES: _logfire_messages(events[:split]), sc.OUTPUT_MESSAGES: _logfire_messages(events[split:])}
    tools = response.get("tools") if isinstance(response, Mapping) else None
    if isinstance(tools, list):
        named = [
            {k: t[k] for k in ("name", "description", "parameters") if k in t} for t in tools if isinstance(t, Mapping) and t.get("name")
        ]
        new[sc.TOOL_DEFINITIONS] = dumps(named) if named else None
    return new


def _logfire_output_events(item: Any) -> int:
    """How many events Logfire writes for one output item of a Response (one per content part of a message)."""
    if not isinstance(item, Mapping):
        return 1
    content = item.get("content")
    if item.get("role") and item.get("type") in (None, "message") and content:
        return 1 if isinstance(content, str) else len(content)
    return 1


def _logfire_messages(events: list[Mapping[str, Any]]) -> str | None:
    """Logfire's message events in OpenAI's chat shape: an assistant's consecutive events (its text, each function
    call: separate items in the Responses API) one message; events of items it could not read (``gen_ai.unknown``:
    reasoning, built-in tool calls) left out."""
    out: list[dict[str, Any]] = []
    for event in events:
        if event.get("event.name") == "gen_ai.unknown":
            continue
        role = str(event.get("role") or str(event.get("event.name", "")).removeprefix("gen_ai.").removesuffix(".message"))
        message = _message(role, {k: event[k] for k in ("content", "tool_calls", "id") if event.get(k) is not None})
        if role == "assistant" and out and out[-1]["role"] == "assistant":
            previous = out[-1]
            previous["content"] = (previous.get("content") or "") + (message.get("content") or "")
            previous["tool_calls"] = [*(previous.get("tool_calls") or []), *(message.get("tool_calls") or [])]
            if not previous["tool_calls"]:
                del previous["tool_calls"]
            continue
        out.append({"content": "", **message} if role == "assistant" else message)
    return dumps(out) if out else None


def _openai_json(messages: Any) -> str | None:
    return dumps(messages) if isinstance(messages, list) and messages else None


_ADK_REQUEST = "gcp.vertex.agent.llm_request"
_ADK_TOOL_ARGS = "gcp.vertex.agent.tool_call_args"


def _from_adk_legacy(span: SpanData) -> SpanData:
    """Google ADK's legacy spans (ADK 1.x; 2.x under ``ADK_TELEMETRY_SCHEMA_VERSION_OPT_IN=1``) as GenAI spans.

    A model call is a ``call_llm`` span (no operation name) whose ``gcp.vertex.agent.llm_request`` is the JSON of
    ADK's ``LlmRequest`` (``contents``: google-genai ``Content`` with ``parts`` ``text`` / ``function_call`` /
    ``function_response``; ``config.system_instruction``; ``config.tools[].function_declarations``) and
    ``gcp.vertex.agent.llm_response`` its ``LlmResponse`` (``content``); the ``generate_content`` span under it
    carries no content (:mod:`.runs` leaves it out). A tool span's arguments and result are
    ``gcp.vertex.agent.tool_call_args`` / ``tool_response`` (``"N/A"`` / ``"{}"`` where not captured)."""
    attrs = span.attributes
    new: dict[str, Any] = {}
    request = _decoded(attrs.get(_ADK_REQUEST))
    if span.name == "call_llm" and isinstance(request, Mapping) and request:
        config = request.get("config") if isinstance(request.get("config"), Mapping) else {}
        response = _decoded(attrs.get("gcp.vertex.agent.llm_response"))
        reply = response.get("content") if isinstance(response, Mapping) else None
        new[sc.OPERATION_NAME] = sc.OP_CHAT
        new[sc.INPUT_MESSAGES] = dumps([_genai_content(c) for c in request.get("contents") or [] if isinstance(c, Mapping)])
        new[sc.OUTPUT_MESSAGES] = dumps([_genai_content(reply)]) if isinstance(reply, Mapping) else None
        system = config.get("system_instruction", config.get("systemInstruction"))
        if isinstance(system, Mapping):
            system = "".join(str(p.get("text") or "") for p in system.get("parts") or [] if isinstance(p, Mapping))
        new[sc.SYSTEM_INSTRUCTIONS] = dumps([{"type": "text", "content": system}]) if isinstance(system, str) and system else None
        declarations = [
            d
            for tool in config.get("tools") or []
            if isinstance(tool, Mapping)
            for d in tool.get("function_declarations", tool.get("functionDeclarations")) or []
            if isinstance(d, Mapping) and d.get("name")
        ]
        new[sc.TOOL_DEFINITIONS] = dumps([_adk_declaration(d) for d in declarations]) if declarations else None
        new[sc.REQUEST_MODEL] = request.get("model")
        new[sc.CONVERSATION_ID] = attrs.get("gcp.vertex.agent.session_id")
    elif operation_of(attrs) == sc.OP_EXECUTE_TOOL:
        arguments, result = attrs.get(_ADK_TOOL_ARGS), _decoded(attrs.get("gcp.vertex.agent.tool_response"))
        new[sc.TOOL_CALL_ARGUMENTS] = arguments if arguments != "N/A" else None
        new[sc.TOOL_CALL_RESULT] = (result if isinstance(result, str) else dumps(result)) if result not in (None, {}) else None
    return _filled(span, new)


def _genai_content(content: Mapping[str, Any]) -> dict[str, Any]:
    """A google-genai ``Content`` (snake_case or camelCase fields) as a GenAI message with parts."""
    parts: list[dict[str, Any]] = []
    for part in content.get("parts") or []:
        if not isinstance(part, Mapping) or part.get("thought"):
            continue  # a thinking model's thoughts are not its reply
        call = part.get("function_call", part.get("functionCall"))
        answer = part.get("function_response", part.get("functionResponse"))
        if isinstance(call, Mapping):
            parts.append({"type": "tool_call", "id": call.get("id"), "name": str(call.get("name") or ""), "arguments": call.get("args")})
        elif isinstance(answer, Mapping):
            parts.append({"type": "tool_call_response", "id": answer.get("id"), "response": answer.get("response")})
        elif isinstance(part.get("text"), str):
            parts.append({"type": "text", "content": part["text"]})
        elif media := part.get("inline_data", part.get("inlineData")) or part.get("file_data", part.get("fileData")):
            mime = media.get("mime_type", media.get("mimeType")) if isinstance(media, Mapping) else None
            parts.append({"type": "blob" if "data" in media else "uri", "mime_type": mime, **dict(media)})
    role = str(content.get("role") or "user")
    return {"role": "assistant" if role == "model" else role, "parts": parts}


def _adk_declaration(declaration: Mapping[str, Any]) -> dict[str, Any]:
    """A google-genai ``FunctionDeclaration`` as a tool definition (its JSON schema, or its genai ``Schema``)."""
    schema = next(
        (
            declaration[k]
            for k in ("parameters_json_schema", "parametersJsonSchema", "parameters")
            if isinstance(declaration.get(k), Mapping)
        ),
        {"type": "object", "properties": {}},
    )
    return {"type": "function", "name": declaration["name"], "description": declaration.get("description") or "", "parameters": schema}


LITELLM_CALL = "litellm.call_id"


def _from_litellm(span: SpanData) -> SpanData:
    """A model call traced by LiteLLM's OpenTelemetry callback (``callbacks=["otel"]``; spans marked ``litellm.call_id``).

    Its ``gen_ai.input.messages`` hold text parts with OpenAI's ``tool_calls`` (an assistant's) and ``tool_call_id``
    (a tool message's) beside them, where the conventions have ``tool_call`` / ``tool_call_response`` parts; a reply's
    tool calls are not in ``gen_ai.output.messages`` but in ``gen_ai.completion.{i}.function_call.name|arguments``,
    without their ids (:mod:`.runs` reads those from the next call's history)."""
    attrs = span.attributes
    if operation_of(attrs) not in sc.MODEL_OPERATIONS:
        return span
    new: dict[str, Any] = {}
    given = _decoded(attrs.get(sc.INPUT_MESSAGES))
    if isinstance(given, list) and any(isinstance(m, Mapping) and ("tool_calls" in m or "tool_call_id" in m) for m in given):
        new[sc.INPUT_MESSAGES] = dumps([_litellm_message(m) for m in given])
    reply = _decoded(attrs.get(sc.OUTPUT_MESSAGES))
    calls = [c.get("function_call") for c in unflatten(attrs, "gen_ai.completion")]
    calls = [c for c in calls if isinstance(c, Mapping) and c.get("name")]
    if calls and isinstance(reply, list) and reply and isinstance(reply[0], Mapping):
        parts = [p for p in reply[0].get("parts") or [] if not (isinstance(p, Mapping) and p.get("type") == "tool_call")]
        # text that is no JSON object stays as written (genai_arguments): never an object with a _raw key it did not have
        parts += [{"type": "tool_call", "id": None, "name": c["name"], "arguments": genai_arguments(c.get("arguments"))} for c in calls]
        new[sc.OUTPUT_MESSAGES] = dumps([{**reply[0], "parts": parts}, *reply[1:]])
    return replace(span, attributes={**attrs, **new}) if new else span


_LITELLM_RAW = "raw_gen_ai_request"
_RAW_MESSAGES = re.compile(r"^llm\.([A-Za-z0-9_\-]+)\.messages$")


def litellm_raw_provider(span: SpanData) -> str | None:
    """The provider of a LiteLLM raw request span (``raw_gen_ai_request``, or one named by the call's
    ``generation_name``), whose attributes are the provider's request and response fields as ``llm.{provider}.{field}``;
    None for any other span."""
    attrs = span.attributes
    if LITELLM_CALL in attrs:
        return None
    for key in attrs:
        match = _RAW_MESSAGES.match(key)
        if match and (span.name == _LITELLM_RAW or f"llm.{match.group(1)}.choices" in attrs):
            return match.group(1)
    return None


def _from_litellm_raw(span: SpanData, provider: str) -> SpanData:
    """A LiteLLM raw request span in OpenAI's chat shape (``llm.{provider}.messages`` / ``tools`` the request,
    ``llm.{provider}.choices`` the response, Python ``repr`` text) as the model call it records; one of another shape
    (Anthropic's Messages API, a streamed call whose response LiteLLM did not write) is left as it is."""
    attrs = span.attributes
    messages = python_literal(attrs.get(f"llm.{provider}.messages"))
    choices = python_literal(attrs.get(f"llm.{provider}.choices"))
    if not (isinstance(messages, list) and messages and all(isinstance(m, Mapping) and m.get("role") for m in messages)):
        return span
    choices = choices if isinstance(choices, list) else []
    replies = [c["message"] for c in choices if isinstance(c, Mapping) and isinstance(c.get("message"), Mapping)]
    if not replies:
        return span
    tools = python_literal(attrs.get(f"llm.{provider}.tools"))
    new: dict[str, Any] = {
        sc.OPERATION_NAME: sc.OP_CHAT,
        sc.INPUT_MESSAGES: dumps(_without_nulls(messages)),
        sc.OUTPUT_MESSAGES: dumps(_without_nulls(replies[:1])),
        sc.REQUEST_MODEL: attrs.get(f"llm.{provider}.model"),
    }
    if isinstance(tools, list) and tools:
        new[sc.TOOL_DEFINITIONS] = dumps(tools)
    return _filled(span, new)


def litellm_raw_calls(spans: list[SpanData]) -> list[SpanData]:
    """One trace's spans with each LiteLLM model call counted once.

    LiteLLM writes a call's attributes on its own span (``litellm_request``), or, with a span active and
    ``USE_OTEL_LITELLM_REQUEST_SPAN`` unset, on that span (the app's: every call of the turn onto one span, the last
    one's win), and a raw request span under it per call (see :func:`_from_litellm_raw`). Where every raw span under a
    span was read as its call: a span holding one call is that call, with what its raw span read (the reply's call
    ids too); a span holding several is no call of its own (its attributes a copy of one of them), each raw span is
    one. Where one was not read, none of them is a call, and the span above stays what it was."""
    raws: dict[str | None, list[SpanData]] = {}
    for span in spans:
        if litellm_raw_provider(span) is not None:
            raws.setdefault(span.parent_span_id, []).append(span)
    if not raws:
        return spans
    changed: dict[str, SpanData] = {}
    by_id = {s.span_id: s for s in spans}
    for parent_id, children in raws.items():
        parent = by_id.get(parent_id or "")
        read = all(operation_of(c.attributes) in sc.MODEL_OPERATIONS for c in children)
        is_call = parent is not None and LITELLM_CALL in parent.attributes and operation_of(parent.attributes) in sc.MODEL_OPERATIONS
        if read and is_call and len(children) == 1:
            raw = children[0].attributes
            call = {k: raw[k] for k in (sc.INPUT_MESSAGES, sc.OUTPUT_MESSAGES, sc.TOOL_DEFINITIONS) if k in raw}
            changed[parent.span_id] = replace(parent, attributes={**parent.attributes, **call})  # type: ignore[union-attr]
        elif read and is_call:
            drop = (sc.OPERATION_NAME, "llm.request.type")
            changed[parent.span_id] = replace(parent, attributes={k: v for k, v in parent.attributes.items() if k not in drop})  # type: ignore[union-attr]
        if read and (not is_call or len(children) > 1):
            continue  # the raw spans are the calls
        for child in children:
            if sc.OPERATION_NAME in child.attributes:
                changed[child.span_id] = replace(child, attributes={k: v for k, v in child.attributes.items() if k != sc.OPERATION_NAME})
    return [changed.get(s.span_id, s) for s in spans] if changed else spans


def run_problem(run: list[SpanData]) -> str | None:
    """Why a run cannot be read though each of its spans can: LiteLLM's calls written onto one span of the app's, with
    raw request spans that could not be read as the calls.

    With a span active, LiteLLM's callback starts no span per call: it sets each call's attributes on that span (the
    last call's win; those logged after the span ended are lost) and writes a ``raw_gen_ai_request`` child per call.
    Its own spans (``litellm_request``, or the call's ``generation_name``) hold one call each."""
    by_id = {s.span_id: s for s in run}
    for raw in run:
        parent = by_id.get(raw.parent_span_id or "")
        provider = litellm_raw_provider(raw)
        if provider is None or parent is None or parent.name in ("litellm_request", raw.name):
            continue
        if operation_of(raw.attributes) in sc.MODEL_OPERATIONS:
            continue  # read as its call (see litellm_raw_calls)
        calls = sum(1 for s in run if s.parent_span_id == parent.span_id and litellm_raw_provider(s) is not None)
        return (
            f"LiteLLM wrote its model calls onto the span {parent.name!r} ({calls} {_LITELLM_RAW} span(s) under it): with a span "
            "active, its OpenTelemetry callback starts no span per call but sets each call's attributes on that span, so the "
            "calls overwrite each other (and those logged after the span ended are lost), and its raw request spans could "
            f"not be read as the calls (their llm.{provider}.messages and llm.{provider}.choices are not an OpenAI chat "
            "request and response: another provider's shape, or a streamed call); set USE_OTEL_LITELLM_REQUEST_SPAN=true "
            "so that each call is a litellm_request span of its own"
        )
    return None


def _litellm_message(message: Any) -> Any:
    if not isinstance(message, Mapping) or not isinstance(message.get("parts"), list):
        return message
    parts = [p for p in message["parts"] if not (isinstance(p, Mapping) and p.get("type") == "text" and not p.get("content"))]
    fields = {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")}
    if message.get("tool_call_id") is not None:  # a tool message: its text parts are the result
        text = content_to_text([p.get("content") for p in parts if isinstance(p, Mapping) and p.get("type") == "text"])
        return {**fields, "parts": [{"type": "tool_call_response", "id": str(message["tool_call_id"]), "response": text}]}
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            arguments = genai_arguments(function.get("arguments"))
            parts.append({"type": "tool_call", "id": call.get("id"), "name": str(function.get("name") or ""), "arguments": arguments})
    return {**fields, "parts": parts}


def _without_nulls(messages: Any) -> Any:
    """Messages without their null fields (``"tool_calls": null``); a null content is empty text."""
    if not isinstance(messages, list):
        return messages
    return [{"content": "", **{k: v for k, v in m.items() if v is not None}} if isinstance(m, Mapping) else m for m in messages]


def _is_tool_definition(message: Any) -> bool:
    return isinstance(message, Mapping) and message.get("role") == "tool" and isinstance(message.get("content"), Mapping)


def _openai_messages(messages: Any) -> str | None:
    """LangChain messages (dumped, serialized with ``lc``, or role dicts with LangChain tool calls) as OpenAI's chat shape."""
    if not isinstance(messages, list) or not messages:
        return None
    unwrapped = [_lc_fields(m) for m in messages]
    try:
        return dumps(langchain_to_openai(unwrapped))
    except (ValueError, TypeError, KeyError, NotImplementedError):
        return None  # not LangChain messages after all: the span keeps what it had, and its check reports it


def _lc_fields(message: Any) -> Any:
    """A LangChain message serialized as ``{"lc": 1, "id": [..., "AIMessage"], "kwargs": {...}}`` -> its fields."""
    if not (isinstance(message, Mapping) and message.get("lc") == 1 and isinstance(message.get("kwargs"), Mapping)):
        return message
    kind = {"HumanMessage": "human", "AIMessage": "ai", "SystemMessage": "system", "ToolMessage": "tool"}
    name = str((message.get("id") or ["?"])[-1]).removesuffix("Chunk")
    return {"type": kind.get(name, name), **message["kwargs"]}


def _tool_message_content(output: Any) -> str | None:
    """A tool's result from its LangChain ``ToolMessage`` (dumped or serialized), or the output itself."""
    message = _lc_fields(output)
    if isinstance(message, Mapping) and message.get("type") == "tool" and "content" in message:
        return content_to_text(message["content"])  # the text the model saw (an image as its placeholder)
    if isinstance(output, str | int | float) or (output and not isinstance(output, Mapping)):
        return output if isinstance(output, str) else dumps(output)
    return None


def _filled(span: SpanData, new: Mapping[str, Any]) -> SpanData:
    """``span`` with the ``new`` attributes it does not have already (None values left out)."""
    added = {key: value for key, value in new.items() if value is not None and span.attributes.get(key) in (None, "")}
    return replace(span, attributes={**span.attributes, **added}) if added else span


_OPERATION_KEYS = (_LANGFUSE_TYPE, _LANGSMITH_KIND, _MLFLOW_TYPE, _VERCEL_OP, _LOGFIRE_TEMPLATE, _ADK_REQUEST, _ADK_TOOL_ARGS, LITELLM_CALL)
"""The keys by which :func:`adapt` recognises a dialect whose spans name no GenAI operation (see :func:`may_name_operation`)."""
