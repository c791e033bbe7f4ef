"""Run folders the gate and the runner meet in practice: a typo'd suite, a missing folder, an unfinished or stale run."""

from __future__ import annotations

import json
import os
import shutil
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.evals.gate import GatePolicy, gate
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import RUN_FILE, read_journal, run_eval, unfinished
from ee_middleware.testing.http import send_json, serving

SUITE = "bfcl:simple:3"


def test_a_misspelled_suite_leaves_no_claimed_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="Unknown BFCL category 'simpel'"):
        run_eval(EvalJob(suites=["bfcl:simpel:3"], model="oracle", out=str(out)))
    assert not (out / RUN_FILE).exists()
    [summary] = run_eval(EvalJob(suites=[SUITE], model="noop", out=str(out)))  # another model: the folder is still free
    assert summary["tasks"] == 3
    assert json.loads((out / RUN_FILE).read_text())["job"]["suites"] == [SUITE]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "oracle"
    run_eval(EvalJob(suites=[SUITE], model="oracle", out=str(out)))
    return out


def test_the_gate_names_a_run_folder_that_does_not_exist(finished: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no-such-run.*does not exist"):
        gate(finished, tmp_path / "no-such-run", GatePolicy(min_tasks=1))


class Killed(Exception):
    """Stands for the process being killed mid-run (raised from the progress callback after some results are written)."""


def _kill_after(suite: str, done: int):
    def progress(name: str, count: int, total: int) -> None:
        if name == suite and count >= done:
            raise Killed

    return progress


def test_the_gate_refuses_an_unfinished_run_and_says_how_to_finish_it(finished: Path, tmp_path: Path) -> None:
    half = tmp_path / "half"
    with pytest.raises(Killed):
        run_eval(EvalJob(suites=[SUITE], model="oracle", out=str(half)), progress=_kill_after("bfcl:simple", 2))
    assert not (half / "results.parquet").exists()
    with pytest.raises(ConfigError, match=r"half.*unfinished.*2 result.*ee eval run"):
        gate(half, finished, GatePolicy(min_tasks=1))
    run_eval(EvalJob(suites=[SUITE], model="oracle", out=str(half)))  # the same command finishes it
    assert gate(half, finished, GatePolicy(min_tasks=1)).passed


def test_the_gate_refuses_a_stale_results_file_of_a_resumed_run(finished: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(finished, stale)
    job = EvalJob(suites=[SUITE, "bfcl:multiple:3"], model="oracle", out=str(stale))
    with pytest.raises(Killed):  # resumed with one more suite and killed: results.parquet is the first run's
        run_eval(job, progress=_kill_after("bfcl:multiple", 1))
    with pytest.raises(ConfigError, match=r"stale.*unfinished.*bfcl:multiple"):
        gate(stale, finished, GatePolicy(min_tasks=1))
    run_eval(job)
    assert [s.suite for s in gate(stale, stale, GatePolicy(min_tasks=1)).suites] == ["bfcl:multiple", "bfcl:simple"]
    later = EvalJob(suites=[SUITE], model="oracle", out=str(stale))  # resumed with fewer suites: finished, not stale,
    run_eval(later)  # and the run keeps both suites' results
    assert [s.suite for s in gate(stale, stale, GatePolicy(min_tasks=1)).suites] == ["bfcl:multiple", "bfcl:simple"]


@pytest.mark.parametrize("record", [None, "{bad", '{"run_key": "x"}'])
def test_a_stale_results_file_is_refused_with_run_json_removed_or_damaged_too(finished: Path, tmp_path: Path, record: str | None) -> None:
    """Was (a sweep): with run.json gone or unreadable, the gate took any folder with a results.parquet for finished, so
    a resumed run stopped after more results than its results.parquet held passed it."""
    stale = tmp_path / "stale"
    shutil.copytree(finished, stale)
    with pytest.raises(Killed):
        run_eval(EvalJob(suites=[SUITE, "bfcl:multiple:3"], model="oracle", out=str(stale)), progress=_kill_after("bfcl:multiple", 1))
    if record is None:
        (stale / RUN_FILE).unlink()
    else:
        (stale / RUN_FILE).write_text(record)
    with pytest.raises(ConfigError, match=r"stale.*unfinished.*bfcl:multiple"):
        gate(stale, finished, GatePolicy(min_tasks=1))
    assert unfinished(finished) is None
    (finished / RUN_FILE).rename(tmp_path / "kept.json")  # a finished run without its record (an older one's): finished
    try:
        assert unfinished(finished) is None
    finally:
        (tmp_path / "kept.json").rename(finished / RUN_FILE)


def test_two_specs_of_one_suite_are_an_error_not_tasks_run_twice(tmp_path: Path) -> None:
    out = tmp_path / "dup"
    for specs in (["bfcl:simple:2", "bfcl:simple:3"], ["bfcl:simple:2", "bfcl:simple_python:2"]):
        with pytest.raises(ConfigError, match=rf"{specs[0]}.*{specs[1]}.*bfcl:simple.*once"):
            run_eval(EvalJob(suites=specs, model="oracle", out=str(out)))
        assert not (out / RUN_FILE).exists()


class _Answering(BaseHTTPRequestHandler):
    """A chat server (real HTTP) that answers every request with text and counts them."""

    requests: list[int]
    delay_s = 0.0

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append(1)
        time.sleep(self.delay_s)
        try:
            send_json(self, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "No."}, "finish_reason": "stop"}]})
        except OSError:  # the client timed out and left
            pass


