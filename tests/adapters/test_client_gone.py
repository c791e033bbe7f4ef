"""A request whose client went away is stopped (sweep of OpenAI clients, M4): before, the local server kept generating
an answer no one would read (a client's time-out, a router's) while every other request waited for the model. The
servers' HTTP handler tells a closed connection (:meth:`JSONHandler.client_gone`) from one still waiting, the local
server's generation asks it after every token, and nothing is answered. A real ``ThreadingHTTPServer`` and sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

from ee_middleware.adapters.serving.http import ClientGone, JSONHandler, make_server


class _Waits(JSONHandler):
    """Works on a request until its client goes away (at most 20 s), as a long generation does."""

    seen: list[str]
    logged: list[str]

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.client_gone():
                self.seen.append("gone")
                raise ClientGone
            time.sleep(0.01)
        self.seen.append("still there")
        return 200, {}

    def log_message(self, format: str, *args: Any) -> None:
        self.logged.append(format % args)


def _serve(seen: list[str], logged: list[str]) -> tuple[Any, threading.Thread]:
    server = make_server(_Waits, {"seen": seen, "logged": logged}, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_a_client_that_closes_its_connection_stops_its_request() -> None:
    seen: list[str] = []
    logged: list[str] = []
    server, thread = _serve(seen, logged)
    try:
        body = json.dumps({"model": "m"}).encode()
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.3)  # the server is working on it
        for _ in range(500):
            if seen:
                break
            time.sleep(0.02)
        assert seen == ["gone"]
        assert any("went away" in line for line in logged), logged
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_client_still_waiting_is_not_taken_for_gone() -> None:
    """A client that keeps its connection open (and one that sent its next request ahead) is still there."""

    class _Asks(JSONHandler):
        answers: list[bool]

        def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
            time.sleep(0.2)  # (the next request arrives meanwhile)
            self.answers.append(self.client_gone())
            return 200, {"ok": True}

    answers: list[bool] = []
    server = make_server(_Asks, {"answers": answers, "log_message": lambda *a: None}, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(request)
            sock.sendall(request)  # pipelined
            data = b""
            while data.count(b'{"ok": true}') < 2:
                data += sock.recv(65536)
        assert answers == [False, False]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_connection_past_descriptor_1024_is_still_there() -> None:
    """``select`` refuses descriptors of 1024 and more (a server with many connections, Docker's default limit allows
    them): taken for a client gone, every generation would have stopped at its first token."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    left, right = socket.socketpair()
    high = os.dup2(left.fileno(), 1500)
    connection = socket.socket(fileno=high)
    try:
        handler = type("Handler", (), {"connection": connection})()
        assert JSONHandler.client_gone(handler) is False  # type: ignore[arg-type]
        right.close()
        assert JSONHandler.client_gone(handler) is True  # type: ignore[arg-type]
    finally:
        connection.close()
        left.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
