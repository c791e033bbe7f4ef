"""The BFCL world: backend instances built from an entry's ``initial_config``, and call dispatch.

The expert recordings and the replay sandbox both execute calls through :func:`execute`, so an
expert action re-executed in the sandbox reproduces the recorded observation exactly. Results are
formatted as BFCL's own executor formats them (strings as they are, dicts as JSON, errors as
``Error during execution: ...``), but calls are dispatched by name with decoded arguments: nothing
is ever ``eval``-ed.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from ee_middleware.bfcl._package import import_bfcl
from ee_middleware.errors import EnvironmentUnavailableError, MissingExtraError
from ee_middleware.records import Observation, ToolCall

World = dict[str, Any]
"""Backend class name -> instance."""

NETWORK_METHODS: Mapping[str, frozenset[str]] = {
    "WebSearchAPI": frozenset({"search_engine_query", "fetch_url_content"}),
}
"""Backend methods that send real network requests (``requests.get``, SerpAPI), by class.

Read from bfcl-eval 2026.3.23's backends: ``web_search.py`` is the only one that makes HTTP calls.
"""

NETWORK_CLASSES: Mapping[str, str] = {
    "MemoryAPI_vector": "downloads the all-MiniLM-L6-v2 model from the Hugging Face hub when it is loaded",
}
"""Backend classes that reach the network just by being loaded, with what they do."""


@cache
def _backend_class(class_name: str) -> type:
    config = import_bfcl("constants.executable_backend_config")
    module_path = config.CLASS_FILE_PATH_MAPPING.get(class_name)
    if module_path is None:
        raise EnvironmentUnavailableError(
            f"Unknown BFCL backend class {class_name!r}; known: {', '.join(sorted(config.CLASS_FILE_PATH_MAPPING))}."
        )
    module = import_bfcl(module_path.removeprefix("bfcl_eval."))
    cls = getattr(module, class_name)
    _PRISTINE_DEFAULTS[cls] = _mutable_defaults(cls)
    return cls


# Some backends declare mutable default arguments (``post_tweet(..., mentions=[])``) and store them in
# the world, where later calls mutate them: the default then carries state from one call, branch or
# entry to the next, outside any snapshot. Every call gets its own copy of the default as it was
# when the class was loaded, which is what a fresh process would see.
_PRISTINE_DEFAULTS: dict[type, dict[str, dict[str, Any]]] = {}


def load_offline_backends() -> list[str]:
    """Load every BFCL backend class that stays offline (all but :data:`NETWORK_CLASSES` and the memory backends, which
    keep files of their own), as a sandbox does on first use of each; returns the names loaded. A class whose module
    cannot be imported here (a dependency bfcl-eval leaves optional) is left for the sandbox to report when an
    environment needs it. What a replay job's fork server runs once for all its workers (:mod:`ee_middleware.bfcl.warm`)."""
    config = import_bfcl("constants.executable_backend_config")
    loaded = []
    for class_name in config.CLASS_FILE_PATH_MAPPING:
        if class_name in NETWORK_CLASSES or class_name.startswith("MemoryAPI"):
            continue
        try:
            _backend_class(class_name)
        except (EnvironmentUnavailableError, MissingExtraError):
            continue
        loaded.append(class_name)
    return loaded


def _mutable_defaults(cls: type) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        defaults = {
            p.name: copy.deepcopy(p.default)
            for p in inspect.signature(member).parameters.values()
            if isinstance(p.default, (list, dict, set, bytearray))
        }
        if defaults:
            table[name] = defaults
    return table


def build_world(initial_config: Mapping[str, Any], involved_classes: Sequence[str], *, long_context: bool = False) -> World:
    """Fresh backend instances loaded with the entry's initial state (as BFCL's executor builds them)."""
    stateless = set(import_bfcl("constants.executable_backend_config").STATELESS_CLASSES)
    world: World = {}
    for class_name in involved_classes:
        instance = _backend_class(class_name)()
        if class_name not in stateless:
            instance._load_scenario(copy.deepcopy(dict(initial_config.get(class_name, {}))), long_context=long_context)
        world[class_name] = instance
    return world


NOT_A_BFCL_TRAJECTORY = (
    "The bfcl sandbox (ee replay run's default --sandbox) replays trajectories recorded from BFCL tasks; for your app's "
    "own tools, give its sandbox: --sandbox MODULE:FACTORY (docs/sandboxes.md)."
)
"""Said where a trajectory's environment is no BFCL one: the likeliest cause is a replay run without ``--sandbox``."""


def world_from_environment(environment: Mapping[str, Any] | None) -> World:
    """Rebuild the world from a trajectory's environment reference (see ``BFCLEntry.environment``)."""
    if not environment:
        raise EnvironmentUnavailableError(
            "The trajectory has no environment reference. BFCL trajectories need "
            "{'kind': 'bfcl', 'initial_config': ..., 'involved_classes': [...]}; record them with `ee bfcl record-experts`. "
            + NOT_A_BFCL_TRAJECTORY
        )
    if environment.get("kind", "bfcl") != "bfcl":
        raise EnvironmentUnavailableError(
            f"Environment kind {environment.get('kind')!r} is not a BFCL environment; use the sandbox made for it. " + NOT_A_BFCL_TRAJECTORY
        )
    classes = environment.get("involved_classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise EnvironmentUnavailableError(
            "BFCL environment reference lacks 'involved_classes' (a list of backend class names). " + NOT_A_BFCL_TRAJECTORY
        )
    config = environment.get("initial_config") or {}
    if not isinstance(config, dict):
        raise EnvironmentUnavailableError("BFCL environment reference has an 'initial_config' that is not an object.")
    try:
        return build_world(config, classes, long_context=bool(environment.get("long_context", False)))
    except EnvironmentUnavailableError:
        raise
    except Exception as exc:
        raise EnvironmentUnavailableError(f"BFCL backends could not load the initial_config: {type(exc).__name__}: {exc}") from exc


