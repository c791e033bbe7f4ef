"""Jobs that chain the stages: ``ee improve`` (the nightly job) and the run records behind ``ee runs``.

This layer sits above the heavy folders (``ee_middleware.trainers``, ``.adapters``, ``.evals``) and
below the CLI: it orchestrates them, importing each one inside the stage that needs it, so that
importing this package stays light (``tests/test_layers.py``). Entry points: :func:`run_improve`
with an :class:`ImproveConfig`, and :class:`RunsDir` to read runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports

if TYPE_CHECKING:
    from ee_middleware.jobs.config import Budgets, ImproveConfig, Serving
    from ee_middleware.jobs.improve import STAGES, run_improve
    from ee_middleware.jobs.runs import Run, RunsDir

_LAZY = {
    "Budgets": ".config",
    "ImproveConfig": ".config",
    "Serving": ".config",
    "STAGES": ".improve",
    "run_improve": ".improve",
    "Run": ".runs",
    "RunsDir": ".runs",
}
__all__ = ["STAGES", "Budgets", "ImproveConfig", "Run", "RunsDir", "Serving", "run_improve"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
