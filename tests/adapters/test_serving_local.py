"""The serving conformance kit and promote/rollback against a REAL local server process (tiny random Llama)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from ee_middleware.adapters.errors import PromotionError, ServerRankError, ServerSetupError
from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.adapters.serving.local_server import _choice
from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.adapters.testing import check_prompt_parity, check_serving_backend
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import Sampling

from .conftest import SMOLLM2_TEMPLATE, train_shaped_adapter

MESSAGES = [{"role": "user", "content": "Where is order A-1001?"}]


def _answer(url: str, model: str) -> str:
    client = OpenAIChatClient(url, model, retries=0, api_key="")
    try:
        return client.complete(MESSAGES, sampling=Sampling(temperature=0, max_tokens=8))[0].raw
    finally:
        client.close()


def test_the_local_server_passes_the_serving_conformance_kit(local_server: Any, adapter_set: Any) -> None:
    check_serving_backend(LocalBackend(local_server.url), adapter_set, base_model="tiny-base")


def test_a_rank_pre_check_refuses_before_asking_the_server(local_server: Any, adapter_set: Any) -> None:
    backend = LocalBackend(local_server.url, max_lora_rank=8)
    with pytest.raises(ServerRankError, match="r=32, above the --max-lora-rank 8"):
        backend.load("never-sent", str(adapter_set.too_big))
    assert "never-sent" not in backend.list()


def test_a_damaged_adapter_is_refused_with_what_is_wrong_not_model_name_advice(local_server: Any, adapter_set: Any, tmp_path: Path) -> None:
    import shutil

    from ee_middleware.adapters.errors import AdapterLoadError

    damaged = Path(shutil.copytree(adapter_set.perturbed, tmp_path / "damaged"))
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterLoadError) as caught:
        LocalBackend(local_server.url).load("damaged-1", str(damaged))
    assert "HTTP 400" in str(caught.value) and "damaged or incomplete weights" in str(caught.value)
    assert "Check the model name" not in str(caught.value)


def test_chat_completions_take_n_seed_and_temperature(local_server: Any) -> None:
    body = {"model": "tiny-base", "messages": MESSAGES, "n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 6}
    first = httpx.post(f"{local_server.url}/chat/completions", json=body, timeout=60).json()
    again = httpx.post(f"{local_server.url}/chat/completions", json=body, timeout=60).json()
    assert len(first["choices"]) == 3 and [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert [c["message"] for c in first["choices"]] == [c["message"] for c in again["choices"]]
    assert first["usage"]["prompt_tokens"] > 0
    bad = httpx.post(f"{local_server.url}/chat/completions", json={**body, "n": 0}, timeout=60)
    assert bad.status_code == 400 and "n must be an integer" in bad.json()["error"]["message"]
    many = httpx.post(f"{local_server.url}/chat/completions", json={**body, "n": 100_000}, timeout=60)  # was: generated them all
    assert many.status_code == 400 and "n must be an integer from 1 to 128, got 100000" in many.json()["error"]["message"]
    missing = httpx.post(f"{local_server.url}/chat/completions", json={**body, "model": "nope"}, timeout=60)
    assert missing.status_code == 404


def test_tool_calls_written_by_the_model_come_back_as_tool_calls() -> None:
    tools = [{"type": "function", "function": {"name": "mv", "parameters": {"type": "object"}}}]
    text = 'Moving it.<tool_call>{"name": "mv", "arguments": {"source": "a"}}</tool_call>'
    choice = _choice(0, text, tools)
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Moving it."
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "mv", "arguments": '{"source": "a"}'} and call["type"] == "function"
    assert _choice(0, text, None)["message"] == {"role": "assistant", "content": text}


def test_the_served_prompt_is_the_trained_prompt_token_for_token(local_server: Any, tiny_base: Path) -> None:
    """The server (shipped smollm2-tools template) vs the trainer's renderer on SmolLM2's own template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert tokenizer.chat_template == SMOLLM2_TEMPLATE
    assert check_prompt_parity(local_server.url.removesuffix("/v1"), "tiny-base", tokenizer) == 3


