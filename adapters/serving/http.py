"""The HTTP side shared by the local model server and the alias router: OpenAI-shaped JSON in and out.

Both answer ``GET /health`` and ``GET /v1/models``, read a JSON object per ``POST``, and answer
errors in the OpenAI shape (``{"error": {"message", "type", "code"}}``), so any OpenAI-compatible
client (and :class:`~ee_middleware.models.OpenAIChatClient`) reads them the same way as vLLM's.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ee_middleware._lifetime import second_signal_ends
from ee_middleware.adapters.errors import ServerStartError
from ee_middleware.errors import ConfigError


class RequestError(Exception):
    """A request the server refuses: the HTTP status, the message and the OpenAI error type."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


_TRUE_WORDS = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off", "f", "n"})


def wants_stream(body: dict[str, Any]) -> bool:
    """Whether the request asks for a stream, read as vLLM's request model reads ``stream`` (pydantic's booleans:
    ``"false"`` is False, where its truth as a string streamed the answer); anything else is a 400."""
    value = body.get("stream")
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):  # (1.0 too, as pydantic takes it)
        return bool(value)
    word = value.lower() if isinstance(value, str) else None
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise RequestError(400, f"stream must be a boolean, got {json.dumps(value)[:200]}")


def error_body(status: int, message: str, kind: str = "BadRequestError") -> dict[str, Any]:
    """An error answer in the OpenAI shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


class _ClientGone(Exception):
    """Writing to the client failed: it closed the connection (or it broke)."""


class ClientGone(Exception):
    """Raised by an app's route when the client went away while its request was worked on (:meth:`JSONHandler.client_gone`):
    nothing is answered, the connection is closed."""


class _Abandoned(Exception):
    """The server stopped and answered this request 503 already (it did not finish within the grace)."""


STOP_GRACE_S = 8.0
"""How long a stopping server waits for the requests in flight to be answered (within ``docker stop``'s 10 s and
:meth:`~ee_middleware.adapters.serving.launch.ServerProcess.stop`'s 15 s before their SIGKILL); those still running then
are answered 503."""

LOCAL_SERVER_OWNER = "ee"
"""The ``owned_by`` of the models an ``ee serve local`` server lists (how the router tells such a replica from vLLM)."""

STOPPING_MESSAGE = "The server is stopping. Send the request again to another replica, or to this one once it is back."

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The largest request body the servers read (a chat request of a long context with images is a few MB): a larger or
unreadable ``Content-Length`` is refused before anything is read, so that one client cannot make the server hold
gigabytes or wait for bytes that never come."""

IDLE_TIMEOUT_S = 120.0
"""How long a connection may stay silent while the server waits for it (a request's head or body, the next request
on a kept-alive connection, a client that stopped reading an answer, each 64 KiB of an answer given the time): then it
is closed, so that connections left half open (a client that died, one that sends nothing) do not each keep a thread of
the server. A request being worked on (a long generation) is not timed: the server is not reading then."""

_SEND_SLICE = 64 * 1024
"""How much of an answer one send writes: the socket's time-out bounds each send whole."""

UNAUTHORIZED_MESSAGE = (
    "Missing or wrong API key: send the key this server was started with (--api-key or EE_SERVE_API_KEY) as "
    "'Authorization: Bearer KEY' (OpenAI clients: api_key=KEY; ee's commands send EE_SERVE_API_KEY)."
)


@dataclass
class EventStream:
    """An answer sent as it is produced: the bytes of a server-sent event stream (``"stream": true``).

    ``chunks`` is read until it ends; ``close`` runs afterwards, also when the client went away. Only whole events are
    sent (each up to the blank line that ends it, however ``chunks`` cut them). An exception from ``chunks`` after the
    first bytes ends the stream with an OpenAI-shaped error event (the status line is already sent by then), sent as the
    next whole event: the start of an event that broke off is dropped, so an SSE client never parses half of one."""

    chunks: Iterable[bytes]
    close: Callable[[], None] = lambda: None


_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
"""The end of a server-sent event: a line's end followed by an empty line (each line ending in CRLF, LF or CR)."""


def event_end(data: bytes | bytearray, start: int = 0) -> int:
    """Where ``data``'s last complete server-sent event ends (after the blank line that ends it; 0 for none), looked for
    from ``start`` on (what was searched before holds none: a stream's held-back event is not searched again for every
    chunk). A CR at the very end that follows content may be the start of a CRLF, so it is not taken as a line's end
    until the next byte tells (after a CRLF, a CR then LF ends the event there); one after another CR (a stream of
    CR-only line ends) ends the event either way, so it is not kept waiting for the next event."""
    searched = len(data) - 1 if data.endswith(b"\r") and not data.endswith(b"\r\r") else len(data)
    end = 0
    for found in _EVENT_END.finditer(data, max(0, start), searched):
        end = found.end()
    return end


def sse_event(payload: Any) -> bytes:
    """One server-sent event carrying ``payload`` as JSON (``"[DONE]"`` is sent as it is)."""
    data = payload if payload == "[DONE]" else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class JSONHandler(BaseHTTPRequestHandler):
    """Routes ``GET /health`` and ``GET /v1/models``; subclasses set :meth:`models` and :meth:`post`."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S  # (StreamRequestHandler sets it on the connection's socket)
    api_key: str | None = None
    """When set, every request but ``GET /health`` must carry ``Authorization: Bearer API_KEY`` (vLLM's ``--api-key``
    rule); any other is answered 401 before its body is read."""

    def models(self) -> Any:
        raise NotImplementedError

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """``(status, payload)`` for a POST of a JSON object; a ``str`` payload is sent as plain text, an
        :class:`EventStream` as a server-sent event stream."""
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    # A StoppingHTTPServer follows each connection: idle (between requests), a request being worked on, or one being
    # answered, so that its stop closes the idle ones at once and waits for the others.

    def setup(self) -> None:
        super().setup()
        if isinstance(self.server, StoppingHTTPServer):
            self.server.opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.server, StoppingHTTPServer):
                self.server.closed(self)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if isinstance(self.server, StoppingHTTPServer) and not self.server.request_started(self):
            self.close_connection = True
            self.send_json(503, error_body(503, STOPPING_MESSAGE, "ServiceUnavailableError"))
            return False
        return True

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Abandoned:
            self.close_connection = True  # the stopping server has answered it 503
        finally:
            if isinstance(self.server, StoppingHTTPServer):
                self.server.request_ended(self)

    def send_response(self, code: int, message: str | None = None) -> None:
        stopping = isinstance(self.server, StoppingHTTPServer) and self.server.responding(self)
        super().send_response(code, message)
        if stopping:
            self.send_header("Connection", "close")  # the client opens its next request elsewhere

    def client_gone(self) -> bool:
        """Whether the client closed its connection while its request is being worked on (what it sent is read, so a
        readable socket that yields nothing is one closed; a next request sent ahead is not)."""
        connection = self.connection
        try:
            timeout = connection.gettimeout()
            connection.settimeout(0.0)  # (with a time-out set, a recv waits for data first, whatever its flags)
            try:
                return connection.recv(1, socket.MSG_PEEK) == b""
            finally:
                connection.settimeout(timeout)
        except (BlockingIOError, InterruptedError):  # nothing to read: still connected, waiting for its answer
            return False
        except OSError:  # reset, or closed already
            return True

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: a request without the key is answered 401 before its client sends the body."""
        return self._authorized() and super().handle_expect_100()

    def _authorized(self) -> bool:
        """Whether the request carries the server's :attr:`api_key` (always, when it has none); else it is answered 401
        (with ``WWW-Authenticate: Bearer``) and the connection closed, its body unread."""
        if not self.api_key:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return True
        self.close_connection = True
        self.send_json(401, error_body(401, UNAUTHORIZED_MESSAGE, "AuthenticationError"), headers={"WWW-Authenticate": 'Bearer realm="ee"'})
        return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Python's own refusals (a method no route takes: 501; a request line or header it cannot read: 400, 414, 431)
        in OpenAI's error shape, as JSON, as every other answer (its HTML page was no answer an OpenAI client reads);
        the connection is closed, as Python closes it."""
        self.close_connection = True
        said = message or self.responses.get(code, ("Error",))[0]
        if explain:
            said = f"{said}: {explain}"
        if code == 501 and getattr(self, "command", None):
            said = f"{said}; this server answers GET and POST"
        self.send_json(code, error_body(code, said, "NotImplementedError" if code == 501 else "BadRequestError"))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self.send_json(200, {})
        elif not self._authorized():
            return
        elif path == "/v1/models":
            try:
                models = self.models()
            except RequestError as exc:
                self.send_json(exc.status, error_body(exc.status, str(exc), exc.kind))
            except Exception as exc:  # noqa: BLE001 - an unreadable registry, say: a clean 500, as a POST gets
                self.send_json(500, error_body(500, f"{type(exc).__name__}: {exc}", "InternalServerError"))
            else:
                self.send_json(200, models)
        else:
            self.send_json(404, error_body(404, f"No route {self.path}", "NotFoundError"))

    def do_POST(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            status, payload = self.post(path, self._json_body())
        except ClientGone:
            self.close_connection = True
            self.log_message("%s", f"the client of POST {path} went away; its request was stopped, nothing answered")
            return
        except RequestError as exc:
            self.send_json(exc.status, error_body(exc.status, str(exc), exc.kind))
            return
        except ValueError as exc:
            self.send_json(400, error_body(400, f"Bad request: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - the server answers 500 and keeps serving
            self.send_json(500, error_body(500, f"{type(exc).__name__}: {exc}", "InternalServerError"))
            return
        if isinstance(payload, EventStream):
            self.send_stream(status, payload)
        elif isinstance(payload, str):
            self.send_bytes(status, payload.encode(), "text/plain; charset=utf-8")  # as vLLM answers a LoRA load/unload
        else:
            self.send_json(status, payload)

    def _json_body(self) -> dict[str, Any]:
        """The request's body as a JSON object, or a :class:`RequestError` (400) saying what is wrong with it: no JSON (a
        ``ValueError``, answered 400 by :meth:`do_POST`), not an object, nested too deeply to read, or holding a lone
        surrogate escape (``"\\ud800"``: no text, which a tokenizer then failed on with a 500)."""
        raw = self._body() or b"{}"
        try:
            body = json.loads(raw)
        except RecursionError:
            raise RequestError(400, "Bad request: the JSON body is nested too deeply to read.") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        if b"\\ud" in raw.lower():  # an escape of a UTF-16 surrogate: a lone one is no text
            try:
                json.dumps(body, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RequestError(
                    400,
                    f"Bad request: the body holds a lone UTF-16 surrogate escape ({exc.object[exc.start : exc.end]!a}), which is no text.",
                ) from None
        return body

    def _body(self) -> bytes:
        """The request's body, read whole; a :class:`RequestError` (408, the connection then closed) for a client that
        stopped sending it for :data:`IDLE_TIMEOUT_S`."""
        length = self._body_length()
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(408, f"The request body did not come within {IDLE_TIMEOUT_S:.0f} s.", "RequestTimeoutError") from None
        if len(body) < length:  # the client closed before sending it all
            self.close_connection = True
            raise RequestError(400, f"Bad request: the body ended after {len(body)} of its {length} bytes.")
        return body

    def _body_length(self) -> int:
        """The request's ``Content-Length``: a :class:`RequestError` (the connection then closed, its body unread) for one
        that is no number, negative, or over :data:`MAX_BODY_BYTES`, and for a chunked body (this server reads none)."""
        given = self.headers.get("Content-Length")
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise RequestError(
                411, "Send the request body with a Content-Length (this server reads no chunked body).", "LengthRequiredError"
            )
        try:
            length = int(given or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise RequestError(400, f"Bad request: Content-Length {given!r} is not a length in bytes.")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(
                413, f"The request body is {length} bytes, over this server's limit of {MAX_BODY_BYTES} bytes.", "RequestTooLargeError"
            )
        return length

    def send_json(self, status: int, payload: Any, *, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json", headers=headers)

    def send_stream(self, status: int, stream: EventStream) -> None:
        """Send ``stream`` with chunked transfer encoding, each piece as soon as it is produced."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            pending = bytearray()  # the start of an event not complete yet: held back until its blank line comes
            try:
                for chunk in stream.chunks:
                    # an event's end is at most 4 bytes (CRLF CRLF): only those before the new bytes are searched again
                    searched_before = len(pending) - 4
                    pending += chunk
                    end = event_end(pending, searched_before)
                    if end:
                        self._write_chunk(bytes(pending[:end]))
                        del pending[:end]
            except _ClientGone:
                raise
            except Exception as exc:  # noqa: BLE001 - the status is sent: say what broke inside the stream
                # The half event held back is dropped: the client reads every event whole, then this error as the next one.
                error = sse_event(error_body(502, f"the stream broke: {type(exc).__name__}: {exc}", "BadGatewayError"))
                self._write_chunk(error)
                self._write_chunk(b"data: [DONE]\n\n")  # the stream's end, as vLLM ends one after its error event
            else:
                if pending:  # the stream ended cleanly without a last blank line: passed on as it came
                    self._write_chunk(bytes(pending))
            self._write_chunk(b"")
        except _ClientGone:
            self.close_connection = True  # the client went away; stop reading upstream
        finally:
            stream.close()

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def send_bytes(self, status: int, data: bytes, content_type: str, *, headers: dict[str, str] | None = None) -> None:
        """Send ``data`` whole as the answer (``headers``: more of them, such as ``WWW-Authenticate``); a client gone
        meanwhile closes the connection, said in one line (not a traceback)."""
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            # a slice at a time: the socket's time-out bounds each send whole, so a big answer to a slow reader goes out whole
            view = memoryview(data)
            for start in range(0, len(data), _SEND_SLICE):
                self.wfile.write(view[start : start + _SEND_SLICE])
        except OSError as exc:
            self.close_connection = True
            self.log_message("%s", f"the client went away (or stopped reading) before its answer ({status}) was sent: {type(exc).__name__}")

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):  # a kept-alive connection left idle, closed (IDLE_TIMEOUT_S): no error
            return
        super().log_error(format, *args)


