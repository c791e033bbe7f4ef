"""The local generator (and the local server and teacher built on it) refuses a model folder whose tokenizer can produce
token ids past the model's embedding table, naming both sizes and the fix, instead of an IndexError mid-answer. Tiny
random models built here (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ModelLoadError
from ee_middleware.models import LocalGenerator, Sampling

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ee_middleware.testing.tiny_models import build_test_tokenizer, build_tiny_llama  # noqa: E402

CORPUS = ["Are apples in stock? check_stock order_item item quantity", "You may call these tools: system user assistant tool"] * 3
STATE = [{"role": "user", "content": "Are apples in stock?"}]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_test_tokenizer(CORPUS)


def test_a_tokenizer_with_tokens_the_model_has_no_rows_for_is_refused_on_load(tokenizer: Any, tmp_path: Path) -> None:
    model = build_tiny_llama(tokenizer)
    rows = len(tokenizer)
    grown = build_test_tokenizer(CORPUS)
    grown.add_tokens(["<apple>", "<pear>"])
    model.save_pretrained(tmp_path)
    grown.save_pretrained(tmp_path)
    generator = LocalGenerator(tmp_path)
    with pytest.raises(ModelLoadError) as caught:  # was IndexError: index out of range in self, from the model's forward pass
        generator.complete([{"role": "user", "content": "Are <apple> in stock?"}], sampling=Sampling(temperature=0.0, max_tokens=4))
    message = str(caught.value)
    assert f"The tokenizer in {tmp_path} has {rows + 2} token ids" in message
    assert f"only {rows} rows (vocab_size in config.json)" in message and "last 2 tokens" in message
    assert "model.resize_token_embeddings(len(tokenizer))" in message


def test_a_table_padded_past_the_tokenizer_generates(tokenizer: Any, tmp_path: Path) -> None:
    model = build_tiny_llama(tokenizer)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    assert model.get_input_embeddings().num_embeddings > len(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    [choice] = LocalGenerator(tmp_path).complete(STATE, sampling=Sampling(temperature=0.0, max_tokens=4))
    assert choice.finish_reason in ("stop", "length")
