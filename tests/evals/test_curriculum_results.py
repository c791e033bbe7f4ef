"""``ee curriculum propose --from`` scores the rows an eval run's own outputs count, whichever of the run's files it is
given: real ``ee eval run`` folders (BFCL suites; the oracle model, or a real HTTP model server that goes down)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.results import read_results
from ee_middleware.evals.runner import JOURNAL, RESULTS, read_journal, run_eval
from ee_middleware.replay.curriculum import score_tasks
from ee_middleware.testing.http import serving
from tests.evals.test_run_folders import _answering_server


def _groups(rows: list[dict]) -> dict[str, int]:
    """task id -> trials counted, as the curriculum groups ``rows``."""
    return {score.task_id: score.n for score in score_tasks(rows)}


def test_the_journal_of_a_run_resumed_with_a_smaller_suite_gives_the_runs_tasks_only(tmp_path: Path) -> None:
    """``bfcl:irrelevance:1`` into a folder that ran ``:3``: the run's results hold 1 task, its results.jsonl keeps the
    3 (for a later ``:3``). Was: ``--from RUN/results.jsonl`` scored the 3 tasks."""
    out = tmp_path / "run"
    run_eval(EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out)))
    [summary] = run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="oracle", out=str(out)))
    assert len(read_journal(out / JOURNAL)) == 3, "the journal keeps the rows the run leaves out"
    counted = _groups(pl.read_parquet(out / RESULTS).to_dicts())
    assert counted == {"irrelevance_0": 1} and summary["tasks"] == 1
    assert _groups(read_results(out / JOURNAL)) == _groups(read_results(out)) == counted


def test_trials_the_server_gave_no_answer_are_counted_as_the_runs_outputs_count_them(tmp_path: Path) -> None:
    """A real model server goes down after 2 of 5 tasks: the run's outputs count the 3 unanswered trials as failed
    trials (``no_answer``), and so does the curriculum. Resumed with the server back, the 3 run again: the journal then
    holds 8 rows, the run's results 5 (each task once). Was: the journal's 8 rows, 2 trials of each task run again."""
    out = tmp_path / "run"
    server, _ = _answering_server()
    port = server.server_address[1]
    with serving(server) as url:
        job = EvalJob(suites=["bfcl:simple:5"], model=f"openai:{url}#m", out=str(out), retries=0, timeout_s=5)

        def down_after_two(suite: str, done: int, total: int) -> None:
            if done == 2:
                server.shutdown()
                server.server_close()

        [down] = run_eval(job, progress=down_after_two)
    assert down["no_answer"] == 3 and down["runs"] == 5
    rows = read_results(out / JOURNAL)
    assert len(rows) == down["runs"] and sum(1 for r in rows if r["no_answer"]) == 3
    assert sum(r["success"] for r in rows) == down["successes"], "an unanswered trial is a failed trial, as in the summary"

    again, _ = _answering_server(port)
    with serving(again):
        [resumed] = run_eval(job)
    assert len(read_journal(out / JOURNAL)) == 8 and resumed["runs"] == 5 and resumed["no_answer"] == 0
    rows = read_results(out / JOURNAL)
    assert len(rows) == resumed["runs"] and not any(r["no_answer"] for r in rows)
    assert set(_groups(rows).values()) == {1} and len(_groups(rows)) == resumed["tasks"] == 5


def test_an_unfinished_runs_journal_is_refused_saying_how_to_finish_the_run(tmp_path: Path) -> None:
    """A run stopped after its first task has a journal and no results.parquet: its rows are not the run's results yet.
    Was: read as they were, the folder's and the file's alike."""
    out = tmp_path / "run"

    def stop(suite: str, done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out)), progress=stop)
    assert len(read_journal(out / JOURNAL)) == 1 and not (out / RESULTS).exists()
    for given in (out, out / JOURNAL):
        with pytest.raises(ConfigError, match=r"The eval run in .* is unfinished: 1 result\(s\) in results.jsonl") as raised:
            read_results(given)
        assert f"`ee eval run ... --out {out}`" in str(raised.value)
    args = ["curriculum", "propose", "--from", str(out / JOURNAL), "--model", "openai:http://127.0.0.1:9#w"]
    result = CliRunner().invoke(app, [*args, "--store", str(tmp_path / "store"), "--out", str(tmp_path / "tasks.jsonl")])
    assert result.exit_code != 0 and "is unfinished" in result.output, result.output


def test_a_results_jsonl_outside_a_run_folder_is_read_as_it_is(tmp_path: Path) -> None:
    """Outcomes from another harness (no run.json beside them): every row counts, as before."""
    rows = [{"suite": "mine", "task_id": "t", "trial": i, "success": ok} for i, ok in enumerate([True, False, True])]
    (tmp_path / JOURNAL).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_results(tmp_path / JOURNAL) == read_results(tmp_path) == rows


def test_a_finished_run_resumed_and_stopped_before_writing_its_results_anew_is_refused(tmp_path: Path) -> None:
    """A finished ``bfcl:irrelevance:1`` run, resumed with ``:3`` and stopped after a new task: its results.parquet is
    the earlier command's (1 task), its journal newer, and the gate refuses the folder. Was: the folder and its
    results.jsonl gave the stale results.parquet's rows, without a word."""
    from ee_middleware.evals.runner import unfinished

    out = tmp_path / "run"
    run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="oracle", out=str(out)))

    def stop(suite: str, done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out)), progress=stop)
    assert pl.read_parquet(out / RESULTS).height == 1 and len(read_journal(out / JOURNAL)) == 2
    assert "anew" in (unfinished(out) or ""), "the gate refuses this folder"
    for given in (out, out / JOURNAL, out / RESULTS):
        with pytest.raises(
            ConfigError, match=r"is unfinished: 2 result\(s\) in results.jsonl .*stopped before writing results.parquet anew"
        ):
            read_results(given)
    run_eval(EvalJob(suites=["bfcl:irrelevance:3"], model="oracle", out=str(out)))  # the fix the message names
    assert len(read_results(out)) == len(read_results(out / JOURNAL)) == 3


