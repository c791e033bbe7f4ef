"""``ee replay run`` with an experience-model sandbox says, where the user looks, how many predictions were unusable and why.

An experience model answering garbage stored 0 branches, exited 0, and neither the table nor ``--json`` said why: the
reasons were only in the store's replay records (``details.synthetic_failures``). The store holds real BFCL expert
trajectories; the garbage model is a tiny randomly initialised local Llama (the real thing: an untrained model), the
partly usable one a scripted model behind a real local HTTP server (the test names say so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.replay import conftest as replay_fixtures
from tests.replay.test_experience import copy_first_example

NO_JSON = "no JSON object with an 'observation' field in the answer"


serve = replay_fixtures.serve  # scripted experience models behind real local HTTP servers


def _replay(store: Path, tmp_path: Path, sandbox: str, *flags: str, settings: str = "") -> Any:
    config = tmp_path / "replay.toml"
    config.write_text(f'[replay]\nstore = "{store}"\nsandbox = "{sandbox}"\nk = 2\n\n[replay.sandbox_settings]\n{settings}\n')
    return CliRunner().invoke(app, ["replay", "run", "--config", str(config), "--limit", "1", "--no-progress", *flags])


def test_a_model_whose_every_prediction_is_unusable_fails_the_run_saying_why(bfcl_store_path: Path, tmp_path: Path) -> None:
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    folder = save_tiny_llama(tmp_path / "tiny", build_test_tokenizer(["ls cd mkdir observation reasoning {}"]), max_positions=4096)
    sandbox = f"experience:local:{folder}"
    result = _replay(bfcl_store_path, tmp_path, sandbox, "--json", settings="max_tokens = 12")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    unusable = sum(summary["synthetic_failures"].values())
    assert summary["done"] == 1 and summary["branches"] == 0 and summary["synthetic_branches"] == 0 and unusable > 0
    # the random model's answers run to max_tokens, with no JSON object begun: the reason says so before what was wrong
    [(reason, count)] = summary["synthetic_failures"].items()
    assert summary["states"] > 0 and count == unusable and reason.endswith(f"): {NO_JSON}"), reason
    assert reason.startswith(
        "the answer was cut off at max_tokens before any JSON object began (finish_reason 'length'; raise max_tokens, now 12"
    ), reason
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # (transformers draws its loading bar too)
    assert len(errors) == 1 and errors[0].startswith("error: the experience model gave no usable observation"), result.stderr
    error = errors[0]
    assert f"any of the {unusable} alternative(s)" in error and "cut off at max_tokens" in error
    # prose runs to any max_tokens: the advice is more tokens and the model's JSON shape (a random model rambles at any
    # limit), then --again with the model fixed
    assert "Every answer was cut off at max_tokens before a whole observation: raise max_tokens" in error, error
    assert "But none of them had begun the JSON object asked for: the model may not be answering" in error, error
    assert "It must answer one JSON object with an 'observation' field" in error and "--again" in error, error

    again = _replay(bfcl_store_path, tmp_path, sandbox, "--again", settings="max_tokens = 12")
    assert again.exit_code == 1, again.output
    rows = dict(line.rsplit(None, 1) for line in again.stdout.splitlines() if "predict" in line and line.strip()[-1].isdigit())
    assert rows == {"    of them predicted by the experience model": "0", "  predictions unusable (not stored)": str(unusable)}, rows
    text = " ".join(again.stdout.split())  # as wrapped to the terminal's width
    assert f"unusable predictions: {unusable} alternative(s)" in text and f"({unusable})" in text and "cut off at max_tokens" in text
    assert "error: the experience model gave no usable observation" in again.stderr


def test_a_scripted_model_with_some_unusable_predictions_counts_them_and_succeeds(
    bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    asked: list[bool] = []  # one per request: whether it was answered with prose

    def every_third_is_prose(messages: list[dict[str, Any]]) -> str:
        asked.append(len(asked) % 3 == 0)
        return "The tool probably works." if asked[-1] else copy_first_example(messages)

    model = serve(every_third_is_prose)
    result = _replay(bfcl_store_path, tmp_path, f"experience:{model.spec}", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    unusable = sum(asked)
    assert summary["synthetic_failures"] == {NO_JSON: unusable} and unusable > 0
    assert summary["synthetic_branches"] == summary["branches"] == len(model.requests) - unusable > 0
    assert "error" not in result.stderr

    asked.clear()
    table = _replay(bfcl_store_path, tmp_path, f"experience:{model.spec}", "--again")
    assert table.exit_code == 0, table.output
    unusable = sum(asked)
    text = " ".join(table.stdout.split())
    assert f"predictions unusable (not stored) {unusable}" in text and f"unusable predictions: {unusable} alternative(s)" in text


def test_a_real_sandbox_s_summary_has_no_experience_rows(bfcl_store_path: Path, tmp_path: Path) -> None:
    result = _replay(bfcl_store_path, tmp_path, "bfcl")
    assert result.exit_code == 0, result.output
    assert "branches stored" in result.stdout and "experience model" not in result.stdout and "unusable" not in result.stdout
    summary = json.loads(_replay(bfcl_store_path, tmp_path, "bfcl", "--again", "--json").stdout)
    assert summary["synthetic_branches"] == 0 and summary["synthetic_failures"] == {}
