"""LangChain tool objects in :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox`'s ``read_only_tools``, and in its
``tools`` built over a function of the world (:func:`on_world`).

A tool built with ``@tool`` or ``StructuredTool.from_function`` does more than call its function: it validates the
model's arguments against its ``args_schema`` (a string ``"4"`` becomes ``4``, a nested dict a pydantic model, a string
an enum member), keeps only the content of a ``response_format="content_and_artifact"`` result, turns a
``ToolException`` into the error text its ``handle_tool_error`` says, and may answer a ``Command``. Calling the function
it wraps skips all of that, so replay would store answers the model never sees. Here a tool object is called as
LangGraph's ``ToolNode`` calls it (``tool.invoke`` with the tool call, ``ainvoke`` for an async-only tool), and its
answer is read as capture reads the ``ToolMessage``.
"""

from __future__ import annotations

import contextvars
import inspect
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
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

    The tool runs with :func:`tool_run_config` as its config. A tool's own exception propagates, as in ``ToolNode``;
    arguments its schema refuses raise LangGraph's ``ToolInvocationError`` (``create_agent`` shows the model its
    ``message``).
    """
    from pydantic import ValidationError

    request = {"type": "tool_call", "name": name, "args": arguments, "id": call_id}
    try:
        if getattr(tool, "func", True) is None and getattr(tool, "coroutine", None) is not None:
            response = run(tool.ainvoke(request, tool_run_config(is_async=True)))
        else:
            response = tool.invoke(request, tool_run_config())
    except ValidationError as exc:
        raise _invocation_error(name, exc, arguments, tool_injected_parameters(tool)) from exc
    return _answer(response, call_id)


def world_parameter(tool: Any) -> str | None:
    """The name of the first parameter of the function ``tool`` wraps: for a tool given as a world tool, the world's;
    ``None`` when it wraps no function that takes one (see :func:`first_parameter`)."""
    fn = wrapped_function(tool)
    first = first_parameter(fn) if fn is not None else None
    return first.name if first is not None else None


def first_parameter(fn: Callable[..., Any]) -> inspect.Parameter | None:
    """``fn``'s first parameter when it can be given positionally (the one a world tool's function takes the world in);
    ``None`` when it has none, or its signature cannot be read."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if not parameters or parameters[0].kind not in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD):
        return None
    return parameters[0]


def filled_by_langchain(fn: Callable[..., Any], parameter: str) -> str | None:
    """What a LangChain tool fills ``fn``'s ``parameter`` with when it calls ``fn`` (``callbacks``, ``run_manager``, the
    parameter :func:`config_parameter` names), or ``None``: such a parameter is neither the world nor the model's."""
    if parameter in ("callbacks", "run_manager"):
        return f"its {parameter}"
    if parameter == config_parameter(fn):
        return "the run's RunnableConfig"
    return None


def config_parameter(fn: Callable[..., Any], *, skip: int = 0) -> str | None:
    """The parameter of ``fn`` (after its first ``skip``) that LangChain's tool gives the run's ``RunnableConfig`` and
    leaves out of the argument schema, or ``None``: as langchain_core finds it (``_get_runnable_config_param``), the
    first one annotated ``RunnableConfig`` itself (a string annotation resolved in ``fn``'s module, as with ``from
    __future__ import annotations``; read as written when it cannot be resolved). ``Optional[RunnableConfig]`` is not
    one: LangChain offers it to the model as an optional argument. Under another name (``cfg``) the function gets what
    the call gives; named ``config`` it never does (``StructuredTool._run`` keeps its own ``config`` keyword), and gets
    its default (see :func:`filled_parameters`)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - names only a module could resolve: read the annotations as written
        hints = {}
    for parameter in parameters[skip:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(parameter.name, parameter.annotation)
        if annotation == "RunnableConfig" or getattr(annotation, "__name__", None) == "RunnableConfig":
            return parameter.name
    return None


def tool_run_config(*, is_async: bool = False) -> dict[str, Any]:
    """The ``RunnableConfig`` replay gives a tool function's :func:`config_parameter`, made afresh for each call: the one
    LangChain gives a tool in a graph run, less what a trajectory does not hold (no tags or metadata, the default
    recursion limit, an empty ``configurable``). Its ``callbacks`` is a callback manager with no handlers but a parent
    run id of its own (an ``AsyncCallbackManager`` for an async tool, as LangChain gives it), so that a custom event the
    tool dispatches (``dispatch_custom_event(..., config=config)``, ``adispatch_custom_event``) reaches no one, where
    without a parent run it would fail. Never the replay job's own callbacks, nor production's ``configurable`` (a
    thread id, a user): a trajectory does not hold them; a tool that reads one fails as it would have without it (give
    it from the world instead)."""
    from langchain_core.runnables.config import DEFAULT_RECURSION_LIMIT

    callbacks = handlerless_callbacks(is_async=is_async)
    return {"tags": [], "metadata": {}, "callbacks": callbacks, "recursion_limit": DEFAULT_RECURSION_LIMIT, "configurable": {}}


def handlerless_callbacks(*, is_async: bool = False) -> Any:
    """A callback manager with no handlers and a new parent run id, as ``run_manager.get_child()`` gives a tool's
    function when no handler is configured: what it dispatches or starts under it goes nowhere."""
    from uuid import uuid4

    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager

    return (AsyncCallbackManager if is_async else CallbackManager)(handlers=[], parent_run_id=uuid4())


@dataclass(frozen=True)
class FilledParameters:
    """The parameters of a tool function that LangChain's ``StructuredTool`` gives values of its own, never the model's
    (``BaseTool.run`` and ``StructuredTool._run`` in langchain_core)."""

    config: str | None
    """The :func:`config_parameter`: the run's ``RunnableConfig`` (see :func:`tool_run_config`)."""
    callbacks: bool
    """Whether it takes ``callbacks``: the run's child callback manager (here one with no handlers)."""
    withheld: tuple[str, ...]
    """``run_manager``, and ``config`` when it is not the :attr:`config` one: ``StructuredTool._run`` takes both for
    itself, so the function gets its default (a ``TypeError`` without one), whatever the call gives."""
    is_async: bool

    @property
    def names(self) -> frozenset[str]:
        """The parameters filled so, which no call's argument reaches."""
        return frozenset([*([self.config] if self.config else []), *(["callbacks"] if self.callbacks else []), *self.withheld])


