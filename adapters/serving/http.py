"""The HTTP side shared by the local model server and the alias router: OpenAI-shaped JSON in and out.

Both answer ``GET /health`` and ``GET /v1/models``, read a JSON object per ``POST``, and answer
errors in the OpenAI shape (``{"error": {"message", "type", "code"}}``), so any OpenAI-compatible
client (and :class:`~ee_middleware.models.OpenAIChatClient`) reads them the same way as vLLM's.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ee_middleware.adapters.errors import ServerStartError


class RequestError(Exception):
    """A request the server refuses: the HTTP status, the message and the OpenAI error type."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def error_body(status: int, message: str, kind: str = "BadRequestError") -> dict[str, Any]:
    """An error answer in the OpenAI shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


class _ClientGone(Exception):
    """Writing to the client failed: it closed the connection (or it broke)."""


@dataclass
class EventStream:
    """An answer sent as it is produced: the bytes of a server-sent event stream (``"stream": true``).

    ``chunks`` is read until it ends; ``close`` runs afterwards, also when the client went away. An
    exception from ``chunks`` after the first bytes ends the stream with an OpenAI-shaped error event
    (the status line is already sent by then)."""

    chunks: Iterable[bytes]
    close: Callable[[], None] = lambda: None


def sse_event(payload: Any) -> bytes:
    """One server-sent event carrying ``payload`` as JSON (``"[DONE]"`` is sent as it is)."""
    data = payload if payload == "[DONE]" else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class JSONHandler(BaseHTTPRequestHandler):
    """Routes ``GET /health`` and ``GET /v1/models``; subclasses set :meth:`models` and :meth:`post`."""

    protocol_version = "HTTP/1.1"

    def models(self) -> Any:
        raise NotImplementedError

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """``(status, payload)`` for a POST of a JSON object; a ``str`` payload is sent as plain text, an
        :class:`EventStream` as a server-sent event stream."""
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self.send_json(200, {})
        elif path == "/v1/models":
            self.send_json(200, self.models())
        else:
            self.send_json(404, error_body(404, f"No route {self.path}", "NotFoundError"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not isinstance(body, dict):
                raise RequestError(400, "the request body must be a JSON object")
            status, payload = self.post(path, body)
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

    def send_json(self, status: int, payload: Any) -> None:
        self.send_bytes(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json")

    def send_stream(self, status: int, stream: EventStream) -> None:
        """Send ``stream`` with chunked transfer encoding, each piece as soon as it is produced."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            tail = b"\n\n"  # the last bytes sent: an event is complete once they end in a blank line
            try:
                for chunk in stream.chunks:
                    if chunk:
                        self._write_chunk(chunk)
                        tail = (tail + chunk)[-2:]
            except _ClientGone:
                raise
            except Exception as exc:  # noqa: BLE001 - the status is sent: say what broke inside the stream
                error = sse_event(error_body(502, f"the stream broke: {type(exc).__name__}: {exc}", "BadGatewayError"))
                self._write_chunk(error if tail == b"\n\n" else b"\n\n" + error)  # never inside a half-sent event
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

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(handler: type[JSONHandler], attributes: dict[str, Any], host: str, port: int) -> ThreadingHTTPServer:
    """A threading HTTP server whose handler class carries ``attributes`` (the app it serves); port 0 picks a free one.

    :class:`~ee_middleware.adapters.errors.ServerStartError` when the address cannot be taken (a port in use)."""
    try:
        server = ThreadingHTTPServer((host, port), type("Handler", (handler,), attributes))
    except OSError as exc:
        raise address_error(host, port, exc) from exc
    server.daemon_threads = True
    return server


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
