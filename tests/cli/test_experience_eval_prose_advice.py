"""``ee experience eval`` of a model that writes prose until ``max_tokens``: its answers, cut off before any JSON object
began, get the model advice beside the max_tokens advice. Was: only "raise max_tokens", which does not help a model
that writes prose at any limit (the README: such answers "get the model advice too").

The model is a scripted stand-in behind a real local HTTP server that answers prose stopped at max_tokens
(``finish_reason`` ``"length"``), as an untrained model does; the store holds real BFCL expert trajectories.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.sandboxes.experience import CUT_BEFORE_JSON
from ee_middleware.testing.http import serving
from tests.replay.test_experience import chat_handler

PROSE = "The tool would most likely list the files of the folder, which in a project like this one are the"
MODEL_ADVICE = "It must answer one JSON object with an 'observation' field"


@contextmanager
def _prose_model(finish_reason: str) -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), chat_handler(lambda _body: (PROSE, finish_reason)))) as url:
        yield f"openai:{url}#em"


def _eval(spec: str, store: Path, out: Path, *more: str):
    args = ["experience", "eval", "--model", spec, "--store", str(store), "--out", str(out), "--held-out", "0.34", "--max-tokens", "32"]
    return CliRunner().invoke(app, [*args, *more], env={"COLUMNS": "400"})


def test_answers_cut_off_before_any_json_get_the_model_advice_too_fake_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    with _prose_model("length") as spec:
        table = _eval(spec, bfcl_store_path, tmp_path / "table")
        as_json = _eval(spec, bfcl_store_path, tmp_path / "json", "--json")
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert f"{CUT_BEFORE_JSON} (finish_reason 'length'; raise max_tokens, now 32" in text, "the max_tokens advice stays"
    assert MODEL_ADVICE in text and "prose runs to any max_tokens" in text, text
    assert "--max-tokens (now 32)" in text, text

    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    [advice] = report["advice"]
    assert MODEL_ADVICE in advice and "--max-tokens (now 32)" in advice, advice
    assert json.loads((tmp_path / "json" / "report.json").read_text())["advice"] == report["advice"], "report.json keeps it"


def test_answers_cut_off_inside_their_json_get_no_model_advice_fake_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """More tokens are the fix for an answer on its way to the object: the model may be fine."""
    cut_inside = '{"reasoning": "ls lists the folder", "observation": "{\\"current_directory_content\\": [\\"rep'
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), chat_handler(lambda _body: (cut_inside, "length")))) as url:
        result = _eval(f"openai:{url}#em", bfcl_store_path, tmp_path / "inside", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["advice"] == [] and MODEL_ADVICE not in result.stdout
