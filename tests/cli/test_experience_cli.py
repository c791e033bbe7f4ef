"""``ee experience eval``: the held-out share at its ends, the reasons of failed predictions in the table, no
library debug output, a model server that dies mid-eval and one that fails on one prompt; on the real BFCL expert
store, with a scripted experience model behind a real HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.testing.http import serving
from tests.cli.json_failure import json_failure
from tests.replay.test_experience import Answer, ScriptedExperienceModel, _handler, copy_first_example
from tests.replay.test_experience_eval import crashes_on, dies_after, one_held_out_prompt


@contextmanager
def served(answer: Answer) -> Iterator[ScriptedExperienceModel]:
    model = ScriptedExperienceModel(answer)
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))) as url:
        model.base_url = url
        yield model


def _eval_args(model: ScriptedExperienceModel, store: Path, out: Path, *more: str) -> list[str]:
    return ["experience", "eval", "--model", model.spec, "--store", str(store), "--out", str(out), *more]


def test_a_held_out_share_that_leaves_nothing_to_retrieve_is_refused(bfcl_store_path: Path, tmp_path: Path) -> None:
    """--held-out 1.0 indexed nothing, and the report's 'retrieval' variant, the one a replay's fidelity gate reads, was
    the model without retrieval (exit 0, no warning)."""
    out = tmp_path / "eval"
    with served(copy_first_example) as model:
        result = CliRunner().invoke(app, _eval_args(model, bfcl_store_path, out, "--held-out", "1.0", "--json"))
        assert result.exit_code == 2, result.output
        assert "--held-out" in result.output and "nothing is left in the replay buffer" in " ".join(result.output.split())
        assert not (out / "report.json").exists() and not model.requests, "refused before any prediction"

        result = CliRunner().invoke(app, _eval_args(model, bfcl_store_path, out, "--held-out", "0", "--json"))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["held_out_trajectories"] == 1 and report["indexed_transitions"] > 0, "0 still holds out one"
    help_text = " ".join(CliRunner().invoke(app, ["experience", "eval", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "also at 0" in help_text and "1.0) is refused" in help_text


def test_the_table_gives_the_reasons_of_failed_predictions(bfcl_store_path: Path, tmp_path: Path) -> None:
    """The table showed how many predictions failed, not why (only report.json said)."""
    asked = iter(range(1 << 30))

    def prose_now_and_then(messages: list[dict[str, Any]]) -> str:
        return "The tool would list the files." if next(asked) % 3 == 0 else copy_first_example(messages)

    with served(prose_now_and_then) as model:
        result = CliRunner().invoke(
            app, _eval_args(model, bfcl_store_path, tmp_path / "eval", "--held-out", "0.34"), env={"COLUMNS": "200"}
        )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    for variant, data in report["variants"].items():
        failed = data["overall"]["failed"]
        assert failed > 0
        [(reason, count)] = data["overall"]["failure_reasons"].items()
        assert f"{variant}: {failed} failed: {count} x {reason}" in result.stdout, result.stdout


@pytest.mark.timeout(300)
def test_the_bm25s_retriever_prints_no_debug_line(bfcl_store_path: Path, tmp_path: Path) -> None:
    """bm25s sets its logger to DEBUG when imported: 'DEBUG bm25s: Building index from tokens' reached stderr without -v."""
    pytest.importorskip("bm25s")
    with served(copy_first_example) as model:
        args = _eval_args(model, bfcl_store_path, tmp_path / "eval", "--held-out", "0.34", "--retriever", "bm25s", "--json")
        done = subprocess.run([sys.executable, "-m", "ee_middleware.cli", *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["retriever"] == "bm25s"
    assert "bm25s" not in done.stderr and "DEBUG" not in done.stderr, done.stderr


def test_a_server_that_dies_stops_the_eval_and_keeps_the_earlier_report(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experience model's server died mid-eval: the eval went on, each prediction left tried 3 times against it
    (90 requests, 41 s for 38 predictions in the report's run), then replaced the report.json a replay's fidelity gate
    read with one scoring token F1 0.0 for every tool. It now stops at the first prediction that got no answer, with an
    error naming the server's URL, where it stopped and what to do, and writes nothing: the earlier report and chart
    are kept, and a fresh --out gets no report."""
    from ee_middleware.models import openai_compat

    out = tmp_path / "eval"
    with served(copy_first_example) as model:
        result = CliRunner().invoke(app, _eval_args(model, bfcl_store_path, out, "--held-out", "0.34", "--json"))
    assert result.exit_code == 0, result.output
    n = json.loads(result.stdout)["held_out_transitions"]
    earlier = {name: (out / name).read_bytes() for name in ("report.json", "fidelity.png") if (out / name).exists()}
    assert "report.json" in earlier

    for as_json in (["--json"], []):
        with dies_after(3) as dying:
            monkeypatch.setattr(openai_compat, "_sleep", dying.waits.append)  # the back-off between retries, counted
            args = _eval_args(dying, bfcl_store_path, out, "--held-out", "0.34", *as_json)
            result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 1, result.output
        error = " ".join(result.stderr.split())
        assert f"error: No usable answer from {dying.base_url}/chat/completions after 3 attempt(s)" in error, error
        assert "Is the vLLM (or other OpenAI-compatible) server running and reachable?" in error
        assert f"the evaluation stopped at prediction 4 of {2 * n} ('no-retrieval' variant, {dying.spec})" in error
        assert f"no report was written, and {out / 'report.json'} from an earlier run is kept" in error
        assert "re-run the same command once the model answers" in error
        assert dying.attempts == 4, "one prediction (its retries refused), then no other prediction"
        # the back-off of its retries; the GET /models check after them asks once, without retries (348aa20)
        assert len(dying.waits) == 2, "the back-off of its retries (the GET /models check after them asks once)"
        assert {name: (out / name).read_bytes() for name in earlier} == earlier, "the earlier report and chart are kept"
        if as_json:
            assert json_failure(result), "the error alone, as JSON (its line on stderr), as when a replay stops"

    fresh = tmp_path / "fresh"
    with served(copy_first_example) as model, dies_after(2) as dying:  # the trained model's server dies
        monkeypatch.setattr(openai_compat, "_sleep", dying.waits.append)
        result = CliRunner().invoke(app, _eval_args(model, bfcl_store_path, fresh, "--held-out", "0.34", "--trained", dying.spec, "--json"))
    assert result.exit_code == 1, result.output
    error = " ".join(result.stderr.split())
    assert f"the evaluation stopped at prediction {2 * n + 3} of {3 * n} ('retrieval+trained' variant, {dying.spec})" in error
    assert f"no report was written to {fresh};" in error
    assert len(model.requests) == 2 * n and dying.attempts == 3
    assert not (fresh / "report.json").exists() and not (fresh / "fidelity.png").exists()


