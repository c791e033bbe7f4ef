"""Naming sandboxes on the command line: built-in names, ``module:factory`` paths and entry points.

A sandbox spec is one of (see :mod:`ee_middleware.plugins`):

* a built-in name: ``bfcl``;
* ``package.module:factory``: an importable callable (a class or a function with no required
  arguments) that returns a sandbox, for an app's own tools;
* the name of an entry point in the ``ee_middleware.sandboxes`` group, for installed plug-ins.

Specs are strings so that worker processes (local or on a Ray cluster) can build their own
sandbox: a sandbox itself never crosses a process boundary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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
)


def build_sandbox(spec: str) -> Sandbox:
    """Build the sandbox named by ``spec`` (see the module docstring)."""
    return SANDBOXES.build(spec)


def sandbox_factory(spec: str, *, isolation: str = "none", timeout_s: float = 30.0, memory_mb: int | None = None) -> Callable[[], Sandbox]:
    """A picklable zero-argument factory for ``spec``, optionally isolated in a subprocess."""
    SANDBOXES.resolve(spec)  # fail early, in the parent, with a clear message
    if isolation == "none":
        return functools.partial(build_sandbox, spec)
    if isolation == "subprocess":
        return functools.partial(_isolated, spec, timeout_s, memory_mb)
    raise SandboxError(f"Unknown isolation {isolation!r}: use 'none' or 'subprocess'.")


def _isolated(spec: str, timeout_s: float, memory_mb: int | None) -> Sandbox:
    from ee_middleware.replay.sandboxes.isolated import SubprocessSandbox

    return SubprocessSandbox(functools.partial(build_sandbox, spec), timeout_s=timeout_s, memory_mb=memory_mb)
