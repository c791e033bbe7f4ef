"""ScriptedChatServer answers ``"stream": true`` as OpenAI and vLLM do: server-sent ``chat.completion.chunk`` events.

The clients are real: the project's own ``OpenAIChatClient.stream`` and httpx, reading the event stream as it comes and
putting the message back together from its deltas. (The openai SDK is no dependency: CI's every-extra install has no
openai, so a test of it would only ever skip there.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.testing.http import Reply, ScriptedChatServer, ScriptedChatServerError

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]
CALLS = [
    {"id": "call-1", "type": "function", "function": {"name": "search_flights", "arguments": '{"origin": "FRA", "dest": "JFK", "day": 3}'}},
    {"id": "call-2", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
]
TOOL_TURN = {"role": "assistant", "content": "Let me look that up for you, one moment.", "tool_calls": CALLS}


def _events(data: Iterable[bytes]) -> list[Any]:
    """The ``data:`` payloads of a server-sent event stream, in order (JSON decoded; ``[DONE]`` as the string)."""
    text = b"".join(data).decode()
    assert text.endswith("\n\n"), "every event ends with a blank line"
    events = []
    for block in text.split("\n\n")[:-1]:
        [line] = block.split("\n")
        assert line.startswith("data: "), line
        payload = line.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def _assemble(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per choice index, the message and finish reason the deltas add up to (as the openai SDK and LangChain add them)."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            into = choices.setdefault(choice["index"], {"message": {}, "finish_reason": None, "deltas": 0})
            message, delta = into["message"], choice["delta"]
            into["deltas"] += 1
            for key, value in delta.items():
                if key == "tool_calls":
                    calls = message.setdefault("tool_calls", [])
                    for part in value:
                        while len(calls) <= part["index"]:
                            calls.append({"function": {"arguments": ""}})
                        call = calls[part["index"]]
                        for field in ("id", "type"):
                            if field in part:
                                call[field] = part[field]
                        function = part.get("function", {})
                        if "name" in function:
                            call["function"]["name"] = function["name"]
                        call["function"]["arguments"] += function.get("arguments", "")
                elif key == "role":
                    message["role"] = value
                else:
                    message[key] = message.get(key, "") + value
            if choice["finish_reason"] is not None:
                assert into["finish_reason"] is None, "one finish reason per choice"
                into["finish_reason"] = choice["finish_reason"]
    return choices


def test_a_streamed_answer_is_sent_as_chunks_that_add_up_to_the_scripted_message_with_the_usage_last() -> None:
    body = {"model": "j", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}, "tools": []}
    with ScriptedChatServer([(TOOL_TURN, "tool_calls")]) as server:
        client = OpenAIChatClient(server.base_url, "j", retries=0, timeout_s=10)
        try:
            with client.stream("/chat/completions", body) as parts:
                events = _events(parts)
        finally:
            client.close()
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks, usage = events[:-2], events[-2]
    assert {(c["object"], c["id"], c["model"]) for c in events[:-1]} == {("chat.completion.chunk", "chatcmpl-0", "j")}
    assert len({c["created"] for c in events[:-1]}) == 1 and isinstance(events[0]["created"], int)
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]
    [choice] = _assemble(chunks).values()
    assert choice["message"] == TOOL_TURN and choice["finish_reason"] == "tool_calls"
    content_deltas = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content_deltas) > 1, "the text comes in pieces, as a model's tokens do"
    call_deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    # each call opens with its index, id, type and name (arguments empty), then its arguments follow by index only
    assert call_deltas[0] == [{"index": 0, "id": "call-1", "type": "function", "function": {"name": "search_flights", "arguments": ""}}]
    assert all(set(d[0]) == {"index", "function"} and set(d[0]["function"]) == {"arguments"} for d in call_deltas[1:] if "id" not in d[0])
    assert len([d for d in call_deltas if d[0]["index"] == 0]) > 2, "the arguments come in pieces"
    assert usage["choices"] == [] and set(usage["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"] > 0
    assert server.requests == [body], "a streamed request is kept as it came, as any other"


def test_without_include_usage_no_usage_chunk_is_sent_and_the_answer_is_an_event_stream() -> None:
    body = {"model": "m", "messages": HELLO, "stream": True}
    with ScriptedChatServer(["First answer.", ("Cut off in the mid", "length")]) as server, httpx.Client(timeout=10) as http:
        answers = []
        for _ in range(2):
            with http.stream("POST", f"{server.base_url}/chat/completions", json=body) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                answers.append(_events(response.iter_bytes()))
    for events in answers:
        assert events[-1] == "[DONE]"
        assert all(chunk["choices"] and "usage" not in chunk for chunk in events[:-1])
    assembled = [_assemble(events[:-1])[0] for events in answers]
    assert [(a["message"], a["finish_reason"]) for a in assembled] == [
        ({"role": "assistant", "content": "First answer."}, "stop"),
        ({"role": "assistant", "content": "Cut off in the mid"}, "length"),
    ]
    assert server.requests == [body, body]


def test_a_reply_is_streamed_when_it_is_a_completion_and_sent_as_it_is_otherwise() -> None:
    completion = {
        "id": "cmpl-x",
        "object": "chat.completion",
        "created": 7,
        "model": "adapter-v1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Zero.", "reasoning_content": "Think."}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "One."}, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }
    refusal = {"object": "error", "message": "too many tokens", "type": "BadRequestError", "code": 400}
    script = [Reply(completion), Reply(refusal, 400), Reply({"odd": True})]
    body = {"model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    with ScriptedChatServer(script) as server, httpx.Client(timeout=10) as http:
        responses = [http.post(f"{server.base_url}/chat/completions", json=body) for _ in range(3)]
    streamed, refused, odd = responses
    events = _events([streamed.content])
    assert {(c["id"], c["model"], c["created"]) for c in events[:-1]} == {("cmpl-x", "adapter-v1", 7)}
    assembled = _assemble(events[:-2])
    assert {i: (a["message"], a["finish_reason"]) for i, a in assembled.items()} == {
        i: (c["message"], c["finish_reason"]) for i, c in enumerate(completion["choices"])
    }
    assert events[-2] == {
        "id": "cmpl-x",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "adapter-v1",
        "choices": [],
        "usage": completion["usage"],
    }
    assert (refused.status_code, refused.headers["content-type"], refused.json()) == (400, "application/json", refusal)
    assert (odd.status_code, odd.json()) == (200, {"odd": True})
    assert len(server.requests) == 3


def test_a_script_that_fails_on_a_streamed_request_gives_a_500_before_any_event() -> None:
    with pytest.raises(ScriptedChatServerError, match="failed on request 1"), ScriptedChatServer(lambda body: 42) as server:  # type: ignore[arg-type, return-value]
        response = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO, "stream": True}, timeout=10)
        assert response.status_code == 500 and "the script gave 42" in response.json()["error"]["message"]
