"""An API key for ``ee serve local`` and ``ee serve router`` (vLLM's ``--api-key`` rule: every request but ``GET /health``
carries ``Authorization: Bearer KEY``, any other is answered 401), and ee's clients of key-protected servers: the start
probe of a server ee launches, the promote backends, the router's requests to its replicas.

Before, neither server could ask for a key (anyone who reached one could load adapters into it), and every one of ee's
clients of the servers sent none: ``ee serve vllm`` with ``--api-key`` in its vLLM arguments waited its whole start
time-out for a server that answered 401 and then failed, promote could not reach a key-protected vLLM, nor the router
its replicas. Real servers throughout: a real ``ee serve local`` process with the tiny model, the real router's HTTP
server, and a small keyed server process built on the same HTTP layer (a stand-in for vLLM, which cannot run here)."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.errors import ServingError
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.adapters.serving.http import JSONHandler, make_server
from ee_middleware.adapters.serving.launch import ServerProcess, free_port, local_command, vllm_api_key
from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.errors import ModelRequestError
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import Sampling
from ee_middleware.models.urls import api_root

KEY = "s3cret-key-1"
ROUTER_KEY = "router-key"


def _request(url: str, method: str = "GET", path: str = "/v1/models", *, key: str | None = None, body: Any = None) -> tuple[int, dict, Any]:
    """(status, headers, JSON answer) of one raw request to ``url`` (scheme://host:port)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), json.loads(answer.read() or b"null")
    finally:
        connection.close()


@pytest.fixture(scope="module")
def keyed_local_server(tiny_base: Path) -> Iterator[ServerProcess]:
    """A real ``ee serve local`` process whose key comes from EE_SERVE_API_KEY in its environment; its start probe (which
    reads the same variable of that environment) must send it to see the server up."""
    import os

    port = free_port()
    command = local_command(str(tiny_base), port=port, served_model_name="tiny-base", max_lora_rank=8)
    env = {**os.environ, "EE_SERVE_API_KEY": KEY}
    server = ServerProcess(command, f"http://127.0.0.1:{port}/v1", env=env, name="keyed local server", end_with_parent=True)
    with server:  # (started: waits until it answers /v1/models)
        yield server
    assert not server.running()


def test_the_local_server_answers_only_requests_that_carry_its_key(keyed_local_server: ServerProcess) -> None:
    root = keyed_local_server.url.removesuffix("/v1")
    assert _request(root, path="/health")[0] == 200  # a load balancer's health check needs no key
    for key in (None, "wrong", f"{KEY}x", ""):
        status, headers, answer = _request(root, key=key)
        assert status == 401 and answer["error"]["type"] == "AuthenticationError", (key, answer)
        assert "EE_SERVE_API_KEY" in answer["error"]["message"] and headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, _, answer = _request(root, key=KEY)
    assert status == 200 and [m["id"] for m in answer["data"]] == ["tiny-base"]
    # a POST without the key is refused before anything of it is done (no adapter is loaded)
    status, _, answer = _request(root, "POST", "/v1/load_lora_adapter", body={"lora_name": "x", "lora_path": "/nowhere"})
    assert status == 401


def test_ee_clients_of_its_servers_send_the_fleets_key_and_model_clients_do_not(
    keyed_local_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key goes by where a client goes: promote's backends and the nightly evaluation on its replicas send
    EE_SERVE_API_KEY (never OPENAI_API_KEY); a model client of a model the user names sends EE_OPENAI_API_KEY, else
    OPENAI_API_KEY, never the fleet's key (which a hosted API must not get)."""
    from ee_middleware.evals.job import EvalJob

    url = keyed_local_server.url
    for name in ("EE_OPENAI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EE_SERVE_API_KEY", KEY)
    assert LocalBackend(url).list() == ["tiny-base"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-for-openai")  # a key for OpenAI's API is never what the fleet's clients send
    assert LocalBackend(url).list() == ["tiny-base"]
    job = EvalJob(suites=["bfcl:simple"], model=f"openai:{url}#tiny-base", out="x", api_key_env="EE_SERVE_API_KEY")
    chat = OpenAIChatClient(url, "tiny-base", retries=0, **{k: v for k, v in job.client_options().items() if k == "api_key"})
    answer = chat.complete([{"role": "user", "content": "hi"}], sampling=Sampling(max_tokens=2, temperature=0.0))
    assert answer and answer[0].problem is None, answer
    with pytest.raises(ModelRequestError) as refused:  # a model client's default: OPENAI_API_KEY, refused here
        OpenAIChatClient(url, "tiny-base", retries=0).list_models()
    assert refused.value.status == 401 and "EE_SERVE_API_KEY" in str(refused.value)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert OpenAIChatClient(url, "tiny-base", retries=0)._api_key is None  # the fleet's key is no model client's default
    monkeypatch.delenv("EE_SERVE_API_KEY")
    with pytest.raises(ServingError) as unkeyed:
        LocalBackend(url).list()
    # the advice names the key ee's serving clients send, not a model client's (a sweep of serving: it named those)
    assert "Check the API key (EE_SERVE_API_KEY)" in str(unkeyed.value) and "OPENAI_API_KEY" not in str(unkeyed.value), unkeyed.value


@pytest.fixture
def router(keyed_local_server: ServerProcess, tmp_path: Path) -> Iterator[str]:
    """The real router's HTTP server, asking for ROUTER_KEY and sending the replica's own key to it."""
    registry = LocalAdapterRegistry(tmp_path / "registry")
    alias = AliasRouter(registry, [keyed_local_server.url], upstream_api_key=KEY, log=lambda line: None)
    server = make_router_server(alias, "127.0.0.1", 0, api_key=ROUTER_KEY)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_router_asks_for_its_own_key_and_sends_the_replicas_key(router: str) -> None:
    root = router.removesuffix("/v1")
    assert _request(root, path="/health")[0] == 200
    assert _request(root, key=KEY)[0] == 401  # the replicas' key is not the router's
    assert _request(root, "POST", "/v1/chat/completions", body={"model": "tiny-base", "messages": []})[0] == 401
    chat = OpenAIChatClient(router, "tiny-base", retries=0, api_key=ROUTER_KEY)
    answer = chat.complete([{"role": "user", "content": "hi"}], sampling=Sampling(max_tokens=2, temperature=0.0))
    assert answer and answer[0].problem is None, answer


def test_a_replica_refusing_the_routers_key_is_a_502_naming_the_flag_and_logged_once(
    keyed_local_server: ServerProcess, tmp_path: Path
) -> None:
    """The app sent the router its right key: the replicas' 401 is the router's configuration, not the app's key."""
    logged: list[str] = []
    alias = AliasRouter(LocalAdapterRegistry(tmp_path / "registry"), [keyed_local_server.url], upstream_api_key="wrong", log=logged.append)
    for _ in range(2):
        status, answer = alias.forward("/v1/chat/completions", {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 502 and "--upstream-api-key" in answer["error"]["message"], answer
    assert alias.base_model() is None
    assert len([line for line in logged if "refused the router's API key" in line]) == 1, logged


def test_the_router_sends_the_fleets_key_by_default(
    keyed_local_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the promote backends do (the demo's router, started in a process with EE_SERVE_API_KEY exported)."""
    monkeypatch.setenv("EE_SERVE_API_KEY", KEY)
    alias = AliasRouter(LocalAdapterRegistry(tmp_path / "registry"), [keyed_local_server.url], log=lambda line: None)
    status, _ = alias.forward(
        "/v1/chat/completions", {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    )
    assert status == 200 and alias.base_model() == "tiny-base"


_KEYED_SERVER = """
import sys
from ee_middleware.adapters.serving.http import JSONHandler, make_server

class Handler(JSONHandler):
    def models(self):
        return {"object": "list", "data": [{"id": "base", "object": "model"}]}

key = sys.argv[sys.argv.index("--api-key") + 1] if "--api-key" in sys.argv else sys.argv[-1].partition("=")[2]
server = make_server(Handler, {"api_key": key, "log_message": lambda *a: None}, "127.0.0.1", int(sys.argv[1]))
server.serve_forever()
"""


@pytest.mark.parametrize("key_args", [["--api-key", "k1", "k2"], ["--api-key=k1"]])
def test_a_launched_server_started_with_an_api_key_is_seen_up(key_args: list[str]) -> None:
    """``ee serve vllm`` with ``--api-key`` among its vLLM arguments: the start probe sends that key (vLLM takes one or
    more keys after --api-key; the first is sent). Before, it was sent none and waited out its time-out."""
    port = free_port()
    command = [sys.executable, "-c", _KEYED_SERVER, str(port), *key_args]
    assert vllm_api_key(command, {}) == "k1"
    server = ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="keyed", api_key=vllm_api_key(command, {}))
    try:
        server.start(timeout_s=30)
        assert server.running()
    finally:
        server.stop()
    assert not server.running()


def test_vllm_api_key_falls_back_to_vllms_environment_variable() -> None:
    assert vllm_api_key(["vllm", "serve", "base"], {"VLLM_API_KEY": "from-env"}) == "from-env"
    assert vllm_api_key(["vllm", "serve", "base", "--api-key", "flag"], {"VLLM_API_KEY": "from-env"}) == "flag"
    assert vllm_api_key(["vllm", "serve", "base"], {}) == ""


def test_a_server_without_a_key_asks_for_none() -> None:
    class _Open(JSONHandler):
        def models(self) -> Any:
            return {"object": "list", "data": []}

    for key in (None, ""):
        server = make_server(_Open, {"api_key": key, "log_message": lambda *a: None}, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            assert _request(f"http://127.0.0.1:{server.server_address[1]}")[0] == 200
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


def test_a_query_in_a_replica_url_stays_after_the_api_version(tmp_path: Path) -> None:
    """``--server http://host:8000?api_key=K``: the router and the backends add /v1 to the path, not after the query."""
    assert api_root("http://h:8000?api_key=K") == "http://h:8000/v1?api_key=K"
    assert api_root("http://h:8000/v1/?x=1") == "http://h:8000/v1?x=1"
    assert api_root("http://h:8000/") == "http://h:8000/v1"
    alias = AliasRouter(LocalAdapterRegistry(tmp_path / "registry"), ["http://h:8000?api_key=K"], log=lambda line: None)
    assert alias.upstreams == ["http://h:8000/v1?api_key=K"]
    assert LocalBackend("http://h:8000?api_key=K").url == "http://h:8000/v1"


def test_the_key_is_shown_nowhere_in_the_served_command_line() -> None:
    from ee_middleware.cli.serve_cmds import _shown_command

    shown = _shown_command(["vllm", "serve", "b", "--api-key", "k1", "--api-key=k2", "--port", "8000"])
    assert "k1" not in shown and "k2" not in shown and "--api-key=***" in shown


class _KeyedEcho(JSONHandler):
    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, body


@pytest.fixture
def keyed_echo() -> Iterator[tuple[str, int]]:
    """A real server on the shared HTTP layer asking for the key ``k``; its address."""
    server = make_server(_KeyedEcho, {"api_key": "k", "log_message": lambda *a: None}, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_refused_post_closes_the_connection_without_reading_its_body(keyed_echo: tuple[str, int]) -> None:
    with socket.create_connection(keyed_echo, timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")  # no body sent
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 401") and b"AuthenticationError" in data


@pytest.mark.parametrize("bad", ["two words", "caf\u00e9", "tab\there"])
def test_a_key_no_client_can_send_is_refused_at_start(bad: str, tmp_path: Path) -> None:
    """A key goes in an HTTP header: one with a space, a control character or a letter outside ASCII could never be sent
    (httpx refuses to), so every request would be refused; the commands say so before serving."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    result = CliRunner().invoke(app, ["serve", "router", "-r", str(tmp_path), "--server", "http://127.0.0.1:1/v1", "--api-key", bad])
    assert result.exit_code == 2 and "--api-key" in result.stderr and "printable ASCII" in result.stderr, result.output
    assert bad not in result.stderr  # a secret is not echoed


def test_a_key_asked_for_before_the_body_is_refused_before_it_is_sent(keyed_echo: tuple[str, int]) -> None:
    """``Expect: 100-continue`` (curl's large uploads): a request without the key gets its 401 instead of the
    ``100 Continue`` that would have the client upload the body first."""
    with socket.create_connection(keyed_echo, timeout=10) as sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode())
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 401"), data[:100]


def test_ee_serve_local_takes_a_key_that_starts_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``secrets.token_urlsafe`` gives one about once in 64; it was read as an option (``expected one argument``)."""
    from typer.testing import CliRunner

    from ee_middleware.adapters.serving import local_server
    from ee_middleware.cli.app import app

    class _Started(Exception):
        pass

    def started(app_: Any, host: str, port: int, *, api_key: str | None = None) -> None:
        raise _Started(f"api_key={api_key}")

    monkeypatch.setattr(local_server, "LocalModelServer", lambda *args, **kwargs: type("App", (), {"served_model_name": "m"})())
    monkeypatch.setattr(local_server, "make_http_server", started)
    port = str(free_port())
    result = CliRunner().invoke(app, ["serve", "local", "--base", str(tmp_path), "--port", port], env={"EE_SERVE_API_KEY": "-Xk3secret"})
    assert "_Started: api_key=-Xk3secret" in result.output, result.output
