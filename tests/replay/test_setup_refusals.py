"""A model server that refuses every request for its setup stops a replay job at once; one that refuses a request's
messages fails that trajectory alone (a real replay job over the BFCL store, against a real local HTTP server that
answers as llama-server does)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ModelRequestError
from ee_middleware.models import openai_compat
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import send_json, serving
from tests.conftest import BFCL_ENTRIES


@contextmanager
def llama_server_refusing(message: str) -> Iterator[tuple[str, list[Any]]]:
    """llama-server answering every chat request with its HTTP 500 ``message``; yields its URL and the requests."""
    requests: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            requests.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            send_json(self, {"error": {"code": 500, "message": message, "type": "server_error"}}, 500)

        def do_GET(self) -> None:
            send_json(self, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with serving(server) as url:
        yield url, requests


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_compat, "_sleep", lambda seconds: None)


def test_llama_server_without_jinja_stops_the_job_at_the_first_trajectory_naming_its_message(bfcl_store_path: Path) -> None:
    """Before: its 500 refusal was a request problem of each trajectory's own, so the job went through the whole store,
    failing every trajectory (and rebuilding the sandbox and proposer after each)."""
    with llama_server_refusing("tools param requires --jinja flag") as (url, requests):
        config = ReplayConfig.load(store=bfcl_store_path, k=2, workers=1, policy=f"openai:{url}#m")
        with pytest.raises(ModelRequestError) as info:
            run_replay(config)
    message = str(info.value)
    assert info.value.setup and "tools param requires --jinja flag" in message and "start llama-server with --jinja" in message
    assert requests and LocalExperienceStore(bfcl_store_path).replays().height == 0, "no trajectory was recorded as failed"


def test_a_chat_template_failing_on_a_request_fails_that_trajectory_alone(bfcl_store_path: Path) -> None:
    with llama_server_refusing("Unknown argument ensure_ascii for function tojson at row 11, column 37") as (url, _):
        config = ReplayConfig.load(store=bfcl_store_path, k=2, workers=1, policy=f"openai:{url}#m")
        summary = run_replay(config)
    assert len(summary.failed) == BFCL_ENTRIES and not summary.done
    assert all("chat template failed on this request" in reason for reason in summary.failed.values()), summary.failed
