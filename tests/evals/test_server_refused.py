"""A request the model server refused to render (its chat template failing on the conversation: the local server's 400
naming the template, vLLM's 400 with the template's own text) is not the model's answer. Before, each such trial was a
plain failure (``request_refused``): a ``--chat-template`` that compiles and passes the probes but fails on every
conversation of a suite scored a silent 0% (``ee eval run`` exit 0), and the gate passed two such runs on a tie. Now the
trial is counted apart (``server_refused``), warned about, ``ee eval run`` exits 1, the next command runs it again, and
the gate refuses the run. A prompt longer than the context stays that task's failure (test_never_answered.py).

REAL local model server (transformers, real HTTP) serving the tiny random Llama with a ``--chat-template`` file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.adapters.serving.local_server import LocalModelServer, make_http_server
from ee_middleware.adapters.templates import template_path
from ee_middleware.cli.app import app
from ee_middleware.evals.gate import GatePolicy, gate
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, read_journal, run_eval
from ee_middleware.testing.http import serving

SUITE = "bfcl:irrelevance:3"
POLICY = GatePolicy(min_tasks=1)


def _template(folder: Path, refused_tool: str | None) -> Path:
    """The shipped SmolLM2 tool template, raising on a conversation offering ``refused_tool`` (None: any tool but the
    probes'): it compiles and passes the server's probes, then fails on the eval's conversations."""
    test = f"tools[0].function.name == {refused_tool!r}" if refused_tool else "tools[0].function.name != 'ee_probe_tool_7f3a'"
    guard = (
        f"{{%- if tools and {test} %}}{{{{ raise_exception('this template renders only the tools it was written for') }}}}{{% endif -%}}\n"
    )
    path = folder / f"refusing-{refused_tool or 'all'}.jinja"
    path.write_text(guard + template_path("smollm2-tools").read_text(encoding="utf-8"), encoding="utf-8")
    return path


@contextmanager
def _local_server(base: Path, template: Path | None, port: int = 0) -> Iterator[str]:
    server = make_http_server(LocalModelServer(base, served_model_name="tiny", chat_template=template), port=port)
    with serving(server) as url:
        yield url


def _results(run: Path) -> list[dict[str, object]]:
    import polars as pl

    return pl.read_parquet(run / "results.parquet").select("task_id", "success", "request_refused", "server_refused", "steps").to_dicts()


def test_a_template_that_fails_on_every_conversation_is_no_silent_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    template = _template(tmp_path, None)
    with _local_server(tiny_model_dir, template) as url:
        job = EvalJob(suites=[SUITE], model=f"openai:{url}#tiny", out=str(tmp_path / "a"), retries=0, max_tokens=8)
        [summary] = run_eval(job)
        assert summary["server_refused"] == 3 and "renders only the tools it was written for" in summary["server_refused_reason"]
        assert summary["failures"] == {"model_error": 3}
        assert all(row["server_refused"] and row["request_refused"] and not row["steps"] for row in _results(tmp_path / "a"))
        record = json.loads((tmp_path / "a" / "summary.json").read_text())
        assert record["suites"][0]["server_refused"] == 3

        args = ["eval", "run", "--suite", SUITE, "--model-spec", job.model, "--max-tokens", "8", "--no-progress"]
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
        assert result.exit_code == 1, result.output
        assert "refused to render the request of 3 task trial(s)" in result.output
        said = " ".join(result.output.split())  # not only the template (a sweep: a 400 for a tool's name was called that)
        assert "else its check of the request, such as a tool name or schema it does not take" in said, said
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "c"), "--json"])
        assert result.exit_code == 1 and json.loads(result.stdout)["server_refused"] == 3

    outcome = gate(tmp_path / "a", tmp_path / "b", POLICY)
    assert not outcome.passed
    assert any("the model server refused to render the request of 3 task trial(s) of the candidate run" in r for r in outcome.reasons)
    assert any("of the baseline run" in r and "refused to render" in r for r in outcome.reasons)


def test_a_template_that_fails_on_one_conversation_is_counted_and_run_again_once_fixed(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with _local_server(tiny_model_dir, _template(tmp_path, "math_sum")) as url:
        job = EvalJob(suites=[SUITE], model=f"openai:{url}#tiny", out=str(run), retries=0, max_tokens=8)
        [summary] = run_eval(job)
    assert summary["server_refused"] == 1 and summary["runs"] == 3
    [refused] = [row for row in _results(run) if row["server_refused"]]
    assert refused["task_id"] == "irrelevance_1"
    run_eval(job.model_copy(update={"model": "oracle", "out": str(tmp_path / "oracle")}))
    reasons = gate(tmp_path / "oracle", run, POLICY).reasons
    assert any("refused to render the request of 1 task trial(s) of the baseline run" in r for r in reasons), reasons

    # the template fixed, on the same server address: the same command runs the refused trial again, and only it
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with _local_server(tiny_model_dir, None, port=port) as again_url:
        assert again_url == url
        [fixed] = run_eval(job)
    assert fixed["server_refused"] == 0 and fixed["runs"] == 3
    rows = read_journal(run / JOURNAL)
    assert [r["task_id"] for r in rows].count("irrelevance_1") == 2 and len(rows) == 4
    assert not any(row["server_refused"] for row in _results(run))
    assert not any("refused to render" in r for r in gate(tmp_path / "oracle", run, POLICY).reasons)
