"""Read GenAI spans written by other instrumentations.

The assembler reads the current GenAI conventions (``gen_ai.operation.name``,
``gen_ai.input.messages`` as JSON, ...). This module maps the two other common dialects onto them:

* OpenLLMetry / Traceloop's indexed attributes: ``gen_ai.prompt.{i}.role|content|tool_calls.{j}.*``,
  ``gen_ai.completion.{i}.*``, ``llm.request.type``, ``llm.request.functions.{i}.*``,
  ``traceloop.span.kind`` and ``traceloop.entity.input|output`` for tools.
* OpenInference: ``openinference.span.kind`` (LLM / TOOL / AGENT), ``llm.input_messages.{i}.message.*``,
  ``llm.output_messages.{i}.message.*``, ``llm.tools.{i}.tool.json_schema``, ``tool.name``,
  ``input.value`` / ``output.value``, ``llm.model_name``, ``session.id``.

Attributes already present in GenAI form win, with two exceptions where the GenAI value is a
placeholder: a tool result that is a serialized LangChain ``ToolMessage`` (both instrumentations
write LangChain's dump of the message, not the tool's output) is read as the message's content and
gives the tool call id, and a model named ``"unknown"`` (OpenLLMetry) yields to LangChain's
``ls_model_name`` metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.spandata import SpanData
from ee_middleware.messages import arguments_json, content_to_text, dumps

_INDEX = re.compile(r"^(\d+)\.(.+)$")


def operation_of(attrs: Mapping[str, Any]) -> str | None:
    """The GenAI operation of a span, recognising the other dialects' markers."""
    op = attrs.get(sc.OPERATION_NAME)
    if op:
        return str(op)
    kind = str(attrs.get("openinference.span.kind") or attrs.get("traceloop.span.kind") or "").upper()
    if kind in ("LLM", "CHAT") or str(attrs.get("llm.request.type", "")).lower() == "chat":
        return sc.OP_CHAT
    if kind == "TOOL":
        return sc.OP_EXECUTE_TOOL
    if kind in ("AGENT", "WORKFLOW"):
        return sc.OP_INVOKE_AGENT
    return None


def normalize(span: SpanData) -> SpanData:
    """Return ``span`` with GenAI attributes filled in from the dialect it was written in."""
    attrs = dict(span.attributes)
    op = operation_of(attrs)
    if op is None:
        return span
    attrs.setdefault(sc.OPERATION_NAME, op)
    if not attrs.get(sc.CONVERSATION_ID):  # OpenInference's session, LangGraph's thread (OpenLLMetry before its
        conversation = (  # association properties: in its entity input's metadata)
            attrs.get("session.id")
            or attrs.get("traceloop.association.properties.thread_id")
            or traceloop_metadata_value(attrs, "thread_id")
        )
        if conversation:
            attrs[sc.CONVERSATION_ID] = conversation
    if op in sc.MODEL_OPERATIONS:
        _fill_model_attrs(attrs)
    elif op == sc.OP_EXECUTE_TOOL:
        _fill_tool_attrs(attrs)
    elif op == sc.OP_INVOKE_AGENT:
        name = attrs.get("traceloop.entity.name") or attrs.get("agent.name")
        if name:
            attrs.setdefault(sc.AGENT_NAME, name)
    if attrs == span.attributes:  # already in GenAI form (capture's own spans): nothing to fill in, nothing to copy
        return span
    return replace(span, attributes=attrs)


_TRACELOOP_METADATA = '"metadata": {'


def traceloop_metadata_value(attrs: Mapping[str, Any], key: str) -> Any:
    """``key`` of the LangChain run's metadata OpenLLMetry writes in ``traceloop.entity.input`` (``{"inputs": ...,
    "metadata": {"thread_id": ...}}``; versions before 0.48 have no ``traceloop.association.properties`` for it), or
    None. Only the metadata object is decoded (the inputs before it may hold a whole conversation)."""
    raw = attrs.get("traceloop.entity.input")
    if not isinstance(raw, str) or key not in raw:
        return None
    at = raw.rfind(_TRACELOOP_METADATA)
    if at < 0:
        return None
    try:
        metadata, _ = json.JSONDecoder().raw_decode(raw, at + len(_TRACELOOP_METADATA) - 1)
    except (ValueError, RecursionError):
        return None
    return metadata.get(key) if isinstance(metadata, dict) else None


