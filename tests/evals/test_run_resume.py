"""Resuming and growing a run folder: which settings make another run, credentials kept out of its files, a failed
start that claims nothing, a second suite added to a run (real HTTP stand-in servers)."""

from __future__ import annotations

import json
import socket
from http.server import ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.errors import ConfigError, ModelLoadError
from ee_middleware.evals.gate import GatePolicy, gate
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, RUN_FILE, read_journal, run_eval
from ee_middleware.testing.http import serving

from .test_run_folders import _answering_server

SUITE = "bfcl:irrelevance:2"


def _server(delay_s: float = 0.0, port: int = 0) -> tuple[ThreadingHTTPServer, list[int]]:
    return _answering_server(port=port, delay_s=delay_s)


def _free_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on: a server that is down, a typo'd port
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_file_of_a_run_holds_the_endpoints_password_and_the_run_still_resumes(tmp_path: Path) -> None:
    """Before: ``openai:http://alice:s3cr3tpw@...`` was written as it was into run.json (the job and a hash of it),
    summary.json, report.md and report.html."""
    out = tmp_path / "run"
    server, requests = _server()
    with serving(server) as url:
        secret_url = url.replace("http://", "http://alice:s3cr3tpw@")
        job = EvalJob(suites=[SUITE], model=f"openai:{secret_url}#m", out=str(out), retries=0)
        [summary] = run_eval(job)
        assert summary["tasks"] == 2 and len(requests) == 2
        written = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        assert {"run.json", "summary.json", "report.md", "report.html", "results.parquet", JOURNAL} <= set(written)
        assert [name for name, data in written.items() if b"s3cr3tpw" in data] == []
        assert "# Evaluation of `openai:http://***@127.0.0.1:" in (out / "report.md").read_text()
        assert json.loads((out / RUN_FILE).read_text())["job"]["model"].startswith("openai:http://***@127.0.0.1:")
        # The same command resumes (nothing runs again); so does one whose password changed (it changes no answer).
        run_eval(job)
        run_eval(job.model_copy(update={"model": f"openai:{url.replace('http://', 'http://alice:n3w@')}#m"}))
    assert len(requests) == 2


def test_a_run_whose_server_timed_out_resumes_with_a_longer_timeout(tmp_path: Path) -> None:
    """Before: ``--timeout`` and ``retries`` were part of the run's key, so the run that timed out could not be resumed
    with a longer timeout ("holds a run with other settings (model, trials, seed or sampling differ)")."""
    out = tmp_path / "run"
    server, _ = _server(delay_s=1.0)
    with serving(server) as url:
        job = EvalJob(suites=[SUITE], model=f"openai:{url}#m", out=str(out), retries=0, timeout_s=0.2)
        [summary] = run_eval(job)
        assert summary["no_answer"] == 2
        [summary] = run_eval(job.model_copy(update={"timeout_s": 10.0, "retries": 1}))
    assert summary["no_answer"] == 0 and summary["runs"] == 2 and summary["success_rate"] == 1.0
    recorded = json.loads((out / RUN_FILE).read_text())["job"]
    assert recorded["timeout_s"] == 10.0 and recorded["retries"] == 1, "run.json says what the run was finished with"


def test_a_run_with_other_settings_is_refused_naming_each_setting_that_differs(tmp_path: Path) -> None:
    """Before: "holds a run with other settings (model, trials, seed or sampling differ)", whichever differed."""
    out = tmp_path / "run"
    job = EvalJob(suites=[SUITE], model="oracle", out=str(out))
    run_eval(job)
    with pytest.raises(ConfigError, match=r"seed: 0 -> 5; \[eval\] temperature: 0\.0 -> 0\.7\b.*Use another --out") as info:
        run_eval(job.model_copy(update={"seed": 5, "temperature": 0.7}))
    assert "model" not in str(info.value)
    with pytest.raises(ConfigError, match=r"\[eval\] model: oracle -> noop"):
        run_eval(job.model_copy(update={"model": "noop"}))
    assert len(read_journal(out / JOURNAL)) == 2, "the refused commands changed nothing"


def test_a_run_folder_recorded_by_an_older_version_resumes(tmp_path: Path) -> None:
    """A run.json of a version that left fields out (and had another key) resumes when its settings are these."""
    out = tmp_path / "run"
    job = EvalJob(suites=[SUITE], model="oracle", out=str(out))
    run_eval(job)
    record = json.loads((out / RUN_FILE).read_text())
    for added in ("max_user_turns", "tau_bench_dir", "split", "sandbox"):
        del record["job"][added]
    record["run_key"] = "0123456789abcdef"
    (out / RUN_FILE).write_text(json.dumps(record))
    [summary] = run_eval(job)
    assert summary["runs"] == 2
    with pytest.raises(ConfigError, match=r"\[eval\] max_user_turns: 10 -> 3"):
        run_eval(job.model_copy(update={"max_user_turns": 3}))


