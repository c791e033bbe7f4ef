"""LangChain tool objects in :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox`'s ``read_only_tools``.

A tool built with ``@tool`` or ``StructuredTool.from_function`` does more than call its function: it validates the
model's arguments against its ``args_schema`` (a string ``"4"`` becomes ``4``, a nested dict a pydantic model, a string
an enum member), keeps only the content of a ``response_format="content_and_artifact"`` result, turns a
``ToolException`` into the error text its ``handle_tool_error`` says, and may answer a ``Command``. Calling the function
it wraps skips all of that, so replay would store answers the model never sees. Here a tool object is called as
LangGraph's ``ToolNode`` calls it (``tool.invoke`` with the tool call, ``ainvoke`` for an async-only tool), and its
answer is read as capture reads the ``ToolMessage``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ee_middleware.replay.sandboxes.injected import injected_parameters


def is_langchain_tool(value: Any) -> bool:
    """Whether ``value`` is a LangChain tool object (a ``BaseTool``), without importing LangChain."""
    return any(base.__name__ == "BaseTool" for base in type(value).__mro__)


def wrapped_function(tool: Any) -> Callable[..., Any] | None:
    """The function a tool object calls (its ``func``, or ``coroutine`` for an async-only one), if it has one."""
    return getattr(tool, "func", None) or getattr(tool, "coroutine", None)


def tool_injected_parameters(tool: Any) -> dict[str, str]:
    """The injected parameters (see :mod:`~ee_middleware.replay.sandboxes.injected`) of the function ``tool`` wraps."""
    fn = wrapped_function(tool)
    return injected_parameters(fn) if fn is not None else {}


def call_tool(tool: Any, call_id: str, name: str, arguments: dict[str, Any], run: Callable[[Any], Any]) -> tuple[Any, bool]:
    """Call ``tool`` with the model's ``arguments`` as ``ToolNode`` does: ``(content, is_error)`` of the ``ToolMessage`` it
    answers (found in a ``Command``'s update). ``run`` runs an awaitable to its end (for an async-only tool).

    A tool's own exception propagates, as in ``ToolNode``; arguments its schema refuses raise LangGraph's
    ``ToolInvocationError`` (``create_agent`` shows the model its ``message``).
    """
    from pydantic import ValidationError

    request = {"type": "tool_call", "name": name, "args": arguments, "id": call_id}
    try:
        if getattr(tool, "func", True) is None and getattr(tool, "coroutine", None) is not None:
            response = run(tool.ainvoke(request))
        else:
            response = tool.invoke(request)
    except ValidationError as exc:
        raise _invocation_error(name, exc, arguments, tool_injected_parameters(tool)) from exc
    return _answer(response, call_id)


def _answer(response: Any, call_id: str) -> tuple[Any, bool]:
    from langchain_core.messages import ToolMessage

    if isinstance(response, ToolMessage):
        return response.content, response.status == "error"
    update = getattr(response, "update", None)  # a langgraph Command: its ToolMessage for this call
    if update is not None:
        messages = update.get("messages", []) if isinstance(update, dict) else [v for k, v in update if k == "messages"]
        for message in messages if isinstance(messages, list) else [messages]:
            if isinstance(message, ToolMessage) and message.tool_call_id == call_id:
                return message.content, message.status == "error"
    return response, False


def argument_schema(name: str, fn: Callable[..., Any], *, skip: int = 0) -> Any:
    """The pydantic model LangChain's ``@tool`` builds from ``fn``'s signature (after its first ``skip`` parameters), to
    validate a call's arguments as the production tool did; ``None`` for a function it cannot describe (one that takes
    ``*args`` or ``**kwargs``, a builtin, types pydantic does not know), which then gets the arguments as they are."""
    import inspect

    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if not parameters[skip:] or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters[skip:]):
        return None
    try:
        from langchain_core.tools import create_schema_from_function

        skipped = [p.name for p in parameters[:skip]]
        return create_schema_from_function(name, fn, filter_args=[*skipped, "run_manager", "callbacks"])
    except Exception:  # noqa: BLE001 - annotations pydantic cannot read: the function gets the raw arguments
        return None


def validated_arguments(schema: Any, name: str, arguments: dict[str, Any], injected: dict[str, str]) -> dict[str, Any]:
    """``arguments`` as LangChain's tool gives them to its function: validated by ``schema`` (``"4"`` is ``4``, a dict a
    nested model, a string an enum member), only those the call gave (defaults are the function's). Arguments it
    refuses raise LangGraph's ``ToolInvocationError``.

    One difference: LangChain drops an argument the function does not take; here it is passed on, so that the call
    fails (``TypeError``) as the sandbox conformance kit requires of a bad call."""
    from pydantic import ValidationError

    try:
        result = schema.model_validate(arguments)
    except ValidationError as exc:
        raise _invocation_error(name, exc, arguments, injected) from exc
    fields = type(result).model_fields
    return {key: getattr(result, key) if key in fields else value for key, value in arguments.items()}


def _invocation_error(name: str, exc: Any, arguments: dict[str, Any], injected: dict[str, str]) -> Exception:
    from langgraph.prebuilt.tool_node import ToolInvocationError

    shown = [error for error in exc.errors() if not (error.get("loc") and error["loc"][0] in injected)]
    shown_arguments = {key: value for key, value in arguments.items() if key not in injected}
    return ToolInvocationError(name, exc, shown_arguments, shown)
