"""Which expert calls the model wrote malformed, and which name a tool the run was never offered: one rule for replay
(which never executes them) and the IL builder (which never teaches them), kept in the light core so that both read the
same functions (see :func:`malformed_by_the_model` and :func:`unoffered_by_the_graph`).

Capture says it of each call whose arguments could be read either way (:attr:`~ee_middleware.records.ToolCall.malformed`,
schema 1.6: set from LangChain's ``invalid_tool_calls``, the argument text the model wrote, and the tool spans that
ran repaired calls): that mark decides. Calls without it
(records older than 1.6, records built by hand, another recorder's calls whose arguments were no JSON object) are judged
by their arguments' shape (:func:`malformed_arguments`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ee_middleware.messages import declares_raw
from ee_middleware.records import ToolCall, tool_schema_name


def malformed_arguments(arguments: Any) -> bool:
    """Whether a call's recorded ``arguments`` are a malformed call's: exactly one key, ``_raw``. Capture stores so every
    entry of LangChain's ``invalid_tool_calls`` (the text the model wrote: no JSON, JSON that is no object, an object a
    parser or schema check refused) and any call whose arguments were no JSON object
    (:func:`~ee_middleware.messages.parse_arguments`; stores recorded before hold a list or ``null`` there)."""
    return isinstance(arguments, Mapping) and len(arguments) == 1 and "_raw" in arguments


def malformed_by_the_model(tools: Iterable[Any], name: str, arguments: Any, malformed: bool | None = None) -> bool:
    """Whether a call of tool ``name`` with ``arguments`` is one the model wrote malformed: the graph answered it itself
    (``create_agent``: "... could not be executed - arguments were malformed or truncated."), no tool ran it.

    ``malformed``: what capture recorded of the call (:attr:`~ee_middleware.records.ToolCall.malformed`), which decides
    where it is not ``None``: a call LangChain held as ``invalid_tool_calls`` that no tool ran is malformed even for a
    tool whose schema declares ``_raw``, and a call whose only argument the model wrote as ``_raw`` is not. Where it is
    ``None`` (records older than schema 1.6, or a call capture could not tell), the arguments decide
    (:func:`malformed_arguments`), given the trajectory's recorded tool schemas ``tools``: a tool whose recorded schema
    declares a ``_raw`` parameter is called with it as its own argument, so such a call is an ordinary one."""
    if malformed is not None:
        return bool(malformed)
    if not malformed_arguments(arguments):
        return False
    return not any(tool_schema_name(schema) == name and declares_raw(schema) for schema in tools)


def malformed_call(tools: Iterable[Any], call: ToolCall) -> bool:
    """:func:`malformed_by_the_model` of a recorded ``call`` (its mark included), given the trajectory's ``tools``."""
    return malformed_by_the_model(tools, call.name, call.arguments, call.malformed)


def malformed_arguments_json(tools_json: str | None, name: str | None, arguments_json: str | None, malformed: bool | None = None) -> bool:
    """:func:`malformed_by_the_model` of a call as a store's tables hold it: the trajectory's ``tools_json``, the step's
    ``tool_name``, ``arguments_json`` (JSON text; text that is not, or a ``None``, is no malformed call's) and
    ``tool_call_malformed`` (``malformed``: null in rows older than schema 1.6 and for calls capture did not mark)."""
    if malformed is not None:
        return bool(malformed)
    if not arguments_json or not arguments_json.startswith('{"_raw":'):  # (dumps writes no space: the common case is quick)
        return False
    try:
        arguments = json.loads(arguments_json)
        tools = json.loads(tools_json) if tools_json else []
    except (ValueError, RecursionError):
        return False
    return malformed_by_the_model(tools if isinstance(tools, list) else [], name or "", arguments)


def unoffered_by_the_graph(tools: Iterable[Any], name: str, is_error: bool | None, *, ran: bool = False) -> bool:
    """Whether a call of tool ``name`` is one the graph answered itself because no tool of that name was offered in the
    whole run (a name the model made up: ``create_agent``'s tool node answers "... is not a valid tool" and runs
    nothing): the trajectory's recorded tool schemas ``tools`` name none such, its recorded observation is an error
    (``is_error``), and no tool span timed it (``ran``: the step has a tool latency, so a tool of that name ran, one the
    graph held unoffered or named otherwise in its schema, which may have changed the world). A call without an
    observation, or of a trajectory that records no schemas, tells nothing. Replay never executes these calls and IL
    never teaches them, as malformed ones (:func:`malformed_by_the_model`)."""
    names = {known for schema in tools if (known := tool_schema_name(schema)) is not None}
    return bool(names) and name not in names and is_error is True and not ran


def unoffered_call(tools: Iterable[Any], call: ToolCall, is_error: bool | None, *, ran: bool = False) -> bool:
    """:func:`unoffered_by_the_graph` of a recorded ``call`` whose observation's ``is_error`` is given."""
    return unoffered_by_the_graph(tools, call.name, is_error, ran=ran)
