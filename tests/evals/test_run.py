"""ee eval run end to end: real HTTP servers, failures as reasons, determinism, resume, outputs."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.tasks import EvalTask
from ee_middleware.records import Observation, ToolCall
from ee_middleware.testing.http import send_json, serving

SUITES = ["bfcl:multi_turn_base:2", "bfcl:simple:3"]


def _rows(folder: Path) -> list[dict]:
    frame = pl.read_parquet(folder / "results.parquet")
    return frame.drop("duration_s").sort("suite", "task_id", "trial").to_dicts()


def test_the_tiny_model_behind_the_local_server_runs_every_suite_and_its_garbage_fails_with_reasons(local_server, tmp_path: Path) -> None:
    spec = f"openai:{local_server.base_url}#{local_server.model}"
    job = EvalJob(suites=SUITES, model=spec, out=str(tmp_path / "a"), max_tokens=12, max_steps_per_turn=3)
    summary = run_eval(job)
    assert [s["suite"] for s in summary] == ["bfcl:multi_turn_base", "bfcl:simple"]
    assert [s["tasks"] for s in summary] == [2, 3]
    rows = _rows(tmp_path / "a")
    assert len(rows) == 5
    for row in rows:
        assert row["model"] == "tiny"
        assert json.loads(row["conversation"])[0]["role"] == "user"
        if not row["success"]:
            assert row["reason"] and row["error_type"]
    # Determinism: the same seed at temperature 0 gives the same conversations and verdicts.
    run_eval(job.model_copy(update={"out": str(tmp_path / "b")}))
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


def test_an_endpoint_that_is_down_makes_each_task_a_failure_with_the_url(tmp_path: Path) -> None:
    job = EvalJob(suites=["bfcl:multi_turn_base:2"], model="openai:http://127.0.0.1:9/v1#m", out=str(tmp_path), retries=0, timeout_s=2)
    [summary] = run_eval(job)
    assert summary["success_rate"] == 0 and summary["failures"] == {"model_error": 2}
    assert all("127.0.0.1:9" in row["reason"] for row in _rows(tmp_path))


def test_an_endpoint_that_times_out_mid_run_fails_the_task_and_the_run_goes_on(stalling_server: str, tmp_path: Path) -> None:
    job = EvalJob(suites=["bfcl:multi_turn_base:2"], model=f"openai:{stalling_server}#m", out=str(tmp_path), retries=0, timeout_s=0.5)
    [summary] = run_eval(job)
    rows = _rows(tmp_path)
    assert len(rows) == 2 and summary["failures"] == {"model_error": 2}
    first = json.loads(rows[0]["conversation"])
    assert any(m.get("role") == "tool" for m in first), "the first answer was executed before the server stalled"
    assert "timed out" in rows[0]["reason"]


class _Raising:
    def execute(self, call: ToolCall) -> Observation:
        raise RuntimeError("disk on fire")


class _Erroring:
    def execute(self, call: ToolCall) -> Observation:
        return Observation(content=f"Error: {call.name} needs a path", is_error=True)


def _task(calls: list[dict]) -> EvalTask:
    message = {"role": "assistant", "content": "", "tool_calls": calls}
    return EvalTask("t", "t1", "c", [[{"role": "user", "content": "go"}]], [[]], [[message]])


CALL = {"id": "c1", "type": "function", "function": {"name": "rm", "arguments": "{}"}}


def test_a_tool_that_raises_ends_the_task_with_the_reason() -> None:
    from ee_middleware.evals.clients import OracleClient

    task = _task([CALL])
    conversation = run_conversation(OracleClient().for_task(task), task, _Raising())
    assert conversation.error_type == "tool_error" and "disk on fire" in conversation.error and "'rm'" in conversation.error


def test_tool_errors_are_fed_back_to_the_model_as_tool_messages() -> None:
    from ee_middleware.evals.clients import OracleClient

    task = _task([CALL])
    conversation = run_conversation(OracleClient().for_task(task), task, _Erroring())
    tool = [m for m in conversation.messages if m["role"] == "tool"]
    assert tool == [{"role": "tool", "tool_call_id": "c1", "name": "rm", "content": "Error: rm needs a path"}]
    assert conversation.error is None and conversation.turns[0].final_text == "Done."


class _TextModel:
    """A text-only model (as a local generator is): writes <tool_call> text, then garbage that looks like a call."""

    model = "text"

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)

    def complete(self, messages, *, tools=None, n=1, sampling=None):
        from ee_middleware.models.protocol import Choice

        return [Choice.from_text(self.answers.pop(0))]

    def describe(self):
        return {}

    def close(self):
        pass


def test_tool_calls_written_as_text_are_parsed_and_a_step_limit_ends_the_turn() -> None:
    task = _task([])
    answers = ['<tool_call>{"name": "rm", "arguments": {"file_name": "a"}}</tool_call>'] * 3
    conversation = run_conversation(_TextModel(answers), task, _Erroring(), LoopConfig(max_steps_per_turn=3))
    assert [c.arguments for c in conversation.calls] == [{"file_name": "a"}] * 3
    assert conversation.turns[0].stopped == "max_steps"


def test_an_unreadable_call_can_be_fed_back_for_another_try() -> None:
    task = _task([])
    answers = ['<tool_call>{"name": "rm", "arguments": </tool_call>', '<tool_call>{"name": "rm", "arguments": {}}</tool_call>', "ok"]
    conversation = run_conversation(_TextModel(answers), task, _Erroring(), LoopConfig(feed_back_parse_errors=True))
    assert conversation.turns[0].steps[0].problems and [c.name for c in conversation.calls] == ["rm"]
    assert "could not be read" in conversation.messages[2]["content"]


def test_an_interrupted_run_resumes_without_running_a_task_twice(tmp_path: Path) -> None:
    job = EvalJob(suites=["bfcl:multi_turn_base:6", "bfcl:parallel:4"], model="oracle", out=str(tmp_path), trials=2)
    seen: list[int] = []

    def stop_after_five(suite: str, done: int, total: int) -> None:
        seen.append(done)
        if sum(1 for d in seen if d) >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(job, progress=stop_after_five)
    partial = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(partial) == 5 and not (tmp_path / "results.parquet").exists()
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"suite": "bfcl:multi_tu')  # a line cut off by a crash
    summary = run_eval(job)
    rows = _rows(tmp_path)
    assert len(rows) == 20 and len({(r["suite"], r["task_id"], r["trial"]) for r in rows}) == 20
    assert [s["success_rate"] for s in summary] == [1.0, 1.0] and [s["trials"] for s in summary] == [2, 2]
    with pytest.raises(ConfigError, match="other settings"):
        run_eval(job.model_copy(update={"seed": 5}))


def test_ee_eval_run_json_and_report_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from ee_middleware.cli.app import app

    out = tmp_path / "run"
    args = ["eval", "run", "--suite", "bfcl:multi_turn_miss_param:3", "--model-spec", "oracle", "--out", str(out), "--json"]
    monkeypatch.setenv("TZ", "America/New_York")  # run.json's times are UTC whatever the machine's zone (they were local)
    time.tzset()
    try:
        result = CliRunner().invoke(app, args)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["suite"] == "bfcl:multi_turn_miss_param" and data["tasks"] == 3 and data["success_rate"] == 1.0
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["started"].endswith("+00:00") and recorded["finished"].endswith("+00:00"), recorded
    two = CliRunner().invoke(app, [*args[:4], "--suite", "bfcl:irrelevance:2", *args[4:-2], str(tmp_path / "two"), "--json"])
    assert [d["suite"] for d in json.loads(two.output)] == ["bfcl:multi_turn_miss_param", "bfcl:irrelevance"]
    # every suite has every key in every run (before: no_answer, served_models, never_answered, ... only when any)
    counts = ("no_answer", "worker_deaths", "server_refused", "cut_answers", "text_calls", "excluded", "uncovered_calls_checked")
    assert all(data[key] == 0 for key in counts) and data["served_models"] == data["excluded_reasons"] == {}
    assert data["never_answered"] is None and data["server_refused_reason"] is None
    assert all(set(d) == set(data) for d in json.loads(two.output)), two.output
    recorded_summary = json.loads((out / "summary.json").read_text())
    assert recorded_summary["served_models"] == {} and set(recorded_summary["suites"][0]) == set(data), "summary.json's keys too"
    assert "| bfcl:multi_turn_miss_param | 3 | 1 | 100.0% |" in (out / "report.md").read_text()
    assert "<table>" in (out / "report.html").read_text()
    assert (out / "success.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["eval", "run", "--suite", "bfcl:simple:x", "--model-spec", "noop", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "task count" in bad.output


class _NoChoices(BaseHTTPRequestHandler):
    """A gateway (real HTTP) that answers 200 with JSON holding no choices: no message at all."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        send_json(self, {"id": "x", "object": "chat.completion", "choices": []})