def unflatten(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Collect ``prefix.{i}.a.b`` attributes into a list of nested dicts ordered by ``i``."""
    items: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix + "."):
            continue
        match = _INDEX.match(key[len(prefix) + 1 :])
        if not match:
            continue
        _set_path(items.setdefault(int(match.group(1)), {}), match.group(2).split("."), value)
    return [_lists_from_indexes(items[i]) for i in sorted(items)]


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return
    target[path[-1]] = value


def _lists_from_indexes(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_lists_from_indexes(node[k]) for k in sorted(node, key=int)]
    return {k: _lists_from_indexes(v) for k, v in node.items()}


def _fill_model_attrs(attrs: dict[str, Any]) -> None:
    if sc.INPUT_MESSAGES not in attrs:
        messages = unflatten(attrs, "gen_ai.prompt") or [m.get("message", m) for m in unflatten(attrs, "llm.input_messages")]
        if messages:
            attrs[sc.INPUT_MESSAGES] = dumps(_call_ids_from_results([_dialect_message(m) for m in messages]))
    if sc.OUTPUT_MESSAGES not in attrs:
        messages = unflatten(attrs, "gen_ai.completion") or [m.get("message", m) for m in unflatten(attrs, "llm.output_messages")]
        if messages:
            attrs[sc.OUTPUT_MESSAGES] = dumps([_dialect_message(m, default_role="assistant") for m in messages])
    if sc.TOOL_DEFINITIONS not in attrs:
        tools = unflatten(attrs, "llm.request.functions")
        if not tools:
            tools = [_json_or_none(t.get("tool", {}).get("json_schema")) for t in unflatten(attrs, "llm.tools")]
        if not tools:  # OpenInference's LangChain spans before llm.tools (0.1.40): the request's own parameters
            parameters = _json_or_none(attrs.get("llm.invocation_parameters"))
            listed = (parameters.get("tools") or parameters.get("functions")) if isinstance(parameters, dict) else None
            tools = listed if isinstance(listed, list) else []
        tools = [t for t in tools if isinstance(t, dict)]
        if tools:
            for tool in tools:
                if isinstance(tool.get("parameters"), str):
                    tool["parameters"] = _json_or_none(tool["parameters"]) or {}
            attrs[sc.TOOL_DEFINITIONS] = dumps(tools)
    model = attrs.get("llm.model_name") or attrs.get("llm.request.model") or attrs.get("traceloop.association.properties.ls_model_name")
    if model and attrs.get(sc.REQUEST_MODEL) in (None, "", "unknown"):
        attrs[sc.REQUEST_MODEL] = model


def _call_ids_from_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` (OpenAI's shape) with the ids of an assistant message's tool calls that lack them read from the tool
    messages right after it, which answer its calls in their order (LangGraph's ``ToolNode`` returns them so): one per
    call, each naming an id (and, where it says, the call's tool). OpenInference's LangChain spans before 0.1.55 write
    no tool call ids but keep each tool message's ``tool_call_id``: without them a trajectory's calls and results did
    not pair by id (OpenAI's fine-tuning format refuses that)."""
    for n, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if not calls or all(call.get("id") for call in calls):
            continue
        results = messages[n + 1 : n + 1 + len(calls)]
        if len(results) != len(calls) or any(r.get("role") != "tool" or not r.get("tool_call_id") for r in results):
            continue
        if any(r.get("name") and r["name"] != c["function"].get("name") for r, c in zip(results, calls, strict=True)):
            continue
        if any(c.get("id") and c["id"] != r["tool_call_id"] for r, c in zip(results, calls, strict=True)):
            continue
        for call, result in zip(calls, results, strict=True):
            call["id"] = str(result["tool_call_id"])
    return messages


def _dialect_message(message: Mapping[str, Any], default_role: str = "user") -> dict[str, Any]:
    """An OpenLLMetry/OpenInference message dict -> OpenAI chat shape."""
    out: dict[str, Any] = {"role": message.get("role") or default_role, "content": message.get("content") or ""}
    calls = []
    for call in message.get("tool_calls") or []:
        call = call.get("tool_call", call)
        function = call.get("function", call)
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {"name": function.get("name", ""), "arguments": arguments_json(function.get("arguments"))},
            }
        )
    if calls:
        out["tool_calls"] = calls
    if message.get("tool_call_id"):
        out["tool_call_id"] = str(message["tool_call_id"])
    return out


