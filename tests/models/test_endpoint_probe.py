""":func:`~ee_middleware.models.spec.endpoint_problem`'s quick check (one ``GET /models`` attempt within
:data:`~ee_middleware.models.spec.PROBE_TIMEOUT_S`), against real HTTP servers: what a replay and ``ee experience eval``
ask after a request already waited out the client's timeout and retries."""

from __future__ import annotations

import base64
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ee_middleware.models import spec
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.spec import endpoint_problem
from ee_middleware.testing.http import send_json, serving
from tests.replay.test_server_failures import WedgedServer


def test_the_quick_check_asks_once_and_waits_at_most_the_probe_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung server costs one attempt of min(PROBE_TIMEOUT_S, the client's timeout_s), not the client's retries of its
    own timeout_s (the limit is lowered here from 30 s so the test runs in a second); the client is left as it was."""
    monkeypatch.setattr(spec, "PROBE_TIMEOUT_S", 0.5)
    with WedgedServer() as server:
        client = OpenAIChatClient(server.url, "m", timeout_s=20.0, retries=2, backoff_s=0.01)
        try:
            started = time.monotonic()
            problem = endpoint_problem(client, quick=True)
            took = time.monotonic() - started
            listings = server.listings
        finally:
            client.close()
    assert problem is not None and "after 1 attempt(s): timed out after 0.5 s" in problem, problem
    assert listings == 1 and took < 5.0, f"{listings} attempt(s) in {took:.1f} s"
    assert (client.timeout_s, client.retries) == (20.0, 2), "the client's own settings are untouched"


def test_a_client_with_a_shorter_timeout_is_waited_for_that_long() -> None:
    with WedgedServer() as server:
        client = OpenAIChatClient(server.url, "m", timeout_s=0.3, retries=3, backoff_s=0.01)
        try:
            problem = endpoint_problem(client, quick=True)
            listings = server.listings
        finally:
            client.close()
    assert problem is not None and "after 1 attempt(s): timed out after 0.3 s" in problem and listings == 1, problem


def test_the_quick_check_carries_the_clients_key_and_url_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is the client's own request (its API key, or the user:password of its URL): a server that needs them
    sees them on GET /models as on the client's requests; and the client's own connection pool works after it."""
    monkeypatch.delenv("EE_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            send_json(self, {"object": "list", "data": [{"id": "m"}]})

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        keyed = OpenAIChatClient(url, "m", api_key="sk-test")
        with_user = OpenAIChatClient(url.replace("http://", "http://user:secret@"), "m")
        try:
            assert keyed.list_models() == ["m"], "the client's own pool, opened before the check"
            assert endpoint_problem(keyed, quick=True) is None and endpoint_problem(with_user, quick=True) is None
            assert keyed.list_models() == ["m"], "and still open after it"
        finally:
            keyed.close()
            with_user.close()
    basic = "Basic " + base64.b64encode(b"user:secret").decode()
    assert seen == ["Bearer sk-test", "Bearer sk-test", basic, "Bearer sk-test"], seen
