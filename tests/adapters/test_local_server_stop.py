"""How ``ee serve local`` stops under traffic (a REAL server process, tiny random Llama, real slow requests): SIGTERM
or Ctrl-C while a request is being generated, a second signal, and idle keep-alive connections."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ee_middleware.adapters.serving.http import STOPPING_MESSAGE
from ee_middleware.adapters.serving.launch import ServerProcess, free_port
from ee_middleware.adapters.serving.rendering import servers_folder

SLOW = {"messages": [{"role": "user", "content": "Where is order A-1001?"}], "max_tokens": 4000, "temperature": 0}
"""A request the tiny model answers in seconds on a CPU (4,000 tokens, the random model never ending early: 900 were
generated within the 1.5 s a test waits before its signal on a quiet machine)."""


@pytest.fixture(scope="module")
def slow_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama of ``tiny_base`` with a context that holds :data:`SLOW`'s answer."""
    pytest.importorskip("transformers")
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama
    from tests.adapters.conftest import CORPUS, SMOLLM2_TEMPLATE

    tokenizer = build_test_tokenizer(CORPUS, chat_template=SMOLLM2_TEMPLATE)
    return save_tiny_llama(tmp_path_factory.mktemp("slow-base"), tokenizer, max_positions=4608)


@contextmanager
def _server(tiny_base: Path, *, grace_s: float | None = None) -> Iterator[ServerProcess]:
    port = free_port()
    command = [sys.executable, "-m", "ee_middleware.cli", "serve", "local", "--base", str(tiny_base), "--port", str(port)]
    env = dict(os.environ)
    if grace_s is not None:
        env["EE_STOP_GRACE_S"] = str(grace_s)
    server = ServerProcess(command, f"http://127.0.0.1:{port}/v1", env=env, name="local server", end_with_parent=True)
    with server:
        yield server


def _in_flight(url: str, count: int = 1) -> tuple[list[threading.Thread], list[httpx.Response | Exception]]:
    """``count`` slow chat requests sent on threads (one is generated, the others wait for the model), and their answers."""
    answers: list[httpx.Response | Exception] = []

    def ask() -> None:
        try:
            answers.append(httpx.post(f"{url}/chat/completions", json=SLOW, timeout=300))
        except Exception as exc:  # the test reads it
            answers.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # sent, read, and being generated (or waiting for the model)
    assert not answers, f"answered before the test's signal: make SLOW slower ({answers})"
    return threads, answers


def _stop(server: ServerProcess, sig: signal.Signals, *, timeout_s: float = 120) -> tuple[int, float]:
    assert server.process is not None
    started = time.monotonic()
    server.process.send_signal(sig)  # to the server alone, as a service manager sends it
    return server.process.wait(timeout=timeout_s), time.monotonic() - started


def test_sigterm_while_a_request_is_generated_lets_it_finish_and_exits_0(slow_base: Path) -> None:
    """Before: the process aborted (exit -6, "terminate called without an active exception": the interpreter finalised
    while a handler thread was inside torch's generate), the client got RemoteDisconnected (3 of 3)."""
    with _server(slow_base, grace_s=120) as server:
        state = servers_folder() / f"{server.url.split(':')[-1].split('/')[0]}.json"
        assert state.is_file()
        threads, answers = _in_flight(server.url)
        code, _ = _stop(server, signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        log = server.log_tail(200)
    assert code == 0, log
    assert "terminate called" not in log
    assert [a.status_code for a in answers if isinstance(a, httpx.Response)] == [200], answers
    assert answers[0].json()["usage"]["completion_tokens"] > 0  # type: ignore[union-attr]
    assert "request(s) in flight" in log
    assert not state.exists()


def test_ctrl_c_with_requests_past_the_grace_answers_them_503_and_exits_0(slow_base: Path) -> None:
    """Requests still running after EE_STOP_GRACE_S (one generated, one waiting for the model) are answered 503 naming
    the stop, and the process ends with 0 at once, not aborted. Before: exit -6 and RemoteDisconnected."""
    with _server(slow_base, grace_s=0.3) as server:
        threads, answers = _in_flight(server.url, count=2)
        code, took = _stop(server, signal.SIGINT)
        for thread in threads:
            thread.join(60)
        log = server.log_tail(200)
    assert code == 0, log
    assert "terminate called" not in log
    assert took < 30, f"took {took:.1f} s"
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    statuses = sorted(a.status_code for a in answers if isinstance(a, httpx.Response))
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses
    refused = next(a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503)
    assert refused.json()["error"]["message"] == STOPPING_MESSAGE
    assert refused.headers["connection"] == "close"
    assert "answered 503" in log


def test_a_second_sigterm_during_the_grace_ends_it_at_once_with_130(slow_base: Path) -> None:
    """A supervisor's second SIGTERM (or a second Ctrl-C) ends the wait for the requests in flight: they are answered
    503 and the process exits 130 at once, not after the grace. Before: the first SIGTERM aborted it (exit -6)."""
    with _server(slow_base, grace_s=300) as server:
        assert server.process is not None and server.log_path is not None
        threads, answers = _in_flight(server.url, count=2)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while "request(s) in flight" not in server.log_path.read_text(errors="replace") and server.running():
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
        code, took = _stop(server, signal.SIGTERM, timeout_s=60)
        for thread in threads:
            thread.join(60)
        log = server.log_tail(200)
    assert code == 130, log
    assert took < 10, f"took {took:.1f} s"
    statuses = sorted(a.status_code for a in answers if isinstance(a, httpx.Response))
    assert len(statuses) == 2 and 503 in statuses, answers


def test_an_idle_server_with_keep_alive_connections_open_stops_promptly(slow_base: Path) -> None:
    """A router or client pool keeps connections open between requests. Before: the stop took 5 to 8 s (handler threads
    waited on in server_close, then the interpreter's finalisation collected torch's objects)."""
    with _server(slow_base) as server, httpx.Client(timeout=30) as client:
        assert client.get(f"{server.url}/models").status_code == 200  # the connection stays open in the pool
        assert client.get(f"{server.url}/models").status_code == 200
        code, took = _stop(server, signal.SIGTERM, timeout_s=60)
    assert code == 0, server.log_tail()
    assert took < 2, f"the stop took {took:.1f} s"
