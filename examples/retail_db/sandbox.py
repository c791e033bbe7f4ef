"""The replay sandbox of the retail agent: its tools over an in-memory copy of the database.

    ee replay run --store retail-experience --sandbox retail_db.sandbox:make_sandbox --policy mutate --k 8

(with ``examples/`` on ``PYTHONPATH``, so that ``retail_db`` imports in the replay's workers too).

The world is a :class:`RetailWorld`: one in-memory SQLite database. It pickles as the bytes of the
whole database (``Connection.serialize``), so the sandbox's snapshots are exact copies and a
restore is one ``deserialize``; no connection to a real server is ever held.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from ee_middleware.errors import EnvironmentUnavailableError
from ee_middleware.replay import PythonSandbox

from .data import DATASET, create_database
from .tools import DB_TOOLS, READ_ONLY_TOOLS


class RetailWorld:
    """An in-memory retail database that pickles as its own bytes (for exact snapshots)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @classmethod
    def from_environment(cls, environment: dict[str, Any] | None) -> RetailWorld:
        """Rebuild the database a run started from, as its environment reference describes it."""
        if not environment or environment.get("dataset") != DATASET or not isinstance(environment.get("seed"), int):
            raise EnvironmentUnavailableError(
                f"retail trajectories need {{'dataset': {DATASET!r}, 'seed': N}} in their environment, got {environment!r}"
            )
        db = sqlite3.connect(":memory:", check_same_thread=False)
        create_database(db, environment["seed"])
        return cls(db)

    def __getstate__(self) -> bytes:
        return self.db.serialize()

    def __setstate__(self, state: bytes) -> None:
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.deserialize(state)

    def table(self, name: str) -> list[tuple[Any, ...]]:
        """Every row of a table, in primary-key order (to compare databases)."""
        return self.db.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()


def _on_world(tool: Any, world: RetailWorld, **arguments: Any) -> Any:
    return tool(world.db, **arguments)


def tool_error_text(exc: BaseException) -> str:
    """The observation the agent's ``ToolNode(handle_tool_errors=True)`` records for a raised exception."""
    return f"Error: {exc!r}\n Please fix your mistakes."


def is_error_text(value: Any) -> bool:
    """Lookups report 'not found' as a returned string: mark those observations as errors too."""
    return isinstance(value, str) and value.startswith("Error:")


def make_sandbox() -> PythonSandbox:
    """The sandbox factory named on the command line (``retail_db.sandbox:make_sandbox``)."""
    return PythonSandbox(
        RetailWorld.from_environment,
        tools={name: functools.partial(_on_world, tool) for name, tool in DB_TOOLS.items()},
        read_only_tools=READ_ONLY_TOOLS,
        kind="retail-db",
        is_error_result=is_error_text,
        format_error=tool_error_text,
    )