def filled_parameters(fn: Callable[..., Any], *, skip: int = 0) -> FilledParameters:
    """What LangChain fills among ``fn``'s parameters after its first ``skip`` (see :class:`FilledParameters`)."""
    try:
        names = [p.name for p in list(inspect.signature(fn).parameters.values())[skip:]]
    except (TypeError, ValueError):
        names = []
    config = config_parameter(fn, skip=skip)
    withheld = tuple(name for name in ("config", "run_manager") if name in names and name != config)
    return FilledParameters(config, "callbacks" in names and config != "callbacks", withheld, inspect.iscoroutinefunction(fn))


def call_function(
    fn: Callable[..., Any],
    world: tuple[Any, ...],
    arguments: dict[str, Any],
    filled: FilledParameters,
    run: Callable[[Any], Any],
    *,
    as_langchain: bool = True,
) -> Any:
    """``fn(*world, **arguments)`` as LangChain's ``StructuredTool`` calls its function, its result (``run`` runs an
    awaitable to its end): the parameters LangChain fills get its values over the model's (see :class:`FilledParameters`),
    and the call runs with the run's config as LangChain's current one, so that ``dispatch_custom_event`` without a config,
    or a runnable the tool invokes, finds it (never the replay job's). With ``as_langchain=False`` (functions called with
    the raw arguments) only the :attr:`~FilledParameters.config` parameter is filled."""
    from langchain_core.runnables.config import var_child_runnable_config

    config = tool_run_config(is_async=filled.is_async)
    arguments = dict(arguments)
    if not as_langchain:
        if filled.config is not None:
            arguments[filled.config] = config
        return _finished(fn(*world, **arguments), run)
    for name in filled.withheld:
        arguments.pop(name, None)
    if filled.callbacks:
        arguments["callbacks"] = config["callbacks"]  # the child manager, as the config's (run_manager.get_child())
    if filled.config is not None:
        arguments[filled.config] = config
    # The config as LangChain's current one, as BaseTool.run sets its child config (set_config_context), in a context of
    # the call's own: that helper also resets LangSmith's tracing context afterwards (~60 us a call), which matters only
    # for a LangChainTracer among the callbacks, and these have no handlers; the copied context is dropped after.
    context = contextvars.copy_context()
    context.run(var_child_runnable_config.set, config)
    return context.run(lambda: _finished(fn(*world, **arguments), run))


def _finished(value: Any, run: Callable[[Any], Any]) -> Any:
    return run(value) if inspect.isawaitable(value) else value


def offered_arguments(tool: Any) -> set[str] | None:
    """The argument names of ``tool``'s own argument schema when it was given one (``args_schema=``: the schema the model
    is offered, a pydantic model or a JSON schema), ``None`` when the schema is the one LangChain made from the function's
    signature (it lists every parameter, the world's too) or there is none."""
    schema = getattr(tool, "args_schema", None)
    if isinstance(schema, dict):
        properties = schema.get("properties")
        return set(properties) if isinstance(properties, dict) else set()
    fields = getattr(schema, "model_fields", None)
    if schema is None or not isinstance(fields, dict):
        return None
    fn = wrapped_function(tool)
    made = getattr(schema, "__module__", "") == "langchain_core.utils.pydantic"  # where create_schema_from_function makes it
    if made and fn is not None:
        try:
            made = set(fields) <= set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            pass
    return None if made else set(fields)


