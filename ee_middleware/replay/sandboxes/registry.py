"""Naming sandboxes on the command line: built-in names, ``module:factory`` paths and entry points.

A sandbox spec is one of:

* a built-in name: ``bfcl``;
* ``package.module:factory``: an importable callable (a class or a function with no required
  arguments) that returns a sandbox, for an app's own tools;
* the name of an entry point in the ``ee_middleware.sandboxes`` group, for installed plug-ins.

Specs are strings so that worker processes (local or on a Ray cluster) can build their own
sandbox: a sandbox itself never crosses a process boundary.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ee_middleware.errors import SandboxError
from ee_middleware.replay.sandboxes.protocol import Sandbox

BUILTIN_SANDBOXES: dict[str, str] = {
    "bfcl": "ee_middleware.bfcl.sandbox:BFCLSandbox",
}
ENTRY_POINT_GROUP = "ee_middleware.sandboxes"


def _load_object(path: str, spec: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SandboxError(f"Sandbox {spec!r}: cannot import module {module_name!r} ({exc}). Is it installed and on PYTHONPATH?") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SandboxError(f"Sandbox {spec!r}: module {module_name!r} has no attribute {attr!r}.") from None
    return target


def _resolve(spec: str) -> Callable[[], Any]:
    if spec in BUILTIN_SANDBOXES:
        return _load_object(BUILTIN_SANDBOXES[spec], spec)
    if ":" in spec:
        return _load_object(spec, spec)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return ep.load()
    raise SandboxError(
        f"Unknown sandbox {spec!r}. Use a built-in name ({', '.join(sorted(BUILTIN_SANDBOXES))}), "
        f"'package.module:factory' for your own sandbox, or an installed '{ENTRY_POINT_GROUP}' entry point."
    )


def build_sandbox(spec: str) -> Sandbox:
    """Build the sandbox named by ``spec`` (see the module docstring)."""
    factory = _resolve(spec)
    try:
        sandbox = factory()
    except SandboxError:
        raise
    except Exception as exc:
        raise SandboxError(f"Sandbox {spec!r}: its factory failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(sandbox, Sandbox):
        raise SandboxError(
            f"Sandbox {spec!r}: the factory returned {type(sandbox).__name__}, which lacks the sandbox methods "
            "(kind, covers, reset, execute, snapshot, restore, close). See ee_middleware.replay.sandboxes.protocol."
        )
    return sandbox


def sandbox_factory(spec: str, *, isolation: str = "none", timeout_s: float = 30.0, memory_mb: int | None = None) -> Callable[[], Sandbox]:
    """A picklable zero-argument factory for ``spec``, optionally isolated in a subprocess."""
    _resolve(spec)  # fail early, in the parent, with a clear message
    if isolation == "none":
        return functools.partial(build_sandbox, spec)
    if isolation == "subprocess":
        return functools.partial(_isolated, spec, timeout_s, memory_mb)
    raise SandboxError(f"Unknown isolation {isolation!r}: use 'none' or 'subprocess'.")


def _isolated(spec: str, timeout_s: float, memory_mb: int | None) -> Sandbox:
    from ee_middleware.replay.sandboxes.subprocess import SubprocessSandbox

    return SubprocessSandbox(functools.partial(build_sandbox, spec), timeout_s=timeout_s, memory_mb=memory_mb)
