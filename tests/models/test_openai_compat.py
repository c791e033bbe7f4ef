"""The OpenAI-compatible client: request shape, retries and typed errors, through ``httpx.MockTransport``.

The same client is exercised against a real local HTTP server in
``tests/replay/policies/test_openai_compat.py`` (through the policy) and
``tests/trainers/datasets/test_build_cli.py`` (through the teacher).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ee_middleware.errors import ModelRequestError, ModelResponseError, ModelServerError
from ee_middleware.models import ChatClient, OpenAIChatClient, Sampling
from ee_middleware.models.parsing import ParseProblem
from ee_middleware.records import ToolCall

URL = "http://models.test/v1"
TOOLS = [
    {"type": "function", "function": {"name": "check_stock", "parameters": {"type": "object", "properties": {"item": {"type": "string"}}}}}
]


def completion(*messages: Any) -> dict[str, Any]:
    return {"choices": [{"index": i, "message": m, "finish_reason": "tool_calls"} for i, m in enumerate(messages)]}


def call_message(item: str) -> dict[str, Any]:
    arguments = json.dumps({"item": item})
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": f"c-{item}", "type": "function", "function": {"name": "check_stock", "arguments": arguments}}],
    }


class Script:
    """Answers requests in order (the last answer repeats) and records them."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def client(self, **options: Any) -> OpenAIChatClient:
        options.setdefault("backoff_s", 0.0)
        return OpenAIChatClient(URL, "support-bot", transport=httpx.MockTransport(self), **options)


def test_is_a_chat_client_and_sends_the_request_it_describes() -> None:
    script = Script(httpx.Response(200, json=completion(call_message("apple"), call_message("pear"), call_message("plum"))))
    client = script.client(api_key="sk-secret", extra_body={"top_k": 5})
    assert isinstance(client, ChatClient)
    state = [
        {"role": "user", "content": "Is there any apple?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "check_stock", "arguments": {"item": "pear"}}}],
        },
        {"role": "tool", "tool_call_id": "c0", "content": "0"},
    ]
    choice, _, _ = client.complete(state, tools=TOOLS, n=3, sampling=Sampling(temperature=0.7, top_p=0.9, max_tokens=64, seed=11))
    [request] = script.requests
    body = json.loads(request.content)
    assert request.url == f"{URL}/chat/completions" and request.headers["Authorization"] == "Bearer sk-secret"
    assert (body["model"], body["n"], body["seed"], body["temperature"], body["top_p"], body["max_tokens"]) == (
        "support-bot",
        3,
        11,
        0.7,
        0.9,
        64,
    )
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto" and body["top_k"] == 5
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"item": "pear"}', "arguments go on the wire as JSON text"
    assert state[1]["tool_calls"][0]["function"]["arguments"] == {"item": "pear"}, "the caller's messages are not changed"
    assert "sk-secret" not in json.dumps(client.describe())
    [call] = choice.tool_calls()
    assert isinstance(call, ToolCall) and (call.id, call.name, call.arguments) == ("c-apple", "check_stock", {"item": "apple"})
    assert choice.finish_reason == "tool_calls"


def test_no_tools_sends_no_tool_choice_and_no_seed_when_unset() -> None:
    script = Script(httpx.Response(200, json=completion({"role": "assistant", "content": "Hello"})))
    [choice] = script.client().complete([{"role": "user", "content": "hi"}])
    body = json.loads(script.requests[0].content)
    assert "tools" not in body and "tool_choice" not in body and "seed" not in body and "top_p" not in body
    assert choice.text == "Hello" and "Authorization" not in script.requests[0].headers


def test_5xx_and_429_and_transport_errors_are_retried_then_succeed() -> None:
    script = Script(
        httpx.Response(503, text="loading"),
        httpx.ConnectError("refused"),
        httpx.Response(429, text="slow down"),
        httpx.Response(200, json=completion(call_message("kiwi"))),
    )
    [choice] = script.client(retries=3).complete([{"role": "user", "content": "kiwi?"}], tools=TOOLS)
    assert len(script.requests) == 4
    assert [c.name for c in choice.tool_calls() if isinstance(c, ToolCall)] == ["check_stock"]


def test_retries_exhausted_raise_a_server_error_naming_the_url_and_the_last_problem() -> None:
    script = Script(httpx.Response(500, text="engine crashed"))
    with pytest.raises(
        ModelServerError,
        match=r"No usable answer from http://models\.test/v1/chat/completions after 3 attempt\(s\): HTTP 500: engine crashed",
    ) as info:
        script.client(retries=2).complete([{"role": "user", "content": "x"}])
    assert len(script.requests) == 3 and info.value.url == f"{URL}/chat/completions"