def test_a_model_spec_that_cannot_be_loaded_fails_before_anything_is_written_into_out(tmp_path: Path) -> None:
    """Before: run.json and results.jsonl were written first, and the corrected command was refused (other settings)."""
    out = tmp_path / "run"
    with pytest.raises(ModelLoadError, match="No model folder at /nonexistent"):
        run_eval(EvalJob(suites=[SUITE], model="local:/nonexistent", out=str(out)))
    assert not out.exists()
    [summary] = run_eval(EvalJob(suites=[SUITE], model="noop", out=str(out)))
    assert summary["runs"] == 2


def test_a_run_that_got_no_answer_at_all_does_not_block_the_corrected_endpoint(tmp_path: Path) -> None:
    """A typo'd port: every task got no answer, so the folder holds no result; the corrected command takes it over
    (before: refused as a run with other settings, so the user had to find and delete the folder)."""
    out = tmp_path / "run"
    typo = EvalJob(suites=[SUITE], model=f"openai:http://127.0.0.1:{_free_port()}/v1#m", out=str(out), retries=0, timeout_s=2)
    [summary] = run_eval(typo)
    assert summary["no_answer"] == 2
    server, requests = _server()
    with serving(server) as url:
        [summary] = run_eval(typo.model_copy(update={"model": f"openai:{url}#m"}))
    assert len(requests) == 2 and summary["runs"] == 2 and summary["no_answer"] == 0
    assert all(not row["no_answer"] for row in read_journal(out / JOURNAL)), "the old run's lines are gone"
    assert json.loads((out / RUN_FILE).read_text())["job"]["model"] == f"openai:{url}#m"
    with pytest.raises(ConfigError, match=r"\[eval\] model: openai:http://127\.0\.0\.1:\d+/v1#m -> noop"):
        run_eval(typo.model_copy(update={"model": "noop"}))  # now it holds results: refused


def test_a_second_suite_run_into_the_same_folder_adds_to_the_run(tmp_path: Path) -> None:
    """Before: run.json listed both suites, but results.parquet, summary.json and the reports held only the last one, so
    the gate compared that one alone."""
    out = tmp_path / "run"
    run_eval(EvalJob(suites=["bfcl:simple:3"], model="oracle", out=str(out)))
    summary = run_eval(EvalJob(suites=["tau:library:2"], model="oracle", out=str(out)))
    assert [s["suite"] for s in summary] == ["bfcl:simple", "tau:library:test"]
    frame = pl.read_parquet(out / "results.parquet")
    assert frame.group_by("suite").len().sort("suite").rows() == [("bfcl:simple", 3), ("tau:library:test", 2)]
    assert [s["suite"] for s in json.loads((out / "summary.json").read_text())["suites"]] == ["bfcl:simple", "tau:library:test"]
    report = (out / "report.md").read_text()
    assert "| bfcl:simple | 3 | 1 | 100.0% |" in report and "| tau:library:test | 2 | 1 | 100.0% |" in report
    result = gate(out, out, GatePolicy(min_tasks=1))
    assert [s.suite for s in result.suites] == ["bfcl:simple", "tau:library:test"] and result.passed
    # Resuming with the first suite alone keeps the second's results.
    again = run_eval(EvalJob(suites=["bfcl:simple:3"], model="oracle", out=str(out)))
    assert [s["suite"] for s in again] == ["bfcl:simple", "tau:library:test"]
    assert pl.read_parquet(out / "results.parquet").height == 5


def test_tasks_of_an_earlier_suite_that_got_no_answer_are_named_with_their_suite(tmp_path: Path) -> None:
    """The run's warning names the suite whose tasks got no answer: the command to run again is the one with it."""
    from ee_middleware.evals.report import unanswered_warning

    out, port = tmp_path / "run", _free_port()
    job = EvalJob(suites=[SUITE], model=f"openai:http://127.0.0.1:{port}/v1#m", out=str(out), retries=0, timeout_s=2)
    run_eval(job)  # the server is down
    server, _ = _server(port=port)
    with serving(server):
        summary = run_eval(job.model_copy(update={"suites": ["bfcl:simple:1"]}))
        warning = unanswered_warning(summary)
        assert "no answer on 2 task trial(s) (down or timed out; bfcl:irrelevance: 2)" in warning, warning
        assert "with those suites" in (out / "report.md").read_text()
        summary = run_eval(job)
    assert not unanswered_warning(summary) and [s["runs"] for s in summary] == [2, 1]
