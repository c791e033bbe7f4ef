"""A real HTTP server on a background thread for as long as a ``with`` block lasts, and a JSON answer for its handlers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from socketserver import BaseServer
from typing import Any


@contextmanager
def serving(server: BaseServer, *, path: str = "/v1") -> Iterator[str]:
    """Run ``server.serve_forever`` on a daemon thread; yield its base URL (``http://HOST:PORT`` + ``path``).

    On leaving the block the server is shut down, its socket closed and its thread joined, also when
    the block raised.
    """
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ee-test-server", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def send_json(handler: BaseHTTPRequestHandler, body: Any, status: int = 200) -> None:
    """Answer the request ``handler`` is serving with ``body`` as JSON and ``status``."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
