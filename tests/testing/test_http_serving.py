"""``serving`` runs a REAL HTTP server on a thread: a client that hangs up before its answer is sent (a timeout test's
client) prints no traceback from the server's thread, while any other error in a handler still does. Before, every
test whose client timed out printed "Exception occurred during processing of request ... BrokenPipeError" into the
test log (or set its own ``handle_error`` that hid every error)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

from ee_middleware.testing.http import serving


class _Answering(BaseHTTPRequestHandler):
    hung_up = threading.Event()  # the test closed its connection
    answered = threading.Event()  # the handler is done trying to answer

    def do_GET(self) -> None:
        try:
            if self.path == "/broken":
                raise ValueError("a handler's own bug")
            self.hung_up.wait(10)
            self.send_response(200)
            self.end_headers()
            for _ in range(64):  # far more than the socket buffers hold: the write meets the closed connection
                self.wfile.write(b"x" * 65536)
        finally:
            self.answered.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _ask(url: str, path: str, *, hang_up: bool) -> None:
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if not hang_up:
            connection.recv(1)
            return
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with a reset
    _Answering.hung_up.set()


def test_a_client_that_hangs_up_prints_no_traceback_but_a_handlers_bug_does(capfd: pytest.CaptureFixture[str]) -> None:
    _Answering.hung_up.clear()
    _Answering.answered.clear()
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Answering)) as url:
        _ask(url, "/slow", hang_up=True)
        assert _Answering.answered.wait(10)
        _Answering.answered.clear()
        _ask(url, "/broken", hang_up=False)
        assert _Answering.answered.wait(10)
    err = capfd.readouterr().err
    assert "BrokenPipeError" not in err and "ConnectionResetError" not in err, err
    assert "ValueError: a handler's own bug" in err, err
