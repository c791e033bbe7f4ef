"""``--workers N``: a worker process that dies (killed out of memory, a native crash in a model library) fails the task
it was running, and the run goes on with a new process (real worker processes, killed by a real SIGKILL)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from ee_middleware.errors import EEError
from ee_middleware.evals.clients import NoopClient
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, read_journal, run_eval
from ee_middleware.evals.suites import load_suite
from ee_middleware.models.protocol import Choice, Sampling

SUITE = "bfcl:simple:12"
MARKER = "triangle"
"""The tasks whose question names it kill their worker process (4 of the first 12 simple entries)."""


class _KilledOnMarker(NoopClient):
    """A model whose process is killed (SIGKILL, as the kernel's out-of-memory killer kills) on the tasks naming MARKER."""

    model = "killed-on-marker"

    def complete(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        n: int = 1,
        sampling: Sampling = Sampling(),
    ) -> list[Choice]:
        if multiprocessing.parent_process() is not None and MARKER in json.dumps(list(messages)):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().complete(messages, tools=tools, n=n, sampling=sampling)


def killed_on_marker(**options: Any) -> NoopClient:
    """``tests.evals.test_run_workers:killed_on_marker``."""
    return _KilledOnMarker()


def killed_while_starting(**options: Any) -> NoopClient:
    """A model whose worker process is killed while it builds the model (the parent process builds it as well)."""
    if multiprocessing.parent_process() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return NoopClient()


def _children() -> set[int]:
    """This process's children, but multiprocessing's resource tracker (one per process, started with the first worker)."""
    return {p.pid for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())}


def test_a_worker_killed_on_a_task_fails_that_task_naming_it_and_the_run_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the run ended with 'unexpected BrokenProcessPool ... (a bug in ee-middleware ...)', naming no task, with no
    row journaled (the rows other workers had finished were lost), so every rerun died the same way."""
    killing = sorted(t.id for t in load_suite(SUITE).tasks() if MARKER in json.dumps(t.turns))
    assert len(killing) >= 2, "the suite holds tasks that kill their worker"
    before = _children()
    job = EvalJob(suites=[SUITE], model="tests.evals.test_run_workers:killed_on_marker", out=str(tmp_path / "run"), workers=2)
    with caplog.at_level("WARNING", logger="ee_middleware.evals.runner"):
        [summary] = run_eval(job)
    assert summary["tasks"] == summary["runs"] == 12
    assert summary["failures"] == {"ast_decoder:decoder_failed": 12 - len(killing), "worker_died": len(killing)}
    rows = read_journal(tmp_path / "run" / JOURNAL)
    died = {r["task_id"]: r for r in rows if r["error_type"] == "worker_died"}
    assert sorted(died) == killing
    assert all("worker process running this task died (killed by SIGKILL" in r["reason"] for r in died.values())
    for task_id in killing:
        assert f"bfcl:simple: task {task_id} (trial 0): the worker process running it died (killed by SIGKILL" in caplog.text
    assert _children() <= before, "no worker process outlives the run"
    [again] = run_eval(job)  # the same command runs nothing again: it does not die at those tasks for ever
    assert again == summary and len(read_journal(tmp_path / "run" / JOURNAL)) == 12


def test_a_worker_killed_while_it_starts_is_an_error_saying_so(tmp_path: Path) -> None:
    before = _children()
    job = EvalJob(suites=[SUITE], model="tests.evals.test_run_workers:killed_while_starting", out=str(tmp_path / "run"), workers=2)
    with pytest.raises(EEError, match=r"worker process of the run ended while it started \(killed by SIGKILL.*fewer --workers"):
        run_eval(job)
    assert _children() <= before
