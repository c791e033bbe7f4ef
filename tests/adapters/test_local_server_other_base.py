"""The local server refuses, at ``POST /v1/load_lora_adapter``, an adapter trained on another base of the same shapes
(400 naming both models), as ``ee adapters promote`` does before it asks a server; a copy of the served base counts as
that base (the same comparison: ``same_base``). Against a real local server on a tiny random Llama.

Before: it answered ``200 Success`` and served the adapter on a model it was never trained on."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from ee_middleware.adapters.errors import AdapterLoadError
from ee_middleware.adapters.serving.backend import LocalBackend

from .conftest import CORPUS, SMOLLM2_TEMPLATE, train_shaped_adapter


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny random Llama of the same shapes and tokenizer as ``tiny_base``, with other weights."""
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    tokenizer = build_test_tokenizer(CORPUS, chat_template=SMOLLM2_TEMPLATE)
    return save_tiny_llama(tmp_path_factory.mktemp("other-base"), tokenizer, seed=7)


def _load(server: Any, name: str, path: Path) -> httpx.Response:
    return httpx.post(f"{server.url}/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60)


def _listed(server: Any) -> list[str]:
    return [entry["id"] for entry in httpx.get(f"{server.url}/models", timeout=30).json()["data"]]


def test_an_adapter_trained_on_another_base_is_refused_naming_both(
    local_server: Any, tiny_base: Path, other_base: Path, tmp_path: Path
) -> None:
    adapter = train_shaped_adapter(other_base, tmp_path / "for-other", seed=5)
    answer = _load(local_server, "for-other", adapter)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert str(other_base) in message and str(tiny_base.resolve()) in message and "--base" in message, message
    assert "for-other" not in _listed(local_server)
    backend = LocalBackend(local_server.url)
    try:
        with pytest.raises(AdapterLoadError, match="was trained on base model"):
            backend.load("for-other-2", str(adapter))
    finally:
        backend.close()


def test_an_adapter_trained_on_a_copy_of_the_served_base_is_loaded(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_base, tmp_path / "copy-of-base"))
    adapter = train_shaped_adapter(copy, tmp_path / "for-copy", seed=6)
    answer = _load(local_server, "for-copy", adapter)
    try:
        assert answer.status_code == 200, answer.text
        assert "for-copy" in _listed(local_server)
    finally:
        httpx.post(f"{local_server.url}/unload_lora_adapter", json={"lora_name": "for-copy"}, timeout=60)