def test_promote_switches_the_alias_and_rollback_restores_the_previous_answer(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    first = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=11), "bot")
    second = registry.register(train_shaped_adapter(tiny_base, tmp_path / "b", seed=12), "bot")
    replicas = [LocalBackend(local_server.url)]
    router = AliasRouter(registry, [local_server.url])
    server = make_router_server(router, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    routed = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        assert _answer(routed, "bot") == _answer(local_server.url, "tiny-base")  # no live adapter yet: the base
        promote(registry, first.name, replicas)
        first_answer = _answer(routed, "bot")
        assert first_answer == _answer(local_server.url, first.name)
        result = promote(registry, second.name, replicas)
        assert result.replaced == first.name and registry.resolve("bot") == second.name
        assert _answer(routed, "bot") == _answer(local_server.url, second.name) != first_answer
        back = rollback(registry, "bot", replicas)
        assert back.live.name == first.name and back.loaded_on == []  # it stayed loaded: only the alias moved
        assert _answer(routed, "bot") == first_answer
        listed = httpx.get(f"{routed}/models", timeout=10).json()["data"]
        assert all(isinstance(entry.pop("created"), int) for entry in listed)  # (as vLLM's model cards have)
        assert listed == [
            {"id": "bot", "object": "model", "owned_by": "ee-router", "live": first.name},
            {"id": "tiny-base", "object": "model", "owned_by": "ee-router"},
        ]
    finally:
        server.shutdown()
        server.server_close()
        for name in (first.name, second.name):
            replicas[0].unload(name)


def test_a_promote_that_fails_on_a_second_replica_unloads_it_from_the_first_and_keeps_it_a_candidate(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """The second replica answers but cannot load it for its own reason (no runtime LoRA API: a route's 404); one that is
    down is found before anything is loaded (tests/adapters/test_promote_unreachable_replica.py)."""
    from ee_middleware.testing import ScriptedChatServer

    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=21), "bot")
    good = LocalBackend(local_server.url)
    promote(registry, live.name, [good])
    candidate = registry.register(train_shaped_adapter(tiny_base, tmp_path / "b", seed=22), "bot")
    with ScriptedChatServer(["OK"], models=["tiny-base"]) as plain:
        other = LocalBackend(plain.base_url, timeout_s=5)
        with pytest.raises(PromotionError, match=r"It was unloaded from http\S+, where this promote had loaded it") as caught:
            promote(registry, candidate.name, [good, other])
        other.close()
    assert isinstance(caught.value.__cause__, ServerSetupError)
    assert candidate.name not in good.list()
    assert registry.get(candidate.name).status == "candidate", "a replica without the runtime LoRA API says nothing about the adapter"
    assert registry.resolve("bot") == live.name and registry.get(live.name).status == "live"
    events = registry.history(adapter=candidate.name)
    assert [e["action"] for e in events] == ["register", "promote-started", "promote-aborted"]
    assert "ServerSetupError" in events[-1]["reason"]
    good.unload(live.name)


def test_killing_the_server_during_a_promote_leaves_the_registry_consistent(tiny_base: Path, tmp_path: Path) -> None:
    from ee_middleware.adapters.serving.launch import ServerProcess, free_port, local_command

    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=31), "bot")
    candidate = registry.register(train_shaped_adapter(tiny_base, tmp_path / "b", seed=32), "bot")
    port = free_port()
    server = ServerProcess(
        local_command(str(tiny_base), port=port, served_model_name="tiny-base"),
        f"http://127.0.0.1:{port}/v1",
        name="doomed server",
        end_with_parent=True,
    )
    with server:
        backend = LocalBackend(server.url, timeout_s=10)
        promote(registry, live.name, [backend])

        class KilledDuringLoad(LocalBackend):
            def load(self, name: str, path: str) -> None:
                super().load(name, path)
                server.kill()  # the adapter is loaded, then the server dies before it is verified

        with pytest.raises(PromotionError) as caught:
            promote(registry, candidate.name, [KilledDuringLoad(server.url, timeout_s=10)])
        assert not server.running()
    assert "could not unload" in str(caught.value) or "unloaded" in str(caught.value)
    assert registry.resolve("bot") == live.name
    assert registry.get(candidate.name).status == "candidate" and registry.get(live.name).status == "live"
    assert json.loads((registry.root / "index.json").read_text())["apps"]["bot"]["live"] == live.name