def _answering_server(port: int = 0, delay_s: float = 0.0) -> tuple[ThreadingHTTPServer, list[int]]:
    handler = type("Handler", (_Answering,), {"requests": [], "delay_s": delay_s})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server, handler.requests


def test_a_server_that_goes_down_halfway_costs_a_rerun_of_those_tasks_not_a_score(tmp_path: Path) -> None:
    out = tmp_path / "run"
    server, first = _answering_server()
    port = server.server_address[1]
    with serving(server) as url:
        job = EvalJob(suites=["bfcl:simple:5"], model=f"openai:{url}#m", out=str(out), retries=0, timeout_s=5)

        def down_after_two(suite: str, done: int, total: int) -> None:
            if done == 2:  # the server goes down (its port refuses connections) after two tasks
                server.shutdown()
                server.server_close()

        [summary] = run_eval(job, progress=down_after_two)
    assert len(first) == 2 and summary["no_answer"] == 3 and summary["failures"]["model_error"] == 3
    report = (out / "report.md").read_text()
    assert "gave no answer on 3 task trial(s)" in report
    # sweep H: the table read "0.0% ... model_error: 3", an outage shown as a model failing those tasks
    assert "| bfcl:simple | 5 | 1 | 0.0% (3 unanswered) | 0.0% (3 unanswered) |" in report, report
    result = gate(out, out, GatePolicy(min_tasks=1))
    assert not result.passed and any("no answer on 3 task trial(s) of the candidate run" in r for r in result.reasons)
    kept = {r["task_id"]: r for r in read_journal(out / "results.jsonl") if not r["no_answer"]}

    again, second = _answering_server(port)  # back up on the same address: the same command resumes
    with serving(again):
        [summary] = run_eval(job)
    assert len(second) == 3, "only the tasks the server gave no answer to ran again"
    assert summary["no_answer"] == 0 and summary["tasks"] == 5 and summary["runs"] == 5
    assert summary["failures"] == {"ast_decoder:decoder_failed": 5}
    rows = {r["task_id"]: r for r in pl.read_parquet(out / "results.parquet").to_dicts()}
    assert all(rows[t]["conversation"] == kept[t]["conversation"] for t in kept) and len(kept) == 2
    assert gate(out, out, GatePolicy(min_tasks=1)).passed


class _AnswersWithoutAMessage(_Answering):
    """From when ``empty`` is set: 200 with JSON holding no message (``body``), as a gateway in trouble answers."""

    empty = False
    body: ClassVar[dict] = {}

    def do_POST(self) -> None:
        if not self.empty:
            super().do_POST()
            return
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        send_json(self, self.body)


