"""``ee improve``'s start-up base check (``check_base``, from the files, no weights read) refuses a tokenizer that
reaches past the model's embedding table only when it is sure: ``vocab_size`` in config.json is not the table's size
for every architecture. Mllama builds ``text_config.vocab_size + 8`` rows, and Llama-3.2-Vision's ``<|image|>`` token is
id 128256, its ``vocab_size``: such a base loads and trains, and was refused at start-up ("only 300 rows").

A tiny random Mllama built here (nothing downloaded), the real check, the real ImproveConfig and the real loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.trainers.training import BaseModelError
from ee_middleware.trainers.training.model import check_base

transformers = pytest.importorskip("transformers")

from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, build_test_tokenizer  # noqa: E402


def _tiny_mllama(folder: Path, extra_tokens: list[str]) -> tuple[int, int, int]:
    """A tiny Mllama saved in ``folder`` with its tokenizer plus ``extra_tokens``; (vocab_size, table rows, token ids)."""
    tokenizer = build_test_tokenizer([TOOL_CHAT_TEMPLATE, "hello world files folders notes"] * 5, vocab_size=300)
    size = len(tokenizer)
    text = {
        "vocab_size": size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "cross_attention_layers": [1],
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_global_layers": 1,
        "attention_heads": 4,
        "image_size": 28,
        "patch_size": 14,
        "vision_output_dim": 64,
        "intermediate_layers_indices": [0],
    }
    config = transformers.MllamaConfig(text_config=text, vision_config=vision, image_token_index=size)
    model = transformers.MllamaForConditionalGeneration(config)
    tokenizer.add_tokens(extra_tokens, special_tokens=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return size, model.get_input_embeddings().num_embeddings, len(tokenizer)


def _improve_file(tmp_path: Path, base: Path) -> Path:
    from ee_middleware.store import LocalExperienceStore

    LocalExperienceStore(tmp_path / "s").close()
    path = tmp_path / "improve.toml"
    path.write_text(
        f'[improve]\nstore = "{tmp_path / "s"}"\napp = "shop"\nregistry = "{tmp_path / "r"}"\nruns = "{tmp_path / "runs"}"\n'
        f'base_model = "{base}"\n'
    )
    return path


def test_a_base_whose_table_is_bigger_than_vocab_size_passes_the_start_up_check(tmp_path: Path) -> None:
    """The image token is id vocab_size, as Llama-3.2-Vision's <|image|> is 128256: a row Mllama's table has."""
    from ee_middleware.jobs.config import ImproveConfig
    from ee_middleware.models.local import load_pretrained

    base = tmp_path / "mllama"
    written, rows, tokens = _tiny_mllama(base, ["<|image|>"])
    assert (rows, tokens) == (written + 8, written + 1)

    _, model = load_pretrained(base)  # the load-time check measures the real table: it accepts the base
    assert model.get_input_embeddings().num_embeddings == rows
    assert check_base(str(base)).folder == base.resolve()
    ImproveConfig.load(_improve_file(tmp_path, base)).check()


def test_a_tokenizer_past_the_built_table_is_still_refused_at_start_up_naming_its_rows(tmp_path: Path) -> None:
    base = tmp_path / "mllama"
    written, rows, tokens = _tiny_mllama(base, [f"<extra_{i}>" for i in range(12)])
    assert tokens == written + 12 > rows == written + 8

    with pytest.raises(BaseModelError) as caught:
        check_base(str(base))
    message = str(caught.value)
    assert f"has {tokens} token ids" in message and f"only {rows} rows (built from {base.resolve() / 'config.json'})" in message, message
    assert "last 4 tokens" in message and "model.resize_token_embeddings(len(tokenizer))" in message


def test_a_base_transformers_cannot_build_from_its_config_is_judged_by_vocab_size_from_its_files(tmp_path: Any) -> None:
    """No table to measure (an architecture this transformers does not know, or custom code, which the check never
    runs): the start-up check judges by vocab_size, from the files (tests/trainers/training/
    test_check_base_custom_code.py has the custom-code case)."""
    base = tmp_path / "custom"
    written, _, tokens = _tiny_mllama(base, ["<|image|>"])
    config = (base / "config.json").read_text()
    (base / "config.json").write_text(config.replace('"model_type": "mllama"', '"model_type": "not_a_known_architecture"', 1))

    with pytest.raises(BaseModelError, match=rf"has {tokens} token ids.*only {written} rows \(vocab_size in "):
        check_base(str(base))