def on_world(tool: Any, world: Callable[[], Any]) -> Any:
    """A copy of ``tool``, a LangChain tool object built over a function of the world (``StructuredTool.from_function(fn)``
    where ``fn(world, **arguments)``), whose function gets ``world()`` first and whose argument schema leaves the world
    out (the tool's own schema when it has no field of that name). Called by :func:`call_tool`, it answers as the tool
    does: its ``handle_tool_error``, ``handle_validation_error``, ``response_format`` and a returned ``Command``."""
    from langchain_core.tools import create_schema_from_function

    name = world_parameter(tool)
    assert name is not None
    update: dict[str, Any] = {}
    for attribute in ("func", "coroutine"):
        fn = getattr(tool, attribute, None)
        if fn is not None:
            update[attribute] = _given_the_world(fn, world, is_async=attribute == "coroutine")
    schema = getattr(tool, "args_schema", None)
    if schema is None or name in (getattr(schema, "model_fields", None) or {}):
        fn = wrapped_function(tool)
        assert fn is not None
        filtered = [name, "run_manager", "callbacks", *filter(None, [config_parameter(fn, skip=1)])]
        update["args_schema"] = create_schema_from_function(tool.name, fn, filter_args=filtered)
    return tool.model_copy(update=update)


def _given_the_world(fn: Callable[..., Any], world: Callable[[], Any], *, is_async: bool) -> Callable[..., Any]:
    """``fn`` with ``world()`` as its first argument; its signature and type hints the function's own after the world
    (LangChain looks there for the parameters it fills in: callbacks, a RunnableConfig)."""
    if is_async:

        async def bound(*args: Any, **kwargs: Any) -> Any:
            return await fn(world(), *args, **kwargs)

    else:

        def bound(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return fn(world(), *args, **kwargs)

    signature = inspect.signature(fn)
    parameters = list(signature.parameters.values())
    bound.__signature__ = signature.replace(parameters=parameters[1:])  # type: ignore[attr-defined]
    try:  # resolved in fn's module: LangChain finds the RunnableConfig parameter by typing.get_type_hints(bound)
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - names only a module could resolve: LangChain finds none in fn either
        hints = {}
    bound.__annotations__ = {key: hint for key, hint in hints.items() if not parameters or key != parameters[0].name}
    bound.__name__ = getattr(fn, "__name__", "tool")
    return bound


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
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if not parameters[skip:] or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters[skip:]):
        return None
    try:
        from langchain_core.tools import create_schema_from_function

        skipped = [p.name for p in parameters[:skip]]
        config = config_parameter(fn, skip=skip)  # LangChain fills it (see tool_run_config), the model never gives it
        filtered = [*skipped, "run_manager", "callbacks", *([config] if config is not None else [])]
        return create_schema_from_function(name, fn, filter_args=filtered)
    except Exception:  # noqa: BLE001 - annotations pydantic cannot read: the function gets the raw arguments
        return None


def validated_arguments(
    schema: Any, name: str, arguments: dict[str, Any], injected: dict[str, str], parameters: Collection[str] = ()
) -> dict[str, Any]:
    """``arguments`` as LangChain's tool gives them to its function: validated by ``schema`` (``"4"`` is ``4``, a dict a
    nested model, a string an enum member), only those the call gave (defaults are the function's); an argument the
    function does not take is dropped, as LangChain drops it (a model that adds ``verbose=true`` to its call got the
    tool's answer in production, and gets it in replay). One of the function's ``parameters`` that the schema holds no
    field for (a name pydantic keeps private: ``_raw``) is passed on as given. Arguments it refuses raise LangGraph's
    ``ToolInvocationError``."""
    from pydantic import ValidationError

    try:
        result = schema.model_validate(arguments)
    except ValidationError as exc:
        raise _invocation_error(name, exc, arguments, injected) from exc
    fields = type(result).model_fields
    return {key: getattr(result, key) if key in fields else value for key, value in arguments.items() if key in fields or key in parameters}


def _invocation_error(name: str, exc: Any, arguments: dict[str, Any], injected: dict[str, str]) -> Exception:
    from langgraph.prebuilt.tool_node import ToolInvocationError

    shown = [error for error in exc.errors() if not (error.get("loc") and error["loc"][0] in injected)]
    shown_arguments = {key: value for key, value in arguments.items() if key not in injected}
    return ToolInvocationError(name, exc, shown_arguments, shown)
