"""A base model folder without its weights, a shard its index lists, or any tokenizer file is refused by the start-up
check (``check_base``, which ``ee improve`` runs before a run starts): such a folder (a partial copy or download) passed
it, and the run failed in its train stage after selecting, replaying and building datasets (a sweep), its settings then
fixed for the run, so that pointing base_model at a mended folder needed --new-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.trainers.training import BaseModelError
from ee_middleware.trainers.training.model import check_base
from tests.jobs.test_config import _base_folder, _improve_file


def _whole(tmp_path: Path) -> Path:
    return _base_folder(tmp_path)  # config.json, a chat template, model.safetensors, tokenizer.model


def test_a_folder_without_weights_is_refused_naming_them(tmp_path: Path) -> None:
    base = _whole(tmp_path)
    check_base(str(base))
    (base / "model.safetensors").unlink()
    with pytest.raises(BaseModelError, match=r"has no model weights \(model.safetensors or pytorch_model.bin"):
        check_base(str(base))
    (base / "pytorch_model.bin").write_bytes(b"")
    check_base(str(base))


def test_a_shard_the_index_lists_that_is_missing_is_named(tmp_path: Path) -> None:
    base = _whole(tmp_path)
    (base / "model.safetensors").unlink()
    shards = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    (base / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(BaseModelError, match=r"lacks 1 of the 2 weight shards model.safetensors.index.json lists \(model-00002-of-00002"):
        check_base(str(base))
    (base / "model-00002-of-00002.safetensors").write_bytes(b"")
    check_base(str(base))


@pytest.mark.parametrize("tokenizer", ["tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "cl100k.tiktoken"])
def test_a_folder_without_tokenizer_files_is_refused_and_any_kind_of_tokenizer_is_taken(tmp_path: Path, tokenizer: str) -> None:
    base = _whole(tmp_path)
    (base / "tokenizer.model").unlink()
    with pytest.raises(BaseModelError, match=r"has no tokenizer files .*tokenizer.save_pretrained\(DIR\)"):
        check_base(str(base))
    (base / tokenizer).write_text("{}" if tokenizer.endswith(".json") else "")
    check_base(str(base))


def test_ee_improve_refuses_it_before_a_run_starts(tmp_path: Path) -> None:
    from ee_middleware.jobs.config import ImproveConfig

    base = _whole(tmp_path)
    (base / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"base_model in \[improve\] \(or --base-model\): .*has no model weights"):
        ImproveConfig.load(_improve_file(tmp_path, base)).check()