def test_another_harness_run_json_beside_its_results_jsonl_is_read_as_it_is(tmp_path: Path) -> None:
    """Another harness's output folder holds a ``run.json`` of its own (a common name) beside its results.jsonl: it is
    no ``ee eval run`` folder, so every row counts, as without the run.json. Was: refused as an unfinished ee run
    ("0 result(s)"), telling the user to run ``ee eval run`` again."""
    (tmp_path / "run.json").write_text(json.dumps({"harness": "my-evals", "model": "m", "started": "2026-12-01", "finished": None}))
    rows = [{"task_id": f"t{i}", "success": i % 2 == 0} for i in range(4)]
    (tmp_path / JOURNAL).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_results(tmp_path / JOURNAL) == read_results(tmp_path) == rows
    pl.DataFrame(rows).write_parquet(tmp_path / RESULTS)
    assert read_results(tmp_path / RESULTS) == read_results(tmp_path) == rows


def test_a_results_jsonl_holding_a_line_separator_in_a_string_or_written_as_utf16_is_read_whole(tmp_path: Path) -> None:
    """Sweep: ``str.splitlines`` cut a row at U+2028 ("not JSON"), and a UTF-16 file (PowerShell's ``>``) was
    "unexpected UnicodeDecodeError ... a bug in ee-middleware"."""
    rows = [
        {"suite": "mine", "task_id": "a\u2028b", "trial": 0, "success": True},
        {"suite": "mine", "task_id": "c", "trial": 0, "success": False},
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (tmp_path / JOURNAL).write_text(text, encoding="utf-8")
    assert read_results(tmp_path / JOURNAL) == rows
    (tmp_path / JOURNAL).write_bytes(text.encode("utf-16"))
    assert read_results(tmp_path) == rows
    (tmp_path / JOURNAL).write_bytes(text.replace("\u2028", "\xe9").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"results.jsonl is not UTF-8 text \(byte 0xe9 at offset 31 is not\)"):
        read_results(tmp_path)


def test_a_damaged_results_parquet_is_refused_naming_the_file(tmp_path: Path) -> None:
    """Sweep: polars' ComputeError named no file and was told as "a bug in ee-middleware"."""
    (tmp_path / RESULTS).write_bytes(b"PAR1 cut short")
    with pytest.raises(ConfigError, match=rf"Cannot read the results {tmp_path / RESULTS}: .*run that eval again"):
        read_results(tmp_path / RESULTS)
