"""BFCL as a real executable environment: data, backends, a replay sandbox and expert recordings.

Uses the ``bfcl-eval`` package's multi-turn data and executable backends (file system, trading,
travel, vehicle, ...). Install it without its dependencies (they clash with the ML stack)::

    pip install --no-deps bfcl-eval==2026.3.23 mpmath==1.3.0

Nothing here imports ``bfcl_eval`` until it is used.
"""

from __future__ import annotations

from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES, BFCLEntry, load_entries

__all__ = ["MULTI_TURN_CATEGORIES", "BFCLEntry", "load_entries"]
