"""A server that has no runtime LoRA API (vLLM started without VLLM_ALLOW_RUNTIME_LORA_UPDATING, any plain OpenAI
server) answers ``POST /v1/load_lora_adapter`` with a route's 404 (FastAPI's ``{"detail": "Not Found"}``): that is told
apart from vLLM's 404 for an adapter folder it cannot see (``No adapter found for PATH``).

Before: every 404 became AdapterPathNotFoundError, "cannot find the adapter folder ... put the registry on storage every
replica mounts at the same path", whatever the server had said."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.adapters.errors import AdapterPathNotFoundError, PromotionError, ServerSetupError, ServerUnavailableError
from ee_middleware.adapters.promote import promote
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import VLLMBackend
from ee_middleware.testing import ScriptedChatServer
from ee_middleware.testing.http import serving

from .helpers import StandInVLLM, write_adapter


def test_a_server_without_the_load_route_is_said_to_lack_the_runtime_lora_api(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "adapter")
    with ScriptedChatServer(["OK"], models=["base"]) as plain:  # any other path: FastAPI's 404 {"detail": "Not Found"}
        backend = VLLMBackend(plain.base_url, timeout_s=5)
        try:
            with pytest.raises(ServerSetupError) as caught:
                backend.load("bot-v1", str(adapter))
        finally:
            backend.close()
    message = str(caught.value)
    assert not isinstance(caught.value, (AdapterPathNotFoundError, ServerUnavailableError)), "the server answered: its setup lacks the API"
    assert "no runtime LoRA API" in message and "Not Found" in message, message
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in message and "--enable-lora" in message and "ee serve vllm" in message
    assert "shared" not in message and "same path" not in message and "cannot find the adapter folder" not in message


def test_vllms_404_for_a_folder_it_cannot_see_is_still_a_missing_path(tmp_path: Path) -> None:
    server = StandInVLLM()  # answers as vLLM does: 404 "Loading lora NAME failed: No adapter found for PATH"
    with serving(server) as url:
        backend = VLLMBackend(url, timeout_s=5)
        try:
            with pytest.raises(AdapterPathNotFoundError, match="cannot find the adapter folder"):
                backend.load("bot-v1", str(tmp_path / "nowhere"))
        finally:
            backend.close()


def test_a_promote_into_a_replica_without_the_api_leaves_the_adapter_a_candidate_and_says_why(tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    name = registry.register(write_adapter(tmp_path / "src"), "bot").name
    good = StandInVLLM()
    with serving(good) as url, ScriptedChatServer(["OK"], models=["base"]) as plain:
        replicas = [VLLMBackend(url, timeout_s=5), VLLMBackend(plain.base_url, timeout_s=5)]
        try:
            with pytest.raises(PromotionError, match="stays a candidate") as caught:
                promote(registry, name, replicas)
        finally:
            for replica in replicas:
                replica.close()
    assert isinstance(caught.value.__cause__, ServerSetupError)
    assert "Promote it again once that replica is started as said" in str(caught.value), "not: when every replica answers"
    assert "no runtime LoRA API" in str(caught.value) and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in str(caught.value)
    assert name not in good.loaded, "unloaded again from the replica that had loaded it"
    assert registry.get(name).status == "candidate" and registry.resolve("bot") is None