def test_a_server_that_accepts_but_never_answers_gives_a_timeout_error() -> None:
    import socket

    from ee_middleware.adapters.errors import ServerTimeoutError

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        backend = LocalBackend(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", timeout_s=0.5)
        with pytest.raises(ServerTimeoutError, match=r"did not answer in 0.5 s"):
            backend.list()


def test_the_cli_promotes_rolls_back_and_retires_against_a_real_server(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    registry = LocalAdapterRegistry(tmp_path / "reg")
    first = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=41), "bot")
    second = registry.register(train_shaped_adapter(tiny_base, tmp_path / "b", seed=42), "bot")
    common = ["-r", str(registry.root), "--server", local_server.url, "--backend", "local", "--json"]
    runner = CliRunner()
    for name in (first.name, second.name):
        result = runner.invoke(app, ["adapters", "promote", name, *common])
        assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["replaced"] == first.name
    result = runner.invoke(app, ["adapters", "rollback", "bot", *common])
    assert result.exit_code == 0 and json.loads(result.stdout)["live"] == first.name
    result = runner.invoke(app, ["adapters", "retire", second.name, *common])
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "retired"
    assert second.name not in LocalBackend(local_server.url).list()
    refused = runner.invoke(app, ["adapters", "retire", first.name, *common])
    assert refused.exit_code == 1 and "live adapter of bot" in refused.output
    LocalBackend(local_server.url).unload(first.name)