def test_a_problem_that_ends_its_own_sentence_is_not_given_a_second_full_stop() -> None:
    script = Script(httpx.RemoteProtocolError("Server disconnected without sending a response."))
    with pytest.raises(ModelServerError) as info:
        script.client(retries=1).complete([{"role": "user", "content": "x"}])
    assert "without sending a response. Is the vLLM" in str(info.value) and ".." not in str(info.value)


def test_timeouts_are_retried_and_reported() -> None:
    script = Script(httpx.ReadTimeout("too slow"))
    with pytest.raises(ModelServerError, match=r"timed out after 2 s \(ReadTimeout\)"):
        script.client(retries=1, timeout_s=2).complete([{"role": "user", "content": "x"}])
    assert len(script.requests) == 2


def test_a_4xx_is_not_retried_and_keeps_the_server_text() -> None:
    script = Script(httpx.Response(404, json={"error": {"message": "The model `support-bot` does not exist."}}))
    with pytest.raises(ModelRequestError, match=r"HTTP 404: .*does not exist.*Check the model name \('support-bot'") as info:
        script.client(retries=5).complete([{"role": "user", "content": "x"}])
    assert len(script.requests) == 1 and info.value.status == 404


def test_a_body_that_is_not_json_is_a_response_error() -> None:
    script = Script(httpx.Response(200, text="<html>bad gateway</html>"))
    with pytest.raises(ModelResponseError, match="not JSON: an HTML page \\('bad gateway'\\), not an API answer"):
        script.client().complete([{"role": "user", "content": "x"}])
    assert issubclass(ModelResponseError, ModelServerError)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"choices": []}, "the response has no choices"),
        ({"object": "chat.completion", "id": "x"}, "the response has no choices"),
        ([1, 2], "the response has no choices"),
    ],
)
def test_json_without_choices_comes_back_as_a_problem_choice(payload: Any, problem: str) -> None:
    [choice] = Script(httpx.Response(200, json=payload)).client().complete([{"role": "user", "content": "x"}])
    [parsed] = choice.tool_calls()
    assert isinstance(parsed, ParseProblem) and parsed.problem == problem and choice.text == ""


def test_garbled_choices_are_returned_for_the_caller_to_count() -> None:
    bad_arguments = {
        "role": "assistant",
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "check_stock", "arguments": '{"item": '}}],
    }
    script = Script(
        httpx.Response(200, json={"choices": [{"message": bad_arguments}, "not an object", {"message": {"role": "assistant"}}]})
    )
    choices = script.client().complete([{"role": "user", "content": "x"}], n=3)
    problems = [item.problem for choice in choices for item in choice.tool_calls() if isinstance(item, ParseProblem)]
    assert len(problems) == 3
    assert (
        "arguments are not valid JSON" in problems[0]
        and "not a JSON object" in problems[1]
        and "neither tool_calls nor content" in problems[2]
    )


def test_list_models_and_close_reopens() -> None:
    script = Script(httpx.Response(200, json={"object": "list", "data": [{"id": "base"}, {"id": "support-bot-v3"}]}))
    client = script.client()
    assert client.list_models() == ["base", "support-bot-v3"]
    assert script.requests[0].method == "GET" and script.requests[0].url == f"{URL}/models"
    client.close()
    client.close()  # idempotent
    assert client.list_models() == ["base", "support-bot-v3"], "a closed client opens a new connection pool on next use"
    script.answers = [httpx.Response(200, json={"object": "list"})]
    with pytest.raises(ModelResponseError, match="without a 'data' list"):
        client.list_models()


