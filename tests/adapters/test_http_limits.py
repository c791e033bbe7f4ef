"""The servers' HTTP side refuses what would make it hold memory or a thread without end (sweep S 2): a body over its
limit (413) or with a length that is no length (400), before reading any of it; a chunked body it does not read (411);
a client that stops sending its body (408 after the idle time-out, the connection closed). Before, a 300 MiB body was
read into memory, ``Content-Length: 10000000000000`` answered 500 ``MemoryError``, ``Content-Length: -1`` waited for
the client to hang up, and each stalled connection kept a thread for as long as its client liked. A real
``ThreadingHTTPServer`` (``make_server``) and raw sockets."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ee_middleware.adapters.serving.http import MAX_BODY_BYTES, JSONHandler, make_server


class _Echo(JSONHandler):
    def models(self) -> Any:
        return {"object": "list", "data": []}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"echo": body}


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    httpd = make_server(_Echo, {"timeout": 0.5, "log_message": lambda *args: None}, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[:2]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def _exchange(address: tuple[str, int], head: str, body: bytes = b"") -> tuple[int, dict[str, Any], bool]:
    """(status, JSON answer, whether the server closed the connection after it) for one raw request."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        headers, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += sock.recv(65536)
        sock.settimeout(0.2)  # (under the idle time-out, 0.5 s: a kept connection is still open then)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    return int(headers.split(b" ")[1]), json.loads(rest[:length]), closed


def _post(length: str, extra: str = "") -> str:
    return f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}"


def test_a_request_within_the_limits_is_answered_and_the_connection_kept(server: tuple[str, int]) -> None:
    body = json.dumps({"model": "m"}).encode()
    assert _exchange(server, _post(str(len(body))), body) == (200, {"echo": {"model": "m"}}, False)


@pytest.mark.parametrize(
    ("length", "status", "said"),
    [
        (str(MAX_BODY_BYTES + 1), 413, "over this server's limit"),
        ("10000000000000", 413, "over this server's limit"),
        ("-1", 400, "is not a length in bytes"),
        ("lots", 400, "is not a length in bytes"),
    ],
)
def test_a_body_length_over_the_limit_or_no_length_is_refused_unread(server: tuple[str, int], length: str, status: int, said: str) -> None:
    answered, payload, closed = _exchange(server, _post(length))
    assert (answered, closed) == (status, True)
    assert said in payload["error"]["message"]


def test_a_chunked_body_is_refused(server: tuple[str, int]) -> None:
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    answered, payload, closed = _exchange(server, head, b'5\r\n{"a":\r\n0\r\n\r\n')
    assert (answered, closed) == (411, True) and "Content-Length" in payload["error"]["message"]


def test_a_client_that_stops_sending_its_body_is_answered_408_and_let_go(server: tuple[str, int]) -> None:
    answered, payload, closed = _exchange(server, _post("100"), b'{"model": ')  # 10 of 100 bytes, then silence
    assert (answered, closed) == (408, True) and "did not come within" in payload["error"]["message"]


