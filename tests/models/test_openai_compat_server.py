"""The OpenAI-compatible client against a real local HTTP server (the standard library's, on 127.0.0.1):
what proxies, gateways and rate-limited servers really send back."""

from __future__ import annotations

import base64
import json
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ee_middleware.errors import ModelRequestError, ModelResponseError, ModelServerError
from ee_middleware.models import openai_compat
from ee_middleware.models.openai_compat import MAX_RETRY_AFTER_S, FewerChoicesWarning, OpenAIChatClient
from ee_middleware.models.protocol import Sampling
from ee_middleware.testing.http import send_json, serving

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


@contextmanager
def answering(answer: Any) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A server whose ``answer(handler, body)`` writes the answer to each request; yields its URL and the request bodies."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            bodies.append(body)
            try:
                answer(self, body)
            except OSError:
                pass  # the client gave up on this answer (cut off at its deadline)

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url, bodies


def keep_alive_then(answer: Any, *, every_s: float, for_s: float) -> Any:
    """An answer as omlx and CLIProxyAPI send a slow non-streaming one: the headers at once, then a space every
    ``every_s`` (chunked) while the upstream works, ``for_s`` in all, then the JSON."""

    def send(handler: BaseHTTPRequestHandler, body: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def chunk(data: bytes) -> None:
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        started = time.monotonic()
        while time.monotonic() - started < for_s:
            chunk(b" ")
            time.sleep(every_s)
        chunk(json.dumps(answer).encode())
        handler.wfile.write(b"0\r\n\r\n")

    return send


def timers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if isinstance(thread, threading.Timer)]


def test_timeout_s_bounds_the_whole_answer_of_a_server_sending_keep_alive_whitespace(waits: list[float]) -> None:
    """Before: httpx's timeout is per read, so a space every 0.2 s kept a request with timeout_s=1 open for the 4 s the
    server took (a stuck upstream behind such a proxy: for ever)."""
    with answering(keep_alive_then(ANSWER, every_s=0.2, for_s=4.0)) as (url, bodies):
        started = time.monotonic()
        with pytest.raises(ModelServerError) as info:
            ask(url, timeout_s=1.0, retries=1)
        took = time.monotonic() - started
    assert len(bodies) == 2 and took < 2 * 1.0 + 0.8, f"two attempts of at most 1 s each, took {took:.1f} s"
    message = str(info.value)
    assert info.value.timed_out and "after 2 attempt(s): no complete answer within timeout_s=1 s" in message, message
    assert "keep-alive whitespace" in message and "raise it" in message and "finished loading" not in message, message
    assert not timers(), "the deadline's watch ends with its attempt"


def test_an_answer_finished_within_timeout_s_is_read_keep_alive_whitespace_and_all(waits: list[float]) -> None:
    with answering(keep_alive_then(ANSWER, every_s=0.1, for_s=0.3)) as (url, bodies):
        [choice] = ask(url, timeout_s=3.0, retries=0)
    assert choice.text == "hi" and len(bodies) == 1 and not timers()


def test_a_silent_server_times_out_at_timeout_s_from_the_start_of_the_attempt(waits: list[float]) -> None:
    with answering(lambda handler, body: (time.sleep(2.0), send_json(handler, ANSWER))) as (url, _):
        started = time.monotonic()
        with pytest.raises(ModelServerError, match=r"timed out after 0.5 s") as info:
            ask(url, timeout_s=0.5, retries=0)
        took = time.monotonic() - started
    assert info.value.timed_out and took < 1.2, took


