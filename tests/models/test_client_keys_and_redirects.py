"""What an OpenAI-compatible client says of an API key no HTTP header can carry and of a redirect (a serving sweep of
2026-12-07): a key read from a file saved with Windows line endings (``KEY=$(cat key.txt)`` keeps the ``\\r``) failed
every request as an outage, the whole key printed in the error and in ``--json``; a non-ASCII key was an unexpected
UnicodeEncodeError; a 301 to https was "not JSON: an empty body". Real HTTP servers on 127.0.0.1."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ee_middleware.errors import ConfigError, EEError, ModelResponseError
from ee_middleware.models.openai_compat import OpenAIChatClient, serving_api_key
from ee_middleware.models.spec import build_chat_client
from ee_middleware.testing.http import ScriptedChatServer, serving

KEYS = ["sk-live-TOPSECRET\r", "sk-live-TOPSECRET\r\n", "sk live TOPSECRET", "clé-TOPSECRET"]


@pytest.mark.parametrize("key", KEYS)
def test_a_key_no_header_can_carry_is_refused_naming_where_it_came_from_not_the_key(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedChatServer(["fine"]) as server:
        with pytest.raises(ConfigError) as given:
            OpenAIChatClient(server.base_url, "m", api_key=key)
        monkeypatch.setenv("OPENAI_API_KEY", key)
        monkeypatch.delenv("EE_OPENAI_API_KEY", raising=False)
        with pytest.raises(EEError) as from_env:
            build_chat_client(f"openai:{server.base_url}#m")
        assert server.requests == [], "nothing was sent"
    assert "an HTTP header cannot carry" in str(given.value) and "TOPSECRET" not in str(given.value), given.value
    assert "The API key from OPENAI_API_KEY has" in str(from_env.value) and "TOPSECRET" not in str(from_env.value), from_env.value


@pytest.mark.parametrize("key", KEYS)
def test_a_serving_key_no_header_can_carry_is_refused_naming_the_variable(key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        serving_api_key({"EE_SERVE_API_KEY": key})
    assert "The API key from EE_SERVE_API_KEY has" in str(raised.value) and "TOPSECRET" not in str(raised.value)
    assert serving_api_key({"EE_SERVE_API_KEY": "sk-live-fine"}) == "sk-live-fine" and serving_api_key({}) == ""


class _Redirecting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _redirect(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(301)
        self.send_header("Location", "https://alice:pw@secure.example.com/v1/chat/completions")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _redirect


def test_a_redirect_is_said_with_where_it_leads_not_read_as_an_empty_answer() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    server.daemon_threads = True
    with serving(server) as url:
        client = OpenAIChatClient(url, "m", retries=0)
        with pytest.raises(ModelResponseError) as raised:
            client.complete([{"role": "user", "content": "hi"}])
        with pytest.raises(ModelResponseError) as listing:
            client.list_models()
    for error in (raised.value, listing.value):
        text = str(error)
        assert "answered HTTP 301, a redirect to https://***@secure.example.com/v1/chat/completions" in text, text
        assert "pw" not in text.replace("https://", "") and "not JSON" not in text, text
        assert error.status == 301


def test_a_given_key_no_header_can_carry_is_said_of_where_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: a key passed as api_key was said to come from "EE_OPENAI_API_KEY or OPENAI_API_KEY, or api_key", and an
    eval's key read from its api_key_env (EE_SERVE_API_KEY) as well: the user fixed the wrong variable."""
    from ee_middleware.evals.job import EvalJob

    with pytest.raises(ConfigError, match="The API key from the api_key given has a line break"):
        OpenAIChatClient("http://127.0.0.1:9/v1", "m", api_key="sk-TOPSECRET\r")
    monkeypatch.setenv("EE_SERVE_API_KEY", "sk-TOPSECRET\r\n")
    job = EvalJob.model_construct(model="openai:http://127.0.0.1:9/v1#m", api_key_env="EE_SERVE_API_KEY", timeout_s=5.0, retries=0)
    with pytest.raises(EEError) as raised:
        build_chat_client(job.model, **job.client_options())
    assert "The API key from EE_SERVE_API_KEY has a line break" in str(raised.value) and "TOPSECRET" not in str(raised.value)
