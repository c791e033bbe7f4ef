"""Answers cut off at max_tokens (finish_reason 'length') are counted per suite and overall, and the run says so.

A cut answer (a long list of parallel calls, a reasoning model's thinking) is usually unreadable or incomplete and
scores as a failure: without the count, a score could drop because of the sampling limit, silently.
"""

from __future__ import annotations

import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.testing.http import send_json, serving

CALL = {"id": "c1", "type": "function", "function": {"name": "calculate_triangle_area", "arguments": '{"base": 10, "height": 5}'}}
ANSWERS = [  # in the order the run asks: bfcl:simple's 3 tasks, then bfcl:irrelevance's 2 (one answer each)
    ({"role": "assistant", "content": '<tool_call>{"name": "calculate_triangle_area", "arguments": {"base": 1'}, "length"),
    ({"role": "assistant", "content": "I do not know."}, "stop"),
    ({"role": "assistant", "content": None, "tool_calls": [CALL]}, "length"),  # whole calls, then the limit (vLLM says so too)
    ({"role": "assistant", "content": None, "reasoning_content": "Let me think about whether any of"}, "length"),  # thinking cut
    ({"role": "assistant", "content": "None of these functions can help."}, "stop"),
]


class _Scripted(BaseHTTPRequestHandler):
    """An OpenAI-compatible server (real HTTP) answering the requests in turn from ``ANSWERS``; it records each request."""

    bodies: list[dict[str, Any]]
    lock: Any

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with self.lock:
            self.bodies.append(body)
            message, finish = ANSWERS[(len(self.bodies) - 1) % len(ANSWERS)]
        send_json(self, {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": finish}]})


def test_answers_a_served_model_cut_at_max_tokens_are_counted_per_suite_with_a_warning(tmp_path: Path) -> None:
    from ee_middleware.cli.app import app

    handler = type("Handler", (_Scripted,), {"bodies": [], "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    out = tmp_path / "run"
    args = ["eval", "run", "--suite", "bfcl:simple:3", "--suite", "bfcl:irrelevance:2", "--endpoint", "URL", "--model", "m"]
    args += ["--max-tokens", "64", "--out", str(out), "--no-progress"]
    with serving(server) as url:
        args[args.index("URL")] = url
        result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output  # a run with cut answers is done: it warns, it does not fail
    assert [body["max_tokens"] for body in handler.bodies] == [64] * 5, "--max-tokens sets what every request asks for"
    simple, irrelevance = json.loads(result.stdout)
    assert (simple["suite"], simple["cut_answers"], irrelevance["suite"], irrelevance["cut_answers"]) == (
        "bfcl:simple",
        2,
        "bfcl:irrelevance",
        1,
    )
    warning = "Warning: 3 model answer(s) were cut off at max_tokens=64 (finish_reason 'length'): 2 in bfcl:simple, 1 in bfcl:irrelevance."
    assert warning in result.stderr
    assert "`ee eval run --max-tokens N` (or `max_tokens` in the [eval] table of the --config file)" in result.stderr
    assert "BFCL's own runners send no max_tokens" in result.stderr

    assert json.loads((out / "summary.json").read_text())["cut_answers"] == 3
    report = (out / "report.md").read_text()
    assert warning in report and "| cut at max_tokens |" in report
    assert [line.rsplit("|", 2)[-2].strip() for line in report.splitlines() if line.startswith("| bfcl:")][:2] == ["2", "1"]
    rows = pl.read_parquet(out / "results.parquet").sort("suite", "task_id")
    assert rows["cut_answers"].sum() == 3
    cut_and_failed = [r for r in rows.iter_rows(named=True) if r["cut_answers"] and not r["success"]]
    assert cut_and_failed and all("cut off at max_tokens" in r["reason"] for r in cut_and_failed)

    table = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # the same run again: resumed, nothing asked, the table
    assert table.exit_code == 0, table.output
    assert len(handler.bodies) == 5
    assert "cut at max_tokens" in table.stdout  # the table's column; its warning on stderr, as every command's (sweep Z)
    assert "3 model answer(s) were cut off" in " ".join(table.stderr.split()) and "were cut off" not in table.stdout


def test_a_run_whose_answers_all_ended_counts_none_and_does_not_warn(tmp_path: Path) -> None:
    from ee_middleware.cli.app import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", "run", "--suite", "bfcl:simple:2", "--model-spec", "oracle", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cut_answers"] == 0 and "cut off" not in result.stderr
    assert "cut off" not in (out / "report.md").read_text() and json.loads((out / "summary.json").read_text())["cut_answers"] == 0


FACTORY = """
from ee_middleware.models.local import LocalGenerator
from ee_middleware.testing.tiny_models import build_test_tokenizer, build_tiny_llama


def client():
    tokenizer = build_test_tokenizer(["<tool_call>{{}}</tool_call> the area of a triangle"])
    model = build_tiny_llama(tokenizer)
    eos = tokenizer.eos_token_id

    def bias(module, inputs, logits):  # the end-of-sequence token made certain or impossible
        logits[..., eos] += {bias}
        return logits

    model.lm_head.register_forward_hook(bias)
    return LocalGenerator.from_objects(model, tokenizer, model_name="tiny")
"""


@pytest.mark.parametrize(("name", "eos_bias", "cut"), [("ends", 1e4, 0), ("runs_out", -1e4, 2)])
def test_the_local_model_path_counts_answers_that_ran_out_of_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, eos_bias: float, cut: int
) -> None:
    """A real (tiny, random) transformers model behind LocalGenerator, named as a module:factory model spec."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ee_middleware.evals.job import EvalJob
    from ee_middleware.evals.runner import run_eval

    module = f"cut_answers_client_{name}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(FACTORY.format(bias=eos_bias)))
    monkeypatch.syspath_prepend(str(tmp_path))
    [summary] = run_eval(EvalJob(suites=["bfcl:simple:2"], model=f"{module}:client", out=str(tmp_path / "run"), max_tokens=4))
    assert summary["cut_answers"] == cut
    rows = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert rows["steps"].to_list() == [1, 1] and rows["cut_answers"].to_list() == [cut // 2] * 2


FORCED = '<tool_call>{"name": "ls", "arguments": {"a": true}}</tool_call><tool_call>{"name": "ls", "argu'


def test_the_local_server_says_length_for_an_answer_cut_after_whole_calls(tmp_path: Path) -> None:
    """The real local model server (real HTTP) with a tiny model whose output layer writes FORCED token by token: the
    answer holds one whole call and is cut in the next. The server said 'tool_calls', hiding the cut from the eval. As
    vLLM's hermes parser reads it (a call it cannot read, the one cut, makes it read none), the answer is its whole text,
    and the finish reason says it was cut."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ee_middleware.adapters.serving.local_server import LocalModelServer, make_http_server
    from ee_middleware.models.openai_compat import OpenAIChatClient
    from ee_middleware.models.protocol import Sampling
    from ee_middleware.testing.tiny_models import build_test_tokenizer, force_answers, save_tiny_llama

    folder = save_tiny_llama(tmp_path / "tiny", build_test_tokenizer([FORCED, "list the files"]), max_positions=512)
    app = LocalModelServer(folder, served_model_name="tiny")
    script = app.tokenizer(FORCED, add_special_tokens=False)["input_ids"]
    force_answers(app.base_model, [script])
    tools = [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object", "properties": {"a": {"type": "boolean"}}}}}]
    with serving(make_http_server(app, port=0)) as url:
        client = OpenAIChatClient(url, "tiny", retries=0)
        try:
            [choice] = client.complete(
                [{"role": "user", "content": "list the files"}], tools=tools, sampling=Sampling(temperature=0, max_tokens=len(script))
            )
        finally:
            client.close()
    assert not choice.message.get("tool_calls") and choice.message["content"] == FORCED, choice.message
    assert choice.finish_reason == "length", "the answer was cut at max_tokens in its second call"