@pytest.mark.parametrize(
    ("base_url", "model", "message"),
    [
        ("localhost:8000/v1", "m", "http"),
        ("http://localhost:8000/v1", "", "model name"),
        ("http://localhost:8000/v1/chat/completions/", "m", r"not an endpoint: use 'http://localhost:8000/v1'"),
    ],
)
def test_bad_construction(base_url: str, model: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpenAIChatClient(base_url, model)


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("EE_OPENAI_API_KEY", "sk-env")
    script = Script(httpx.Response(200, json=completion({"role": "assistant", "content": "ok"})))
    script.client().complete([{"role": "user", "content": "x"}])
    assert script.requests[0].headers["Authorization"] == "Bearer sk-env"


def test_server_errors_carry_the_last_status_and_whether_it_timed_out() -> None:
    with pytest.raises(ModelServerError) as failing:
        Script(httpx.Response(500, text="rank too large")).client(retries=0).complete([{"role": "user", "content": "x"}])
    assert (failing.value.status, failing.value.timed_out) == (500, False)
    with pytest.raises(ModelServerError) as slow:
        Script(httpx.ReadTimeout("slow")).client(retries=0).complete([{"role": "user", "content": "x"}])
    assert (slow.value.status, slow.value.timed_out) == (None, True)
    with pytest.raises(ModelServerError) as down:
        Script(httpx.ConnectError("refused")).client(retries=0).complete([{"role": "user", "content": "x"}])
    assert (down.value.status, down.value.timed_out) == (None, False)


def test_threads_using_a_new_client_at_once_share_one_connection_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay worker proposes for several states at once through one client: its first requests, made together,
    must open one pool (two would leave one unclosed). The pool's constructor is slowed so that the threads meet."""
    import threading
    import time

    made: list[httpx.Client] = []
    real_client = httpx.Client

    def slow_client(*args: Any, **kwargs: Any) -> httpx.Client:
        time.sleep(0.05)
        made.append(real_client(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(httpx, "Client", slow_client)
    client = Script(httpx.Response(200, json=completion(call_message("apple")))).client()
    start = threading.Barrier(4)

    def ask() -> None:
        start.wait()
        client.complete([{"role": "user", "content": "stock?"}], tools=TOOLS)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1
    client.close()
    assert made[0].is_closed


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (400, "a prompt longer than the model's context"),
        (401, "Check the API key (EE_OPENAI_API_KEY or OPENAI_API_KEY"),
        (404, "GET http://models.test/v1/models lists them"),
    ],
)
def test_a_refusal_says_what_to_check_for_its_status(status: int, advice: str) -> None:
    client = Script(httpx.Response(status, json={"error": {"message": "refused"}})).client()
    with pytest.raises(ModelRequestError) as info:
        client.complete([{"role": "user", "content": "hi"}])
    assert advice in str(info.value) and info.value.refusal in str(info.value)
    assert info.value.refusal.endswith(f'refused the request with HTTP {status}: {{"error":{{"message":"refused"}}}}.')
    assert ("model name" in str(info.value)) == (status == 404)


def test_a_server_that_refuses_reasoning_in_messages_is_sent_them_without_it_from_then_on() -> None:
    """Recorded states keep a reasoning model's reasoning as ``reasoning_content`` (vLLM's field, which it takes back);
    OpenAI's and DeepSeek's APIs refuse a request whose messages carry it (HTTP 400), which failed every proposal, eval
    turn or teacher call with such states. The client now sends them again without it, and keeps doing so."""
    refusal = httpx.Response(
        400, json={"error": {"message": "Additional properties are not allowed ('reasoning_content' was unexpected) - 'messages.1'"}}
    )
    script = Script(refusal, httpx.Response(200, json=completion(call_message("pear"))))
    client = script.client()
    state = [
        {"role": "user", "content": "pears?"},
        {"role": "assistant", "content": "Let me check.", "reasoning_content": "The user wants pears."},
        {"role": "user", "content": "and apples?"},
    ]
    [choice] = client.complete(state, tools=TOOLS)
    [choice_again] = client.complete(state, tools=TOOLS)
    sent = [json.loads(request.content)["messages"][1] for request in script.requests]
    assert sent == [
        state[1],
        {"role": "assistant", "content": "Let me check."},
        {"role": "assistant", "content": "Let me check."},
    ], "sent with it once, then without it, and without it from then on"
    assert choice.message == choice_again.message == call_message("pear")


def test_a_refusal_about_something_else_is_raised_and_reasoning_is_still_sent() -> None:
    script = Script(httpx.Response(400, json={"error": {"message": "max_tokens is too large"}}))
    client = script.client()
    state = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok", "reasoning_content": "r"},
        {"role": "user", "content": "?"},
    ]
    with pytest.raises(ModelRequestError, match="max_tokens is too large"):
        client.complete(state)
    assert len(script.requests) == 1 and json.loads(script.requests[0].content)["messages"][1]["reasoning_content"] == "r"


@pytest.mark.parametrize(
    ("base_url", "said"),
    [
        ("http://local host:8000/v1", "a space in it (a URL has none)"),
        ("http://[::1:8000/v1", "an unclosed '['"),
        ("http://models.test:80x/v1", "its port '80x' is not a number"),
        ("http://models.test\t/v1", r"'\\t' in it"),
    ],
)
def test_a_malformed_base_url_is_refused_at_construction_with_what_is_wrong(base_url: str, said: str) -> None:
    """Before: only the scheme was checked, so a space or a tab in the host reached httpx on the first request (or, for
    an unclosed IPv6 bracket, urllib's bare "Invalid IPv6 URL"); every --model-spec/--user-model/[eval] URL goes through
    this client."""
    with pytest.raises(ValueError, match="base_url must be an http") as raised:
        OpenAIChatClient(base_url, "m")
    assert said.replace("\\\\", "\\") in str(raised.value), str(raised.value)


def test_a_refused_base_url_keeps_its_credentials_out_of_the_message() -> None:
    with pytest.raises(ValueError, match=r"'http://\*\*\*@\[::1/v1'") as raised:
        OpenAIChatClient("http://user:s3cret@[::1/v1", "m")
    assert "s3cret" not in str(raised.value)
