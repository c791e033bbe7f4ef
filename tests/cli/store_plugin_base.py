"""A base class a store plug-in inherits its reading from (another module than its factory's)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ee_middleware.store.local import LocalExperienceStore


class FlakyDiskStore(LocalExperienceStore):
    def trajectories(self, *args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")
