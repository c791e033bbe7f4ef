"""A resumed run keeps only the results of tasks its suites still have, unchanged (real suites: a user's tau domain,
BFCL, ``traces:`` on recorded BFCL experts with a split rebuilt in place)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, read_journal, run_eval

from .test_tau_own_domain import DOMAIN_MODULE, TASKS


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A user's tau domain package ``shop_<id>`` on sys.path (the pantry's module): its spec and its tasks file."""
    package = f"shop_{abs(hash(str(tmp_path)))}"
    root = tmp_path / "src" / package
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "domain.py").write_text(textwrap.dedent(DOMAIN_MODULE))
    (root / "tasks.json").write_text(json.dumps(TASKS))
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        yield f"tau:{package}.domain:make_domain", root / "tasks.json"
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_an_edited_or_removed_task_of_a_users_domain_is_not_resumed_from_its_old_result(
    shop: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the same --out said success_rate 1.0 after 'ask-plums' expected another answer (a fresh folder: 0.667),
    and a task removed from the file still counted; no word of it."""
    suite, tasks_file = shop
    out = tmp_path / "run"
    job = EvalJob(suites=[suite], model="oracle", out=str(out))
    [first] = run_eval(job)
    assert (first["tasks"], first["success_rate"]) == (3, 1.0)
    edited = json.loads(json.dumps(TASKS))
    edited[1]["outputs"] = ["6"]  # the oracle's reply says 5 plums: this task now fails
    tasks_file.write_text(json.dumps(edited[:2]))  # and 'refuse-three' is removed
    [fresh] = run_eval(job.model_copy(update={"out": str(tmp_path / "fresh")}))
    caplog.clear()
    [resumed] = run_eval(job)
    assert (resumed["tasks"], resumed["success_rate"]) == (fresh["tasks"], fresh["success_rate"]) == (2, 0.5)
    said = _warnings(caplog)
    assert "2 earlier result(s)" in said and "were dropped" in said, said
    assert "1 result(s) of task(s) the suite no longer has (refuse-three" in said
    assert "1 result(s) of task(s) whose definition changed since they ran (ask-plums" in said
    rows = read_journal(out / JOURNAL)
    assert sorted(r["task_id"] for r in rows) == ["ask-plums", "order-apples"], "the journal holds only this suite's tasks"
    assert all(r["task_digest"] for r in rows)
    caplog.clear()
    [again] = run_eval(job)  # nothing changed since: every result is kept, nothing runs or is said
    assert again == resumed and "dropped" not in _warnings(caplog)


def test_a_smaller_task_count_into_the_same_folder_reports_that_many_tasks(tmp_path: Path) -> None:
    """Before: ``bfcl:irrelevance:1`` into a folder that ran ``bfcl:irrelevance:3`` said tasks=3."""
    out = tmp_path / "run"
    run_eval(EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out)))
    [summary] = run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="oracle", out=str(out)))
    assert summary["tasks"] == 1 and len(pl.read_parquet(out / "results.parquet")) == 1


def test_results_of_an_older_version_are_kept_while_their_task_is_in_the_suite_and_said_unchecked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Journal rows written before rows recorded their task's digest: kept for tasks still in the suite (nothing runs
    again), dropped for tasks it no longer has."""
    out = tmp_path / "run"
    job = EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out))
    run_eval(job)
    rows = read_journal(out / JOURNAL)
    (out / JOURNAL).write_text("".join(json.dumps({k: v for k, v in r.items() if k != "task_digest"}) + "\n" for r in rows))
    caplog.clear()
    [summary] = run_eval(job.model_copy(update={"suites": ["bfcl:irrelevance:2"]}))
    assert summary["tasks"] == 2
    said = _warnings(caplog)
    assert "1 earlier result(s)" in said and "2 earlier result(s) in" in said and "did not record their task's definition" in said
    kept = read_journal(out / JOURNAL)
    assert len(kept) == 2 and all("task_digest" not in r for r in kept), "kept as they were: nothing ran again"


def _record_store(folder: Path) -> list[str]:
    from ee_middleware.bfcl.experts import record_experts
    from ee_middleware.store.registry import open_store

    record_experts(folder / "store", "multi_turn_base", limit=6)
    handle = open_store(folder / "store")
    ids: list[str] = handle.trajectories(status="approved")["id"].to_list()
    handle.close()
    return ids


def _build(folder: Path, heldout: list[str]) -> dict[str, Any]:
    """``ee datasets build --heldout-ids`` into ``folder/data`` (rebuilt in place when it is there)."""
    shutil.rmtree(folder / "data", ignore_errors=True)
    (folder / "heldout.txt").write_text("\n".join(heldout))
    args = ["datasets", "build", "--store", str(folder / "store"), "--out", str(folder / "data"), "--kinds", "il"]
    result = CliRunner().invoke(app, [*args, "--heldout-ids", str(folder / "heldout.txt")])
    assert result.exit_code == 0, result.output
    split: dict[str, Any] = json.loads((folder / "data" / "datasets.json").read_text())["split"]
    return split


def test_a_split_rebuilt_in_place_never_leaves_a_trained_on_trajectory_in_the_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: after the split was rebuilt to hold out other trajectories, the same command into the same --out kept the
    old results: tasks=6 where the split held out 4, and 2 of them were trajectories it lists as trained on."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[:4])
    out = tmp_path / "run"
    job = EvalJob(suites=[f"traces:{tmp_path / 'store'}"], model="oracle", out=str(out), split=str(tmp_path / "data"))
    run_eval(job)
    split = _build(tmp_path, ids[2:])  # the nightly rebuild: ids[0:2] are now trained on
    caplog.clear()
    [summary] = run_eval(job)
    scored = set(pl.read_parquet(out / "results.parquet")["task_id"])
    assert scored == set(ids[2:]) and summary["tasks"] == 4
    assert not scored & set(split["train_trajectories"])
    said = _warnings(caplog)
    assert "2 result(s) of task(s) the suite no longer has" in said and "no longer holds out" in said, said
    assert sum(1 for r in read_journal(out / JOURNAL) if r["task_id"] in ids[2:4]) == 2, "still held out, unchanged: not run again"
