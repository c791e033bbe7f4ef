"""A real HTTP server on a background thread for as long as a ``with`` block lasts, a JSON answer and a server-sent event
stream for its handlers, and :class:`ScriptedChatServer`, a stand-in for an OpenAI-compatible chat server answering from a
script (streamed when asked)."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import BaseServer
from typing import Any


@contextmanager
def serving(server: BaseServer, *, path: str = "/v1") -> Iterator[str]:
    """Run ``server.serve_forever`` on a daemon thread; yield its base URL (``http://HOST:PORT`` + ``path``).

    A client that hangs up before its answer is sent (it timed out, or was closed: what timeout tests do) is no error of
    the server's: it prints no traceback (see :func:`quiet_about_hang_ups`). On leaving the block the server is shut
    down, its socket closed and its thread joined, also when the block raised.
    """
    quiet_about_hang_ups(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ee-test-server", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def quiet_about_hang_ups(server: BaseServer) -> None:
    """Have ``server`` pass over a request whose client closed the connection before the answer was sent (a
    :class:`ConnectionError`: broken pipe, reset) instead of printing its traceback on stderr; any other error in a
    handler is reported as before."""
    report = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            report(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]


def send_json(handler: BaseHTTPRequestHandler, body: Any, status: int = 200) -> None:
    """Answer the request ``handler`` is serving with ``body`` as JSON and ``status``."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def send_events(handler: BaseHTTPRequestHandler, events: Iterator[Any]) -> None:
    """Answer the request ``handler`` is serving with a server-sent event stream: each of ``events`` as a
    ``data: JSON`` event (``"[DONE]"`` as it is), sent as it comes; the connection closes after the last one."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    for event in events:
        data = event if event == "[DONE]" else json.dumps(event)
        handler.wfile.write(f"data: {data}\n\n".encode())
        handler.wfile.flush()


@dataclass(frozen=True)
class Reply:
    """An answer of a :class:`ScriptedChatServer` sent as it is: ``body`` as JSON with HTTP ``status``.

    For what the shorthand answers cannot say: a refusal (``Reply({"error": {...}}, 400)``), several choices, an odd body.
    """

    body: Any
    status: int = 200


Message = Mapping[str, Any]
Answer = str | Message | tuple[str | Message, str] | Reply
"""What a script gives for one chat request: the assistant's text (``str``), its message (a dict with ``"role"``),
either with a ``finish_reason`` (``(message, "length")``; ``"stop"`` when not given), or a :class:`Reply`."""
Script = Sequence[Answer] | Callable[[dict[str, Any]], Answer]
Models = Sequence[str | Mapping[str, Any]] | Reply | None

_ANSWER_FORMS = (
    "an answer is a str (the assistant's text), a message dict with a 'role', a (message, finish_reason) tuple, or a Reply(body, status)"
)
_NOT_FOUND = Reply({"detail": "Not Found"}, 404)  # FastAPI's answer for a path it does not serve


class ScriptedChatServerError(AssertionError):
    """A :class:`ScriptedChatServer`'s script raised or gave something that is no answer (raised on leaving the ``with``)."""


class ScriptedChatServer:
    """A stand-in for an OpenAI-compatible chat server: a real HTTP server on 127.0.0.1, on a thread, for a ``with`` block.

    >>> with ScriptedChatServer(["Hello.", "Bye."]) as server:     # doctest: +SKIP
    ...     client = OpenAIChatClient(server.base_url, "m")
    ...     ...
    >>> server.requests[0]["messages"]                              # doctest: +SKIP

    It answers ``POST {path}/chat/completions`` from ``script``: a list of answers (the n-th request gets the n-th answer,
    the last one once they run out) or a callable given each request's JSON body that returns the answer (see
    :data:`Answer`). ``GET {path}/models`` lists ``models`` (model ids, or whole entries as dicts, e.g. with
    ``max_model_len``); ``models=None`` answers it 404 as a server without a listing does, and a :class:`Reply` answers
    it as it is. Any other path is answered 404.

    A request with ``"stream": true`` gets its answer as OpenAI and vLLM stream one: ``text/event-stream``, one
    ``data: {...}`` event per ``chat.completion.chunk`` (for each choice the role with empty content, any other field of
    the message such as ``reasoning_content``, the content in word-sized pieces, each tool call opening with its
    ``index``, ``id``, ``type`` and ``name`` and then its ``arguments`` in pieces, and a last chunk with the
    ``finish_reason``); with ``stream_options.include_usage`` a chunk with empty ``choices`` and the ``usage`` (a
    :class:`Reply`'s own, else counted in words); then ``data: [DONE]``. A :class:`Reply` is streamed that way when its
    status is 200 and its body is a completion with ``choices`` of messages; any other (a refusal, an odd body) is sent
    as it is, as JSON, as a server answers before its stream starts.

    ``requests`` holds the body of every chat request, in the order they came (kept after the block), streamed or not,
    and ``request_headers`` its HTTP headers at the same index, names in lower case (what a test checks credentials by);
    ``model_listings`` counts the ``GET /models``. Requests are served concurrently; the script is called outside any
    lock, so a callable that keeps state shared between requests guards it itself.

    Leaving the block shuts the server down, closes its socket and joins its threads. If the script raised or gave
    something that is no answer (the client got an HTTP 500 naming it), leaving the block raises
    :class:`ScriptedChatServerError` with that cause, unless the block itself raised.
    """

    def __init__(self, script: Script, *, models: Models = ("m",), path: str = "/v1") -> None:
        if not callable(script):
            if isinstance(script, (str, bytes, Mapping)) or not isinstance(script, Sequence):
                raise TypeError(f"ScriptedChatServer's script is a list of answers or a callable on the request body, not {script!r}")
            if not script:
                raise ValueError("ScriptedChatServer's script has no answer: give at least one (the last one is repeated)")
            for i, answer in enumerate(script):
                _reply(answer, i, "m")  # a bad answer fails here, not as an HTTP 500 in the middle of a test
        self.script = script
        self.models = _models_reply(models)
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.model_listings = 0
        self._base_url: str | None = None
        self._errors: list[tuple[int, BaseException]] = []
        self._lock = threading.Lock()
        self._stack: ExitStack | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (with ``path``): what an OpenAI client is given as its base URL."""
        if self._base_url is None:
            raise RuntimeError("ScriptedChatServer is not started: use it as `with ScriptedChatServer(script) as server:`")
        return self._base_url

    def __enter__(self) -> ScriptedChatServer:
        if self._stack is not None or self._base_url is not None:
            raise RuntimeError("a ScriptedChatServer serves one `with` block (its requests and errors are that block's): make a new one")
        with ExitStack() as stack:
            self._base_url = stack.enter_context(serving(_Server(self), path=self.path))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        if self._errors and exc_type is None:
            n, error = self._errors[0]
            more = f" (and {len(self._errors) - 1} more)" if len(self._errors) > 1 else ""
            raise ScriptedChatServerError(f"ScriptedChatServer's script failed on request {n + 1}{more}: {error}") from error

    def _answer_chat(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            n = len(self.requests)
            self.requests.append(body)
            self.request_headers.append(headers)
        try:
            answer = self.script(body) if callable(self.script) else self.script[min(n, len(self.script) - 1)]
            reply = _reply(answer, n, body.get("model"))
            json.dumps(reply.body)  # an answer that is not JSON fails here, as a 500 and on leaving the block
            return reply
        except Exception as error:  # noqa: BLE001 - the client gets a 500, the test the cause on leaving the block
            with self._lock:
                self._errors.append((n, error))
            return Reply({"error": {"message": f"ScriptedChatServer's script failed: {error!r}", "type": "server_error", "code": 500}}, 500)

    def _answer_models(self) -> Reply:
        with self._lock:
            self.model_listings += 1
        return self.models


def _reply(answer: Answer, n: int, model: Any) -> Reply:
    """The HTTP answer to the ``n``-th request (from 0) for ``model``; ``TypeError`` naming the forms for anything else."""
    if isinstance(answer, Reply):
        return answer
    finish_reason = "stop"
    if isinstance(answer, tuple):
        if len(answer) != 2 or not isinstance(answer[1], str):
            raise TypeError(f"the script gave {answer!r}: a tuple answer is (message, finish_reason); {_ANSWER_FORMS}")
        answer, finish_reason = answer
    if isinstance(answer, str):
        message: dict[str, Any] = {"role": "assistant", "content": answer}
    elif isinstance(answer, Mapping) and "role" in answer:
        message = dict(answer)
    else:
        raise TypeError(f"the script gave {answer!r} ({type(answer).__name__}); {_ANSWER_FORMS}")
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    return Reply({"id": f"chatcmpl-{n}", "object": "chat.completion", "model": model, "choices": [choice]})


def _is_completion(body: Any) -> bool:
    """Whether ``body`` is a chat completion that can be streamed: a dict whose ``choices`` are dicts with a message."""
    choices = body.get("choices") if isinstance(body, dict) else None
    return isinstance(choices, list) and all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices)


def _pieces(text: str) -> list[str]:
    """``text`` cut after each run of whitespace (as a model's tokens come): the pieces join up to it."""
    return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]


def _completion_chunks(completion: dict[str, Any], request: dict[str, Any], *, include_usage: bool) -> Iterator[Any]:
    """The events of ``completion`` streamed as vLLM streams an answer to ``request``: the ``chat.completion.chunk``
    dicts per choice, the usage chunk when asked, ``"[DONE]"``."""
    head = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", int(time.time())),
        "model": completion.get("model"),
    }
    pieces = 0  # of content and arguments: the completion tokens of a usage counted here

    def chunk(index: Any, delta: dict[str, Any], finish_reason: Any = None) -> dict[str, Any]:
        nonlocal pieces
        pieces += "content" in delta or any(
            "arguments" in call.get("function", {}) for call in delta.get("tool_calls", []) if isinstance(call, dict)
        )
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    for position, choice in enumerate(completion["choices"]):
        index, message = choice.get("index", position), choice["message"]
        yield chunk(index, {"role": message.get("role", "assistant"), "content": ""})
        for key, value in message.items():  # reasoning_content, refusal, ...: sent as they are, before the content
            if key not in ("role", "content", "tool_calls") and value is not None:
                yield chunk(index, {key: value})
        content = message.get("content")
        if isinstance(content, str):
            for piece in _pieces(content):
                yield chunk(index, {"content": piece})
        elif content is not None:
            yield chunk(index, {"content": content})
        for number, call in enumerate(message.get("tool_calls") or []):
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                yield chunk(index, {"tool_calls": [{"index": number, **call} if isinstance(call, dict) else call]})
                continue
            function = call["function"]
            arguments = function.get("arguments")
            opening = {k: v for k, v in call.items() if k != "function"}
            opened = {k: v for k, v in function.items() if k != "arguments"}
            if not isinstance(arguments, str):  # not text: sent whole, as it is
                yield chunk(index, {"tool_calls": [{"index": number, **opening, "function": dict(function)}]})
                continue
            yield chunk(index, {"tool_calls": [{"index": number, **opening, "function": {**opened, "arguments": ""}}]})
            for piece in _pieces(arguments):
                yield chunk(index, {"tool_calls": [{"index": number, "function": {"arguments": piece}}]})
        yield chunk(index, {}, choice.get("finish_reason", "stop"))
    if include_usage:
        usage = completion.get("usage")
        if not isinstance(usage, dict):
            words = sum(
                len(m["content"].split())
                for m in request.get("messages") or []
                if isinstance(m, dict) and isinstance(m.get("content"), str)
            )
            usage = {"prompt_tokens": words, "completion_tokens": pieces, "total_tokens": words + pieces}
        yield {**head, "choices": [], "usage": usage}
    yield "[DONE]"


