"""Suite specs: ``bfcl:CATEGORY[:N]`` (``tau:DOMAIN[:SPLIT][:N]`` and ``traces:STORE[:APP][:N]`` are planned).

A suite turns its data into :class:`~ee_middleware.evals.tasks.EvalTask` items and runs one task
and trial with a client (:class:`Suite`). Specs are strings so that worker processes rebuild the
suite they run (a suite object never crosses a process boundary).
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

from ee_middleware.errors import ConfigError
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.tasks import EvalTask, TaskResult
from ee_middleware.models.protocol import ChatClient

SUITE_FORMS = "bfcl:CATEGORY[:N] (tau:DOMAIN and traces:STORE suites are planned)"


class Suite(Protocol):
    name: str

    def tasks(self) -> list[EvalTask]: ...

    def run(self, client: ChatClient, task: EvalTask, trial: int, config: LoopConfig) -> TaskResult: ...


def _limit(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"Suite {spec!r}: {text!r} is not a task count (a whole number >= 1). Suites are written {SUITE_FORMS}.")
    return int(text)


@cache
def load_suite(spec: str) -> Suite:
    """The suite ``spec`` names (cached per process: a worker builds each suite once)."""
    kind, _, rest = spec.strip().partition(":")
    parts = rest.split(":") if rest else []
    if kind == "bfcl" and 1 <= len(parts) <= 2:
        from ee_middleware.evals.bfcl.suite import BFCLSuite

        return BFCLSuite(parts[0], _limit(parts[1], spec) if len(parts) == 2 else None)
    raise ConfigError(f"Cannot read the suite {spec!r}: write {SUITE_FORMS}, e.g. bfcl:multi_turn_base:20.")
