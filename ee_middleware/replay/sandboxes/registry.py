"""Naming sandboxes on the command line: built-in names, ``module:factory`` paths and entry points.

A sandbox spec is one of (see :mod:`ee_middleware.plugins`):

* a built-in name: ``bfcl``;
* ``package.module:factory``: an importable callable (a class or a function with no required
  arguments) that returns a sandbox, for an app's own tools;
* the name of an entry point in the ``ee_middleware.sandboxes`` group, for installed plug-ins;
* ``experience:MODEL_SPEC``: an experience model stands in for the tools (DreamGym; see
  :mod:`ee_middleware.replay.sandboxes.experience`), ``MODEL_SPEC`` as for policies;
* ``mcp:CONFIG.json``: the app's own MCP servers, started by
  :class:`~ee_middleware.replay.sandboxes.mcp.McpSandbox` from a config file as MCP clients write them
  (``{"mcpServers": {...}}``; see :func:`~ee_middleware.replay.sandboxes.mcp.load_mcp_config`).

Specs are strings so that worker processes (local or on a Ray cluster) can build their own
sandbox: a sandbox itself never crosses a process boundary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from ee_middleware.errors import SandboxError
from ee_middleware.plugins import PluginKind
from ee_middleware.replay.sandboxes.protocol import Sandbox

SANDBOXES = PluginKind(
    kind="sandbox",
    group="ee_middleware.sandboxes",
    error=SandboxError,
    builtins={"bfcl": "ee_middleware.bfcl.sandbox:BFCLSandbox"},
    protocol=Sandbox,
    requires="the sandbox methods (kind, covers, reset, execute, snapshot, restore, close); see ee_middleware.replay.sandboxes.protocol",
    options_from="--sandbox-setting KEY=VALUE or a [replay.sandbox_settings] table in the --config file for ee replay run "
    "(and ee improve's replay), the same flag or [curriculum.sandbox_settings] for ee curriculum run; ee eval run builds it "
    "without options",
)


def build_sandbox(spec: str, /, **options: Any) -> Sandbox:
    """Build the sandbox named by ``spec`` (see the module docstring), passing ``options`` to its factory."""
    if _is_experience(spec):
        from ee_middleware.replay.sandboxes.experience import build_experience_sandbox

        return build_experience_sandbox(spec, **options)
    if _is_mcp(spec):
        from ee_middleware.replay.sandboxes.mcp import build_mcp_sandbox

        return build_mcp_sandbox(spec, **options)
    return SANDBOXES.build(spec, **options)


def _is_experience(spec: str) -> bool:
    return isinstance(spec, str) and spec.strip().startswith("experience:")


def _is_mcp(spec: str) -> bool:
    return isinstance(spec, str) and spec.strip().startswith("mcp:")


def sandbox_options(*, allow_network: bool = False) -> dict[str, Any]:
    """The keyword options a replay job passes to sandbox factories: only those that differ from the default.

    So a factory that takes no arguments keeps working until a job asks for something it cannot
    do; then building it fails with ``Bad options for sandbox ...``, before any worker starts.
    """
    return {"allow_network": True} if allow_network else {}


def check_sandbox_spec(spec: str) -> None:
    """Check what ``spec`` names without building anything: an ``mcp:`` config file is read, a factory is imported; an
    experience model (``experience:``) is built from its model spec when it runs. Raises the sandbox kind's error."""
    if _is_mcp(spec):
        from ee_middleware.replay.sandboxes.mcp import load_mcp_config

        load_mcp_config(spec.strip()[len("mcp:") :])
    elif not _is_experience(spec):
        SANDBOXES.resolve(spec)


def factory_module(spec: str) -> str | None:
    """The module of the factory ``spec`` names (a plug-in's own module, for ``package.module:factory`` and entry
    points), imported; ``None`` for ``experience:`` and ``mcp:`` specs, which name no factory. Raises the sandbox kind's
    error for a spec that names nothing."""
    if _is_experience(spec) or _is_mcp(spec):
        return None
    module = getattr(SANDBOXES.resolve(spec), "__module__", None)
    return module if isinstance(module, str) else None


def sandbox_factory(
    spec: str, *, isolation: str = "none", timeout_s: float = 30.0, memory_mb: int | None = None, options: dict[str, Any] | None = None
) -> Callable[[], Sandbox]:
    """A picklable zero-argument factory for ``spec`` built with ``options``, optionally isolated in a subprocess."""
    check_sandbox_spec(spec)  # fail early, in the parent, with a clear message
    inner = functools.partial(build_sandbox, spec, **(options or {}))
    if isolation == "none":
        return inner
    if isolation == "subprocess":
        return functools.partial(_isolated, inner, timeout_s, memory_mb)
    raise SandboxError(f"Unknown isolation {isolation!r}: use 'none' or 'subprocess'.")


def refusal_hints(spec: str, tools: Iterable[str], /, **options: Any) -> dict[str, str]:
    """Why the sandbox refused each of ``tools`` and how to allow it, for those its ``refusal_hint`` explains.

    ``refusal_hint(tool_name) -> str | None`` is optional (see
    :mod:`ee_middleware.replay.sandboxes.protocol`); without it, or when none of ``tools`` is
    explained, the answer is empty. A sandbox class without the method is not even built.
    """
    tools = list(tools)
    if _is_experience(spec) or _is_mcp(spec):
        if not tools:
            return {}
        sandbox = build_sandbox(spec, **options)
        try:
            return {tool: text for tool in tools if (text := sandbox.refusal_hint(tool))}  # type: ignore[attr-defined]
        finally:
            sandbox.close()
    factory = SANDBOXES.resolve(spec)
    if not tools or (isinstance(factory, type) and not hasattr(factory, "refusal_hint")):
        return {}
    sandbox = SANDBOXES.construct(spec, factory, **options)
    try:
        hint = getattr(sandbox, "refusal_hint", None)
        return {tool: text for tool in tools if hint is not None and (text := hint(tool))}
    finally:
        sandbox.close()


def _isolated(inner: Callable[[], Sandbox], timeout_s: float, memory_mb: int | None) -> Sandbox:
    from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox

    return SubprocessSandbox(inner, timeout_s=timeout_s, memory_mb=memory_mb)
