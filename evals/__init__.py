"""Evaluation: BFCL and tau-bench-style harnesses, the ``traces:`` regression suite, reports and the deploy gate.

Installed as ``ee_middleware.evals`` (the folder ``evals/`` is mapped by setup.py). Every harness
runs the one agent loop (:mod:`~ee_middleware.evals.loop`) with any chat client of
:mod:`ee_middleware.models`, or the built-in ``oracle`` and ``noop`` clients
(:mod:`~ee_middleware.evals.clients`). Entry points: :func:`run_eval` (``ee eval run``) and
:func:`gate` (``ee eval gate``). Nothing heavy is imported: torch is needed only for a local model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports

if TYPE_CHECKING:
    from ee_middleware.evals.clients import NoopClient, OracleClient, build_eval_client
    from ee_middleware.evals.job import EvalJob
    from ee_middleware.evals.loop import LoopConfig, run_conversation
    from ee_middleware.evals.runner import run_eval
    from ee_middleware.evals.suites import load_suite
    from ee_middleware.evals.tasks import Conversation, EvalTask, TaskResult

_LAZY = {
    "NoopClient": ".clients",
    "OracleClient": ".clients",
    "build_eval_client": ".clients",
    "EvalJob": ".job",
    "LoopConfig": ".loop",
    "run_conversation": ".loop",
    "run_eval": ".runner",
    "load_suite": ".suites",
    "Conversation": ".tasks",
    "EvalTask": ".tasks",
    "TaskResult": ".tasks",
}
__all__ = [
    "Conversation",
    "EvalJob",
    "EvalTask",
    "LoopConfig",
    "NoopClient",
    "OracleClient",
    "TaskResult",
    "build_eval_client",
    "load_suite",
    "run_conversation",
    "run_eval",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
