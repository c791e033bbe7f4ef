"""A missing model folder's error shows the form the flag takes: a plain path for --base, local:PATH in a model spec.

It suggested 'local:/models/smollm2' for every caller, and `--base local:DIR` is then refused ("No model folder at
CWD/local:DIR"): --base takes the folder itself. Followed as written for --base, the hint must load the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

pytest.importorskip("torch")
pytest.importorskip("transformers")

from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, save_tiny_llama
from ee_middleware.trainers.datasets.split import HELDOUT, SPLIT_METADATA_KEY
from tests.trainers.training.conftest import FOLDERS, build_tokenizer, il_row, write_dataset


def _likelihood(data: Path, base: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", "likelihood", "--data", str(data), "--base", base, "--no-progress", "--json"])
    return result.exit_code, " ".join(result.stderr.split())


def test_the_missing_base_hint_gives_the_plain_folder_form_and_it_loads(tmp_path: Path) -> None:
    import polars as pl

    data = tmp_path / "data"
    train_file = write_dataset(data, "il", [il_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(2)])
    (data / "heldout").mkdir()
    pl.read_parquet(train_file).write_parquet(data / "heldout" / "il.parquet", metadata={SPLIT_METADATA_KEY: HELDOUT})
    model = tmp_path / "models" / "tiny"

    code, message = _likelihood(data, str(model))
    assert code == 1 and f"No model folder at {model}" in message, message
    example = re.search(r"--base ([^\s,)]+)", message)
    assert example is not None and not example.group(1).startswith("local:"), message
    assert "model spec takes it after local:" in message, "the spec form is still named, for the flags that take a spec"

    save_tiny_llama(model, build_tokenizer(TOOL_CHAT_TEMPLATE))
    code, message = _likelihood(data, example.group(1).replace("/models/smollm2", str(model)))
    assert code == 0, message
