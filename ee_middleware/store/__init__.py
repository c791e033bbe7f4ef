"""Experience stores: the protocol, ``open_store(spec)`` and the embedded local Parquet store.

Names load on first use, so that importing the protocol imports no Polars.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports

if TYPE_CHECKING:
    from ee_middleware.store.local import LocalExperienceStore
    from ee_middleware.store.protocol import ExperienceStore
    from ee_middleware.store.registry import open_store

_LAZY = {
    "ExperienceStore": "ee_middleware.store.protocol",
    "LocalExperienceStore": "ee_middleware.store.local",
    "open_store": "ee_middleware.store.registry",
}

__all__ = ["ExperienceStore", "LocalExperienceStore", "open_store"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