def network_tools(table: Mapping[str, tuple[str, str]]) -> frozenset[str]:
    """The tool names of a :func:`method_table` that send real network requests (see :data:`NETWORK_METHODS`)."""
    return frozenset(name for name, (class_name, method) in table.items() if method in NETWORK_METHODS.get(class_name, ()))


def method_table(world: World) -> dict[str, tuple[str, str]]:
    """Public tool name -> (class name, method name), in ``involved_classes`` order (first wins)."""
    table: dict[str, tuple[str, str]] = {}
    for class_name, instance in world.items():
        for name in _public_methods(type(instance)):
            table.setdefault(name, (class_name, name))
    return table


@cache
def _public_methods(cls: type) -> tuple[str, ...]:
    return tuple(name for name, member in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_"))


def format_result(value: Any) -> str:
    """BFCL's own result formatting: strings unchanged, dicts as JSON (``str`` when not serialisable)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def execute(world: World, call: ToolCall, *, table: Mapping[str, tuple[str, str]] | None = None) -> Observation:
    """Run one call against the world. Failures (unknown tool, bad arguments, exceptions) are error observations.

    ``table`` is the world's :func:`method_table`, when the caller keeps one.
    """
    table = method_table(world) if table is None else table
    target = table.get(call.name)
    if target is None:
        return Observation(content=f"Error during execution: tool '{call.name}' does not exist in this environment.", is_error=True)
    class_name, method_name = target
    instance = world[class_name]
    method = getattr(instance, method_name)
    # Copies, so that the world never shares a list with the caller's records (or with a default).
    arguments = _copied(call.arguments)
    for param, default in _PRISTINE_DEFAULTS.get(type(instance), {}).get(method_name, {}).items():
        arguments.setdefault(param, copy.deepcopy(default))
    mp = _mpmath_context()
    precision = mp.dps if mp is not None else None
    try:
        value = method(**arguments)
    except Exception as exc:  # noqa: BLE001 - the model sees the error, as BFCL's executor shows it
        return Observation(content=f"Error during execution: {exc}", is_error=True)
    finally:
        # MathAPI sets mpmath's process-wide precision; left alone it would change later calls'
        # results (and speed) in other branches, outside any snapshot.
        if mp is not None and mp.dps != precision:
            mp.dps = precision
    is_error = isinstance(value, dict) and "error" in value
    return Observation(content=_sorted_set_literals(format_result(value)), is_error=is_error)


_ATOMIC = frozenset((str, int, float, bool, type(None)))
"""Types ``copy.deepcopy`` returns as they are (exactly these: a subclass may copy itself otherwise)."""


def _copied(arguments: dict[str, Any]) -> dict[str, Any]:
    """``copy.deepcopy(arguments)``: a call's arguments are mostly strings and numbers, which a new dict holds
    as deepcopy would (the same objects), without its memo and dispatch per value."""
    if type(arguments) is dict and all(type(value) in _ATOMIC for value in arguments.values()):
        return dict(arguments)
    return copy.deepcopy(arguments)


_STRING_SET = re.compile(r"\{('(?:[^'\\]|\\.)*'(?:, '(?:[^'\\]|\\.)*')+)\}")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'")


def _sorted_set_literals(text: str) -> str:
    """Print the sets of strings bfcl-eval puts in its messages in sorted order.

    TravelAPI answers ``Must be one of {'economy', 'business', 'first'}`` by formatting a Python set,
    whose order follows the process's string hash seed: the same call gave other text in another
    worker process or run (49 of 9,136 BFCL replay observations differed between two processes).
    """
    if "{'" not in text:
        return text
    return _STRING_SET.sub(lambda m: "{" + ", ".join(sorted(_QUOTED.findall(m.group(1)))) + "}", text)


def _mpmath_context() -> Any:
    module = sys.modules.get("mpmath")
    return getattr(module, "mp", None)


def parse_call(expression: str, world: World, *, call_id: str = "") -> ToolCall:
    """A ground-truth call expression (``"mv(source='a', destination='b')"``) as a :class:`ToolCall`.

    Parsed with ``ast`` (literal arguments only); positional arguments are named from the backend
    method's signature. Raises ``ValueError`` for anything that is not one plain call.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a call expression: {expression!r} ({exc.msg})") from None
    node = tree.body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {expression!r}")
    name = node.func.id
    arguments: dict[str, Any] = {}
    if node.args:
        target = method_table(world).get(name)
        if target is None:
            raise ValueError(f"positional arguments for unknown tool {name!r} in {expression!r}")
        params = [p for p in inspect.signature(getattr(type(world[target[0]]), target[1])).parameters if p != "self"]
        if len(node.args) > len(params):
            raise ValueError(f"too many positional arguments in {expression!r}")
        for param, arg in zip(params, node.args, strict=False):
            arguments[param] = ast.literal_eval(arg)
    for keyword in node.keywords:
        if keyword.arg is None:
            raise ValueError(f"**kwargs are not supported: {expression!r}")
        arguments[keyword.arg] = ast.literal_eval(keyword.value)
    return ToolCall(id=call_id, name=name, arguments=arguments)
