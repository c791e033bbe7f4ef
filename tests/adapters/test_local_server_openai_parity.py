"""The local server answers OpenAI clients as vLLM does where it can, and refuses what it cannot honour (sweep of real
``openai`` SDK and LangChain ``ChatOpenAI`` clients): before, ``response_format`` (LangChain's
``with_structured_output``), ``logprobs``, penalties, ``logit_bias`` and the like were accepted and quietly ignored
(200 with free text, ``logprobs: null``), ``parallel_tool_calls: false`` returned every call, one good and one broken
``<tool_call>`` gave the good one alone where vLLM's hermes parser gives none, ``max_tokens`` won over
``max_completion_tokens``, and ``stream_options`` without ``stream`` was taken. The router took a replica's 404 for a
route it lacks (``/v1/completions`` on a local replica) for a replica that lacks the app's live adapter. A real local
server process (the tiny model) and the real router."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.http import JSONHandler, RequestError, make_server
from ee_middleware.adapters.serving.local_server import _choice
from ee_middleware.adapters.serving.router import AliasRouter
from tests.adapters.helpers import write_adapter

MESSAGES = [{"role": "user", "content": "hi"}]


def _chat(server: Any, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/chat/completions", json={"model": "tiny-base", "messages": MESSAGES, **body}, timeout=120)


@pytest.mark.parametrize(
    ("parameter", "value", "why"),
    [
        ("response_format", {"type": "json_object"}, "cannot constrain"),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}, "cannot constrain"),
        ("structured_outputs", {"choice": ["yes", "no"]}, "cannot constrain"),
        ("logprobs", True, "log-probabilities"),
        ("top_logprobs", 2, "log-probabilities"),
        ("presence_penalty", -5, "sampling"),
        ("frequency_penalty", 0.5, "sampling"),
        ("logit_bias", {"42": 100}, "sampling"),
        ("top_k", 5, "sampling"),
        ("min_tokens", 3, "sampling"),
        ("repetition_penalty", 1.2, "sampling"),
        ("ignore_eos", True, "sampling"),
        ("stop_token_ids", [2], "sampling"),
        ("add_generation_prompt", False, "renders every prompt"),
        ("continue_final_message", True, "renders every prompt"),
        ("chat_template_kwargs", {"enable_thinking": False}, "renders every prompt"),
    ],
)
def test_a_parameter_the_server_cannot_honour_is_a_400_naming_it(local_server: Any, parameter: str, value: Any, why: str) -> None:
    for stream in (False, True):
        answer = _chat(local_server, **{parameter: value}, stream=stream)
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]["message"]
        assert message.startswith(f"{parameter}=") and why in message and "ee serve vllm" in message, message


def test_neutral_values_of_those_parameters_are_taken(local_server: Any) -> None:
    neutral = {
        "response_format": {"type": "text"},
        "logprobs": False,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "top_k": -1,
        "repetition_penalty": 1.0,
        "ignore_eos": False,
        "parallel_tool_calls": True,
    }
    answer = _chat(local_server, **neutral, max_tokens=1, temperature=0)
    assert answer.status_code == 200, answer.text


def test_stream_options_without_stream_is_refused_in_vllms_words(local_server: Any) -> None:
    answer = _chat(local_server, stream_options={"include_usage": True}, max_tokens=1)
    assert answer.status_code == 400 and answer.json()["error"]["message"] == "Stream options can only be defined when `stream=True`."
    assert _chat(local_server, stream_options={}, max_tokens=1).status_code == 200  # an empty one, as vLLM takes it


def test_stream_is_read_as_a_boolean_as_vllm_reads_it(local_server: Any) -> None:
    """``"stream": "false"`` streamed the answer (a string's truth); vLLM's request model reads it as false."""
    for value, streamed in (("false", False), ("True", True), (0, False), (1, True), ("no", False), (1.0, True), (0.0, False)):
        answer = _chat(local_server, stream=value, max_tokens=2)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/event-stream") is streamed, (value, answer.headers)
    for value in ("maybe", 2, 0.5, " true", [True], {"on": True}):  # (pydantic refuses " true" too)
        refused = _chat(local_server, stream=value, max_tokens=2)
        assert refused.status_code == 400 and "stream must be a boolean" in refused.json()["error"]["message"], refused.text
    # the router read it so too: it waited for an event stream, took the replica's JSON for a broken one, and passed over
    # every replica (a 502)
    router = AliasRouter(_NoApps(), [local_server.url], log=lambda _: None)
    status, answer = router.forward(
        "/v1/chat/completions", {"model": "tiny-base", "messages": MESSAGES, "stream": "false", "max_tokens": 2}
    )
    assert status == 200 and answer["object"] == "chat.completion", answer
    with pytest.raises(RequestError, match="stream must be a boolean"):
        router.forward("/v1/chat/completions", {"model": "tiny-base", "messages": MESSAGES, "stream": "maybe"})


class _NoApps:
    def apps(self) -> dict[str, Any]:
        return {}


def test_an_image_part_is_a_400_not_dropped(local_server: Any) -> None:
    """An ``image_url`` part was dropped and the model answered the text alone, as if the client had sent no image."""
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
    ]
    answer = httpx.post(
        f"{local_server.url}/chat/completions",
        json={"model": "tiny-base", "messages": [{"role": "user", "content": parts}], "max_tokens": 2},
        timeout=120,
    )
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert 'messages[0] has a content part of type "image_url"' in message and "ee serve vllm" in message, message
    # text in other shapes is read as text (a LangChain tool's list[str] result, the Responses API's input_text)
    for text in (parts[:1], ["alpha", "beta"], [{"type": "input_text", "text": "hi"}], [{"type": "refusal", "refusal": "no"}]):
        text_parts = httpx.post(
            f"{local_server.url}/chat/completions",
            json={"model": "tiny-base", "messages": [{"role": "user", "content": text}], "max_tokens": 2},
            timeout=120,
        )
        assert text_parts.status_code == 200, (text, text_parts.text)


def test_a_message_or_a_prompt_of_the_wrong_shape_is_a_400_naming_it(local_server: Any) -> None:
    """``"content": 5`` was rendered as the text "5", a part that is a number as "7", and ``/tokenize`` of a ``prompt``
    list tokenized its Python text (``"[1, 2]"``): the model answered, and the tokens counted, what no client sent."""
    for messages, named in (
        ([{"role": "user", "content": 5}], "messages[0].content must be a string, a list of content parts or null, got 5"),
        ([{"role": "user", "content": {"text": "hi"}}], "messages[0].content must be"),
        ([{"role": "user", "content": ["hi", 7]}], "messages[0].content[1] must be a content part"),
        ([{"role": 3, "content": "hi"}], "messages[0].role must be a string, got 3"),
    ):
        for url in (f"{local_server.url}/chat/completions", _tokenize_url(local_server)):
            answer = httpx.post(url, json={"model": "tiny-base", "messages": messages}, timeout=120)
            assert answer.status_code == 400 and named in answer.json()["error"]["message"], (url, answer.text)
    for body, named in (({"prompt": [1, 2]}, "got prompt [1, 2]"), ({}, "got neither")):
        answer = httpx.post(_tokenize_url(local_server), json={"model": "tiny-base", **body}, timeout=120)
        assert answer.status_code == 400 and named in answer.json()["error"]["message"], answer.text
    counted = httpx.post(_tokenize_url(local_server), json={"model": "tiny-base", "prompt": "hi"}, timeout=120)
    assert counted.status_code == 200 and counted.json()["count"] >= 1, counted.text
    empty = httpx.post(
        f"{local_server.url}/chat/completions", json={**_body(), "messages": [{"role": "user", "content": None}]}, timeout=120
    )
    assert empty.status_code == 200, empty.text  # content null is a message with no text, as OpenAI's API allows


def _body() -> dict[str, Any]:
    return {"model": "tiny-base", "max_tokens": 1}


def _tokenize_url(server: Any) -> str:
    return f"{server.url.removesuffix('/v1')}/tokenize"  # (at the root, as vLLM's)


def test_max_completion_tokens_wins_over_max_tokens(local_server: Any) -> None:
    answer = _chat(local_server, max_tokens=5, max_completion_tokens=1, temperature=0)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 1, answer.text
    bad = _chat(local_server, max_tokens=0)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("max_tokens must be"), bad.text


TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("get_weather", "get_time")]
TWO_CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def test_parallel_tool_calls_false_keeps_the_first_call_alone() -> None:
    both = _choice(0, TWO_CALLS, TOOLS)["message"]["tool_calls"]
    assert [c["function"]["name"] for c in both] == ["get_weather", "get_time"]
    first = _choice(0, TWO_CALLS, TOOLS, one_call=True)
    assert [c["function"]["name"] for c in first["message"]["tool_calls"]] == ["get_weather"]
    assert first["finish_reason"] == "tool_calls"


def test_one_broken_call_among_good_ones_gives_no_calls_and_the_whole_text() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{name: get_time, arguments: {city: Paris}}\n</tool_call>'
    choice = _choice(0, text, TOOLS)
    assert "tool_calls" not in choice["message"] and choice["message"]["content"] == text and choice["finish_reason"] == "stop"


class _NoCompletionsRoute(JSONHandler):
    """A replica as ``ee serve local`` answers a route it does not have."""

    def models(self) -> Any:
        return {"object": "list", "data": [{"id": "base", "object": "model"}]}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        raise RequestError(404, f"No route {self.path}", "NotFoundError")


def test_the_router_relays_a_replicas_missing_route_as_it_is(tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "registry")
    name = registry.register(write_adapter(tmp_path / "adapter"), "bot").name
    registry.switch_live(name)
    server = make_server(_NoCompletionsRoute, {"log_message": lambda *a: None}, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    logged: list[str] = []
    try:
        router = AliasRouter(registry, [f"http://127.0.0.1:{server.server_address[1]}/v1"], log=logged.append)
        status, answer = router.forward("/v1/completions", {"model": "bot", "prompt": "hi"})
        assert status == 404 and answer["error"]["message"] == "No route /v1/completions", answer
        assert not logged  # no "does not hold the live adapter" for the operator
        assert all(isinstance(entry["created"], int) for entry in router.models()["data"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_client_that_goes_away_stops_its_generation(local_server: Any) -> None:
    """The client closes its connection right after sending (a time-out, a router giving up): the server stops the
    generation at the next token and answers nothing, and serves the next request."""
    import socket

    body = json.dumps({"model": "tiny-base", "messages": MESSAGES, "max_tokens": 400, "temperature": 0}).encode()
    host, port = local_server.url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert _chat(local_server, max_tokens=1).status_code == 200  # waits for the model until the first request let go
    import time

    for _ in range(200):  # (said as the first request lets go of the model: a moment after the second may be answered)
        if "the client of POST /v1/chat/completions went away" in local_server.log_tail(200):
            break
        time.sleep(0.05)
    assert "the client of POST /v1/chat/completions went away" in local_server.log_tail(200)