@pytest.mark.parametrize(
    "body",
    [{"id": "x", "object": "chat.completion", "choices": []}, {"choices": [{"index": 0, "finish_reason": "stop"}]}],
    ids=["no-choices", "a-choice-without-a-message"],
)
def test_a_server_answering_without_a_message_halfway_costs_a_rerun_of_those_tasks_not_a_score(tmp_path: Path, body: dict) -> None:
    """Sweep H: such answers on some requests were scored as the model's failures (``no_answer`` false), the run exited
    0, and a gate passed a candidate against it; only a server that answered every request so was caught."""
    out = tmp_path / "run"
    handler = type("Handler", (_AnswersWithoutAMessage,), {"requests": [], "delay_s": 0.0, "body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server) as url:
        job = EvalJob(suites=["bfcl:simple:5"], model=f"openai:{url}#m", out=str(out), retries=0, timeout_s=5)

        def empty_after_two(suite: str, done: int, total: int) -> None:
            if done == 2:
                handler.empty = True

        [summary] = run_eval(job, progress=empty_after_two)
        assert summary["no_answer"] == 3 and len(handler.requests) == 2
        result = gate(out, out, GatePolicy(min_tasks=1))
        assert not result.passed and any("no answer on 3 task trial(s) of the candidate run" in r for r in result.reasons)
        handler.empty = False  # the gateway answers again: the same command runs those three again
        [summary] = run_eval(job)
    assert len(handler.requests) == 5 and summary["no_answer"] == 0 and summary["runs"] == 5


def test_a_damaged_run_record_or_journal_line_is_named_or_run_again_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "run"
    job = EvalJob(suites=[SUITE], model="oracle", out=str(out))
    run_eval(job)
    journal = out / "results.jsonl"
    lines = journal.read_text().splitlines()
    edited = json.loads(lines[0])
    del edited["success"]
    journal.write_text("\n".join([json.dumps(edited), "[1, 2]", '{"suite": "bfcl:simple"}', *lines[1:]]) + "\n")
    [summary] = run_eval(job)  # the first task's line is no whole result any more: it runs again
    assert summary["tasks"] == 3 and summary["runs"] == 3 and summary["success_rate"] == 1.0
    for damaged in ("{bad", "[]", '{"run_key": "x"}'):
        (out / RUN_FILE).write_text(damaged)
        with pytest.raises(ConfigError, match=r"run\.json is not a run record .*Use another --out"):
            run_eval(job)


def test_a_journal_line_a_crash_cut_off_is_run_again_once_its_result_on_a_line_of_its_own(tmp_path: Path) -> None:
    """Was (a sweep): the next command appended its first result to the cut-off line, so that result was lost too and
    its task ran again on every later command."""
    out = tmp_path / "run"
    job = EvalJob(suites=[SUITE], model="oracle", out=str(out))
    run_eval(job)
    journal = out / "results.jsonl"
    whole = journal.read_text()
    journal.write_text(whole[: whole.rindex("\n", 0, len(whole) - 1) + 1 + 40])  # the last line cut, as a SIGKILL leaves it
    [summary] = run_eval(job)
    assert summary["tasks"] == 3 and summary["runs"] == 3 and summary["success_rate"] == 1.0
    rows = read_journal(journal)
    assert len(rows) == 3, "the task of the cut-off line ran again and its result was read back"
    lines = journal.read_text().splitlines()
    run_eval(job)  # nothing left to run: nothing is appended
    assert journal.read_text().splitlines() == lines


def test_a_second_run_on_a_folder_being_written_is_refused_and_duplicate_journal_lines_count_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    job = EvalJob(suites=[SUITE], model="oracle", out=str(out))
    refused: list[str] = []

    def second_run(suite: str, done: int, total: int) -> None:
        if done == 1 and not refused:
            with pytest.raises(ConfigError, match="Another `ee eval run` is writing to") as info:
                run_eval(job)  # the same command started twice
            refused.append(str(info.value))

    run_eval(job, progress=second_run)
    assert refused and f"pid {os.getpid()}" in refused[0]
    journal = out / "results.jsonl"
    journal.write_text(journal.read_text() * 2)  # what two overlapping runs of an older version left
    [summary] = run_eval(job)
    assert summary["trials"] == 1 and summary["runs"] == 3


def test_killing_ee_eval_run_ends_its_worker_processes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    import psutil

    server, _ = _answering_server(delay_s=0.2)
    with serving(server) as url:
        out = tmp_path / "run"
        args = ["eval", "run", "--suite", "bfcl:simple:200", "--model-spec", f"openai:{url}#m", "--workers", "2", "--out", str(out)]
        code = "import sys; from ee_middleware.cli.app import app; app(sys.argv[1:])"
        proc = subprocess.Popen([sys.executable, "-c", code, *args, "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not ((out / "results.jsonl").exists() and (out / "results.jsonl").read_text()) and time.monotonic() < deadline:
                time.sleep(0.1)
            workers = psutil.Process(proc.pid).children(recursive=True)
            assert workers, "the run started worker processes"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            _, alive = psutil.wait_procs(workers, timeout=15)
            for p in alive:
                p.kill()
            assert not alive, f"worker processes outlived the killed run: {alive}"
        finally:
            proc.kill()
            proc.wait(10)


def test_ee_eval_run_exits_1_while_tasks_got_no_answer(tmp_path: Path) -> None:
    import socket

    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    with socket.socket() as probe:  # a port nothing listens on: the server is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["eval", "run", "--suite", "bfcl:simple:2", "--model-spec", f"openai:http://127.0.0.1:{port}/v1#m"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--json", "--no-progress"])
    assert result.exit_code == 1, result.output  # was 0: a script took the incomplete run for a finished one
    assert json.loads(result.stdout)["no_answer"] == 2
    assert "error: the model server gave no answer on 2 task trial(s)" in result.stderr and "Run the same" in result.stderr
