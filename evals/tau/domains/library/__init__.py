"""``library``: the desk of a small public library (members, books, loans, holds, fines), written for this project.

15 tasks in one split (``test``): renewals, returns with late fines, paying fines then borrowing,
holds, an e-mail change, a member at the loan limit who returns a book to borrow another, a
question whose answer is the required output, and refusals the policy requires (waiving fines, a
reference book, a suspended member, an overdue renewal).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.domains.library.tools import TOOLS, schema

HERE = Path(__file__).parent


def _load_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / "db.json").read_text(encoding="utf-8"))
    return data


def _tasks() -> list[TauTask]:
    where = str(HERE / "tasks.json")
    return [TauTask.from_json(item, where) for item in json.loads((HERE / "tasks.json").read_text(encoding="utf-8"))]


@cache
def domain() -> TauDomain:
    return TauDomain(
        name="library",
        policy=(HERE / "policy.md").read_text(encoding="utf-8"),
        tools=TOOLS,
        schemas=[schema(fn) for fn in TOOLS.values()],
        load_data=_load_data,
        splits={"test": _tasks},
    )
