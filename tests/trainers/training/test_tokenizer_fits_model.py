"""A base whose tokenizer can produce token ids past the model's embedding table is refused before training, naming both
sizes and the fix; a table with more rows than the tokenizer has tokens (padded, as many real models are) trains.

Tiny random models built here (nothing downloaded). Before the check, such a base died in the first forward pass with
"unexpected IndexError: index out of range in self (a bug in ee-middleware ...)"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.trainers.training import BaseModelError, TrainConfig, train

from .conftest import FILE_TOOLS, FOLDERS, build_tokenizer

torch = pytest.importorskip("torch")

from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, build_test_tokenizer, build_tiny_llama  # noqa: E402


def _train_one_step(base: Path, data: Path, out: Path, backend: str = "trl") -> Any:
    return train(TrainConfig(base_model=str(base), data=data, output_dir=out, max_steps=1, max_length=512, backend=backend), progress=False)


def _sibling_tokenizer() -> Any:
    """A tokenizer of the same family trained on more text, so it has more tokens (as a larger sibling model's has)."""
    corpus = [TOOL_CHAT_TEMPLATE, json.dumps(FILE_TOOLS), "You manage files. Go into and show notes.txt", *FOLDERS] * 3
    more = ["abcdefghijklmnopqrstuvwxyz " * 40, "0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ", "القاهرة שלום 東京 café crème"]
    return build_test_tokenizer(corpus + more * 10, vocab_size=900)


@pytest.mark.parametrize("backend", ["trl", "peft-loop"])
def test_a_tokenizer_from_a_larger_sibling_model_is_refused_naming_both_sizes(
    tool_tokenizer: Any, data_dir: Path, tmp_path: Path, backend: str
) -> None:
    big = _sibling_tokenizer()
    rows = len(tool_tokenizer)
    assert len(big) > rows
    base = tmp_path / "base"
    build_tiny_llama(tool_tokenizer).save_pretrained(base)
    big.save_pretrained(base)
    with pytest.raises(BaseModelError) as caught:
        _train_one_step(base, data_dir, tmp_path / "out", backend)
    message = str(caught.value)
    assert f"has {len(big)} token ids (0 to {len(big) - 1})" in message
    assert f"input embeddings have only {rows} rows (vocab_size in config.json)" in message
    assert "model's own tokenizer files" in message and "model.resize_token_embeddings(len(tokenizer))" in message
    assert str(base) in message
    assert not (tmp_path / "out").exists()


def test_tokens_added_without_resizing_are_refused_and_train_once_the_embeddings_are_resized(data_dir: Path, tmp_path: Path) -> None:
    tokenizer = build_tokenizer(TOOL_CHAT_TEMPLATE)
    model = build_tiny_llama(tokenizer)
    rows = len(tokenizer)
    tokenizer.add_tokens(["<file>", "</file>", "<folder>"])
    base = tmp_path / "added"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    with pytest.raises(BaseModelError, match=rf"has {rows + 3} token ids .* only {rows} rows .*last 3 tokens"):
        _train_one_step(base, data_dir, tmp_path / "refused")

    model.resize_token_embeddings(len(tokenizer))  # the fix the message names
    model.save_pretrained(base)
    assert _train_one_step(base, data_dir, tmp_path / "resized").metrics["steps"] == 1


def test_an_embedding_table_padded_past_the_tokenizer_trains(tool_tokenizer: Any, data_dir: Path, tmp_path: Path) -> None:
    """Qwen2.5's tokenizer has 151,665 tokens and its table 151,936 rows: more rows than tokens is fine."""
    model = build_tiny_llama(tool_tokenizer)
    model.resize_token_embeddings(len(tool_tokenizer), pad_to_multiple_of=64)
    rows = model.get_input_embeddings().num_embeddings
    assert rows > len(tool_tokenizer)
    base = tmp_path / "padded"
    model.save_pretrained(base)
    tool_tokenizer.save_pretrained(base)
    assert _train_one_step(base, data_dir, tmp_path / "out").metrics["steps"] == 1


def test_an_improve_job_refuses_the_base_from_its_files_before_a_run_starts(tool_tokenizer: Any, tmp_path: Path) -> None:
    """`ee improve` checks its base before hours of replay and dataset building: the mismatch is found there from
    config.json and tokenizer.json, without loading the model; a padded table passes."""
    from ee_middleware.errors import ConfigError
    from ee_middleware.jobs.config import ImproveConfig
    from ee_middleware.jobs.runs import RunsDir
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.trainers.training.model import check_base

    LocalExperienceStore(tmp_path / "s").close()
    big = _sibling_tokenizer()
    mismatched = tmp_path / "mismatched"
    build_tiny_llama(tool_tokenizer).save_pretrained(mismatched)
    big.save_pretrained(mismatched)
    padded = tmp_path / "padded"
    model = build_tiny_llama(tool_tokenizer)
    model.resize_token_embeddings(len(tool_tokenizer), pad_to_multiple_of=64)
    model.save_pretrained(padded)
    tool_tokenizer.save_pretrained(padded)

    def improve_file(base: Path) -> Path:
        path = tmp_path / "improve.toml"
        path.write_text(
            f'[improve]\nstore = "{tmp_path / "s"}"\napp = "shop"\nregistry = "{tmp_path / "r"}"\nruns = "{tmp_path / "runs"}"\n'
            f'base_model = "{base}"\n'
        )
        return path

    with pytest.raises(ConfigError) as caught:
        ImproveConfig.load(improve_file(mismatched)).check()
    message = str(caught.value)
    assert message.startswith("base_model in [improve] (or --base-model): The tokenizer in ")
    assert (
        f"has {len(big)} token ids" in message
        and f"only {len(tool_tokenizer)} rows (vocab_size in {mismatched / 'config.json'})" in message
    )
    assert "model.resize_token_embeddings(len(tokenizer))" in message
    assert RunsDir(tmp_path / "runs").list() == []
    with pytest.raises(BaseModelError, match=rf"has {len(big)} token ids"):
        check_base(str(mismatched))
    ImproveConfig.load(improve_file(padded)).check()
    assert check_base(str(padded)).folder == padded.resolve()
