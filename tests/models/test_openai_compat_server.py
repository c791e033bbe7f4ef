"""The OpenAI-compatible client against a real local HTTP server (the standard library's, on 127.0.0.1):
what proxies, gateways and rate-limited servers really send back."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ee_middleware.errors import ModelRequestError, ModelResponseError, ModelServerError
from ee_middleware.models import openai_compat
from ee_middleware.models.openai_compat import MAX_RETRY_AFTER_S, OpenAIChatClient
from ee_middleware.testing.http import serving

ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
Reply = tuple[int, dict[str, str], bytes]


def json_reply(body: Any, status: int = 200, **headers: str) -> Reply:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


@contextmanager
def server(*replies: Reply) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A server answering each request with the next reply (the last repeats); yields its URL and the requests' headers."""
    script, seen = list(replies), []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(dict(self.headers))
            status, headers, body = script.pop(0) if len(script) > 1 else script[0]
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url, seen


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between attempts, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(openai_compat, "_sleep", slept.append)
    return slept


def ask(url: str, **options: Any) -> Any:
    client = OpenAIChatClient(url, "Qwen/Qwen2.5-7B-Instruct", **options)
    try:
        return client.complete([{"role": "user", "content": "hi"}])
    finally:
        client.close()


def test_a_429_waits_as_long_as_retry_after_asks_within_a_bound(waits: list[float]) -> None:
    limited = json_reply({"error": {"message": "Rate limit reached"}}, 429, **{"Retry-After": "7"})
    forever = json_reply({"error": {"message": "Rate limit reached"}}, 429, **{"Retry-After": "86400"})
    dated = json_reply({"error": {"message": "busy"}}, 503, **{"Retry-After": formatdate(usegmt=True)})  # now: no extra wait
    with server(limited, forever, dated, json_reply(ANSWER)) as (url, seen):
        [choice] = ask(url, retries=3, backoff_s=0.25)
    assert choice.text == "hi" and len(seen) == 4
    assert waits == [7.0, MAX_RETRY_AFTER_S, 1.0], "the server's wait, cut to the bound, else the doubling back-off"


def test_a_server_still_rate_limiting_after_the_retries_is_named_as_such(waits: list[float]) -> None:
    limited = json_reply({"error": {"message": "Rate limit reached"}}, 429, **{"Retry-After": "2"})
    with server(limited) as (url, seen), pytest.raises(ModelServerError) as info:
        ask(url, retries=2, backoff_s=0.1)
    assert len(seen) == 3 and waits == [2.0, 2.0] and info.value.status == 429
    message = str(info.value)
    assert (
        "HTTP 429 (it asked to wait 2 s)" in message and "limiting the request rate" in message and "running and reachable" not in message
    )


