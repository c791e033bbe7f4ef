"""The alias router against a replica that answers HTTP 200 with something that is not a completion (a misconfigured
replica or ingress): it is passed over like a replica that fails, put aside for the cool-down with a log line, and when
every replica answers so the app gets an OpenAI-shaped 502 naming the reason. Each replica is a real HTTP server.

Before: ``{"hello": "world"}`` was relayed verbatim with 200, every other request, and nothing was logged."""

from __future__ import annotations

import contextlib
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.testing.http import Reply, ScriptedChatServer, serving

from .helpers import WebServerPage

MESSAGES = [{"role": "user", "content": "Hi"}]


class _EmptyRegistry:
    def apps(self) -> dict[str, Any]:
        return {}


def _chat(routed: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{routed}/chat/completions", json={"model": "m", "messages": MESSAGES, **body}, timeout=60)


@pytest.mark.parametrize(
    "garbage", [Reply({"hello": "world"}), Reply("not an object"), Reply({"choices": "none"}), Reply({"id": "c", "choices": []})]
)
def test_a_replica_answering_200_without_a_completion_is_passed_over_and_put_aside(garbage: Reply) -> None:
    said: list[str] = []
    with ScriptedChatServer([garbage]) as broken, ScriptedChatServer(["fine"]) as healthy:
        router = AliasRouter(_EmptyRegistry(), [broken.base_url, healthy.base_url], cooldown_s=600, log=said.append)
        with serving(make_router_server(router, port=0)) as routed:
            answers = [_chat(routed) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert all(a.json()["choices"][0]["message"]["content"] == "fine" for a in answers), [a.text for a in answers]
    assert len(broken.requests) == 1, "asked once, then passed over for the cool-down"
    assert len(healthy.requests) == 4
    assert len(said) == 1 and broken.base_url in said[0] and "passed over" in said[0] and "not a chat completion" in said[0], said


def test_when_every_replica_answers_no_completion_the_app_gets_a_502_naming_why() -> None:
    with ScriptedChatServer([Reply({"hello": "world"})]) as one, ScriptedChatServer([Reply({"hello": "world"})]) as two:
        router = AliasRouter(_EmptyRegistry(), [one.base_url, two.base_url], log=lambda _line: None)
        with serving(make_router_server(router, port=0)) as routed:
            answer = _chat(routed)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["type"] == "BadGatewayError", error
    assert error["message"].count("not a chat completion") == 2 and '"hello": "world"' in error["message"], error


def test_a_replica_answering_200_with_a_page_that_is_not_json_is_put_aside_too() -> None:
    said: list[str] = []
    page = ThreadingHTTPServer(("127.0.0.1", 0), WebServerPage)
    page.daemon_threads = True
    with serving(page) as url, ScriptedChatServer(["fine"]) as healthy:
        router = AliasRouter(_EmptyRegistry(), [url, healthy.base_url], cooldown_s=600, log=said.append)
        with serving(make_router_server(router, port=0)) as routed:
            answers = [_chat(routed) for _ in range(3)]
    assert all(a.status_code == 200 and a.json()["choices"] for a in answers), [a.text for a in answers]
    assert len(healthy.requests) == 3
    assert len(said) == 1 and url in said[0] and "not JSON" in said[0], said


def test_streams_are_still_relayed_through_a_checked_router() -> None:
    with ScriptedChatServer(["fine"]) as healthy:
        router = AliasRouter(_EmptyRegistry(), [healthy.base_url], log=lambda _line: None)
        with serving(make_router_server(router, port=0)) as routed:
            streamed = _chat(routed, stream=True)
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]"), streamed.text


@pytest.mark.parametrize("answer", ["page", "json"])
def test_a_stream_request_answered_200_without_an_event_stream_is_passed_over(answer: str) -> None:
    """Before: with ``"stream": true`` a replica's HTML page (a misrouted ingress), or a whole JSON answer of a server that
    ignored ``stream``, was relayed to the app as its stream, which its SSE client cannot read (sweep S1, low). No event
    stream, no answer: the next replica streams it."""
    said: list[str] = []
    page = ThreadingHTTPServer(("127.0.0.1", 0), WebServerPage)
    page.daemon_threads = True
    with contextlib.ExitStack() as stack:
        if answer == "page":
            broken_url = stack.enter_context(serving(page))
        else:
            broken_url = stack.enter_context(ScriptedChatServer([Reply({"id": "c", "choices": [{"index": 0}]})])).base_url
        healthy = stack.enter_context(ScriptedChatServer(["fine"]))
        router = AliasRouter(_EmptyRegistry(), [broken_url, healthy.base_url], cooldown_s=600, log=said.append)
        routed = stack.enter_context(serving(make_router_server(router, port=0)))
        answers = [_chat(routed, stream=True) for _ in range(2)]
    assert all(a.status_code == 200 and a.headers["content-type"].startswith("text/event-stream") for a in answers), [
        a.text for a in answers
    ]
    assert all("fine" in a.text for a in answers) and len(healthy.requests) == 2
    assert len(said) == 1 and broken_url in said[0] and "no event stream" in said[0], said
