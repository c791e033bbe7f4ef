"""A run in which the model never answered (every task trial failed on its first request: a wrong served-model name, an
adapter that cannot load, a client raising) measures no model: ee eval run exits 1 saying so, the gate refuses it, and
the corrected command (or the same one, once the cause is fixed) runs those trials again. A real HTTP chat server that
refuses (404) the models it does not serve, as vLLM does."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.gate import GatePolicy, gate
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, read_journal, run_eval
from ee_middleware.evals.suites import load_suite
from ee_middleware.testing.http import send_json, serving

SUITE = "bfcl:irrelevance:4"
POLICY = GatePolicy(min_tasks=1)
REFUSED_TASK = "irrelevance_2"


class _Serving(BaseHTTPRequestHandler):
    """Answers the chat requests for the ``served`` model names with text; refuses any other name with 404, and (with
    ``refuse_marker``) one request whose text holds it with 400, as a server refuses one prompt it cannot take."""

    served: set[str]
    requests: list[str]
    refuse_marker: str | None = None

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.requests.append(body.get("model"))
        if body.get("model") not in self.served:
            message = f"The model `{body.get('model')}` does not exist."
            send_json(self, {"error": {"message": message, "type": "NotFoundError", "code": 404}}, status=404)
        elif self.refuse_marker and self.refuse_marker in json.dumps(body["messages"]):
            send_json(self, {"error": {"message": "This prompt is too long.", "type": "BadRequestError", "code": 400}}, status=400)
        else:
            send_json(self, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "I cannot."}, "finish_reason": "stop"}]})


def _server(served: set[str], refuse_marker: str | None = None) -> tuple[ThreadingHTTPServer, type[_Serving]]:
    handler = type("Handler", (_Serving,), {"served": served, "requests": [], "refuse_marker": refuse_marker})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server, handler


def test_a_run_its_model_never_answered_is_named_refused_by_the_gate_and_taken_over_by_the_corrected_model(tmp_path: Path) -> None:
    """Before: a baseline run with a wrong served-model name (404 on every request) was a finished 0% run like any
    other: the gate passed a candidate against it (20/20 vs 0/20) and passed two such runs tied at 0."""
    server, handler = _server({"good"})
    with serving(server) as url:
        wrong = EvalJob(suites=[SUITE], model=f"openai:{url}#goood", out=str(tmp_path / "base"), retries=0)
        [summary] = run_eval(wrong)
        assert summary["success_rate"] == 0.0 and summary["failures"] == {"model_error": 4} and summary["no_answer"] == 0
        assert "refused the request with HTTP 404" in summary["never_answered"] and "goood" in summary["never_answered"]
        run_eval(wrong.model_copy(update={"out": str(tmp_path / "also-wrong")}))
        good = wrong.model_copy(update={"model": f"openai:{url}#good", "out": str(tmp_path / "cand")})
        [answered] = run_eval(good)
        assert answered["success_rate"] == 1.0 and answered["never_answered"] is None

        outcome = gate(tmp_path / "cand", tmp_path / "base", POLICY)
        assert not outcome.passed
        [reason] = outcome.reasons
        assert reason.startswith(f"{SUITE.rsplit(':', 1)[0]}: the baseline run has no answer from its model: all 4 task trial(s)")
        assert "HTTP 404" in reason and f"--out {tmp_path / 'base'}" in reason
        tie = gate(tmp_path / "also-wrong", tmp_path / "base", POLICY)  # 0 of 4 each: was a passing tie
        assert (
            not tie.passed and len(tie.reasons) == 2 and {"candidate", "baseline"} == {r.split(" run ")[0].split()[-1] for r in tie.reasons}
        )

        # The corrected command (the served name) takes the folder over: it holds no answer of the model to keep.
        handler.requests.clear()
        [fixed] = run_eval(good.model_copy(update={"out": str(tmp_path / "base")}))
    assert len(handler.requests) == 4 and fixed["success_rate"] == 1.0 and fixed["never_answered"] is None
    assert gate(tmp_path / "cand", tmp_path / "base", POLICY).passed


def test_the_same_command_runs_a_suite_the_model_never_answered_again_once_the_cause_is_fixed(tmp_path: Path) -> None:
    """The adapter's files copied again, the server's model loaded: nothing in the run's settings changed, so the same
    command is how the user runs it again (before: it kept the 0% rows, and the run stayed unmeasured for ever)."""
    served: set[str] = set()
    server, handler = _server(served)
    with serving(server) as url:
        job = EvalJob(suites=[SUITE], model=f"openai:{url}#late", out=str(tmp_path / "run"), retries=0)
        [summary] = run_eval(job)
        assert summary["never_answered"]
        served.add("late")  # the server loads the model
        [summary] = run_eval(job)
    assert handler.requests == ["late"] * 8 and summary["success_rate"] == 1.0 and summary["never_answered"] is None
    assert len(read_journal(tmp_path / "run" / JOURNAL)) == 4, "the journal holds each task once"


def test_one_refused_request_beside_answered_ones_stays_a_plain_task_failure(tmp_path: Path) -> None:
    """gave_no_answer's rule: a request the server refuses (4xx) is the model's or the settings' doing, one task's
    failure; only a suite the model never answered at all is refused."""
    server, handler = _server({"good"}, refuse_marker="")
    with serving(server) as url:
        job = EvalJob(suites=[SUITE], model=f"openai:{url}#good", out=str(tmp_path / "run"), retries=0)
        [task] = [t for t in load_suite(SUITE).tasks() if t.id == REFUSED_TASK]
        handler.refuse_marker = json.dumps(task.turns[0][-1]["content"])[1:40]
        [summary] = run_eval(job)
        assert summary["failures"] == {"model_error": 1} and summary["never_answered"] is None
        outcome = gate(tmp_path / "run", tmp_path / "run", POLICY)
        assert outcome.passed, outcome.reasons
        run_eval(job)
    assert len(handler.requests) == 4, "the same command runs the refused task again no more than the others"


class _BrokenBodies(_Serving):
    """Answers the request whose text holds ``broken_marker`` with HTTP 200 and a body that is no JSON (what a proxy
    that cut the answer off, emptied it or replaced it writes), until ``mended``."""

    broken_marker = ""
    body = b""
    mended = False

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        body = json.loads(raw)
        if not self.mended and self.broken_marker in json.dumps(body["messages"]):
            self.requests.append(body.get("model"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
            return
        self.rfile = __import__("io").BytesIO(raw)
        self.headers.replace_header("Content-Length", str(len(raw)))
        super().do_POST()


@pytest.mark.parametrize("body", [b'{"choices": [{"index": 0, "mess', b"", b"{{{{"], ids=["cut_off", "empty", "garbage"])
def test_an_answer_that_is_no_json_is_no_answer_and_runs_again(tmp_path: Path, body: bytes) -> None:
    """A 200 whose body is no JSON was scored as the model's failure (model_error), a real regression to the gate, while
    the same proxy's HTML 502 was no answer (two sweeps): no model writes a body that is no JSON."""
    [task] = [t for t in load_suite(SUITE).tasks() if t.id == REFUSED_TASK]
    handler = type(
        "Handler",
        (_BrokenBodies,),
        {"served": {"good"}, "requests": [], "broken_marker": json.dumps(task.turns[0][-1]["content"])[1:40], "body": body},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server) as url:
        job = EvalJob(suites=[SUITE], model=f"openai:{url}#good", out=str(tmp_path / "run"), retries=0)
        [summary] = run_eval(job)
        assert summary["no_answer"] == 1, summary
        handler.mended = True
        [summary] = run_eval(job)
    assert summary["success_rate"] == 1.0 and not summary.get("no_answer"), summary
    assert len(handler.requests) == 5, "the same command asks the unanswered task again, and only it"


