"""A resumed run keeps only the results of tasks its suites still have, unchanged (real suites: a user's tau domain,
BFCL, ``traces:`` on recorded BFCL experts with a split rebuilt in place)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, read_journal, run_eval, task_digest, task_digests
from ee_middleware.evals.suites import load_suite

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
    edited[1]["outputs"] = ["6"]  # another answer expected (its reply must say it: a task whose reply does not is refused)
    edited[1]["turns"][0]["reply"] = "6 plums."
    tasks_file.write_text(json.dumps(edited[:2]))  # and 'refuse-three' is removed
    [fresh] = run_eval(job.model_copy(update={"out": str(tmp_path / "fresh")}))
    caplog.clear()
    [resumed] = run_eval(job)
    assert (resumed["tasks"], resumed["success_rate"]) == (fresh["tasks"], fresh["success_rate"]) == (2, 1.0)
    [plums] = [r for r in read_journal(out / JOURNAL) if r["task_id"] == "ask-plums"]
    assert "6 plums." in plums["conversation"], "the edited task ran again (its old result said 5 plums)"
    said = _warnings(caplog)
    assert "1 earlier result(s)" in said and "are of task(s) the suite does not have now (refuse-three" in said, said
    assert "1 earlier result(s)" in said and "were dropped: they are of task(s) whose definition changed since they ran (ask-plums" in said
    rows = read_journal(out / JOURNAL)
    # the removed task's result stays in the journal (left out of the results), the changed one's was replaced
    assert sorted(r["task_id"] for r in rows) == ["ask-plums", "order-apples", "refuse-three"]
    assert all(r["task_digest"] for r in rows)
    caplog.clear()
    [again] = run_eval(job)  # nothing changed since: every result is kept, nothing runs or is dropped
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
    assert len(kept) == 3 and all("task_digest" not in r for r in kept), "kept as they were: nothing ran again"


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
    assert "2 earlier result(s)" in said and "the suite does not have now" in said and "no longer holds out" in said, said
    assert sum(1 for r in read_journal(out / JOURNAL) if r["task_id"] in ids[2:4]) == 2, "still held out, unchanged: not run again"


def _ab49585_digest(task: Any) -> str:
    """``task_digest`` as ab49585 wrote it into journal rows (a deep copy through ``dataclasses.asdict``)."""

    def canonical(value: Any) -> Any:
        if isinstance(value, (set, frozenset)):
            return sorted((canonical(v) if isinstance(v, (set, frozenset)) else v for v in value), key=repr)
        if isinstance(value, bytes):
            return value.hex()
        return repr(value) if not isinstance(value, str) else value

    text = json.dumps(dataclasses.asdict(task), sort_keys=True, ensure_ascii=False, default=canonical)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_task_digests_are_those_ab49585_wrote_and_cost_a_fraction_of_the_copy(tmp_path: Path) -> None:
    """Before: every task was deep-copied (``dataclasses.asdict``) to be digested, several times the cost of loading the
    suite, on every command. The digests stay those rows already hold, for BFCL worlds, tau, and traces tasks."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[:3])
    settings = EvalJob(suites=["bfcl:simple"], model="oracle", out=str(tmp_path), split=str(tmp_path / "data")).suite_settings()
    specs = ["bfcl:multi_turn_base", "bfcl:simple:20", "bfcl:live_multiple:20", "tau:library", f"traces:{tmp_path / 'store'}"]
    tasks = [task for spec in specs for task in load_suite(spec, settings).tasks()]
    assert len(tasks) > 250
    assert [task_digest(t) for t in tasks] == [_ab49585_digest(t) for t in tasks]
    assert all(task_digests(t) == (task_digest(t),) for t in tasks)
    world = [t for t in tasks if t.suite == "bfcl:multi_turn_base"]
    copied = min(_timed(lambda: [_ab49585_digest(t) for t in world]) for _ in range(2))
    digested = min(_timed(lambda: [task_digest(t) for t in world]) for _ in range(2))
    assert digested < copied / 2, (digested, copied)


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def test_results_of_tasks_a_smaller_suite_leaves_out_stay_in_the_journal_for_the_bigger_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: ``bfcl:irrelevance:1`` into a folder that ran ``:3`` deleted the other 2 results from results.jsonl, and
    ``:3`` then ran them again (a mistyped ``:N`` destroyed results the model was paid for)."""
    out = tmp_path / "run"
    run_eval(EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out)))
    first = (out / JOURNAL).read_text()
    caplog.clear()
    [small] = run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="oracle", out=str(out)))
    assert small["tasks"] == 1 and len(pl.read_parquet(out / "results.parquet")) == 1
    said = _warnings(caplog)
    assert "2 earlier result(s)" in said and "left out of this command's results" in said and "kept in its results.jsonl" in said, said
    assert (out / JOURNAL).read_text() == first, "nothing deleted, nothing ran"
    [big] = run_eval(EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out)))
    assert big["tasks"] == 3 and len(pl.read_parquet(out / "results.parquet")) == 3
    assert (out / JOURNAL).read_text() == first, "the bigger suite's results were reused, none ran again"


def test_a_tau_task_run_against_a_database_edited_since_runs_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a user's domain whose ``load_data`` reads a file kept every result made against the old data after the
    file was edited (same digests, no word), though the tools read that data and actions are scored on it."""
    package = f"cellar_{abs(hash(str(tmp_path)))}"
    root = tmp_path / "src" / package
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    module = textwrap.dedent(DOMAIN_MODULE).replace(
        'load_data=load_data or (lambda: {"stock": {"apple": 3, "plum": 5}, "orders": []})',
        'load_data=load_data or (lambda: json.loads((HERE / "db.json").read_text()))',
    )
    assert "db.json" in module
    (root / "domain.py").write_text(module)
    (root / "tasks.json").write_text(json.dumps(TASKS))
    (root / "db.json").write_text(json.dumps({"stock": {"apple": 3, "plum": 5}, "orders": []}))
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        job = EvalJob(suites=[f"tau:{package}.domain:make_domain"], model="oracle", out=str(tmp_path / "run"))
        [first] = run_eval(job)
        assert (first["tasks"], first["success_rate"]) == (3, 1.0)
        (root / "db.json").write_text(json.dumps({"stock": {"apple": 3, "plum": 7}, "orders": []}))  # the user's edit
        load_suite.cache_clear()  # as the next command's new process: suites (and their databases) load anew
        caplog.clear()
        [resumed] = run_eval(job)
        [fresh] = run_eval(job.model_copy(update={"out": str(tmp_path / "fresh")}))
        assert (resumed["tasks"], resumed["success_rate"]) == (fresh["tasks"], fresh["success_rate"])
        said = _warnings(caplog)
        assert "3 earlier result(s)" in said and "whose definition changed since they ran" in said, said
        assert "as the suite's data gives them or as this version of ee-middleware builds them" in said, "not only the user's edit"
        caplog.clear()
        assert run_eval(job) == [resumed] and "dropped" not in _warnings(caplog), "unchanged since: nothing runs again"
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def test_where_a_traces_tasks_vault_lies_is_not_part_of_its_digest(tmp_path: Path) -> None:
    """Before: the vault's path (``EE_VAULT``, a store copied or moved, a vault missing for a night) was in every
    trajectory's digest, so each ran again as a task "whose definition changed". Rows an earlier version wrote with the
    vault's path still match while it is unchanged."""
    from ee_middleware.evals.traces.suite import trajectory_task
    from ee_middleware.replay.privacy import ReplayPrivacy
    from ee_middleware.store.registry import open_store

    _record_store(tmp_path)
    handle = open_store(tmp_path / "store")
    try:
        trajectory = handle.get(handle.trajectories(status="approved")["id"][0])
    finally:
        handle.close()
    suite = f"traces:{tmp_path / 'store'}"

    def task(vault: str | None, salt: str = "ab") -> Any:
        return trajectory_task(trajectory, suite, "bfcl", ReplayPrivacy(rules="{}", salt=salt, vault=vault))

    here, moved = task(str(tmp_path / "experience.vault")), task("/elsewhere/experience.vault")
    assert task_digest(here) == task_digest(moved) == task_digest(task(None))
    assert task_digest(task(None, salt="cd")) != task_digest(here), "the redaction itself is part of the task"
    assert task_digests(here) == (task_digest(here), _ab49585_digest(here)), "a row written with this vault's path matches"
