"""A GGUF base is dequantized once into the user's cache, shared by every training run, not once per output folder's
parent (sweep rtrain finding 5): was, ``<output_dir>/../base-models``, so runs/2026-11-22/adapter and
runs/2026-11-23/adapter each converted the file again (517 MB for SmolLM2-135M) and their adapters named different base
folders, which the registry then refused to register under one app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.trainers.training import TrainConfig, train
from ee_middleware.trainers.training import model as base_model


@pytest.fixture
def converted(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A GGUF "conversion" that loads the tiny Llama (the test's GGUF holds metadata only); the files it converted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    real = base_model._load
    calls: list[str] = []

    def load(folder: Path, **kwargs: Any) -> Any:
        if kwargs.get("gguf_file") is None:
            return real(folder, **kwargs)
        calls.append(kwargs["gguf_file"])
        return AutoTokenizer.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    monkeypatch.setattr(base_model, "_load", load)
    return calls


def _run(gguf: Path, data: Path, out: Path, **overrides: Any) -> Any:
    values = {"base_model": str(gguf), "data": data, "output_dir": out, "max_steps": 1, "batch_size": 2, "max_length": 256}
    return train(TrainConfig(**values, backend="peft-loop", **overrides), progress=False)


def test_runs_into_different_folders_share_one_conversion_in_the_users_cache(
    converted: list[str], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ee_middleware.testing.tiny_models import save_metadata_gguf

    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "models").mkdir()
    gguf = save_metadata_gguf(tmp_path / "models" / "m.gguf", context_length=1024)
    first = _run(gguf, data_dir, tmp_path / "runs" / "2026-11-22" / "adapter").manifest["base_model"]
    second = _run(gguf, data_dir, tmp_path / "runs" / "2026-11-23" / "adapter").manifest["base_model"]
    assert converted == ["m.gguf"], "converted once"
    assert first["path"] == second["path"] and Path(first["path"]).parent == tmp_path / "cache" / "base-models"
    assert (first["cached_now"], second["cached_now"]) == (True, False)
    assert not list((tmp_path / "runs").glob("*/base-models")), "no copy beside the runs"

    mine = _run(gguf, data_dir, tmp_path / "runs" / "mine", base_cache_dir=tmp_path / "own-cache").manifest["base_model"]
    assert Path(mine["path"]).parent == tmp_path / "own-cache", "base_cache_dir still picks the folder"


def test_the_default_cache_is_the_one_ee_serve_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.adapters.templates import cache_folder

    monkeypatch.delenv("EE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base_model.default_base_cache() == cache_folder().resolve() / "base-models" == tmp_path / "xdg" / "ee-middleware" / "base-models"
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "ee"))
    assert base_model.default_base_cache() == cache_folder().resolve() / "base-models" == tmp_path / "ee" / "base-models"
