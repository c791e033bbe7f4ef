"""Tool parameters the model never sees: LangChain/LangGraph's injected arguments.

A LangChain tool may take arguments that its agent fills in at run time instead of the model:
``Annotated[str, InjectedToolCallId]`` (the call's id), ``Annotated[dict, InjectedState]`` (the
graph's state), ``Annotated[BaseStore, InjectedStore()]`` (the graph's store), ``runtime:
ToolRuntime`` (all of those, the run's context and config), or any other ``InjectedToolArg``. They
are left out of the schemas the model is offered, so neither the recorded calls nor the replay
policies hold them.

Replay can give a tool its call id exactly as LangGraph's ``ToolNode`` does: the call's own id. It
cannot rebuild the rest: a trajectory records the messages the model saw, not the graph's whole
state, and no copy of the production store or the run's context. :func:`injected_parameters` finds
those parameters in a tool function's signature, so that a sandbox can supply the call id and refuse
a tool that needs the others (:func:`refusal_reason`) instead of calling it with them missing.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

CALL_ID = "InjectedToolCallId"
"""The kind of a parameter replay fills in: the call's id."""

_WHAT = {
    "InjectedState": "LangGraph passes it the graph's state, which a trajectory does not hold (only the messages the model saw)",
    "InjectedStore": "LangGraph passes it the graph's store, of which replay has no copy",
    "ToolRuntime": "LangGraph passes it the run's state, store, context and config, which replay cannot rebuild",
}


def injected_parameters(fn: Callable[..., Any], *, skip: int = 0) -> dict[str, str]:
    """``fn``'s injected parameters (after its first ``skip`` ones) -> their kind (``InjectedToolCallId``,
    ``InjectedState``, ``InjectedStore``, ``ToolRuntime``, or another ``InjectedToolArg`` class's name)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):  # a builtin or C function: it takes no annotated parameters
        return {}
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - names only a module could resolve: read the annotations as written
        hints = {}
    found = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kind = _injected_kind(hints.get(parameter.name, parameter.annotation))
        if kind is not None:
            found[parameter.name] = kind
    return found


def _injected_kind(annotation: Any) -> str | None:
    if isinstance(annotation, str):  # not resolvable: the annotation's text is all there is
        return next((k for k in (CALL_ID, *_WHAT, "InjectedToolArg") if k in annotation), None)
    from langchain_core.tools import InjectedToolArg, InjectedToolCallId

    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            cls = meta if isinstance(meta, type) else type(meta)
            if issubclass(cls, InjectedToolCallId):
                return CALL_ID
            if issubclass(cls, InjectedToolArg):
                return cls.__name__
        annotation = typing.get_args(annotation)[0]
    cls = typing.get_origin(annotation) or annotation
    if isinstance(cls, type) and any(base.__name__ == "_DirectlyInjectedToolArg" for base in cls.__mro__):  # ToolRuntime
        return cls.__name__
    return None


def refusal_reason(tool_name: str, injected: dict[str, str]) -> str | None:
    """Why replay does not call ``tool_name`` with these injected parameters, and how to allow it; ``None`` when it can."""
    missing = {name: kind for name, kind in injected.items() if kind != CALL_ID}
    if not missing:
        return None
    name, kind = next(iter(missing.items()))
    what = _WHAT.get(kind, "the agent fills it in at run time and replay cannot know its value")
    return (
        f"{tool_name!r} takes {name!r} ({kind}), which the model never sees: {what}, so replay does not call it "
        f"(it would run without {name!r}). To replay it, list a function that takes the world and the model's arguments "
        f"and supplies {name!r} from the world you build from the trajectory's environment, e.g. "
        f"tools={{{tool_name!r}: lambda world, **arguments: {tool_name}(**arguments, {name}=world[{name!r}])}}."
    )
