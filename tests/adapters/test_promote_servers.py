"""Promote and the router against REAL local server processes (tiny random Llama) when the servers are not what the
registry expects: a replica restarted after a promote, a server failing the smoke request, a --max-lora-rank below
the adapter's rank, a server holding another base model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ee_middleware.adapters.errors import (
    BaseModelMismatchError,
    PromotionError,
    ServerRankError,
    ServerUnavailableError,
)
from ee_middleware.adapters.promote import promote
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.adapters.serving.launch import ServerProcess, free_port, local_command
from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.testing.http import Reply, ScriptedChatServer, serving

from .conftest import CORPUS, SMOLLM2_TEMPLATE, train_shaped_adapter
from .helpers import write_adapter
from .test_serving_local import MESSAGES, _answer

pytestmark = pytest.mark.heavy  # several real local servers per test: make test-heavy


def _server(base: Path, *, max_lora_rank: int = 8, name: str = "replica") -> ServerProcess:
    port = free_port()
    command = local_command(str(base), port=port, served_model_name="tiny-base", max_lora_rank=max_lora_rank)
    return ServerProcess(command, f"http://127.0.0.1:{port}/v1", name=name, end_with_parent=True)


@pytest.fixture(scope="module")
def second_server(tiny_base: Path) -> Iterator[ServerProcess]:
    """A second real replica of the same base, which the tests restart or kill (and start again)."""
    server = _server(tiny_base, name="second replica")
    with server:
        yield server


def _restart(server: ServerProcess) -> None:
    """Stop the replica and start it again on the same port: it comes back with the base model alone."""
    server.stop()
    server.start()


# --- a replica restarted after a promote ------------------------------------------------------------------------------


def test_the_router_sends_an_apps_requests_to_the_replicas_that_hold_its_live_adapter_after_one_restarted(
    local_server: Any, second_server: ServerProcess, tiny_base: Path, tmp_path: Path
) -> None:
    """Before: the restarted replica answered 404 for the live adapter and the router relayed it: every other request
    for the app failed."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=51), "bot").name
    replicas = [LocalBackend(local_server.url), LocalBackend(second_server.url)]
    promote(registry, live, replicas)
    _restart(second_server)
    assert live not in replicas[1].list()
    said: list[str] = []
    router = AliasRouter(registry, [local_server.url, second_server.url], retries=0, log=said.append)
    with serving(make_router_server(router, port=0)) as routed:
        for stream in (False, False, False, True, True):  # round robin: the restarted replica comes first every other time
            answer = httpx.post(f"{routed}/chat/completions", json={"model": "bot", "messages": MESSAGES, "stream": stream}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert f'"model": "{live}"' in answer.text if stream else answer.json()["model"] == live
        [line] = said  # said once, not per request
        assert second_server.url in line and live in line and "bot" in line
        assert f"ee adapters promote {live} -r {registry.root}" in line, "the log says how to load it there again"
        assert line.endswith(" --backend local"), "ee serve local replicas: a promote speaking vLLM's API to them fails"
        promote(registry, live, replicas)  # loads it again where it is missing (the next test shows it)
        for _ in range(2):
            assert httpx.post(f"{routed}/chat/completions", json={"model": "bot", "messages": MESSAGES}, timeout=60).status_code == 200
        assert said[1:] == [f"ee router: {second_server.url} serves {live} again"]
    for replica in replicas:
        replica.unload(live)


def test_no_replica_holding_the_live_adapter_is_a_404_saying_so_and_how_to_load_it_again(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=52), "bot").name
    replica = LocalBackend(local_server.url)
    promote(registry, live, [replica])
    replica.unload(live)  # as a restart leaves it
    router = AliasRouter(registry, [local_server.url], retries=0, log=lambda _line: None)
    with serving(make_router_server(router, port=0)) as routed:
        refused = httpx.post(f"{routed}/chat/completions", json={"model": "bot", "messages": MESSAGES}, timeout=60)
    assert refused.status_code == 404
    message = refused.json()["error"]["message"]
    assert f"No replica holds {live}, the live adapter of bot" in message and f"ee adapters promote {live}" in message
    assert message.endswith(f"--server {local_server.url} --backend local"), "ee serve local replicas: a vLLM promote would fail"


