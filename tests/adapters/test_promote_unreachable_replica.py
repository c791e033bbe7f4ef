"""A promote into a replica that cannot be reached says that alone: no setup notes blaming the server first ("does not
say which base model it serves", "did not record its --max-lora-rank ... not started by ee serve vllm or ee serve
local", false for a local server that was simply stopped), and nothing is loaded on the replicas that answer.

The replicas are real HTTP servers (vLLM's runtime LoRA API stand-in); the one that is down is a port nobody listens on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.errors import PromotionError, ServerUnavailableError
from ee_middleware.adapters.promote import promote
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.launch import free_port

from .helpers import WebServerPage, good_and_down_replicas, write_adapter


def test_a_promote_into_a_replica_that_is_down_says_only_that(tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    name = registry.register(write_adapter(tmp_path / "src"), "bot").name
    said: list[str] = []
    with good_and_down_replicas() as (good, replicas), pytest.raises(PromotionError, match="Connection refused") as caught:
        promote(registry, name, replicas, progress=said.append)
    assert isinstance(caught.value.__cause__, ServerUnavailableError)
    assert said == [], said
    assert good.loaded == {} and not any(r.startswith("POST") for r in good.requests), good.requests
    assert registry.get(name).status == "candidate" and registry.resolve("bot") is None


def test_ee_adapters_promote_into_a_stopped_server_prints_the_connection_error_alone(tmp_path: Path) -> None:
    from ee_middleware.cli.app import app

    registry = LocalAdapterRegistry(tmp_path / "reg")
    name = registry.register(write_adapter(tmp_path / "src"), "bot").name
    down = f"http://127.0.0.1:{free_port()}/v1"
    result = CliRunner().invoke(app, ["adapters", "promote", name, "-r", str(registry.root), "--server", down, "--backend", "local"])
    assert result.exit_code == 1, result.output
    assert "note:" not in result.output and "--max-lora-rank" not in result.output, result.output
    assert "does not say which base model" not in result.output, result.output
    assert result.stderr.lstrip().startswith("error: Promoting") and "Connection refused" in result.stderr, result.stderr


def test_a_local_server_that_does_not_answer_is_told_to_be_started_as_one(tmp_path: Path) -> None:
    """A local server (its state file says so) that stopped answering, promoted into with the default ``--backend vllm``:
    the error said to start `ee serve vllm`. Now the kind the server recorded picks the advice."""
    import os

    from ee_middleware.adapters.serving.backend import VLLMBackend
    from ee_middleware.adapters.serving.rendering import record_server
    from ee_middleware.adapters.templates import AS_IS, ServedTemplate

    down = f"http://127.0.0.1:{free_port()}/v1"
    template = ServedTemplate("own", None, AS_IS)
    record_server(down, pid=os.getpid(), base="/b", served_model_name="base", template=template, renderer="local")
    registry = LocalAdapterRegistry(tmp_path / "reg")
    name = registry.register(write_adapter(tmp_path / "src"), "bot").name
    backend = VLLMBackend(down, timeout_s=2)
    try:
        with pytest.raises(PromotionError) as caught:
            promote(registry, name, [backend])
    finally:
        backend.close()
    message = str(caught.value)
    assert "the local server (ee serve local)" in message and "Start one with `ee serve local --base DIR`" in message, message
    assert "ee serve vllm" not in message, message


def test_a_replica_answering_with_a_proxys_page_is_named_in_sentences(tmp_path: Path) -> None:
    """A real HTTP server answering /v1/models with a web server's page (HTTP 200): the reason and the advice after it read as
    sentences (was: "... a proxy or web server answered at this URL Start one with `ee serve local` ...", sweep S1)."""
    from http.server import ThreadingHTTPServer

    from ee_middleware.adapters.serving.backend import LocalBackend
    from ee_middleware.testing.http import serving

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), WebServerPage)
    proxy.daemon_threads = True
    with serving(proxy) as url, pytest.raises(ServerUnavailableError) as caught:
        LocalBackend(url, timeout_s=5).list()
    text = str(caught.value)
    assert "a proxy or web server answered at this URL" in text and "Start one with `ee serve local" in text, text
    assert " URL Start" not in text and ". Start one with" in text, text
