"""Which refusals the OpenAI-compatible client reads as a problem with the request (raised at once, not retried) and
which of those are about the setup (every request like it is refused alike), against a real local HTTP server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ee_middleware.errors import ModelRequestError, ModelServerError
from ee_middleware.testing.http import send_json

from .test_openai_compat_server import answering, ask, waits

__all__ = ["waits"]  # the fixture the tests take by name


def refusing(status: int, body: Any, content_type: str = "application/json") -> Any:
    def send(handler: Any, request: Any) -> None:
        if content_type == "application/json":
            send_json(handler, body, status)
            return
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return send


def llama(message: str) -> dict[str, Any]:
    """llama-server's error body (it sends what it meets while reading a request as HTTP 500)."""
    return {"error": {"code": 500, "message": message, "type": "server_error"}}


SERVER_FAILURES = {
    "a server's Python bug": llama("TypeError: '<' not supported between instances of 'NoneType' and 'int'"),
    "errno 95 on a shared volume": llama("OSError: [Errno 95] Operation not supported"),
    "CUDA": llama("CUDA error: operation not supported\nCUDA kernel errors might be asynchronously reported"),
    "a JSON error whose keys name request parts": {
        "object": "error",
        "message": "CUDA error: operation not supported",
        "type": "InternalServerError",
        "param": None,
    },
    "a Python traceback as text": 'Traceback (most recent call last):\n  File "server.py", line 3, in parse_params\n'
    "TypeError: '>' not supported between instances of 'str' and 'int'",
    "nginx 505 page": "<html><head><title>505 HTTP Version Not Supported</title></head></html>",
    "Ollama busy": llama("server busy, please try again.  maximum pending requests exceeded"),
    "llama-server loading": {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
}


@pytest.mark.parametrize("name", list(SERVER_FAILURES))
def test_a_servers_own_failure_is_retried_not_read_as_a_request_problem(name: str, waits: list[float]) -> None:
    """Before: any 5xx saying "not supported" (a Python TypeError, errno 95, CUDA, nginx's 505) was a request problem,
    raised at once with "change the request setting or message it names"."""
    body = SERVER_FAILURES[name]
    reply = refusing(500, body, "text/plain" if "Traceback" in str(body) else "text/html") if isinstance(body, str) else None
    with answering(reply or refusing(500, body)) as (url, bodies), pytest.raises(ModelServerError) as info:
        ask(url, retries=2)
    assert type(info.value) is ModelServerError and len(bodies) == 3, f"{name}: {info.value}"
    assert "change the request setting" not in str(info.value)


REQUEST_PROBLEMS = [
    # llama.cpp's server (HTTP 500): (message, a word of the advice, about the setup)
    ("tools param requires --jinja flag", "start llama-server with --jinja", True),
    ("Unsupported param: tool_choice", "change the request setting", True),
    ('Either "json_schema" or "grammar" can be specified, but not both', "change the request setting", True),
    ("Cannot use custom grammar constraints with tools.", "change the request setting", True),
    ("top_logprobs requires logprobs to be set to true", "change the request setting", True),
    ("Parameter 'logit_bias' is not supported by this server", "change the request setting", True),
    ("Unknown argument ensure_ascii for function tojson at row 11, column 37", "chat template failed", False),
    ("Cannot have 2 or more assistant messages at the end of the list.", "change the message", False),
    ("Expected 'content' to be a string or an array", "change the message", False),
    ('Unsupported content part type: "input_audio"', "change the message", False),
    ("image input is not supported - hint: if this is unexpected, you may need to provide the mmproj", "change the message", False),
    ("Assistant response prefill is incompatible with enable_thinking.", "change the message", False),
]


@pytest.mark.parametrize(("message", "advice", "setup"), REQUEST_PROBLEMS)
def test_a_request_problem_is_raised_at_once_and_says_whether_it_is_the_setup(
    message: str, advice: str, setup: bool, waits: list[float]
) -> None:
    """Before: a refusal about the setup (llama-server without --jinja) was not told from one about a request's messages,
    so a replay job failed every trajectory on its own instead of stopping at the first."""
    with answering(refusing(500, llama(message))) as (url, bodies), pytest.raises(ModelRequestError) as info:
        ask(url, retries=2)
    shown = json.dumps(message)[1:-1]  # as the body's JSON writes it
    assert len(bodies) == 1 and info.value.status == 500 and shown in str(info.value) and advice in str(info.value)
    assert info.value.setup is setup, message


def test_a_4xx_about_the_servers_flags_is_a_setup_refusal_and_says_what_to_start_it_with(waits: list[float]) -> None:
    """vLLM started without tool calling refuses every request with tools as HTTP 400."""
    vllm = {
        "object": "error",
        "message": '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    with answering(refusing(400, vllm)) as (url, bodies), pytest.raises(ModelRequestError) as info:
        ask(url, retries=2)
    assert len(bodies) == 1 and info.value.status == 400 and info.value.setup
    assert "start the server with the flags its message names" in str(info.value), info.value
    too_long = {"object": "error", "message": "This model's maximum context length is 4096 tokens", "type": "BadRequestError", "code": 400}
    with answering(refusing(400, too_long)) as (url, _), pytest.raises(ModelRequestError) as info:
        ask(url, retries=2)
    assert not info.value.setup, "a state longer than the context is this request's problem"
