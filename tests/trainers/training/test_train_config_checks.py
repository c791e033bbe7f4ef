"""Training settings refused or said clearly before anything loads (sweep rtrain findings 6 and 7): an infinite number,
``--data`` naming the dataset file, a base folder without tokenizer files; and the paths of a config as the manifest
records them (absolute, read from the working directory, also from a config file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.trainers.training import BaseModelError, TrainConfig, TrainDataError, train


@pytest.mark.parametrize("setting", ["epochs", "learning_rate", "lora_dropout", "iwm_share", "max_lost_context_share"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_number_that_is_not_finite_is_a_config_error(setting: str, value: float) -> None:
    """Was, for epochs = inf: accepted, then ``unexpected OverflowError: cannot convert float infinity to integer`` once the
    model had loaded; learning_rate = inf trained on nothing but NaNs."""
    with pytest.raises(ConfigError, match=rf"{setting}: Input should (be a finite number|be greater than)"):
        TrainConfig.load(None, base_model="m", **{setting: value})


def test_epochs_inf_in_a_toml_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text('[train]\nbase_model = "m"\nepochs = inf\n')
    with pytest.raises(ConfigError, match=r"epochs: Input should be a finite number"):
        TrainConfig.load(path)


def test_data_naming_the_dataset_file_says_the_folder_is_wanted(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """Was: 'No IL dataset at data/il.parquet/il.parquet ... Build the datasets there first (ee datasets build --out
    data/il.parquet)': a build into the path of a file."""
    with pytest.raises(TrainDataError) as caught:
        train(TrainConfig(base_model=str(tiny_model_dir), data=data_dir / "il.parquet", output_dir=tmp_path / "o"), progress=False)
    message = str(caught.value)
    assert (
        f"must be the folder that holds the dataset files (il.parquet and the others of the build), not a file: {data_dir / 'il.parquet'} is a file"
        in message
    )
    assert f"to {data_dir}, its folder." in message and "datasets build" not in message, message


def test_a_base_folder_without_tokenizer_files_says_so(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """Was: transformers' 'You need to have sentencepiece or tiktoken installed to convert a slow tokenizer', which sent the
    user off to install packages."""
    base = tmp_path / "weights-only"
    base.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy2(tiny_model_dir / name, base / name)
    with pytest.raises(BaseModelError, match=r"weights-only has no tokenizer files \(no tokenizer\.json, tokenizer_config\.json") as caught:
        train(TrainConfig(base_model=str(base), data=data_dir, output_dir=tmp_path / "o"), progress=False)
    assert "tokenizer.save_pretrained(DIR)" in str(caught.value) and "sentencepiece" not in str(caught.value)


def test_relative_paths_are_read_from_the_working_directory_and_kept_absolute(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths, given as flags or in a config file, are read from the working directory (as ee improve and every
    ee command read them), not from the file's folder, and kept absolute: the manifest's config block named base_model
    "models/llama" and output_dir "out/llama-il" as typed, which point nowhere from the adapter; an error showed
    "/tmp/rtrain/../data"."""
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, work / "models" / "base")
    shutil.copytree(data_dir, work / "data")
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "train.toml"
    path.write_text('[train]\nbase_model = "models/base"\ndata = "data"\noutput_dir = "out/il"\nbase_cache_dir = "../cache"\n')
    monkeypatch.chdir(work)
    config = TrainConfig.load(path, max_steps=1, batch_size=2, max_length=256, backend="peft-loop")
    assert (config.base_model, config.data, config.output_dir) == (str(work / "models" / "base"), work / "data", work / "out" / "il")
    assert config.base_cache_dir == tmp_path / "cache", "normalised: no '..' left"
    result = train(config, progress=False)
    written = json.loads((work / "out" / "il" / "manifest.json").read_text())["config"]
    assert written["base_model"] == str(work / "models" / "base") and written["output_dir"] == str(work / "out" / "il")
    assert written["data"] == str(work / "data") and written["base_cache_dir"] == str(tmp_path / "cache")
    assert result.adapter_dir == work / "out" / "il"


@pytest.mark.parametrize("backend", ["trl", "peft-loop"])
def test_gradient_checkpointing_gives_no_deprecation_warning(backend: str, tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """Was: transformers' FutureWarning '`gradient_checkpointing_enable` is deprecated' on every run with
    gradient_checkpointing = true (the LoRA wrapping called the old name; the trl arguments already used the new one)."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        config = TrainConfig(
            base_model=str(tiny_model_dir), data=data_dir, output_dir=tmp_path / "o", max_steps=1, batch_size=2, max_length=256
        )
        train(config.model_copy(update={"gradient_checkpointing": True, "backend": backend}), progress=False)
    said = [str(w.message) for w in seen if "checkpointing" in str(w.message)]
    assert not said, said