def test_a_server_answer_without_any_message_fails_the_task_and_never_passes_irrelevance(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoChoices)
    server.daemon_threads = True
    with serving(server) as url:
        job = EvalJob(suites=["bfcl:irrelevance:2", "bfcl:multi_turn_base:1"], model=f"openai:{url}#m", out=str(tmp_path), retries=0)
        summaries = run_eval(job)
    assert [s["success_rate"] for s in summaries] == [0.0, 0.0]
    assert [s["failures"] for s in summaries] == [{"model_error": 2}, {"model_error": 1}]
    assert [s.get("no_answer") for s in summaries] == [2, 1], "the server gave no answer: the tasks run again (sweep H)"
    rows = _rows(tmp_path)
    assert all("holds no message: the response has no choices" in row["reason"] and row["no_answer"] for row in rows)
    assert all(len(json.loads(row["conversation"])) <= 3 for row in rows), "the conversation ended at the empty answer"


def test_a_suite_asking_for_more_tasks_than_it_holds_is_warned_of(tmp_path: Path) -> None:
    """Sweep: ``bfcl:multi_turn_base:500`` ran the category's 200 tasks, exited 0 and said nothing."""
    from ee_middleware.evals.bfcl.suite import BFCLSuite
    from ee_middleware.evals.runner import _warn_fewer_tasks_than_asked

    asked, exact = BFCLSuite("multi_turn_base", 500), BFCLSuite("multi_turn_base", 3)
    tasks = {"bfcl:multi_turn_base:500": asked.tasks(), "bfcl:multi_turn_base:3": exact.tasks()}
    with pytest.warns(
        UserWarning, match=r"the suite bfcl:multi_turn_base:500 asks for 500 tasks, but bfcl:multi_turn_base holds 200: all 200 run"
    ) as said:
        _warn_fewer_tasks_than_asked({"bfcl:multi_turn_base:500": asked, "bfcl:multi_turn_base:3": exact}, tasks)
    assert len(said) == 1, [str(w.message) for w in said]