@pytest.mark.parametrize(
    ("host", "warned"), [("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True), ("10.0.0.5", True)]
)
def test_a_server_listening_beyond_this_machine_says_it_asks_no_one(host: str, warned: bool, capsys: pytest.CaptureFixture[str]) -> None:
    from ee_middleware.cli.serve_cmds import _warn_open_to_others

    _warn_open_to_others(host, "load and unload adapters")
    err = capsys.readouterr().err
    assert ("asks no one who calls it" in err) is warned, err


class _Big(_Echo):
    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"text": "x" * (8 * 1024 * 1024)}


def test_a_big_answer_to_a_reader_slower_than_the_idle_time_out_is_sent_whole() -> None:
    """The socket's time-out bounds a whole send: an 8 MB answer written at once was cut off at the idle time-out for a
    client reading it steadily but slowly (a VPN), though it never went silent (review R3)."""
    import time

    httpd = make_server(_Big, {"timeout": 0.5, "log_message": lambda *args: None}, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(httpd.server_address[:2], timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(_post("2").encode() + b"\r\n{}")
            received = b""
            started = time.monotonic()
            while not received.endswith(b'"}'):
                chunk = sock.recv(256 * 1024)
                if not chunk:
                    break
                received += chunk
                time.sleep(0.01)  # about 1.5 s for the whole answer: three idle time-outs, never silent for one
            assert time.monotonic() - started > 0.5
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
    assert received.endswith(b'"}') and len(received.partition(b"\r\n\r\n")[2]) == len(json.dumps({"text": "x" * (8 * 1024 * 1024)}))


def test_an_idle_kept_alive_connection_closed_is_no_error_in_the_log() -> None:
    logged: list[str] = []
    handler = _Echo.__new__(_Echo)
    handler.log_message = lambda format, *args: logged.append(format % args)  # type: ignore[method-assign]
    handler.log_error("Request timed out: %r", TimeoutError("timed out"))
    handler.log_error("code %d, message %s", 400, "Bad request")
    assert logged == ["code 400, message Bad request"]


def test_a_burst_of_clients_connecting_at_once_is_queued_not_dropped() -> None:
    """socketserver's listen backlog of 5 dropped most of a burst of 100 clients connecting at once while the accept
    loop was busy (79 of 100 reset through the router, 71 by the local server: a serving sweep). Connections the server
    has not accepted yet are queued by the kernel up to the backlog: with no accept at all here, 64 connect."""
    httpd = make_server(_Echo, {"timeout": 5, "log_message": lambda *args: None}, "127.0.0.1", 0)
    sockets: list[socket.socket] = []
    try:
        connected = 0
        for _ in range(64):
            sock = socket.socket()
            sock.settimeout(0.5)
            sockets.append(sock)
            try:
                sock.connect(httpd.server_address[:2])
                connected += 1
            except OSError:
                pass
        assert connected == 64, f"{connected} of 64 connected while the server accepted none"
    finally:
        for sock in sockets:
            sock.close()
        httpd.server_close()


def test_a_body_that_is_no_text_or_too_deep_is_a_400_not_a_500(server: tuple[str, int]) -> None:
    """A lone surrogate escape reached the tokenizer and came back 500 (TypeError), a deeply nested body 500
    (RecursionError): a sweep of serving. Both are the client's mistake: 400, saying what is wrong."""
    for body, said in (
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "lone UTF-16 surrogate"),
        (b"[" * 100_000, "nested too deeply"),
    ):
        status, answer, _ = _exchange(server, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n", body)
        assert status == 400 and said in answer["error"]["message"], answer
    fine = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'  # a pair: an emoji
    assert _exchange(server, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(fine)}\r\n", fine)[0] == 200


def test_a_client_gone_before_its_answer_leaves_a_line_not_a_traceback() -> None:
    """A client that left before a non-streamed answer made the server log socketserver's traceback (BrokenPipeError):
    a sweep of serving. One line says it now, and the server goes on."""
    import socket as sockets
    import time

    logged: list[str] = []

    class _Slow(_Echo):
        def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
            time.sleep(0.5)
            return 200, {"echo": "x" * 4_000_000}  # (more than the socket buffers hold: the send meets the closed socket)

    httpd = make_server(_Slow, {"timeout": 5, "log_message": lambda self, fmt, *args: logged.append(fmt % args)}, "127.0.0.1", 0)
    errors: list[str] = []
    httpd.handle_error = lambda request, address: errors.append("traceback")  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        body = b"{}"
        with sockets.create_connection(httpd.server_address[:2], timeout=5) as sock:
            sock.setsockopt(sockets.SOL_SOCKET, sockets.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close: a reset
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while not any("went away" in line for line in logged) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("went away (or stopped reading) before its answer (200) was sent" in line for line in logged), logged
        assert not errors
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.mark.parametrize("head", ["PUT /v1/chat/completions HTTP/1.1", "DELETE /v1/models HTTP/1.1", "GET /v1/models extra HTTP/1.1"])
def test_what_python_refuses_itself_is_answered_in_openais_error_shape(server: tuple[str, int], head: str) -> None:
    """An unknown method (501) or a request line Python cannot read (400) got Python's HTML error page, no answer an
    OpenAI client reads (a serving sweep): JSON in OpenAI's error shape, as every other answer."""
    status, answer, closed = _exchange(server, f"{head}\r\nHost: x\r\nContent-Length: 0\r\n")
    assert status in (400, 501) and answer["error"]["code"] == status and answer["error"]["message"] and closed, answer