def test_an_error_sent_in_a_readable_answer_stays_the_tasks_failure(tmp_path: Path) -> None:
    """A gateway's 200 with ``{"error": {"code": "context_length_exceeded"}}`` is the request's doing, as the same error
    sent as a 400 is: a plain failure, not no answer run again by every command (the review of the change above)."""
    [task] = [t for t in load_suite(SUITE).tasks() if t.id == REFUSED_TASK]
    error = {
        "error": {"message": "This prompt is too long for the model.", "type": "invalid_request_error", "code": "context_length_exceeded"}
    }
    handler = type(
        "Handler",
        (_BrokenBodies,),
        {
            "served": {"good"},
            "requests": [],
            "broken_marker": json.dumps(task.turns[0][-1]["content"])[1:40],
            "body": json.dumps(error).encode(),
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server) as url:
        [summary] = run_eval(EvalJob(suites=[SUITE], model=f"openai:{url}#good", out=str(tmp_path / "run"), retries=0))
    assert not summary.get("no_answer") and summary["failures"] == {"model_error": 1}, summary


class _RaisingClient:
    """A plug-in model client that raises on every request (``client_error``)."""

    model = "raising"

    def describe(self) -> dict[str, Any]:
        return {"model": self.model}

    def close(self) -> None:
        pass

    def complete(self, messages: Any, **options: Any) -> Any:
        raise RuntimeError("no credentials configured for this client")


def raising_client(**options: Any) -> _RaisingClient:
    """``tests.evals.test_never_answered:raising_client``."""
    return _RaisingClient()


def test_ee_eval_run_exits_1_naming_a_suite_its_model_never_answered(tmp_path: Path) -> None:
    """Before: exit 0 and a 0.0% table, no warning."""
    args = ["eval", "run", "--suite", SUITE, "--model-spec", "tests.evals.test_never_answered:raising_client", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["never_answered"].startswith("the model client raised RuntimeError: no credentials")
    assert "error: the model never answered in 1 suite(s)" in result.stderr and "bfcl:irrelevance: all 4 task trial(s)" in result.stderr
    table = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert table.exit_code == 1 and "Warning: the model never answered" not in table.stdout
    # the table's form says it on stderr too, as one error line (was: a yellow warning on stdout, nothing on stderr)
    assert "error: the model never answered in 1 suite(s)" in " ".join(table.stderr.split()), table.stderr


def test_a_long_reason_keeps_its_end_where_it_says_what_to_fix() -> None:
    """A reason quoting a server's long answer was cut at 300 characters, before the fix it ends with."""
    from ee_middleware.cli.eval_cmds import never_answered_warning

    reason = "HTTP 404: " + "x" * 900 + " and that base_url ends in the API version (/v1)"
    text = never_answered_warning([{"suite": "s", "runs": 2, "never_answered": reason}])
    assert "base_url ends in the API version (/v1)" in text and "HTTP 404: xxx" in text and reason not in text


@pytest.mark.slow
def test_a_local_adapter_whose_weights_cannot_load_is_a_run_that_measured_no_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The sweep's second case: local:BASE@ADAPTER with a corrupt adapter_model.safetensors fails at its lazy load, on
    every task; was a finished 0% run, exit 0."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": str(tiny_model_dir), "r": 8, "target_modules": ["q_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 16, "task_type": "CAUSAL_LM"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"half-copied")
    job = EvalJob(suites=["bfcl:irrelevance:2"], model=f"local:{tiny_model_dir}@{adapter}", out=str(tmp_path / "run"), max_tokens=8)
    [summary] = run_eval(job)
    assert "Cannot apply the adapter" in summary["never_answered"]
    [reason] = gate(tmp_path / "run", tmp_path / "run", POLICY).reasons[:1]
    assert "the candidate run has no answer from its model" in reason


def test_a_one_task_suite_whose_only_prompt_the_server_refuses_as_too_long_is_that_tasks_failure(tmp_path: Path) -> None:
    """A small held-out split of one task whose prompt a server serving the model fine refuses with 400 ('prompt too
    long'): a refusal of that request's own messages. Before: 'the model never answered' (exit 1), the prompt sent again
    by every identical command, and the gate refused the run, naming the wrong fixes (the served model's name, the
    adapter's files). A one-task suite refused for the model's name (404) is still one the model never answered."""
    suite = "bfcl:irrelevance:1"
    [task] = load_suite(suite).tasks()
    server, handler = _server({"good"}, refuse_marker=json.dumps(task.turns[0][-1]["content"])[1:40])
    with serving(server) as url:
        job = EvalJob(suites=[suite], model=f"openai:{url}#good", out=str(tmp_path / "base"), retries=0)
        [summary] = run_eval(job)
        assert summary["failures"] == {"model_error": 1} and summary["never_answered"] is None
        [again] = run_eval(job)
        assert again == summary and len(handler.requests) == 1, "the same command does not send the refused prompt again"
        run_eval(job.model_copy(update={"model": "oracle", "out": str(tmp_path / "cand")}))
        outcome = gate(tmp_path / "cand", tmp_path / "base", POLICY)
        assert outcome.passed, outcome.reasons
        [row] = read_journal(tmp_path / "base" / JOURNAL)
        assert row["request_refused"] and "HTTP 400" in row["reason"]

        [wrong] = run_eval(job.model_copy(update={"model": f"openai:{url}#goood", "out": str(tmp_path / "wrong")}))
    assert "refused the request with HTTP 404" in wrong["never_answered"]
    assert not gate(tmp_path / "cand", tmp_path / "wrong", POLICY).passed
    result = CliRunner().invoke(app, ["eval", "run", "--suite", suite, "--model-spec", job.model, "--out", str(tmp_path / "base")])
    assert result.exit_code == 0, result.output
