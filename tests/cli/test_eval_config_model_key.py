"""``ee eval run --config``: an [eval] table written as the flags --endpoint URL --model NAME are written (an
``endpoint`` key, a served model's bare name as ``model``) is told the one key they make: model = "openai:URL#NAME"."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app

URL = "http://127.0.0.1:8000/v1"


def _run(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", "run", "--config", str(config), "--no-progress"])
    return result.exit_code, " ".join(result.stderr.split())


def test_an_endpoint_key_names_the_model_key_the_flags_make(tmp_path: Path) -> None:
    """Before: "endpoint: Extra inputs are not permitted" with no hint, beside "timeout: ... (did you mean timeout_s?)"
    (found by sweep s19)."""
    config = tmp_path / "eval.toml"
    config.write_text(f'[eval]\nsuites = ["bfcl:simple:1"]\nendpoint = "{URL}"\nmodel = "base"\nout = "{tmp_path / "run"}"\ntimeout = 30\n')
    code, message = _run(config)
    assert code == 1, message
    assert (
        f'endpoint: not an [eval] key: --endpoint URL with --model NAME is model = "openai:URL#NAME", here model = "openai:{URL}#base"'
        in message
    )
    assert "(did you mean timeout_s?)" in message and not (tmp_path / "run").exists()


def test_a_served_models_bare_name_as_model_is_told_the_spec_it_needs(tmp_path: Path) -> None:
    """Before: only "Unknown model client 'base' (it matches none of the accepted forms)", which does not say that the
    --model flag's served name becomes model = "openai:URL#NAME" in the file."""
    config = tmp_path / "eval.toml"
    config.write_text(f'[eval]\nsuites = ["bfcl:simple:1"]\nmodel = "base"\nout = "{tmp_path / "run"}"\n')
    code, message = _run(config)
    assert code == 1, message
    assert "Unknown model client 'base'" in message, message  # what it said, kept
    assert f"[eval] table of {config}" in message and 'model = "openai:URL#base"' in message, message
    assert not (tmp_path / "run").exists()
    flagged = CliRunner().invoke(app, ["eval", "run", "--config", str(config), "--model-spec", "nope", "--no-progress"])
    assert flagged.exit_code == 1 and "[eval] table" not in " ".join(flagged.stderr.split())  # a flag's spec: no file to fix
