"""Suite specs: ``bfcl:CATEGORY[:N]``, ``tau:DOMAIN[:SPLIT][:N]`` and ``traces:STORE[:APP][:N]``.

A tau ``DOMAIN`` is a built-in name, a user's ``package.module:factory`` (a dotted module path, so that
``tau:my_app.tau:domain:test:5`` reads as that factory, split ``test``, 5 tasks) or an entry point's name.

A suite turns its data into :class:`~ee_middleware.evals.tasks.EvalTask` items and runs one task
and trial with a client (:class:`Suite`). Specs are strings, with the job's :class:`SuiteSettings`
beside them, so that worker processes rebuild the suite they run (a suite object never crosses a
process boundary).

``traces:`` specs are read from the right: a last part of digits is ``N``; then a last part without
``/`` (and not the whole rest) is ``APP``; what is left is the store spec (a folder, ``local:PATH``,
``NAME://LOCATION``...). A store spec that ends in ``:name`` (a ``package.module:factory``) needs
an explicit, possibly empty, app: ``traces:pkg.stores:open_store::20`` (all apps, 20 tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Protocol

from ee_middleware.errors import ConfigError
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.tasks import EvalTask, TaskResult
from ee_middleware.models.protocol import ChatClient
from ee_middleware.plugins import FACTORY_SPEC

SUITE_FORMS = "bfcl:CATEGORY[:N], tau:DOMAIN[:SPLIT][:N] or traces:STORE[:APP][:N]"


class Suite(Protocol):
    name: str

    def tasks(self) -> list[EvalTask]: ...

    def run(self, client: ChatClient, task: EvalTask, trial: int, config: LoopConfig) -> TaskResult: ...


@dataclass(frozen=True)
class SuiteSettings:
    """What suites need beyond their spec (from the eval job).

    ``tau_bench_dir``: a tau-bench checkout (else ``EE_TAU_BENCH_DIR``); ``user_model``: the LLM user
    simulator of tau suites (default: scripted user); ``split``: the ``datasets.json`` whose held-out
    trajectories ``traces:`` suites use; ``sandbox``: the sandbox spec of ``traces:`` trajectories
    (default ``bfcl`` for BFCL expert apps).
    """

    tau_bench_dir: str | None = None
    user_model: str | None = None
    max_user_turns: int = 10
    split: str | None = None
    sandbox: str | None = None


def _limit(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"Suite {spec!r}: {text!r} is not a task count (a whole number >= 1). Suites are written {SUITE_FORMS}.")
    return int(text)


def _tail_limit(parts: list[str], spec: str) -> tuple[list[str], int | None]:
    if len(parts) > 1 and parts[-1].isdigit():
        return parts[:-1], _limit(parts[-1], spec)
    return parts, None


@cache
def load_suite(spec: str, settings: SuiteSettings = SuiteSettings()) -> Suite:
    """The suite ``spec`` names (cached per process: a worker builds each suite once)."""
    kind, _, rest = spec.strip().partition(":")
    parts = rest.split(":") if rest else []
    if kind == "bfcl" and 1 <= len(parts) <= 2:
        from ee_middleware.evals.bfcl.suite import BFCLSuite

        return BFCLSuite(parts[0], _limit(parts[1], spec) if len(parts) == 2 else None)
    if kind == "tau" and 1 <= len(parts) <= 4 and parts[0]:
        from ee_middleware.evals.tau.suite import TauSuite

        parts, limit = _tail_limit(parts, spec)
        if len(parts) >= 2 and "." in parts[0] and FACTORY_SPEC.match(f"{parts[0]}:{parts[1]}"):  # a user's package.module:factory
            parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
        if len(parts) > 2 or (len(parts) == 2 and parts[1].isdigit()):
            undotted = len(parts) == 3 and FACTORY_SPEC.match(f"{parts[0]}:{parts[1]}")  # tau:module:factory:SPLIT
            raise ConfigError(
                f"Cannot read the suite {spec!r}: write tau:DOMAIN[:SPLIT][:N], e.g. tau:library:test:10 "
                "(DOMAIN: a built-in name, package.module:factory or an entry point's name)."
                + (
                    f" A factory is read only with a dotted module path: put {parts[0]!r} in a package and write "
                    f"tau:PACKAGE.{parts[0]}:{parts[1]}:{parts[2]}, or register the factory as an entry point."
                    if undotted
                    else ""
                )
            )
        split = parts[1] if len(parts) == 2 else None
        return TauSuite(
            parts[0],
            split,
            limit,
            tau_bench_dir=settings.tau_bench_dir,
            user_model=settings.user_model,
            max_user_turns=settings.max_user_turns,
        )
    if kind == "traces" and parts and rest.strip(":"):
        from ee_middleware.evals.traces.suite import TracesSuite

        store, app, limit = parse_traces(rest, spec)
        return TracesSuite(store, app, limit, split=settings.split, sandbox=settings.sandbox)
    raise ConfigError(f"Cannot read the suite {spec!r}: write {SUITE_FORMS}, e.g. bfcl:multi_turn_base:20.")


def parse_traces(rest: str, spec: str) -> tuple[str, str | None, int | None]:
    """``(store, app, N)`` of a ``traces:`` spec's part after ``traces:`` (see the module docstring)."""
    parts, limit = _tail_limit(rest.split(":"), spec)
    app: str | None = None
    if len(parts) > 1 and "/" not in parts[-1]:
        app = parts.pop() or None
    store = ":".join(parts)
    if not store:
        raise ConfigError(f"Cannot read the suite {spec!r}: it names no store. Write traces:STORE[:APP][:N].")
    return store, app, limit