def test_an_error_sent_with_status_200_is_an_error_of_its_code(waits: list[float]) -> None:
    """LiteLLM-style and vLLM-style error bodies that some gateways pass on with 200 OK."""
    too_long = json_reply({"error": {"message": "maximum context length is 4096 tokens", "type": "invalid_request_error", "code": 400}})
    with server(too_long) as (url, seen), pytest.raises(ModelRequestError) as refused:
        ask(url, retries=3)
    assert len(seen) == 1 and refused.value.status == 400 and "maximum context length is 4096 tokens" in str(refused.value)
    missing = json_reply({"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404})
    with server(missing) as (url, _), pytest.raises(ModelRequestError, match=r"does not exist.*Check the model name") as info:
        ask(url)
    assert info.value.status == 404
    overloaded = json_reply({"error": {"message": "upstream overloaded", "code": "503"}})
    with server(overloaded, json_reply(ANSWER)) as (url, seen):
        [choice] = ask(url, retries=1)
    assert choice.text == "hi" and len(seen) == 2, "an error whose code is a 5xx is retried like one"
    with server(json_reply({"error": "something went wrong"})) as (url, _), pytest.raises(ModelResponseError) as odd:
        ask(url, retries=3)
    assert "answered with an error instead of a completion: something went wrong" in str(odd.value)


def test_a_proxys_html_error_page_is_named_by_its_title(waits: list[float]) -> None:
    page = b"<html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head><body><h1>502 Bad Gateway</h1>"
    page += b"<hr><center>nginx/1.18.0</center>" + b"<!-- padding -->" * 200 + b"</body></html>"
    with server((502, {"Content-Type": "text/html"}, page)) as (url, seen), pytest.raises(ModelServerError) as info:
        ask(url, retries=1)
    message = str(info.value)
    assert len(seen) == 2 and "HTTP 502: an HTML page ('502 Bad Gateway'), not an API answer" in message
    assert "<" not in message.split("HTTP 502")[1], "no markup in the message"
    login = (200, {"Content-Type": "text/html"}, b"<html><body><p>Sign in to continue</p></body></html>")
    with server(login) as (url, _), pytest.raises(ModelResponseError, match=r"not JSON: an HTML page \('Sign in to continue'\)"):
        ask(url)


def test_credentials_in_the_base_url_are_sent_but_never_shown(waits: list[float]) -> None:
    with server(json_reply(ANSWER)) as (url, seen):
        secret_url = url.replace("http://", "http://agent:s3cr%40t@")
        client = OpenAIChatClient(secret_url, "llama3:8b")
        [choice] = client.complete([{"role": "user", "content": "hi"}])
        client.close()
    assert choice.text == "hi" and seen[0]["Authorization"] == "Basic " + base64.b64encode(b"agent:s3cr@t").decode()
    assert client.base_url == url and "s3cr" not in json.dumps(client.describe()) and "s3cr" not in client.url
    with server(json_reply({"error": "down"}, 500)) as (url, _), pytest.raises(ModelServerError) as info:
        ask(url.replace("http://", "http://agent:s3cr%40t@"), retries=0)
    assert "s3cr" not in str(info.value) and "s3cr" not in info.value.url and "agent" not in str(info.value)


def test_a_streamed_answer_is_read_as_it_arrives(waits: list[float]) -> None:
    """The body of a stream is the caller's to read (nothing reads it before, to look for an error in it)."""
    events = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'
    with server((200, {"Content-Type": "text/event-stream"}, events)) as (url, _):
        client = OpenAIChatClient(url, "m")
        with client.stream("/chat/completions", {"model": "m", "messages": [], "stream": True}) as chunks:
            assert b"".join(chunks) == events
        client.close()


REFUSAL = "I'm sorry, I can't help with deleting another user's files."


def refused(*, content: Any = None, **message: Any) -> Reply:
    """An answer whose message is a refusal (OpenAI's ``message.refusal``, content null), as OpenAI and some gateways send."""
    answer = {"role": "assistant", "content": content, "refusal": REFUSAL, **message}
    return json_reply({"choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]})


def test_a_refusal_from_a_fake_server_is_the_answers_text_not_silence(waits: list[float]) -> None:
    with server(refused()) as (url, _):
        [choice] = ask(url)
    assert choice.text == REFUSAL and choice.refusal == REFUSAL
    [problem] = choice.tool_calls()
    assert "refused" in problem.problem and REFUSAL in problem.problem, problem


def test_a_refusal_in_content_parts_from_a_fake_server_is_kept(waits: list[float]) -> None:
    parts = [{"type": "text", "text": "Let me explain. "}, {"type": "refusal", "refusal": REFUSAL}]
    with server(json_reply({"choices": [{"message": {"role": "assistant", "content": parts}, "finish_reason": "stop"}]})) as (url, _):
        [choice] = ask(url)
    assert choice.text == "Let me explain. " + REFUSAL and choice.refusal == REFUSAL


def test_an_answer_with_text_and_a_refusal_from_a_fake_server_keeps_both(waits: list[float]) -> None:
    with server(refused(content="Here is what I can do:")) as (url, _):
        [choice] = ask(url)
    assert choice.text == f"Here is what I can do:\n{REFUSAL}" and choice.refusal == REFUSAL
    with server(refused(content=REFUSAL)) as (url, _):  # a server that copies the refusal into content too: once
        [choice] = ask(url)
    assert choice.text == REFUSAL


def test_a_refusal_from_a_fake_server_is_what_replay_and_evals_report(waits: list[float]) -> None:
    from ee_middleware.records import ToolCall
    from ee_middleware.replay.policies.chat import OpenAIPolicy
    from ee_middleware.replay.policies.protocol import DecisionPoint
    from evals.loop import run_conversation
    from evals.tasks import EvalTask

    tools = [{"type": "function", "function": {"name": "delete_file", "parameters": {"type": "object", "properties": {}}}}]
    with server(refused()) as (url, _):
        client = OpenAIChatClient(url, "m", retries=0)
        task = EvalTask("s", "t1", "c", turns=[[{"role": "user", "content": "delete bob's files"}]], tools=[tools], reference=[[]])
        conversation = run_conversation(client, task, None)
        client.close()
        policy = OpenAIPolicy(url, "m", retries=0)
        expert = ToolCall(id="c1", name="delete_file", arguments={})
        point = DecisionPoint("traj", 0, [{"role": "user", "content": "delete bob's files"}], tools, expert)
        [candidate] = policy.propose(point, 1, seed=0).candidates
        policy.close()
    assert conversation.replies == [REFUSAL] and conversation.messages[-1] == {"role": "assistant", "content": REFUSAL}
    assert candidate.call is None and REFUSAL in (candidate.problem or "")


NO_MESSAGE = {
    "empty choice": ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "choice 0 has no 'message' object"),
    "completions text": ({"choices": [{"index": 0, "text": "I cannot do that."}]}, "completions-style 'text'"),
    "string message": ({"choices": [{"index": 0, "message": "hello"}]}, "choice 0's 'message' is a str, not a message object"),
}


@pytest.mark.parametrize("name", list(NO_MESSAGE))
def test_a_choice_without_a_message_object_is_a_problem_for_every_caller_not_an_empty_answer(name: str, waits: list[float]) -> None:
    """Before: the choice itself (or the string) was read as the message, an assistant answer with content '' and no
    problem, so a refusal or irrelevance task scored a pass on a server that sent no answer at all."""
    from ee_middleware.records import ToolCall
    from ee_middleware.replay.policies.chat import OpenAIPolicy
    from ee_middleware.replay.policies.protocol import DecisionPoint
    from evals.loop import run_conversation
    from evals.tasks import EvalTask
    from trainers.datasets.teachers import ModelTeacher, ReflectionCase

    body, problem = NO_MESSAGE[name]
    tools = [{"type": "function", "function": {"name": "delete_file", "parameters": {"type": "object", "properties": {}}}}]
    with server(json_reply(body)) as (url, _):
        client = OpenAIChatClient(url, "m", retries=0)
        [choice] = client.complete([{"role": "user", "content": "hi"}])
        task = EvalTask("s", "t1", "c", turns=[[{"role": "user", "content": "delete bob's files"}]], tools=[tools], reference=[[]])
        conversation = run_conversation(client, task, None)
        case = ReflectionCase(task="t", context="c", chosen="delete_file()", chosen_outcome="ok", alternatives=[("ls()", "a")])
        teacher = ModelTeacher(client, name="t")
        [rationale] = teacher.write([case])
        teacher.close()
        policy = OpenAIPolicy(url, "m", retries=0)
        point = DecisionPoint("traj", 0, [{"role": "user", "content": "x"}], tools, ToolCall(id="c1", name="delete_file", arguments={}))
        [candidate] = policy.propose(point, 1, seed=0).candidates
        policy.close()
    assert choice.problem is not None and problem in choice.problem and choice.message is None, choice
    assert conversation.error_type == "model_error" and problem in (conversation.error or ""), conversation.error
    assert not conversation.replies
    assert candidate.call is None and problem in (candidate.problem or ""), candidate
    assert rationale == "", "a teacher counts it as an empty rationale, as it does a response without choices"