def _fill_tool_attrs(attrs: dict[str, Any]) -> None:
    name = attrs.get("tool.name") or attrs.get("traceloop.entity.name")
    if name:
        attrs.setdefault(sc.TOOL_NAME, name)
    if sc.TOOL_CALL_ARGUMENTS not in attrs:
        key, raw = _first_set(attrs, "input.value", "tool.parameters", "traceloop.entity.input")
        if raw is not None:
            decoded = _json_or_none(raw) if isinstance(raw, str) else raw
            if isinstance(decoded, dict) and isinstance(decoded.get("inputs"), dict):
                decoded = decoded["inputs"]  # traceloop's LangChain instrumentation wraps tool inputs
            elif key == "traceloop.entity.input" and _call_arguments(decoded):
                decoded = raw = _keyword_arguments(decoded)
            if raw is not None:
                attrs[sc.TOOL_CALL_ARGUMENTS] = dumps(decoded if decoded is not None else raw)
    if sc.TOOL_CALL_RESULT not in attrs:
        key, raw = _first_set(attrs, "output.value", "traceloop.entity.output")
        if key == "traceloop.entity.output":
            # traceloop-sdk's decorators write json.dumps(result): a tool's text would keep its quotes and \u escapes
            decoded = _json_or_none(raw)
            raw = decoded if isinstance(decoded, str) else raw
        if raw is not None:
            attrs[sc.TOOL_CALL_RESULT] = raw if isinstance(raw, str) else dumps(raw)
    message = _langchain_tool_message(attrs.get(sc.TOOL_CALL_RESULT))
    if message is not None:
        content = message.get("content")
        attrs[sc.TOOL_CALL_RESULT] = content_to_text(content)  # the text the model saw (an image as its placeholder)
        if message.get("tool_call_id"):
            attrs.setdefault(sc.TOOL_CALL_ID, str(message["tool_call_id"]))
    call_id = attrs.get("tool_call.id") or attrs.get("tool.call_id")
    if call_id:
        attrs.setdefault(sc.TOOL_CALL_ID, call_id)


def _first_set(attrs: Mapping[str, Any], *keys: str) -> tuple[str | None, Any]:
    """The first of ``keys`` with a value (not empty) and that value; else no key and the last key's value."""
    for key in keys:
        if attrs.get(key):
            return key, attrs[key]
    return None, attrs.get(keys[-1])


def _call_arguments(value: Any) -> bool:
    """Whether ``value`` is how traceloop-sdk's ``@tool`` / ``@task`` decorators write a function's input:
    ``{"args": [...], "kwargs": {...}}`` (``json.dumps`` of the call's positional and keyword arguments)."""
    return (
        isinstance(value, dict)
        and set(value) == {"args", "kwargs"}
        and isinstance(value["args"], list)
        and isinstance(value["kwargs"], dict)
    )


def _keyword_arguments(call: Mapping[str, Any]) -> dict[str, Any] | None:
    """The arguments of a decorated call (:func:`_call_arguments`) as a tool call names them: its keyword arguments
    where it had no positional ones (``get_weather(**arguments)``, ``get_weather(city=...)``); ``None`` where it had
    some, whose parameter names the span does not give (the tool span then names no arguments, rather than wrong ones)."""
    return None if call["args"] else dict(call["kwargs"])


def _langchain_tool_message(raw: Any) -> Mapping[str, Any] | None:
    """The fields of a LangChain ``ToolMessage`` serialized as JSON, in the shapes instrumentations write.

    OpenInference: ``{"type": "tool", "data": {...}}`` (``messages_to_dict``); OpenLLMetry:
    ``{"output": {"lc": 1, "id": [..., "ToolMessage"], "kwargs": {...}}, "kwargs": {...}}``.
    """
    if not isinstance(raw, str) or '"tool_call_id"' not in raw:
        return None
    decoded = _json_or_none(raw)
    if isinstance(decoded, Mapping) and isinstance(decoded.get("output"), Mapping):
        decoded = decoded["output"]
    if not isinstance(decoded, Mapping):
        return None
    if decoded.get("type") == "tool" and isinstance(decoded.get("data"), Mapping):
        fields = decoded["data"]
    elif decoded.get("lc") == 1 and list(decoded.get("id") or [])[-1:] == ["ToolMessage"] and isinstance(decoded.get("kwargs"), Mapping):
        fields = decoded["kwargs"]
    else:
        return None
    return fields if "content" in fields and "tool_call_id" in fields else None


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
