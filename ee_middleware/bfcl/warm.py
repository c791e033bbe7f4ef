"""Imported for its effect: loads BFCL's offline backend classes (:func:`~ee_middleware.bfcl.world.load_offline_backends`).

:class:`~ee_middleware.bfcl.sandbox.BFCLSandbox` names this module in its ``worker_modules``: a replay job's fork
server imports it once, and every worker forked from it starts with the backends (and ``MathAPI``'s mpmath) loaded,
instead of loading them on its first call of each.
"""

from __future__ import annotations

import _strptime  # noqa: F401 - datetime.strptime's module, imported on its first call (travel and trading backends)

from ee_middleware.bfcl.world import load_offline_backends

LOADED = tuple(load_offline_backends())
"""The backend classes this import loaded."""