def _models_reply(models: Models) -> Reply:
    if models is None:
        return _NOT_FOUND
    if isinstance(models, Reply):
        return models
    if isinstance(models, (str, bytes, Mapping)) or not isinstance(models, Sequence):
        raise TypeError(f"ScriptedChatServer's models is a list of model ids or entries, a Reply or None, not {models!r}")
    data = []
    for entry in models:
        if isinstance(entry, str):
            data.append({"id": entry, "object": "model"})
        elif isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            data.append(dict(entry))
        else:
            raise TypeError(f"ScriptedChatServer's models: {entry!r} is neither a model id nor an entry with an 'id'")
    return Reply({"object": "list", "data": data})


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # server_close still joins them (block_on_close)

    def __init__(self, owner: ScriptedChatServer) -> None:
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.owner = owner


class _ChatHandler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        prefix = self.server.owner.path
        if not prefix:
            return path
        return path[len(prefix) :] if path.startswith(prefix + "/") else ""  # outside the base path: 404

    def do_GET(self) -> None:
        reply = self.server.owner._answer_models() if self._route() == "/models" else _NOT_FOUND
        send_json(self, reply.body, reply.status)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self._route() != "/chat/completions":
            send_json(self, _NOT_FOUND.body, _NOT_FOUND.status)
            return
        try:
            body = json.loads(raw)
        except ValueError as error:
            send_json(self, {"error": {"message": f"the body is not JSON: {error}", "type": "BadRequestError", "code": 400}}, 400)
            return
        reply = self.server.owner._answer_chat(body, {name.lower(): value for name, value in self.headers.items()})
        if isinstance(body, dict) and body.get("stream") is True and reply.status == 200 and _is_completion(reply.body):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            send_events(self, _completion_chunks(reply.body, body, include_usage=include_usage))
        else:
            send_json(self, reply.body, reply.status)