def test_the_reload_command_for_vllm_replicas_names_no_backend(tmp_path: Path) -> None:
    """A replica that is not ``ee serve local`` (vLLM lists its models ``owned_by`` ``vllm``) gets the promote's default."""

    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(write_adapter(tmp_path / "a"), "bot").name
    registry.switch_live(live)
    missing = Reply({"object": "error", "message": f"The model `{live}` does not exist.", "type": "NotFoundError", "code": 404}, 404)
    listing = [{"id": "base", "object": "model", "owned_by": "vllm"}]
    with ScriptedChatServer([missing], models=listing) as vllm:
        router = AliasRouter(registry, [vllm.base_url], retries=0, log=lambda _line: None)
        with serving(make_router_server(router, port=0)) as routed:
            refused = httpx.post(f"{routed}/chat/completions", json={"model": "bot", "messages": MESSAGES}, timeout=60)
    assert refused.status_code == 404
    assert refused.json()["error"]["message"].endswith(f"ee adapters promote {live} -r {registry.root} --server {vllm.base_url}")


def test_promoting_the_live_adapter_again_loads_it_on_a_restarted_replica_and_says_so(
    local_server: Any, second_server: ServerProcess, tiny_base: Path, tmp_path: Path
) -> None:
    """Before: the promote of the live adapter returned at once, loading nothing, and printed
    'bot -> NAME (was none) in 0.000 s'."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    registry = LocalAdapterRegistry(tmp_path / "reg")
    live = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=53), "bot").name
    common = ["-r", str(registry.root), "--backend", "local", "--server", local_server.url, "--server", second_server.url]
    runner = CliRunner()
    assert runner.invoke(app, ["adapters", "promote", live, *common]).exit_code == 0
    _restart(second_server)
    again = runner.invoke(app, ["adapters", "promote", live, *common])
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith(f"bot -> {live} (already live; loaded again on {second_server.url}) in ")
    assert "was none" not in again.output
    assert live in LocalBackend(second_server.url).list()
    assert _answer(second_server.url, live) == _answer(local_server.url, live), "the same adapter on both"
    assert registry.resolve("bot") == live and registry.get(live).status == "live"
    [reload] = [e for e in registry.history(adapter=live) if e["action"] == "reload"]
    assert reload["loaded_on"] == [second_server.url]
    nothing = runner.invoke(app, ["adapters", "promote", live, *common, "--json"])
    assert nothing.exit_code == 0, nothing.output
    result = json.loads(nothing.stdout)
    assert result["already_live"] is True and result["loaded_on"] == [] and result["live"] == live
    for url in (local_server.url, second_server.url):
        LocalBackend(url).unload(live)


# --- a smoke request that fails for the server's own reasons ----------------------------------------------------------


def test_a_server_that_dies_before_the_smoke_request_leaves_the_adapter_a_candidate(
    second_server: ServerProcess, tiny_base: Path, tmp_path: Path
) -> None:
    """The replica is killed after it loaded and listed the adapter, so the smoke request finds the connection refused.
    Before: that was taken for the adapter's failure and it was marked failed for good."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    name = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=61), "bot").name

    class DiesBeforeTheSmokeRequest(LocalBackend):
        def list(self) -> list[str]:
            names = super().list()
            if name in names:  # verify's listing (the first to hold the adapter: it is loaded); the server dies now
                second_server.kill()
            return names

    try:
        with pytest.raises(PromotionError, match="stays a candidate") as caught:
            promote(registry, name, [DiesBeforeTheSmokeRequest(second_server.url, timeout_s=10)])
        assert isinstance(caught.value.__cause__, ServerUnavailableError)
        assert "smoke chat request" in str(caught.value) and "says nothing about the adapter" in str(caught.value)
        assert registry.get(name).status == "candidate" and registry.resolve("bot") is None
    finally:
        second_server.stop()
        second_server.start()
    assert promote(registry, name, [LocalBackend(second_server.url)]).live.name == name, "the same adapter goes live"
    LocalBackend(second_server.url).unload(name)


