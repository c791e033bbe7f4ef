"""Adapter registry and serving, importable as ``ee_middleware.adapters`` (the top-level ``adapters/`` folder).

- :mod:`~ee_middleware.adapters.registry` — versioned, immutable adapter names per app, statuses
  (candidate, live, retired, failed), the live adapter per app (the app's alias), an append-only
  history; :class:`LocalAdapterRegistry` is the embedded default;
- :mod:`~ee_middleware.adapters.serving` — the serving-backend protocol (load, verify, unload, list)
  over vLLM's runtime LoRA HTTP API, with two servers behind it: vLLM and the local transformers +
  peft server; launchers; the alias router;
- :mod:`~ee_middleware.adapters.promote` — promote (load + verify on every replica, then switch the
  alias; any failure rolls every replica back) and rollback;
- :mod:`~ee_middleware.adapters.testing` — conformance kits for registries and serving backends.

The light core never imports this package (import-linter contract); the registry needs only the
core's dependencies, the local server the ``[serve]`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports

if TYPE_CHECKING:
    from ee_middleware.adapters.records import AdapterRecord, Status
    from ee_middleware.adapters.registry import AdapterRegistry, LocalAdapterRegistry, open_registry

_LAZY = {
    "AdapterRecord": ".records",
    "Status": ".records",
    "AdapterRegistry": ".registry",
    "LocalAdapterRegistry": ".registry",
    "open_registry": ".registry",
}
__all__ = ["AdapterRecord", "AdapterRegistry", "LocalAdapterRegistry", "Status", "open_registry"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