def test_a_prompt_the_server_always_fails_on_is_counted_and_the_report_written(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers HTTP 500 to one held-out prompt (every attempt) and every other request: the eval stopped
    at that prediction, said to re-run once the model answers (it answered every other prediction, so each re-run
    stopped at the same one) and wrote no report. The server answers GET /models, so the prediction is a model error:
    counted, named under the table, and the report is written."""
    from ee_middleware.models import openai_compat
    from ee_middleware.replay.experience_eval import split_store
    from ee_middleware.store.local import LocalExperienceStore

    store = LocalExperienceStore(bfcl_store_path)
    try:
        prompt, sharing = one_held_out_prompt(split_store(store, share=0.34, seed=0))
    finally:
        store.close()
    monkeypatch.setattr(openai_compat, "_sleep", lambda s: None)  # the client's back-off between retries
    out = tmp_path / "eval"
    with crashes_on(prompt) as crashing:
        result = CliRunner().invoke(app, _eval_args(crashing, bfcl_store_path, out, "--held-out", "0.34"), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model_errors"] == 2 * sharing and crashing.crashes == 3 * 2 * sharing
    table = " ".join(result.stdout.split())
    assert f"{2 * sharing} prediction(s) got no answer from the model" in table, table
    assert f"report: {out / 'report.json'}" in table
