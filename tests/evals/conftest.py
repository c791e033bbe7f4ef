"""Real parts for the eval tests: a tiny random Llama behind the local model server (a real HTTP server)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.testing.http import serving

CORPUS = [
    '<tool_call>{"name": "ls", "arguments": {"a": true}}</tool_call>',
    "I have completed the request. The file is in the folder.",
    "cd mkdir touch cat grep sort ls pwd mv cp rm echo wc diff tail",
] * 4


@dataclass(frozen=True)
class Served:
    base_url: str
    model: str


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-llama")
    return save_tiny_llama(folder, build_test_tokenizer(CORPUS), max_positions=512)


@pytest.fixture(scope="session")
def local_server(tiny_model_dir: Path) -> Iterator[Served]:
    """The adapters' local model server (transformers, real HTTP) serving the tiny random Llama."""
    from ee_middleware.adapters.serving.local_server import LocalModelServer, make_http_server

    app = LocalModelServer(tiny_model_dir, served_model_name="tiny")
    with serving(make_http_server(app, port=0)) as url:
        yield Served(url, "tiny")


class _Stalling(BaseHTTPRequestHandler):
    """Answers the first ``good`` chat requests with a tool call, then stalls past any client timeout."""

    good = 1
    stall_s = 3.0
    seen: list[int]

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        import json
        import time

        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.seen.append(1)
        if len(self.seen) > self.good:
            time.sleep(self.stall_s)
        call = {"id": "c1", "type": "function", "function": {"name": "pwd", "arguments": "{}"}}
        body = json.dumps(
            {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "", "tool_calls": [call]}, "finish_reason": "tool_calls"}
                ]
            }
        )
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
        except OSError:  # the client gave up (timed out) before the answer
            pass


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """A stdlib HTTP server that answers once, then stalls: a server timing out mid-run (real HTTP, scripted answers)."""
    handler = type("Handler", (_Stalling,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server) as url:
        yield url
