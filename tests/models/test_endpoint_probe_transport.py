""":func:`~ee_middleware.models.spec.endpoint_problem`'s quick check on a client built with the user's own ``httpx``
transport (a proxy, mTLS, ``verify``): the check goes through that transport and leaves it open, so the requests other
replay threads have in flight on it are not cut. Real HTTP servers and real ``httpx`` transports throughout."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ee_middleware.models import spec
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.spec import endpoint_problem
from ee_middleware.testing.http import send_json, serving
from tests.replay.test_server_failures import WedgedServer

IN_FLIGHT = 3
ANSWER = {"id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


class CountingTransport(httpx.HTTPTransport):
    """An ``httpx.HTTPTransport`` (a real connection pool) that counts its ``close`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


def test_the_check_leaves_a_user_transport_open_for_the_requests_in_flight_on_it() -> None:
    """Three threads' chat requests are in flight on the user's transport (the server holds their answers) when the
    quick check runs; the check answers through the same transport, and the three requests then get their answers."""
    arrived = threading.Semaphore(0)
    answer = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the pool's connections stay open between requests

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            send_json(self, {"object": "list", "data": [{"id": "m"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived.release()
            answer.wait(30)
            send_json(self, ANSWER)

    transport = CountingTransport()
    results: list[str] = []

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        client = OpenAIChatClient(url, "m", transport=transport, retries=0, timeout_s=30.0)

        def request() -> None:
            try:
                client.post("/chat/completions", {"model": "m", "messages": []})
                results.append("ok")
            except Exception as exc:  # the test reports what the cut request raised
                results.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=request) for _ in range(IN_FLIGHT)]
        try:
            for thread in threads:
                thread.start()
            for _ in range(IN_FLIGHT):
                assert arrived.acquire(timeout=10), "every request reached the server before the check"
            problem = endpoint_problem(client, quick=True)
            closes_after_check = transport.closes
        finally:
            answer.set()
            for thread in threads:
                thread.join(30)
        try:
            assert client.list_models() == ["m"], "the client's pool serves later requests too"
        finally:
            client.close()
    assert problem is None
    assert results == ["ok"] * IN_FLIGHT, results
    assert closes_after_check == 0, "the check closed the user's transport"
    assert transport.closes == 1, "the client's own close still closes it"


def test_the_check_through_a_user_transport_still_asks_once_within_the_probe_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's timeout and single attempt hold when its request goes through the user's transport (httpx takes the
    timeout per request, not from the transport)."""
    monkeypatch.setattr(spec, "PROBE_TIMEOUT_S", 0.5)
    transport = CountingTransport()
    with WedgedServer() as server:
        client = OpenAIChatClient(server.url, "m", timeout_s=20.0, retries=2, backoff_s=0.01, transport=transport)
        try:
            started = time.monotonic()
            problem = endpoint_problem(client, quick=True)
            took = time.monotonic() - started
            listings, closes = server.listings, transport.closes
        finally:
            client.close()
    assert problem is not None and "after 1 attempt(s): timed out after 0.5 s" in problem, problem
    assert listings == 1 and took < 5.0 and closes == 0, (listings, took, closes)
