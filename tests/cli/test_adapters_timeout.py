"""``ee adapters promote/rollback/retire --timeout``: the advice after a server's time-out says to raise the timeout, so
the commands take one (before: none, and a replica busier than 60 s could not be promoted from the CLI at all). Real HTTP
stand-ins of vLLM's runtime LoRA API: one whose smoke chat answer is held back, one that never answers."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.errors import ServerUnavailableError
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend, VLLMBackend
from ee_middleware.adapters.serving.launch import free_port
from ee_middleware.cli.app import app
from ee_middleware.testing.http import serving
from tests.adapters.helpers import StandInVLLM
from tests.jobs.test_promote_live_changed import _adapter

APP = "support-bot"
KNOB = "--timeout SECONDS of ee adapters promote/rollback/retire"


@pytest.fixture(autouse=True)
def no_servers_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EE_SERVER_URLS", raising=False)
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))  # no server state files of other tests
    monkeypatch.setenv("EE_REGISTRY_WAIT_S", "0")


def _registry(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "registry"
    registry = LocalAdapterRegistry(folder)
    names = [registry.register(_adapter(tmp_path / key, seed), APP, by="test").name for seed, key in enumerate(("v1", "v2"), 1)]
    return folder, names


@contextmanager
def _stand_in() -> Iterator[tuple[StandInVLLM, str]]:
    server = StandInVLLM()
    server.daemon_threads = True
    try:
        with serving(server) as url:
            yield server, url
    finally:
        server.release_chat.set()


class _Silent(BaseHTTPRequestHandler):
    """Accepts every request and never answers (until the test ends)."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.release.wait(60)

    do_POST = do_GET


def _release_later(server: StandInVLLM, after_s: float) -> threading.Thread:
    def release() -> None:
        if server.chat_arrived.wait(60):
            time.sleep(after_s)
        server.release_chat.set()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_promote_takes_a_timeout_and_its_advice_names_it(tmp_path: Path) -> None:
    folder, (v1, _) = _registry(tmp_path)
    with _stand_in() as (server, url):
        server.hold_chat.set()  # the smoke chat request is answered only once released: a busy replica
        short = CliRunner().invoke(app, ["adapters", "promote", v1, "-r", str(folder), "--server", url, "--timeout", "1"])
        assert short.exit_code == 1, short.output
        said = " ".join(short.stderr.split())
        assert "in 1 s" in said and KNOB in said, said
        assert LocalAdapterRegistry(folder).resolve(APP) is None

        server.chat_arrived.clear()
        server.release_chat.clear()
        releaser = _release_later(server, 1.5)
        slow = CliRunner().invoke(app, ["adapters", "promote", v1, "-r", str(folder), "--server", url, "--timeout", "30"])
        releaser.join(60)
        assert slow.exit_code == 0, slow.output
    assert LocalAdapterRegistry(folder).resolve(APP) == v1


def test_rollback_takes_a_timeout(tmp_path: Path) -> None:
    folder, (v1, v2) = _registry(tmp_path)
    for name in (v1, v2):
        assert CliRunner().invoke(app, ["adapters", "promote", name, "-r", str(folder), "--registry-only"]).exit_code == 0
    with _stand_in() as (server, url):
        server.hold_chat.set()
        result = CliRunner().invoke(app, ["adapters", "rollback", APP, "-r", str(folder), "--server", url, "--timeout", "1"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert "in 1 s" in said and KNOB in said, said
    assert LocalAdapterRegistry(folder).resolve(APP) == v2


def test_retire_takes_a_timeout(tmp_path: Path) -> None:
    folder, (v1, _) = _registry(tmp_path)
    silent = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    silent.daemon_threads = True
    try:
        with serving(silent) as url:
            result = CliRunner().invoke(app, ["adapters", "retire", v1, "-r", str(folder), "--server", url, "--timeout", "1", "--json"])
    finally:
        _Silent.release.set()
    assert result.exit_code == 1, result.output
    [problem] = json.loads(result.stdout)["unload_problems"]
    assert "did not answer in 1 s" in problem and KNOB in problem, problem


@pytest.mark.parametrize("command", ["promote", "rollback", "retire"])
@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "soon"])
def test_a_bad_timeout_is_a_usage_error(tmp_path: Path, command: str, value: str) -> None:
    folder, (v1, _) = _registry(tmp_path)
    target = APP if command == "rollback" else v1
    result = CliRunner().invoke(
        app, ["adapters", command, target, "-r", str(folder), "--server", "http://127.0.0.1:9/v1", "--timeout", value]
    )
    assert result.exit_code == 2 and "--timeout" in result.stderr, result.output


def test_without_timeout_the_backends_keep_their_60_s_default() -> None:
    from ee_middleware.cli.adapters_cmds import _replicas

    [default] = _replicas(["http://127.0.0.1:9/v1"], "vllm", None)
    [given] = _replicas(["http://127.0.0.1:9/v1"], "local", None, 7.5)
    assert (default.timeout_s, given.timeout_s) == (60.0, 7.5)
    for command in ("promote", "rollback", "retire"):
        assert "--timeout" in CliRunner().invoke(app, ["adapters", command, "--help"]).output, command


# --- what the server is called in errors -------------------------------------------------------------------------------


def test_a_server_that_recorded_nothing_is_the_server_whatever_the_backend(tmp_path: Path) -> None:
    """Before: 'No usable answer from the vllm server at ...' for a replica that was `ee serve local` (the default
    --backend vllm names the API, not what answers)."""
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens
    for backend in (VLLMBackend(url), LocalBackend(url)):
        with pytest.raises(ServerUnavailableError) as caught:
            backend.list()
        assert f"No usable answer from the server at {url}" in str(caught.value), str(caught.value)
        assert "vllm server" not in str(caught.value) and "local server at" not in str(caught.value)


@pytest.mark.parametrize(("renderer", "said"), [("local", "the local server (ee serve local) at"), ("vllm", "the vLLM server at")])
def test_a_recorded_server_is_named_by_what_it_is(renderer: str, said: str) -> None:
    from ee_middleware.adapters.serving.rendering import forget_server, record_server
    from ee_middleware.adapters.templates import ServedTemplate

    url = f"http://127.0.0.1:{free_port()}/v1"  # recorded as running (this process), but nothing listens
    template = ServedTemplate("own", None, None, "-")
    state = record_server(url, pid=os.getpid(), base="/models/base", served_model_name="base", template=template, renderer=renderer)
    try:
        with pytest.raises(ServerUnavailableError) as caught:
            VLLMBackend(url).list()
    finally:
        forget_server(state, os.getpid())
    assert f"No usable answer from {said} {url}" in str(caught.value), str(caught.value)