class _Answers503ToChat(BaseHTTPRequestHandler):
    """A stand-in proxy in front of a real local server (a real server does not answer 503 on cue): it relays every
    request but answers chat completions with HTTP 503, as an overloaded or restarting replica behind a gateway does."""

    protocol_version = "HTTP/1.1"
    upstream = ""

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _relay(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.path.startswith("/v1/chat/completions"):
            error = {"error": {"message": "Service Unavailable", "type": "ServiceUnavailableError", "code": 503}}
            return self._send(503, json.dumps(error).encode(), "application/json")
        request = urllib.request.Request(self.upstream + self.path, body, {"Content-Type": "application/json"}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                self._send(answer.status, answer.read(), answer.headers.get("Content-Type") or "application/json")
        except urllib.error.HTTPError as exc:
            self._send(exc.code, exc.read(), exc.headers.get("Content-Type") or "application/json")

    def do_GET(self) -> None:
        self._relay("GET")

    def do_POST(self) -> None:
        self._relay("POST")


def test_a_503_to_the_smoke_request_leaves_the_adapter_a_candidate_stand_in_proxy(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """Before: the adapter was marked failed, and promoting it again once the replica was healthy was refused."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    name = registry.register(train_shaped_adapter(tiny_base, tmp_path / "a", seed=62), "bot").name
    handler = type("Proxy", (_Answers503ToChat,), {"upstream": local_server.url.removesuffix("/v1")})
    with (
        serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as proxied,
        pytest.raises(PromotionError, match="stays a candidate") as caught,
    ):
        promote(registry, name, [LocalBackend(local_server.url), LocalBackend(proxied)])
    assert isinstance(caught.value.__cause__, ServerUnavailableError) and "HTTP 503" in str(caught.value)
    assert registry.get(name).status == "candidate" and name not in LocalBackend(local_server.url).list()
    assert [e["action"] for e in registry.history(adapter=name)] == ["register", "promote-started", "promote-aborted"]
    assert promote(registry, name, [LocalBackend(local_server.url)]).live.name == name, "healthy again: it goes live"
    LocalBackend(local_server.url).unload(name)


# --- a rank above the servers' --max-lora-rank --------------------------------------------------------------------------


def test_a_rank_above_the_servers_limit_leaves_the_adapter_a_candidate_and_the_advice_works(
    local_server: Any, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local server runs with --max-lora-rank 8; the adapter has rank 12. Before: it was marked failed, with the
    advice to restart the server with a larger --max-lora-rank, after which the promote was refused as 'failed before'.
    Here the server's state file is out of sight (as for a server started outside ee): its limit shows at the load."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "empty-cache"))
    registry = LocalAdapterRegistry(tmp_path / "reg")
    big = registry.register(train_shaped_adapter(tiny_base, tmp_path / "big", rank=12, seed=71), "bot").name
    said: list[str] = []
    with pytest.raises(PromotionError, match="stays a candidate") as caught:
        promote(registry, big, [LocalBackend(local_server.url)], progress=said.append)  # the limit unknown: the server refuses
    assert isinstance(caught.value.__cause__, ServerRankError)
    assert "start every replica with --max-lora-rank 12" in str(caught.value) and "once every replica allows rank 12" in str(caught.value)
    assert any(f"{local_server.url} did not record its --max-lora-rank" in line and "r=12 is checked only when" in line for line in said)
    assert registry.get(big).status == "candidate" and big not in LocalBackend(local_server.url).list()
    asked = len(registry.history(adapter=big))
    with pytest.raises(
        ServerRankError,
        match=r"above the --max-lora-rank of .* \(8: the --max-lora-rank given to this promote\)\. Nothing was loaded; it stays a candidate",
    ):
        promote(registry, big, [LocalBackend(local_server.url, max_lora_rank=8)])  # the limit known: refused before any load
    assert len(registry.history(adapter=big)) == asked and registry.get(big).status == "candidate"
    with _server(tiny_base, max_lora_rank=12, name="roomier replica") as roomier:  # the advice, followed
        result = promote(registry, big, [LocalBackend(roomier.url, max_lora_rank=12)])
        assert result.live.name == big and big in LocalBackend(roomier.url).list()


def test_a_rank_above_the_limit_a_server_was_started_with_is_refused_before_any_load(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """The local server was started with --max-lora-rank 8 and records it; the promote is given no --max-lora-rank.
    Before: the rank-12 adapter was sent to the server, which refused it (PromotionError after a promote-started); a
    replica with room would have loaded it first, then unloaded it again."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    big = registry.register(train_shaped_adapter(tiny_base, tmp_path / "big", rank=12, seed=73), "bot").name
    replica = LocalBackend(local_server.url)
    assert replica.served_max_lora_rank() == 8
    with pytest.raises(ServerRankError) as caught:
        promote(registry, big, [replica])
    message = str(caught.value)
    assert (
        f"{big} has LoRA rank r=12, above the --max-lora-rank of {local_server.url} (8: the --max-lora-rank it was started with)" in message
    )
    assert "Nothing was loaded; it stays a candidate" in message and "start every replica with --max-lora-rank 12" in message
    assert "ee serve local --max-lora-rank 12; ee serve vllm --max-lora-rank 16, the next value vLLM accepts" in message
    assert [e["action"] for e in registry.history(adapter=big)] == ["register"], "no server was asked"
    assert registry.get(big).status == "candidate" and big not in replica.list()


def _failed_for_rank_before(registry: LocalAdapterRegistry, name: str, url: str) -> str:
    """Mark ``name`` failed as promote did before the rank limit counted as the servers' setting (the reason's exact
    form: f"{type(exc).__name__} on {replica.url}: {exc}" of the ServerRankError for vLLM's and the local server's 500)."""
    record = registry.get(name)
    reason = (
        f"ServerRankError on {url}: {url} failed to load {name} from {record.path} (HTTP 500): LoRA rank {record.rank} is "
        f"greater than max_lora_rank 8. The adapter's rank (r={record.rank}) is above the server's --max-lora-rank: restart "
        "the server with a larger --max-lora-rank, or train with a smaller lora_r."
    )
    registry.mark_failed(name, reason)
    return reason


def test_an_adapter_an_earlier_version_marked_failed_for_its_rank_is_promoted_once_the_servers_allow_it(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """Before: promote refused it as 'failed before ... register a new one', and registering the same weights returned
    the failed record: no way back after raising the servers' --max-lora-rank. Now the promote makes it a candidate again
    (history 'reinstate', the old reason kept) and goes on with every check; another failure still stands."""
    from typer.testing import CliRunner

    from ee_middleware.adapters.errors import InvalidTransitionError
    from ee_middleware.cli.app import app

    registry = LocalAdapterRegistry(tmp_path / "reg")
    folder = train_shaped_adapter(tiny_base, tmp_path / "big", rank=12, seed=74)
    big = registry.register(folder, "bot").name
    old_reason = _failed_for_rank_before(registry, big, local_server.url)
    runner = CliRunner()
    again = runner.invoke(app, ["adapters", "register", str(folder), "--app", "bot", "-r", str(registry.root)])
    assert again.exit_code == 1 and f"ee adapters promote {big} -r {registry.root} --server URL" in again.stderr, again.stderr

    # the servers' limit not raised yet: refused up front, yet a candidate again
    with pytest.raises(ServerRankError, match=r"\(8: the --max-lora-rank it was started with\)"):
        promote(registry, big, [LocalBackend(local_server.url)])
    assert registry.get(big).status == "candidate", "the mark was the servers' limit, not the adapter: it is a candidate again"
    [reinstated] = [e for e in registry.history(adapter=big) if e["action"] == "reinstate"]
    assert reinstated["was"] == old_reason and [e["action"] for e in registry.history(adapter=big)][:2] == ["register", "fail"]

    other = registry.register(train_shaped_adapter(tiny_base, tmp_path / "other", rank=12, seed=75), "bot").name
    _failed_for_rank_before(registry, other, local_server.url)
    with _server(tiny_base, max_lora_rank=16, name="roomier replica") as roomier:  # the servers' limit raised
        args = ["adapters", "promote", other, "-r", str(registry.root), "--server", roomier.url, "--backend", "local"]
        promoted = runner.invoke(app, [*args, "--json"])
        assert promoted.exit_code == 0, promoted.output
        answer = json.loads(promoted.stdout)
        assert answer["live"] == other and answer["reinstated"] is True and answer["loaded_on"] == [roomier.url]
        assert registry.resolve("bot") == other and other in LocalBackend(roomier.url).list()
        assert [e["action"] for e in registry.history(adapter=other)][-4:] == ["fail", "reinstate", "promote-started", "promote"]
        damaged = registry.register(train_shaped_adapter(tiny_base, tmp_path / "damaged", rank=4, seed=76), "bot").name
        registry.mark_failed(damaged, "AdapterLoadError on http://x: damaged")
        with pytest.raises(InvalidTransitionError, match=r"failed before .*damaged.*register a new one"):
            promote(registry, damaged, [LocalBackend(roomier.url)])  # a failure of its own stands
        assert registry.get(damaged).status == "failed"


def test_registering_weights_that_failed_before_is_an_error_saying_so(tiny_base: Path, tmp_path: Path) -> None:
    """Before: the failed record came back with exit status 0, as if a new candidate had been registered."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    registry = LocalAdapterRegistry(tmp_path / "reg")
    folder = train_shaped_adapter(tiny_base, tmp_path / "a", seed=72)
    name = registry.register(folder, "bot").name
    runner = CliRunner()
    same = runner.invoke(app, ["adapters", "register", str(folder), "--app", "bot", "-r", str(registry.root)])
    assert same.exit_code == 0 and same.stdout.startswith(f"{name} (candidate")
    registry.mark_failed(name, "AdapterLoadError on http://x: damaged")
    again = runner.invoke(app, ["adapters", "register", str(folder), "--app", "bot", "-r", str(registry.root)])
    assert again.exit_code == 1
    assert f"registered already as {name}, which failed (AdapterLoadError on http://x: damaged)" in again.stderr


# --- a server holding another base model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny random Llama: the same architecture and tokenizer as tiny_base, other weights."""
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    tokenizer = build_test_tokenizer(CORPUS, chat_template=SMOLLM2_TEMPLATE)
    return save_tiny_llama(tmp_path_factory.mktemp("other-base"), tokenizer, seed=7)


@pytest.mark.parametrize("told_by", ["state file", "v1/models"])
def test_an_apps_first_adapter_for_another_base_is_refused_naming_both_bases(
    local_server: Any, tiny_base: Path, other_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, told_by: str
) -> None:
    """Before: an adapter trained on another base went live (nothing to compare with: the app had no live adapter yet),
    and answered nonsense."""
    if told_by == "v1/models":  # no state file found: the server's own /v1/models says which base it serves
        monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "empty-cache"))
    registry = LocalAdapterRegistry(tmp_path / "reg")
    record = registry.register(train_shaped_adapter(other_base, tmp_path / "other", seed=81), "newapp")
    replica = LocalBackend(local_server.url)
    assert replica.served_base() == str(tiny_base.resolve())
    with pytest.raises(BaseModelMismatchError) as caught:
        promote(registry, record.name, [replica])
    message = str(caught.value)
    assert f"trained on base model {other_base.resolve()}" in message and f"{local_server.url} serves {tiny_base.resolve()}" in message
    assert "Nothing was loaded" in message
    assert record.name not in replica.list() and registry.get(record.name).status == "candidate" and registry.resolve("newapp") is None


def test_an_adapter_trained_on_a_copy_of_the_served_base_goes_live(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    """The same model in another folder is the same base (no false refusal); the check compares what the folders hold."""
    import shutil

    copy = Path(shutil.copytree(tiny_base, tmp_path / "copy-of-base"))
    registry = LocalAdapterRegistry(tmp_path / "reg")
    record = registry.register(train_shaped_adapter(copy, tmp_path / "a", seed=82), "bot")
    assert record.base_model == str(copy.resolve())
    replica = LocalBackend(local_server.url)
    assert promote(registry, record.name, [replica]).live.name == record.name
    replica.unload(record.name)


def test_the_router_lists_the_served_base_model_beside_the_apps(local_server: Any, tmp_path: Path) -> None:
    """Requests may name the base model through the router; its /v1/models used to list only the apps."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    router = AliasRouter(registry, [local_server.url], retries=0)
    with serving(make_router_server(router, port=0)) as routed:
        listed = httpx.get(f"{routed}/models", timeout=10).json()["data"]
        assert [entry["id"] for entry in listed] == ["tiny-base"]
        assert httpx.post(f"{routed}/chat/completions", json={"model": "tiny-base", "messages": MESSAGES}, timeout=60).status_code == 200


def test_a_registry_folder_whose_name_has_a_colon_opens_and_the_error_says_how_to_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ee_middleware.adapters.errors import RegistryError
    from ee_middleware.adapters.registry import open_registry

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError, match=r"write it as \./reg:v2 or local:reg:v2"):
        open_registry("reg:v2")
    created = open_registry("./reg:v2")
    assert isinstance(created, LocalAdapterRegistry) and created.root == tmp_path / "reg:v2"
    created.note("made", app="bot")  # an opened registry is made by its first write (0a580d2)
    assert open_registry("reg:v2").root == created.root, "an existing folder is the registry, not a plug-in"