_IDLE, _WORKING, _ANSWERING, _ABANDONED = "idle", "working", "answering", "abandoned"
"""Where a connection of a :class:`StoppingHTTPServer` stands: between requests, a request read and being worked on, its
answer being sent, or answered 503 by the stop (its handler's own answer is then dropped)."""


class StoppingHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that stops cleanly under traffic (:meth:`stop`): it takes no more connections, closes the
    idle keep-alive ones at once (a client sending on one then sees the connection closed, and retries elsewhere),
    answers 503 a request on a connection it accepted before the stop but had not started, and waits up to a grace
    for the requests in flight, answering those still running 503.

    Handler threads are daemons that :meth:`server_close` does not join: an idle keep-alive connection (a router's, a
    client's pool) would otherwise hold the stop until its client closes it."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    """The listen backlog (the kernel caps it at ``net.core.somaxconn``): socketserver's 5 reset most of a burst of 100
    clients connecting at once (79 of 100 through the router) instead of queueing them."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._guard = threading.Condition()
        self._connections: dict[BaseHTTPRequestHandler, str] = {}
        self.stopping = False
        self._stopped = False
        super().__init__(address, handler)

    # --- called by the handlers (JSONHandler) ----------------------------------------------------

    def opened(self, handler: BaseHTTPRequestHandler) -> None:
        with self._guard:
            self._connections[handler] = _IDLE

    def closed(self, handler: BaseHTTPRequestHandler) -> None:
        with self._guard:
            self._connections.pop(handler, None)
            self._guard.notify_all()

    def request_started(self, handler: BaseHTTPRequestHandler) -> bool:
        """Whether the request just read on ``handler``'s connection is served (``False``: the server is stopping)."""
        with self._guard:
            if self.stopping:
                self._connections[handler] = _ANSWERING  # its 503 is being sent
                return False
            self._connections[handler] = _WORKING
            return True

    def responding(self, handler: BaseHTTPRequestHandler) -> bool:
        """``handler`` starts its answer: whether the server is stopping (the answer then closes the connection).
        Raises :class:`_Abandoned` when the stop has answered the request 503 already."""
        with self._guard:
            if self._connections.get(handler) == _ABANDONED:
                raise _Abandoned
            self._connections[handler] = _ANSWERING
            return self.stopping

    def request_ended(self, handler: BaseHTTPRequestHandler) -> None:
        with self._guard:
            if handler in self._connections:
                self._connections[handler] = _IDLE
            self._guard.notify_all()

    # --- stopping -----------------------------------------------------------------------------------

    def in_flight(self) -> int:
        """How many requests are being worked on or answered now."""
        with self._guard:
            return sum(state in (_WORKING, _ANSWERING) for state in self._connections.values())

    def stop(self, grace_s: float = STOP_GRACE_S, *, cut_short: threading.Event | None = None) -> int:
        """Stop serving (call it once ``serve_forever`` has returned, or from another thread after :meth:`shutdown`):
        close the listening socket and the idle connections, wait up to ``grace_s`` (less once ``cut_short`` is set)
        for the requests in flight, then answer 503 those not answering yet and close every connection. Returns how
        many requests were cut that way; idempotent (a second call returns 0)."""
        with self._guard:
            if self._stopped:
                return 0
            self._stopped = self.stopping = True
            idle = [handler for handler, state in self._connections.items() if state == _IDLE]
        self.socket.close()  # new connections are refused now: a client or the router tries another replica
        for handler in idle:
            _shut(handler)  # a handler waiting for the next request on it reads the end, and its thread ends
        deadline = time.monotonic() + grace_s
        with self._guard:
            while (
                any(state in (_WORKING, _ANSWERING) for state in self._connections.values())
                and not (cut_short is not None and cut_short.is_set())
                and (left := deadline - time.monotonic()) > 0
            ):
                self._guard.wait(min(left, 0.1))
            late = {handler: state for handler, state in self._connections.items() if state in (_WORKING, _ANSWERING)}
            for handler, state in late.items():
                if state == _WORKING:
                    self._connections[handler] = _ABANDONED
            others = [handler for handler in self._connections if handler not in late]
        for handler, state in late.items():
            if state == _WORKING:  # nothing of its answer is sent yet: say why it gets none
                body = json.dumps(error_body(503, STOPPING_MESSAGE, "ServiceUnavailableError")).encode()
                head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                try:
                    handler.connection.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
                except OSError:
                    pass  # the client went away already
            _shut(handler)  # one cut while answering (a long stream) ends as a broken connection, which clients retry
        for handler in others:
            _shut(handler)
        return len(late)

    def server_close(self) -> None:
        """Stop (:meth:`stop`, with the default grace, unless stopped already), then close the socket."""
        self.stop()
        super().server_close()


def stop_grace_s() -> float:
    """How long a stopping server waits for the requests in flight: ``EE_STOP_GRACE_S`` seconds, else
    :data:`STOP_GRACE_S`; :class:`~ee_middleware.errors.ConfigError` (a ``ValueError``) naming the variable otherwise."""
    value = os.environ.get("EE_STOP_GRACE_S", "").strip()
    if not value:
        return STOP_GRACE_S
    try:
        grace = float(value)
    except ValueError:
        grace = -1.0
    if not 0 <= grace < float("inf"):
        raise ConfigError(f"EE_STOP_GRACE_S must be a number of seconds >= 0, got {value!r}: set it so (e.g. 8), or unset it.")
    return grace


def stop_serving(server: StoppingHTTPServer, grace_s: float, *, name: str) -> int:
    """Stop ``server`` after its ``serve_forever`` returned: no new connection, the requests in flight answered within
    ``grace_s`` (then 503). A second Ctrl-C, SIGTERM or SIGHUP during that wait answers them 503 at once. Returns the
    exit code: 0, or 130 when a second signal cut the wait short. ``name``: the server as its messages on stderr name it."""
    cut_short = threading.Event()
    with second_signal_ends(cut_short.set):
        in_flight = server.in_flight()
        if in_flight:  # said once a second signal is taken: one sent on reading it ends the wait
            print(
                f"{name}: stopping; waiting up to {grace_s:g} s for {in_flight} request(s) in flight "
                "(a second Ctrl-C or SIGTERM ends it now)",
                file=sys.stderr,
                flush=True,
            )
        late = server.stop(grace_s, cut_short=cut_short)
    if late:
        print(f"{name}: {late} request(s) still in flight were answered 503 (server stopping)", file=sys.stderr, flush=True)
    server.server_close()
    return 130 if cut_short.is_set() else 0


def _shut(handler: BaseHTTPRequestHandler) -> None:
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


def make_server(handler: type[JSONHandler], attributes: dict[str, Any], host: str, port: int) -> StoppingHTTPServer:
    """A threading HTTP server whose handler class carries ``attributes`` (the app it serves, its ``api_key``); port 0
    picks a free one. It stops cleanly under traffic (:meth:`StoppingHTTPServer.stop`).

    :class:`~ee_middleware.adapters.errors.ServerStartError` when the address cannot be taken (a port in use)."""
    try:
        return StoppingHTTPServer((host, port), type("Handler", (handler,), attributes))
    except OSError as exc:
        raise address_error(host, port, exc) from exc


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`~ee_middleware.adapters.errors.ServerStartError` now when a server could not listen on
    ``host:port`` (checked as the HTTP servers bind, with ``SO_REUSEADDR``), before minutes of model loading."""
    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise address_error(host, port, exc) from exc


def address_error(host: str, port: int, exc: OSError) -> ServerStartError:
    """What to do when ``host:port`` cannot be listened on."""
    if exc.errno == errno.EADDRINUSE:
        why = "another process already listens there (a server started before?): stop it, or pick another --port"
    else:
        why = f"{exc.strerror or exc}: check --host (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0) and --port"
    return ServerStartError(f"Cannot listen on {host}:{port}: {why}.", url=f"http://{host}:{port}/v1")