def test_serve_vllm_prints_the_command_it_would_run() -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    result = CliRunner().invoke(
        app, ["serve", "vllm", "--base", "/models/smol", "--chat-template", "smollm2-tools", "--print-command", "--max-lora-rank", "8"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ")
    assert "serve /models/smol" in result.stdout and "--enable-lora --max-lora-rank 8" in result.stdout
    assert "smollm2-tools.jinja --enable-auto-tool-choice --tool-call-parser hermes" in result.stdout


def test_registry_names_with_dots_load_answer_and_unload(local_server: Any, adapter_set: Any) -> None:
    """Registry names come from app names such as bfcl.multi_turn_base; peft refuses dots in its own adapter names."""
    backend = LocalBackend(local_server.url)
    name = "bfcl.multi_turn_base-v1-3f2a9c1e"
    backend.load(name, str(adapter_set.perturbed))
    try:
        assert name in backend.list()
        backend.verify(name)
    finally:
        backend.unload(name)
    assert name not in backend.list()


def _events(response: httpx.Response) -> list[Any]:
    """The JSON payloads of a server-sent event stream (``"[DONE]"`` kept as the string)."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    events = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _assembled(events: list[Any]) -> list[dict[str, Any]]:
    """Each choice's message and finish reason put together from its deltas, as an OpenAI client does."""
    choices: dict[int, dict[str, Any]] = {}
    for event in events[:-1]:
        for part in event["choices"]:
            choice = choices.setdefault(part["index"], {"message": {}, "finish_reason": None})
            for key, value in part["delta"].items():
                if key == "tool_calls":
                    for call in value:
                        choice["message"].setdefault("tool_calls", []).append({k: v for k, v in call.items() if k != "index"})
                elif key == "content":
                    choice["message"]["content"] = (choice["message"].get("content") or "") + value
                else:
                    choice["message"][key] = value
            choice["finish_reason"] = part["finish_reason"] or choice["finish_reason"]
    return [choices[i] for i in sorted(choices)]


def test_a_streamed_answer_through_the_router_is_the_whole_answer_in_chunks(local_server: Any, tmp_path: Path) -> None:
    """stream=true through the router: the real local server's events relayed as they come, the same answer as without streaming."""
    from ee_middleware.adapters.serving.launch import free_port
    from ee_middleware.testing.http import serving

    registry = LocalAdapterRegistry(tmp_path / "reg")
    tools = [{"type": "function", "function": {"name": "mv", "parameters": {"type": "object"}}}]
    body = {"model": "tiny-base", "messages": MESSAGES, "n": 2, "temperature": 1.0, "seed": 3, "max_tokens": 12, "tools": tools}
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with serving(make_router_server(AliasRouter(registry, [down, local_server.url], retries=0), port=0)) as routed:
        whole = httpx.post(f"{routed}/chat/completions", json=body, timeout=60).json()
        for attempt in range(2):  # round robin: one of the two requests goes first to the replica that is down
            streamed = httpx.post(
                f"{routed}/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}, timeout=60
            )
            assert streamed.status_code == 200, streamed.text
            assert "chunked" in streamed.headers.get("transfer-encoding", "")
            events = _events(streamed)
            assert events[-1] == "[DONE]" and events[-2]["usage"] == whole["usage"] and events[-2]["choices"] == []
            assert {e["object"] for e in events[:-1]} == {"chat.completion.chunk"} and {e["model"] for e in events[:-1]} == {"tiny-base"}
            got = _assembled(events[:-1])
            want = [{"message": c["message"], "finish_reason": c["finish_reason"]} for c in whole["choices"]]
            for choice in got + want:  # tool call ids are made per answer
                for call in choice["message"].get("tool_calls") or []:
                    call["id"] = "-"
            assert [{**c, "message": {**c["message"], "content": c["message"].get("content") or None}} for c in got] == want, attempt
        refused = httpx.post(f"{routed}/chat/completions", json={**body, "model": "nope", "stream": True}, timeout=60)
        assert refused.status_code == 404 and "does not exist" in refused.json()["error"]["message"]


def test_a_replica_that_breaks_mid_stream_ends_the_stream_with_an_error_event_fake_replica() -> None:
    """The upstream is a real HTTP server that sends one event and then drops the connection (no real server fails on cue)."""
    from http.server import BaseHTTPRequestHandler

    class Breaking(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n', b'data: {"choices": [{"ind'):
                self.wfile.write(f"{len(piece):X}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            self.connection.shutdown(2)  # gone in the middle of an event, without the closing chunk

        def log_message(self, *args: Any) -> None:
            pass

    response = _streamed_through_router(Breaking)
    assert response.status_code == 200
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert json.loads(blocks[0].removeprefix("data: "))["choices"][0]["delta"] == {"content": "Hel"}, "what arrived was relayed"
    assert len(blocks) == 3 and response.text.count("data:") == 3, "the half event is not relayed"
    assert blocks[-1] == "data: [DONE]", "the stream ends as vLLM ends one"
    error = json.loads(blocks[-2].removeprefix("data: "))["error"]
    assert error["type"] == "BadGatewayError" and "broke after" in error["message"], "the error is an event of its own"


def test_a_compressed_stream_is_relayed_decoded_fake_replica() -> None:
    """A replica (behind a proxy) that gzips its event stream: the router sends plain events (it sets no Content-Encoding)."""
    import gzip
    from http.server import BaseHTTPRequestHandler

    events = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\ndata: [DONE]\n\n'

    class Gzipping(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = gzip.compress(events)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    response = _streamed_through_router(Gzipping)
    assert response.status_code == 200 and "content-encoding" not in response.headers
    assert response.content == events


def _streamed_through_router(replica: type[Any]) -> httpx.Response:
    """A stream=true request through a router whose one replica is a real HTTP server with ``replica`` as handler."""
    from http.server import ThreadingHTTPServer

    from ee_middleware.testing.http import serving

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), replica)
    upstream.daemon_threads = True
    with serving(upstream) as url, serving(make_router_server(AliasRouter(_EmptyRegistry(), [url], retries=0), port=0)) as routed:
        return httpx.post(f"{routed}/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True}, timeout=30)


class _EmptyRegistry:
    def apps(self) -> dict[str, Any]:
        return {}


def _chat(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json={"model": "tiny-base", "messages": MESSAGES, "temperature": 0, **body}, timeout=60)


def test_an_answer_cut_at_max_tokens_says_length_not_stop(local_server: Any) -> None:
    """The generator knows whether an answer ended or ran out of tokens; the server used to say 'stop' for both, so a
    client could not tell a cut-off tool call from a finished answer."""
    cut = _chat(local_server.url, max_tokens=2).json()
    [choice] = cut["choices"]
    assert choice["finish_reason"] == "length", choice
    streamed = _events(_chat(local_server.url, max_tokens=2, stream=True))
    assert [e["choices"][0]["finish_reason"] for e in streamed[:-1] if e["choices"][0]["finish_reason"]] == ["length"]


def test_tool_choice_none_is_honoured_and_a_forced_call_is_refused_clearly(local_server: Any) -> None:
    from ee_middleware.adapters.serving.local_server import _tool_choice

    tools = [{"type": "function", "function": {"name": "mv", "parameters": {"type": "object"}}}]
    assert _chat(local_server.url, max_tokens=2, tools=tools, tool_choice="none").status_code == 200
    assert _tool_choice({"tool_choice": "none"}, tools) is False and _tool_choice({}, tools) is True
    for forced in ("required", {"type": "function", "function": {"name": "mv"}}):
        refused = _chat(local_server.url, max_tokens=2, tools=tools, tool_choice=forced)
        assert refused.status_code == 400, forced
        assert "cannot force the model to call a tool" in refused.json()["error"]["message"]
    unknown = _chat(local_server.url, max_tokens=2, tools=tools, tool_choice="always")
    assert unknown.status_code == 400 and "tool_choice must be 'auto', 'none'" in unknown.json()["error"]["message"]


def test_bad_top_p_seed_and_stop_are_a_400_naming_the_field(local_server: Any) -> None:
    for field, value in (("top_p", "x"), ("top_p", 1.5), ("seed", "abc"), ("stop", 3)):
        answer = _chat(local_server.url, max_tokens=2, **{field: value})
        assert answer.status_code == 400 and answer.json()["error"]["message"].startswith(field), (field, answer.text)


@pytest.mark.parametrize("model", [["tiny-base"], {"name": "tiny-base"}, 3, [], False])
def test_a_model_that_is_no_string_is_a_400_naming_it(local_server: Any, model: Any) -> None:
    """Before: a list or an object was a 500 "TypeError: unhashable type", and an empty list served the base model."""
    root = local_server.url.removesuffix("/v1")
    for answer in (
        _chat(local_server.url, max_tokens=2, model=model),
        _chat(local_server.url, max_tokens=2, model=model, stream=True),
        httpx.post(f"{root}/tokenize", json={"model": model, "prompt": "ping"}, timeout=60),
    ):
        error = answer.json()["error"]
        assert answer.status_code == 400 and error["message"].startswith("model must be a string"), answer.text
        assert error["type"] == "BadRequestError"


def test_stop_strings_end_the_answer_before_them(local_server: Any) -> None:
    whole = _chat(local_server.url, max_tokens=8).json()["choices"][0]["message"]["content"]
    stop = next(ch for ch in whole[1:] if ch.strip())
    cut = _chat(local_server.url, max_tokens=8, stop=[stop, "never-written"]).json()["choices"][0]
    assert cut["message"]["content"] == whole[: whole.index(stop)] and cut["finish_reason"] == "stop"


def test_the_router_relays_a_replicas_refusal_as_the_replica_sent_it(local_server: Any, tmp_path: Path) -> None:
    """An unknown model through the router: the replica's own 404, not the router's client advice ('ee-router' must be served)."""
    from ee_middleware.testing.http import serving

    router = AliasRouter(LocalAdapterRegistry(tmp_path / "reg"), [local_server.url], retries=0)
    with serving(make_router_server(router, port=0)) as routed:
        for stream in (False, True):
            refused = httpx.post(f"{routed}/chat/completions", json={"model": "nope", "messages": MESSAGES, "stream": stream}, timeout=60)
            error = refused.json()["error"]
            assert refused.status_code == 404 and error["message"] == "The model `nope` does not exist.", error
            assert error["type"] == "NotFoundError" and "ee-router" not in refused.text


def _count(url: str, messages: list[dict[str, Any]]) -> int:
    """The prompt's length in tokens, as the server counts it (its /tokenize)."""
    answer = httpx.post(f"{url.removesuffix('/v1')}/tokenize", json={"model": "tiny-base", "messages": messages}, timeout=60)
    return int(answer.json()["count"])


def test_a_prompt_longer_than_the_context_is_a_400_naming_both_lengths_as_vllm_answers(local_server: Any) -> None:
    """The tiny base has 1024 positions. The server used to fit a longer prompt (cut from the left) and answer 200: the
    client got an answer to a prompt it never sent. vLLM answers 400 naming the context and what was asked for."""
    from ee_middleware.errors import ModelRequestError

    long = [{"role": "user", "content": "Where is order A-1001? " * 400}]
    count = _count(local_server.url, long)
    assert count > 1024
    refused = _chat(local_server.url, messages=long, max_tokens=4)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    asked = f"maximum context length is 1024 tokens. However, you requested {count + 4} tokens ({count} in the messages, 4 in"
    assert asked in error["message"]
    assert "reduce the length of the messages or completion" in error["message"]
    without_max_tokens = httpx.post(f"{local_server.url}/chat/completions", json={"model": "tiny-base", "messages": long}, timeout=60)
    assert without_max_tokens.status_code == 400
    assert f"your request has {count} input tokens" in without_max_tokens.json()["error"]["message"]
    short = _count(local_server.url, MESSAGES)
    too_many = _chat(local_server.url, max_tokens=1024 - short + 1)
    assert too_many.status_code == 400 and f"you requested 1025 tokens ({short} in the messages" in too_many.json()["error"]["message"]
    client = OpenAIChatClient(local_server.url, "tiny-base", retries=0, api_key="")
    try:
        with pytest.raises(ModelRequestError) as caught:
            client.complete(long, sampling=Sampling(temperature=0, max_tokens=4))
    finally:
        client.close()
    assert caught.value.status == 400
    assert f"maximum context length is 1024 tokens. However, you requested {count + 4} tokens" in str(caught.value)


def test_an_answer_stops_at_max_tokens_and_usage_counts_the_tokens_returned(local_server: Any) -> None:
    """usage.completion_tokens used to re-tokenize the decoded text (more tokens than were generated, past max_tokens), and
    max_tokens was silently cut to half the context."""
    for seed in range(4):
        body = {"n": 2, "temperature": 1.0, "seed": seed, "max_tokens": 3}
        answer = _chat(local_server.url, **body).json()
        assert answer["usage"]["completion_tokens"] <= 2 * 3, (seed, answer["usage"])
        assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
        streamed = _events(_chat(local_server.url, **body, stream=True, stream_options={"include_usage": True}))
        assert streamed[-2]["usage"]["completion_tokens"] <= 2 * 3
    whole = _chat(local_server.url, max_tokens=600).json()
    [choice] = whole["choices"]
    if choice["finish_reason"] == "length":
        assert whole["usage"]["completion_tokens"] == 600, whole["usage"]
    else:
        assert whole["usage"]["completion_tokens"] <= 600


def test_tool_choice_without_tools_is_a_400_and_an_unknown_function_is_named(local_server: Any) -> None:
    """As vLLM (and OpenAI) answer; the server used to accept tool_choice without tools and answer as if it were not sent."""
    for choice in ("auto", "required", {"type": "function", "function": {"name": "mv"}}):
        refused = _chat(local_server.url, max_tokens=2, tool_choice=choice)
        assert refused.status_code == 400, choice
        assert "When using `tool_choice`, `tools` must be set" in refused.json()["error"]["message"]
    assert _chat(local_server.url, max_tokens=2, tool_choice="none").status_code == 200, "vLLM lets 'none' through without tools"
    tools = [{"type": "function", "function": {"name": "mv", "parameters": {"type": "object"}}}]
    unknown = _chat(local_server.url, max_tokens=2, tools=tools, tool_choice={"type": "function", "function": {"name": "rm"}})
    assert unknown.status_code == 400
    message = unknown.json()["error"]["message"]
    assert "'rm'" in message and "mv" in message and "does not match any of the specified `tools`" in message


@pytest.mark.parametrize("stop", ["stop", "wor", "zzz-never", "e"])
def test_an_answer_cut_at_a_stop_string_counts_the_tokens_up_to_the_one_that_completed_it(stop: str) -> None:
    """The count found by bisection is the first prefix whose text holds the stop string, as decoding every prefix in
    turn found it (that cost a decode per token: quadratic in the answer's length)."""
    from ee_middleware.adapters.serving.local_server import _cut_at_stop
    from ee_middleware.models.local import Generated
    from ee_middleware.testing.tiny_models import build_test_tokenizer

    text = "hello world, please stop here and say more words"
    tokenizer = build_test_tokenizer([text])
    tokens = tokenizer.encode(text, add_special_tokens=False)
    answer = Generated(text=tokenizer.decode(tokens, skip_special_tokens=True), token_ids=tokens, finish_reason="length")
    cut, finish, used = _cut_at_stop(tokenizer, answer, [stop])
    if stop not in answer.text:
        assert (cut, finish, used) == (answer.text, "length", len(tokens))
        return
    first = next(k for k in range(1, len(tokens) + 1) if stop in tokenizer.decode(tokens[:k], skip_special_tokens=True))
    assert (cut, finish, used) == (answer.text[: answer.text.index(stop)], "stop", first)
