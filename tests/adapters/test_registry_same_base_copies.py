"""An app's adapters trained on two copies of one base model (one GGUF file dequantized into two cache folders: ``ee train``'s
user cache and ``ee improve``'s ``RUNS/base-models``; a base copied to another disk) are on one base: registering and
promoting the second was refused with BaseModelMismatchError, the folders' names compared, not the models (review R15
M2). Copies of other weights stay refused. Real registry folders; the bases are tiny model folders written here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ee_middleware.adapters.errors import BaseModelMismatchError
from ee_middleware.adapters.registry import LocalAdapterRegistry
from tests.adapters.helpers import write_adapter


def _base(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_adapters_on_two_copies_of_one_base_are_one_apps(tmp_path: Path) -> None:
    first = _base(tmp_path / "cache-a" / "base-models" / "smol-1f2e", b"\x01" * 4096)
    copy = tmp_path / "runs" / "base-models" / "smol-1f2e"
    shutil.copytree(first, copy)
    other = _base(tmp_path / "elsewhere" / "smol-1f2e", b"\x02" * 4096)
    registry = LocalAdapterRegistry(tmp_path / "registry")
    v1 = registry.register(write_adapter(tmp_path / "a1", base=str(first), seed=1), "app")
    registry.switch_live(v1.name, by="test")
    v2 = registry.register(write_adapter(tmp_path / "a2", base=str(copy), seed=2), "app")
    assert v2.version == 2
    with pytest.raises(BaseModelMismatchError, match="was trained on base model"):
        registry.register(write_adapter(tmp_path / "a3", base=str(other), seed=3), "app")