def one_choice_per_request(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    """Ollama's /v1 and llama-cpp-python: one choice whatever ``n`` is; the answer depends on the seed."""
    message = {"role": "assistant", "content": f"sample for seed {body.get('seed')}"}
    send_json(handler, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def n_choices(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    """vLLM: ``n`` choices."""
    choices = [{"index": i, "message": {"role": "assistant", "content": f"sample {i}"}, "finish_reason": "stop"} for i in range(body["n"])]
    send_json(handler, {"choices": choices})


def refuses_n(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    """llama-server: ``n`` != 1 is refused as HTTP 500."""
    if body.get("n", 1) != 1:
        send_json(handler, {"error": {"code": 500, "message": "Only one completion choice is allowed", "type": "server_error"}}, 500)
    else:
        one_choice_per_request(handler, body)


def test_a_server_that_ignores_n_is_asked_again_for_the_rest(waits: list[float]) -> None:
    """Before: one choice came back for n=4, with no problem and no warning (the replay's refill made up the rest)."""
    messages = [{"role": "user", "content": "hi"}]
    with answering(one_choice_per_request) as (url, bodies):
        client = OpenAIChatClient(url, "llama3.2", retries=0)
        with pytest.warns(FewerChoicesWarning, match=r"answered 1 choice\(s\) where n=4 were asked.*ignores n"):
            choices = client.complete(messages, n=4, sampling=Sampling(seed=5))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per client
            again = client.complete(messages, n=2, sampling=Sampling(seed=40))
        client.close()
    assert [choice.text for choice in choices] == [f"sample for seed {seed}" for seed in (5, 6, 7, 8)]
    assert [(body["n"], body["seed"]) for body in bodies] == [(4, 5), (3, 6), (2, 7), (1, 8), (2, 40), (1, 41)]
    assert [choice.text for choice in again] == ["sample for seed 40", "sample for seed 41"]
    assert (client.short_answers, client.extra_requests) == (2, 4)


def test_a_server_that_refuses_n_above_1_is_asked_once_per_answer(waits: list[float]) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with answering(refuses_n) as (url, bodies):
        client = OpenAIChatClient(url, "m", retries=2)
        with pytest.warns(FewerChoicesWarning, match="refuses n > 1"):
            choices = client.complete(messages, n=3, sampling=Sampling(seed=1))
        again = client.complete(messages, n=2, sampling=Sampling(seed=9))
        client.close()
    assert [choice.text for choice in choices] == ["sample for seed 1", "sample for seed 2", "sample for seed 3"]
    assert [choice.text for choice in again] == ["sample for seed 9", "sample for seed 10"]
    assert [body["n"] for body in bodies] == [3, 1, 1, 1, 1, 1], "the refusal is not retried, and not asked again"


def test_a_server_that_honours_n_gets_one_request_as_before(waits: list[float]) -> None:
    with answering(n_choices) as (url, bodies):
        client = OpenAIChatClient(url, "m")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            choices = client.complete([{"role": "user", "content": "hi"}], n=4, sampling=Sampling(seed=3))
        client.close()
    assert [choice.text for choice in choices] == ["sample 0", "sample 1", "sample 2", "sample 3"]
    assert [(body["n"], body["seed"]) for body in bodies] == [(4, 3)] and client.short_answers == 0


def llama_server_error(message: str) -> Any:
    return lambda handler, body: send_json(handler, {"error": {"code": 500, "message": message, "type": "server_error"}}, 500)


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("tools param requires --jinja flag", "start llama-server with --jinja"),
        ("Unknown argument ensure_ascii for function tojson at row 11, column 37", "chat template failed"),
        ("Cannot have 2 or more assistant messages at the end of the list.", "change the message it names"),
    ],
)
def test_a_request_problem_sent_as_http_500_is_the_cause_and_not_retried(message: str, hint: str, waits: list[float]) -> None:
    """Before: llama-server's refusals (HTTP 500) were retried and ended in advice about a server down or loading."""
    with answering(llama_server_error(message)) as (url, bodies), pytest.raises(ModelRequestError) as info:
        ask(url, retries=2)
    text = str(info.value)
    assert len(bodies) == 1 and info.value.status == 500 and message in text and hint in text, text
    assert "finished loading" not in text and "running and reachable" not in text, text


def test_the_same_5xx_on_every_attempt_names_its_message_as_the_likely_cause(waits: list[float]) -> None:
    with answering(llama_server_error("failed to parse grammar")) as (url, bodies), pytest.raises(ModelServerError) as info:
        ask(url, retries=2)
    text = str(info.value)
    assert len(bodies) == 3 and "failed to parse grammar" in text
    assert text.index("same answer to every attempt, so its message is the likely cause") < text.index("its log says what failed"), text
    assert "The server is reachable and answered HTTP 500" in text and "running and reachable?" not in text, text
    busy = iter(["engine busy", "CUDA out of memory", "engine busy"])
    with (
        answering(lambda handler, body: llama_server_error(next(busy))(handler, body)) as (url, _),
        pytest.raises(ModelServerError) as info,
    ):
        ask(url, retries=2)
    assert "likely cause" not in str(info.value) and "still loading the model, try again later" in str(info.value), (
        "different answers: an outage"
    )
    assert "running and reachable?" not in str(info.value), "it answered: no advice to check that it runs"


def test_a_further_request_that_fails_keeps_the_answers_received(waits: list[float]) -> None:
    """Ollama (it ignores n) with a full queue: its first answer comes back, the further requests for the rest get 503
    "server busy". Before: complete() raised ModelServerError and dropped the answer in hand (in replay: the job
    stopped, as for a server that is down)."""
    busy = {"error": "server busy, please try again.  maximum pending requests exceeded"}
    requests: list[int] = []

    def first_then_busy(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        requests.append(body["n"])
        if len(requests) == 1:
            one_choice_per_request(handler, body)
        else:
            send_json(handler, busy, 503)

    messages = [{"role": "user", "content": "hi"}]
    with answering(first_then_busy) as (url, _):
        client = OpenAIChatClient(url, "llama3.2", retries=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            choices = client.complete(messages, n=4, sampling=Sampling(seed=5))
        client.close()
    assert [choice.text for choice in choices] == ["sample for seed 5"], "the answer received is returned"
    assert requests == [4, 3, 3, 3], "one further request, retried, then the asking ends"
    assert (client.short_answers, client.extra_requests, client.failed_requests) == (1, 1, 1)
    said = [str(w.message) for w in caught if issubclass(w.category, FewerChoicesWarning)]
    assert any("1 answer(s) of the n=4 asked come back" in text and "server busy" in text for text in said), said


def test_a_query_in_the_base_url_goes_with_every_request_and_never_into_a_message() -> None:
    """A gateway that takes its key in the query (``?api_key=``), Azure's ``?api-version=``: the path was appended after
    the query (``POST /v1?api_key=sk-.../chat/completions``, which no server answers), and errors showed the key. Now
    the query follows each request's path, and messages name the URL without it (sweep S 4)."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            paths.append(self.path)
            send_json(self, ANSWER)

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        client = OpenAIChatClient(f"{url}?api-version=2024-10&api_key=sk-SECRET123", "m", retries=0)
        [choice] = client.complete([{"role": "user", "content": "hi"}])
        client.close()
    assert choice.message["content"] == "hi"
    assert paths == ["/v1/chat/completions?api-version=2024-10&api_key=sk-SECRET123"]
    assert "SECRET" not in json.dumps(client.describe())
    down = OpenAIChatClient("http://127.0.0.1:9/v1?api_key=sk-SECRET123", "m", retries=0, timeout_s=2)
    with pytest.raises(ModelServerError) as failed:
        down.complete([{"role": "user", "content": "hi"}])
    down.close()
    assert "SECRET" not in str(failed.value) and "http://127.0.0.1:9/v1/chat/completions" in str(failed.value)
