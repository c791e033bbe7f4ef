"""The OpenAI-compatible chat client: one ``/chat/completions`` request per call, over httpx.

Works with vLLM, the local server, and hosted APIs. ``timeout_s`` is the time one attempt may take, the answer's
whole body included (a server or proxy that sends keep-alive whitespace while the model works is cut off at it; a
:meth:`~OpenAIChatClient.stream` waits ``timeout_s`` for each part instead). A connection error, a timeout, a 429 or
a 5xx is retried ``retries`` times with doubling back-off (longer where the server's ``Retry-After``
asks for it, up to :data:`MAX_RETRY_AFTER_S`), then raised as
:class:`~ee_middleware.errors.ModelServerError`; a 4xx is raised at once as
:class:`~ee_middleware.errors.ModelRequestError` with the server's own text, and so is a 5xx whose message names a
problem with the request (llama.cpp's server sends "tools param requires --jinja flag" as HTTP 500), its ``setup``
set when the problem is the server's setup or a setting every request carries, so that every request is refused alike
(a replay job stops, an eval counts the task as unanswered); a body that is not JSON as
:class:`~ee_middleware.errors.ModelResponseError`. An error sent with status 200 (``{"error": ...}``, as some proxies
and gateways do) is treated as the status its ``code`` names. Every message names the URL (without any user:password
in it) and shows an HTML error page by its title. A JSON answer that is not a usable completion (no choices; a choice
without a message object: an empty one, a completions-style ``text``, a message that is a string) comes back as
:class:`~ee_middleware.models.protocol.Choice` items with a problem, for the caller to count (never as an empty
answer). A server that answers fewer choices than ``n`` (Ollama and llama-cpp-python ignore ``n``; llama-server
refuses it) is asked again for the rest (:class:`FewerChoicesWarning`, once per client).
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ee_middleware.errors import (
    ConfigError,
    ModelError,
    ModelRequestError,
    ModelResponseError,
    ModelServerError,
    UnreadableAnswerError,
)
from ee_middleware.models.protocol import Choice, Message, Sampling, ToolSchema, clip
from ee_middleware.models.urls import server_url_problem, shown_url

SERVE_API_KEY_ENV = "EE_SERVE_API_KEY"
"""The API key of your own model servers: ``ee serve local`` and ``ee serve router`` require it when set (as vLLM's
``--api-key``), and ee's clients of the servers it serves, promotes to or evaluates on (the promote backends, the
router's requests to its replicas, the start probe, ``ee improve``'s evaluation on its ``[improve.serving]`` replicas)
send it. Never a model client's default: a key for your fleet is not sent to a hosted API."""
API_KEY_ENV = ("EE_OPENAI_API_KEY", "OPENAI_API_KEY")
"""Where a model client's ``api_key`` comes from when none is given, first set first."""


def serving_api_key(environ: Mapping[str, str] | None = None) -> str:
    """The key ee's clients of your model servers send (:data:`SERVE_API_KEY_ENV`; ``""`` for none), from ``environ``
    (default: this process's environment). Unlike a model client's default, never ``OPENAI_API_KEY``: a key for
    OpenAI's API is not sent to your own servers. A key no HTTP header can carry is a :class:`ConfigError`
    (:func:`check_header_key`)."""
    key = (os.environ if environ is None else environ).get(SERVE_API_KEY_ENV, "")
    check_header_key(key, SERVE_API_KEY_ENV)
    return key


def check_header_key(key: str | None, source: str) -> None:
    """Refuse an API key that an HTTP header cannot carry (``Authorization: Bearer KEY``: printable ASCII, no spaces),
    naming where it came from (``source``) and never the key: a key file saved with a line break at its end
    (``KEY=$(cat key.txt)`` of a CRLF file keeps the ``\r``) failed every request with the whole key in the error, as an
    outage, and a non-ASCII one as an unexpected UnicodeEncodeError."""
    if not key or all("!" <= c <= "~" for c in key):
        return
    what = "a line break" if any(c in "\r\n" for c in key) else "a space" if any(c.isspace() for c in key) else "a character"
    raise ConfigError(
        f"The API key from {source} has {what} an HTTP header cannot carry (a key is printable ASCII without spaces; a key "
        "file saved with Windows line endings leaves a \\r at its end): set it to the key alone. It is not shown here."
    )


MAX_RETRY_AFTER_S = 60.0
"""The longest wait a server's ``Retry-After`` can ask of one retry (a longer one is cut to this)."""
_HTML_TITLE = re.compile(r"<(title|h1)[^>]*>(.*?)</\1>", re.IGNORECASE | re.DOTALL)
_sleep = time.sleep

_ONE_CHOICE_ONLY = re.compile(
    r"only one (?:completion )?choice|['\"`]n['\"`] (?:must|should) be 1|\bn\b must be 1|unsupported value: ['\"`]n['\"`]", re.IGNORECASE
)
"""A refusal of ``n`` > 1 (llama-server: "Only one completion choice is allowed"): each answer then takes a request."""

_NOT_SUPPORTED = r"\b(?:is |are )?not supported\b(?! between)"  # not Python's "'<' not supported between instances of ..."
_REQUEST_PROBLEMS: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (
        re.compile(r"--jinja\b", re.IGNORECASE),
        "start llama-server with --jinja (its tool calling and chat templates need it), or offer no tools.",
        True,
    ),
    (
        re.compile(r"\brequires? --[a-z][\w-]+", re.IGNORECASE),  # vLLM: "requires --enable-auto-tool-choice and ..."
        "start the server with the flags its message names (vLLM's tool calling: --enable-auto-tool-choice and "
        "--tool-call-parser), or offer no tools.",
        True,
    ),
    (
        _ONE_CHOICE_ONLY,
        "this server answers one choice per request: ask for one answer at a time (K=1), or use a server that takes n (vLLM).",
        True,
    ),
    (
        re.compile(r"\bat row \d+, column \d+", re.IGNORECASE),
        "the server's chat template failed on this request: fix or replace the template (llama-server --chat-template-file).",
        False,
    ),
    (
        re.compile(
            r"\bunsupported (?:param|parameter|value)s?\b|\bcan be specified, but not both\b"
            r"|\bcannot use (?:tools with|custom grammar|both)\b|\brequires \w+ to be set\b|\bresponse_format type must be\b"
            r"|\b(?:param|parameter|setting|field|tool_choice|response_format|logprobs)s?\b[^\n.]{0,60}?" + _NOT_SUPPORTED,
            re.IGNORECASE,
        ),
        "change the request setting it names (tool_choice, extra_body, the sampling options), or use a server that supports it.",
        True,
    ),
    (
        re.compile(
            r"\bcannot have 2 or more assistant messages\b"
            r"|\bexpected '(?:messages?|content|role|tool_calls|type|function|arguments)' to be\b"
            r"|\bunsupported content part\b|\bmissing '(?:role|content)'|\bprefill is incompatible with\b"
            r"|\b(?:role|content part|content type|image input|audio input|image_url|input_audio)s?\b[^\n.]{0,60}?" + _NOT_SUPPORTED,
            re.IGNORECASE,
        ),
        "change the message it names (a role, or a content part the server cannot take), or use a server that takes it.",
        False,
    ),
)
"""Wording of answers that name a problem with the request (llama.cpp's server sends the errors it meets while reading
a request as HTTP 500), each with what to do and whether it is about the setup (the server's flags, a setting every
request carries: every request like it is refused alike) rather than this request's messages. Such a 5xx is raised at
once, as a refusal, not retried. Only wording that names a part of a request counts: a server's own failure ("CUDA
error: operation not supported", a Python ``TypeError``) is retried as an outage."""


class FewerChoicesWarning(UserWarning):
    """A model server answered fewer choices than the ``n`` asked for (it ignores or refuses ``n``); the rest were
    asked for in further requests (or, from a client that does not, are missing)."""


class _DeadlinePassed(Exception):
    """An attempt's answer was not complete within ``timeout_s``."""


NO_CHOICES = "the response has no choices"
"""The problem of the one :class:`Choice` that :meth:`OpenAIChatClient.complete` returns for a response without choices:
it stands for none (a caller counting the answers received counts it as 0)."""

_UNFINISHED = (0, "unfinished")
"""An attempt's answer, among those :meth:`OpenAIChatClient._failure_advice` reads, that was cut off at ``timeout_s``."""


_CLIENT_LOCK = threading.Lock()
"""Held while a client opens its connection pool (a module's lock: clients stay picklable)."""


class OpenAIChatClient:
    """A client for an OpenAI-compatible chat-completions endpoint.

    ``base_url`` is the API root including the version, as for the OpenAI SDK
    (``http://127.0.0.1:8000/v1`` for vLLM); ``model`` the served model (or adapter) name.
    ``api_key`` defaults to ``EE_OPENAI_API_KEY``, then ``OPENAI_API_KEY``; no key sends no
    ``Authorization`` header. ``tool_choice`` and ``extra_body`` go into every request that offers
    tools / every request. ``transport`` is an ``httpx`` transport (tests pass ``httpx.MockTransport``).
    ``timeout_knob`` is how the user of the command that made the client sets ``timeout_s`` (``"--timeout N"``,
    ``"--policy-setting timeout_s=N"``), which the advice after a timeout names; ``None``: it names the setting alone.
    ``api_key_knob`` is where the key comes from, which the advice after a 401/403 names (default: those variables, or
    api_key). ``headers`` go with every request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        tool_choice: str | dict[str, Any] | None = "auto",
        extra_body: dict[str, Any] | None = None,
        transport: Any = None,
        timeout_knob: str | None = None,
        api_key_knob: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        problem = server_url_problem(base_url) if isinstance(base_url, str) else "it is no text"
        if problem:
            shown = shown_url(base_url) if isinstance(base_url, str) else repr(base_url)
            raise ConfigError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {shown!r}: {problem}")
        if not model:
            raise ConfigError("An OpenAI-compatible client needs a model name (the server's served model or adapter name)")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
            # inf would pass "> 0", then fail every request: httpx's deadline overflows time_t
            raise ConfigError(
                f"timeout_s must be a finite number of seconds > 0 (how long one request may take), got {timeout_s!r}; "
                "e.g. 120, or 3600 for a model that may take very long (there is no 'no limit')"
            )
        self.base_url, self._auth = _without_credentials(base_url.rstrip("/"))
        # a query (Azure's ?api-version=..., a gateway's ?api_key=...) goes with every request, not before its path (the
        # requests went to BASE?q=v/chat/completions), and is kept out of URLs in messages, where a key would show
        self.base_url, self._params = _without_query(self.base_url)
        for endpoint in ("/chat/completions", "/completions"):
            if self.base_url.endswith(endpoint):
                raise ConfigError(
                    f"base_url is the API root, not an endpoint: use {self.base_url[: -len(endpoint)]!r} "
                    f"(requests go to BASE_URL/chat/completions), got {self.base_url!r}"
                )
        self.model = model
        self.timeout_s = timeout_s
        self.timeout_knob = timeout_knob
        self.api_key_knob = api_key_knob or f"{' or '.join(API_KEY_ENV)}, or api_key"
        self._headers = dict(headers or {})
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.tool_choice = tool_choice
        self.extra_body = dict(extra_body or {})
        if api_key is None:
            source = next((v for v in API_KEY_ENV if os.environ.get(v)), None)
            api_key = os.environ[source] if source is not None else None
        else:  # (the default knob names the variables, not where a given key came from)
            source = api_key_knob or "the api_key given"
        check_header_key(api_key, source or "")
        self._api_key = api_key
        self._transport = transport
        self._client: Any = None
        self._sends_reasoning = True
        """Whether earlier replies' ``reasoning_content`` goes back in requests (vLLM takes it, and reasoning models'
        templates render it); off for good once this server refused a request over it (OpenAI's and DeepSeek's APIs do)."""
        self._one_choice_only = False
        """Whether every answer takes a request of its own: on for good once this server refused ``n`` > 1."""
        self._warned_fewer = False
        self.short_answers = 0
        """How many :meth:`complete` calls the server's first answer held fewer choices than ``n`` for."""
        self.extra_requests = 0
        """How many further requests were sent for the choices such first answers lacked."""
        self.failed_requests = 0
        """How many of those further requests failed (their :meth:`complete` call returned the answers it had)."""
        self._warned_failed = False

    @property
    def url(self) -> str:
        """The chat-completions URL requests go to."""
        return f"{self.base_url}/chat/completions"

    def describe(self) -> dict[str, Any]:
        """Endpoint, model and request settings (never the API key)."""
        return {"base_url": self.base_url, "model": self.model, "tool_choice": self.tool_choice}

    def close(self) -> None:
        """Close the HTTP connection pool (a later call opens a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSchema] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        """``n`` answers, asked for in one request.

        A server that answers fewer (Ollama and llama-cpp-python ignore ``n``; llama-server refuses ``n`` > 1) is asked
        again for the rest, each further request with the next seed, in at most ``n`` requests in all; a
        :class:`FewerChoicesWarning` says so once per client, and :attr:`short_answers` / :attr:`extra_requests` count it.
        A further request that fails (a server whose queue is full) ends the asking: the answers received come back,
        fewer than ``n``, said once per client and counted in :attr:`failed_requests`.
        """
        first_n = 1 if self._one_choice_only else n
        try:
            response = self._chat(messages, tools, first_n, sampling)
        except ModelRequestError as exc:
            if first_n == 1 or not _ONE_CHOICE_ONLY.search(exc.refusal):
                raise
            self._one_choice_only = True  # llama-server: one choice per request, from now on
            response = self._chat(messages, tools, 1, sampling)
        choices = _choices_of(response)
        if choices is None:
            return [Choice(None, raw=clip(json.dumps(response, ensure_ascii=False)), problem=NO_CHOICES)]
        answered = [_answered_by(response)] * len(choices)
        first, requests, failure = len(choices), 1, None
        while len(choices) < n and requests < n:
            seed = None if sampling.seed is None else sampling.seed + requests  # another sample, not the same one again
            requests += 1
            try:
                further = self._chat(messages, tools, 1 if self._one_choice_only else n - len(choices), replace(sampling, seed=seed))
            except ModelError as exc:  # the answers in hand are kept: the caller counts (replay refills) the missing ones
                failure = exc
                break
            more = _choices_of(further)
            if not more:
                break
            more = more[: n - len(choices)]
            choices.extend(more)
            answered += [_answered_by(further)] * len(more)
        if first < n:
            self._note_fewer(n, first, requests - 1)
        if failure is not None:
            self._note_failed(len(choices), n, failure)
        return [replace(_choice(index, choice), model=model) for index, (choice, model) in enumerate(zip(choices, answered, strict=True))]

    def _chat(self, messages: Sequence[Message], tools: Sequence[ToolSchema] | None, n: int, sampling: Sampling) -> Any:
        """One chat-completions request's decoded answer."""
        try:
            return self.post("/chat/completions", self.request_body(messages, tools=tools, n=n, sampling=sampling))
        except ModelRequestError as exc:
            if not (self._sends_reasoning and exc.status in (400, 422) and "reasoning_content" in str(exc) and _with_reasoning(messages)):
                raise
            # The server takes no reasoning in the messages it is sent: send them without it, now and from now on.
            self._sends_reasoning = False
            return self.post("/chat/completions", self.request_body(messages, tools=tools, n=n, sampling=sampling))

    def _note_fewer(self, n: int, first: int, extra: int) -> None:
        with _CLIENT_LOCK:
            self.short_answers += 1
            self.extra_requests += extra
            warned, self._warned_fewer = self._warned_fewer, True
        if not warned:
            how = (
                "it refuses n > 1, so each answer is asked for in a request of its own"
                if self._one_choice_only
                else f"it answered {first} choice(s) where n={n} were asked (it ignores n, as Ollama's and llama-cpp-python's "
                "OpenAI endpoints do), so the rest are asked for in further requests"
            )
            warnings.warn(
                f"The server at {self.url} ({self.model!r}) does not give n answers per request: {how}; a call for n answers "
                "can take up to n requests. (Said once per client; its short_answers and extra_requests count this.)",
                FewerChoicesWarning,
                stacklevel=3,
            )

    def _note_failed(self, got: int, n: int, failure: ModelError) -> None:
        with _CLIENT_LOCK:
            self.failed_requests += 1
            warned, self._warned_failed = self._warned_failed, True
        if not warned:
            warnings.warn(
                f"A further request to {self.url} ({self.model!r}) for the answers its first one lacked failed, so {got} "
                f"answer(s) of the n={n} asked come back: {failure} (Said once per client; its failed_requests counts this.)",
                FewerChoicesWarning,
                stacklevel=3,
            )

    def request_body(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSchema] | None = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> dict[str, Any]:
        """The JSON body of a chat-completions request."""
        body: dict[str, Any] = {"model": self.model, "messages": wire_messages(messages, reasoning=self._sends_reasoning), "n": n}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        body["temperature"] = sampling.temperature
        body["max_tokens"] = sampling.max_tokens
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if tools:
            body["tools"] = list(tools)
            if self.tool_choice is not None:
                body["tool_choice"] = self.tool_choice
        body.update(self.extra_body)
        return body

    def list_models(self) -> list[str]:
        """The model (and loaded adapter) names the server serves (``GET /models``)."""
        return [str(item.get("id")) for item in self.model_entries() if item.get("id")]

    def model_entries(self) -> list[dict[str, Any]]:
        """The entries of ``GET /models`` (``id``, ``owned_by``, ``parent``, ``max_model_len``, ... as the server gives them)."""
        response = self._send("GET", "/models", None)
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, list):
            raise ModelResponseError(
                f"{self.base_url}/models answered without a 'data' list: {clip(json.dumps(response))}", url=f"{self.base_url}/models"
            )
        return [item for item in data if isinstance(item, dict)]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to ``base_url + path`` with retries; the decoded JSON answer."""
        return self._send("POST", path, body)

    @contextmanager
    def stream(self, path: str, body: dict[str, Any]) -> Iterator[Iterator[bytes]]:
        """POST ``body`` (``"stream": true``) and yield an iterator over the answer's bytes as they arrive.

        Retried as :meth:`post` is until the server starts answering; a connection that breaks after
        that raises :class:`~ee_middleware.errors.ModelServerError` from the iterator (what was read
        is not re-sent). The response is closed when the ``with`` block ends. An answer that is no event stream (its
        ``Content-Type`` not ``text/event-stream``: a proxy's HTML page, a JSON answer of a server that ignored
        ``stream``) raises :class:`~ee_middleware.errors.ModelResponseError` before anything is yielded.
        """
        import httpx

        url = f"{self.base_url}{path}"
        response = self._open("POST", path, body, stream=True)
        kind = response.headers.get("content-type", "")
        if "text/event-stream" not in kind.lower():
            try:
                response.read()
                shown = _shown_body(response)
            except httpx.HTTPError as exc:  # (what it said cannot be read: that alone)
                shown = f"a body that could not be read ({type(exc).__name__})"
            finally:
                response.close()
            raise UnreadableAnswerError(
                f"The server at {url} answered a stream request with HTTP {response.status_code} but no event stream "
                f"(Content-Type {kind or 'missing'}): {shown}",
                url=url,
            )
        received = 0

        def chunks() -> Iterator[bytes]:
            nonlocal received
            try:
                for chunk in response.iter_bytes():  # decoded: a compressed answer comes out as plain bytes
                    received += len(chunk)
                    yield chunk
            except httpx.TimeoutException as exc:
                raise ModelServerError(
                    f"The stream from {url} stalled for {self.timeout_s:g} s after {received} bytes ({type(exc).__name__})",
                    url=url,
                    timed_out=True,
                ) from exc
            except httpx.TransportError as exc:
                raise ModelServerError(f"The stream from {url} broke after {received} bytes: {type(exc).__name__}: {exc}", url=url) from exc

        try:
            yield chunks()
        finally:
            response.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = f"{self.base_url}{path}"
        response = self._open(method, path, body)
        try:
            return response.json()
        except ValueError as exc:
            raise UnreadableAnswerError(
                f"The server at {url} answered with something that is not JSON: {_shown_body(response)}", url=url
            ) from exc

    def _open(self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool = False) -> Any:
        """The server's successful response (its body not yet read when ``stream``), after retries."""
        import httpx

        url = f"{self.base_url}{path}"
        client = self._get_client(httpx)
        last_problem, last_status, timed_out = "", None, False
        answers: list[tuple[int, str] | None] = []  # each attempt's 5xx/429 answer, _UNFINISHED or None, to see repeats
        wait = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                _sleep(max(self.backoff_s * 2 ** (attempt - 1), wait))
            wait = 0.0
            answers.append(None)
            try:
                response = self._attempt(client, method, url, body, stream=stream)
            except (httpx.TimeoutException, _DeadlinePassed) as exc:
                last_problem, last_status, timed_out = _timeout_problem(exc, self.timeout_s), None, True
                answers[-1] = _UNFINISHED if isinstance(exc, _DeadlinePassed) else None
                continue
            except httpx.TransportError as exc:
                last_problem, last_status, timed_out = f"{type(exc).__name__}: {exc}", None, False
                continue
            status = response.status_code
            if 300 <= status < 400:  # not followed (a request's body and key would go where the server says)
                if stream:
                    response.close()
                location = response.headers.get("location")
                where = f" to {shown_url(location)}" if location else ""
                raise ModelResponseError(
                    f"The server at {url} answered HTTP {status}, a redirect{where}, instead of an answer. Give the URL it "
                    "redirects to as the base URL (an ingress that sends http:// to https://, or a path that moved): ee does "
                    "not follow redirects, which would send the request and its API key elsewhere.",
                    url=url,
                    status=status,
                )
            if status < 400:  # a stream's body is not read here: it is the caller's to read as it arrives
                embedded = None if stream else _error_in_body(response)
                if embedded is None:
                    return response
                status, text = embedded
                if status is None:  # an error without a code we can read
                    raise ModelResponseError(f"The server at {url} answered with an error instead of a completion: {text}", url=url)
                said = text
            else:
                text, said = _shown_body(response), _error_message(response)
            hint, setup = _request_problem(said) or ("", False)
            if hint and status >= 500:
                refusal = f"The server at {url} refused the request with HTTP {status}: {text}."
                advice = (
                    f"Its message names a problem with the request, not an outage (some servers, llama.cpp's llama-server "
                    f"among them, send such refusals as HTTP {status}), so it was not retried: {hint}"
                )
                raise ModelRequestError(
                    f"{refusal} {advice}", url=url, status=status, refusal=refusal, answer=_json_or_none(response), setup=setup
                )
            if status == 429 or status >= 500:
                wait = _retry_after(response)
                asked = f" (it asked to wait {wait:g} s)" if wait else ""
                last_problem, last_status, timed_out = f"HTTP {status}{asked}: {text}", status, False
                answers[-1] = (status, text)
                continue
            if status >= 400:
                refusal = f"The server at {url} refused the request with HTTP {status}: {text}."
                # a 4xx about the setup (vLLM's 400 "... requires --enable-auto-tool-choice ...") says what to change
                advice = f"{self._refusal_advice(status)} {hint}" if setup else self._refusal_advice(status)
                raise ModelRequestError(
                    f"{refusal} {advice}", url=url, status=status, refusal=refusal, answer=_json_or_none(response), setup=setup
                )
        raise ModelServerError(
            f"No usable answer from {url} after {self.retries + 1} attempt(s): {str(last_problem).rstrip('.')}. "
            f"{self._failure_advice(answers, timed_out)}",
            url=url,
            status=last_status,
            timed_out=timed_out,
            retry_after=wait,
        )

    def _attempt(self, client: Any, method: str, url: str, body: dict[str, Any] | None, *, stream: bool) -> Any:
        """One request's response: for a stream, once its headers are in (an error's body read); otherwise whole, within
        ``timeout_s`` of its start (:class:`_DeadlinePassed` when not)."""
        if stream:  # timeout_s bounds each wait for the next part, not the whole answer
            response = client.send(client.build_request(method, url, json=body), stream=True)
            if response.status_code >= 400:
                response.read()
                response.close()
            return response
        deadline = time.monotonic() + self.timeout_s
        request = client.build_request(method, url, json=body, extensions={"trace": _deadline_trace(deadline)})
        response = client.send(request, stream=True)
        try:
            _read_by(response, deadline)
        finally:
            response.close()
        return response

    def _timeout_setting(self) -> str:
        """``timeout_s``, how the running command sets it (where its caller said) and its value, for advice."""
        knob = f"{self.timeout_knob}; " if self.timeout_knob else ""
        return f"timeout_s ({knob}now {self.timeout_s:g} s)"

    def _failure_advice(self, answers: list[tuple[int, str] | None], timed_out: bool) -> str:
        """What to check after every attempt failed (``answers``: each attempt's 5xx/429 status and text,
        :data:`_UNFINISHED` for an answer cut off at ``timeout_s``, or None)."""
        last = answers[-1] if answers else None
        if last == _UNFINISHED:
            return (
                f"The server answers, but the answer took longer than {self._timeout_setting()}: raise it "
                "if the model is only slow (a long answer, a long queue); if it never finishes, check the model server behind "
                "this one (a proxy that keeps the connection open for an upstream that is stuck)."
            )
        if last is not None and last[0] == 429:
            return "The server is limiting the request rate: send fewer requests at once (lower the concurrency) or allow more retries."
        outage = (
            "Is the vLLM (or other OpenAI-compatible) server running and reachable? Check base_url "
            "(it should end in /v1), the port, and that the model has finished loading."
        )
        if last is not None and last[0] >= 500:
            # it answered: asking whether it runs and is reachable sent people to check what was fine
            answered = (
                f"The server is reachable and answered HTTP {last[0]}: its log says what failed (from a proxy or load "
                "balancer, a 502, 503 or 504 says the model server behind it is down, overloaded or still loading the model)."
            )
            if len(answers) > 1 and all(answer == last for answer in answers):
                return (
                    f"It gave the same answer to every attempt, so its message is the likely cause: a problem with this request "
                    f"(a setting, the tools or the messages the server cannot take) or with the server's setup. If the server was "
                    f"only overloaded or still loading the model, try again later. {answered}"
                )
            return f"{answered} If it was only overloaded or still loading the model, try again later or allow more retries."
        if timed_out:
            return f"{outage} If the model is only slow (a long answer, a long queue), raise {self._timeout_setting()}."
        return outage

    def _refusal_advice(self, status: int) -> str:
        """What to check for a request the server refused with ``status`` (4xx)."""
        if status in (401, 403):
            return f"Check the API key ({self.api_key_knob}) and that it may use {self.model!r}."
        if status == 404:
            return (
                f"Check the model name ({self.model!r} must be served there: GET {self.base_url}/models lists them) and that "
                "base_url ends in the API version (/v1)."
            )
        if status in (400, 413, 422):
            return "The server could not take this request as sent (a prompt longer than the model's context, or a setting it does not support): see its message."
        return f"Check the model name ({self.model!r} must be served there), the API key and the request settings."

    def _get_client(self, httpx: Any) -> Any:
        client = self._client
        if client is None:
            with _CLIENT_LOCK:  # threads asking at once (a replay worker's concurrent proposals) share one pool
                if self._client is None:
                    headers = {**self._headers, **({"Authorization": f"Bearer {self._api_key}"} if self._api_key else {})}
                    self._client = httpx.Client(
                        timeout=self.timeout_s, headers=headers, auth=self._auth, params=self._params, transport=self._transport
                    )
                client = self._client
        return client


def _answered_by(response: Any) -> str | None:
    """The model a response says answered (its ``model``), None where it names none."""
    model = response.get("model") if isinstance(response, dict) else None
    return model if isinstance(model, str) and model else None


def _choices_of(response: Any) -> list[Any] | None:
    """A response's ``choices`` list, None when it has none (not a list, or empty)."""
    choices = response.get("choices") if isinstance(response, dict) else None
    return list(choices) if isinstance(choices, list) and choices else None


def _request_problem(text: str) -> tuple[str, bool] | None:
    """What to do about a refusal whose ``text`` names a problem with the request, and whether it is about the setup
    (the server's flags or a setting every request carries, see :data:`_REQUEST_PROBLEMS`); None when it names none."""
    return next(((hint, setup) for pattern, hint, setup in _REQUEST_PROBLEMS if pattern.search(text)), None)


def _error_message(response: Any) -> str:
    """A refusal's own words, to read a request problem in: a JSON error's ``message`` (never the body's keys, such as
    ``"message"`` or ``"param"``), a plain-text body as it is; "" for an HTML page (a proxy's or web server's)."""
    payload = _json_or_none(response)
    if isinstance(payload, dict):
        error = payload.get("error") or payload
        said = error.get("message") or error.get("detail") if isinstance(error, dict) else error
        return said if isinstance(said, str) else ""
    if payload is not None or "html" in response.headers.get("content-type", "") or response.text.lstrip()[:1] == "<":
        return ""
    return response.text


def _deadline_trace(deadline: float) -> Any:
    """An httpcore ``trace`` callback that shortens the waits of each phase of a request (sending it, waiting for
    the headers, reading the body) to the time left before ``deadline``: each phase reads its timeout when it starts."""

    def trace(event: str, info: dict[str, Any]) -> None:
        request = info.get("request") if event.endswith(".started") else None
        timeouts = getattr(request, "extensions", {}).get("timeout") if request is not None else None
        if isinstance(timeouts, dict):
            left = max(deadline - time.monotonic(), 0.001)
            for phase in ("read", "write"):
                if timeouts.get(phase) is None or timeouts[phase] > left:
                    timeouts[phase] = left

    return trace


def _read_by(response: Any, deadline: float) -> None:
    """Read ``response``'s body, cutting its connection off at ``deadline`` (:class:`_DeadlinePassed`): a server that
    keeps sending a few bytes (keep-alive whitespace) resets every read's timeout, never this one. The watch is a
    timer ended before this returns. Through a transport without a socket (a test's ``httpx.MockTransport``) nothing
    can be cut off: an answer finished after the deadline is refused when the read ends.

    The connection goes back to the pool when the body's stream closes, inside the read and before the timer can be
    cancelled, and the pool may hand it to another thread's request at once: so the stream marks itself closed under a
    lock first, and the timer, under that lock, cuts off only a stream not yet closed (whose answer then was not whole
    at the deadline), never the socket another request now uses. Once cut off, the stream reads no further part (not
    even the end of an answer already received), so its connection is closed rather than put back in the pool with
    its socket shut down."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    lock, closed, cut = threading.Lock(), threading.Event(), threading.Event()

    def cut_off() -> None:
        with lock:
            if closed.is_set():  # read whole in time; the connection may be another request's already
                return
            cut.set()
            if isinstance(sock, socket.socket):
                try:  # the base class's shutdown: a TLS socket's own would unwrap it under the reading thread
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    response.stream = _closing_stream_type()(response.stream, lock, closed, cut)
    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), cut_off)
    timer.daemon = True
    timer.start()
    try:
        response.read()
    except Exception as exc:
        if cut.is_set():
            raise _DeadlinePassed(response.status_code) from exc
        raise
    finally:
        timer.cancel()
        timer.join()
    if cut.is_set():
        raise _DeadlinePassed(response.status_code)  # an answer cut off may look whole (a body that ends with the connection)


@functools.cache
def _closing_stream_type() -> type:
    """An httpx byte stream that sets ``closed`` (holding ``lock``) before the stream it wraps closes and so hands its
    connection back to the pool, and that reads no further part once ``cut`` is set (see :func:`_read_by`); a class
    made once, on first use, as httpx is imported lazily."""
    import httpx

    class ClosingStream(httpx.SyncByteStream):
        def __init__(self, stream: Any, lock: threading.Lock, closed: threading.Event, cut: threading.Event) -> None:
            self._stream, self._lock, self._closed, self._cut = stream, lock, closed, cut

        def __iter__(self) -> Iterator[bytes]:
            parts = iter(self._stream)
            while not self._cut.is_set():  # a connection whose answer ends after its cut would go back to the pool
                part = next(parts, None)
                if part is None:
                    return
                yield part
            raise httpx.ReadError("the answer was cut off at its deadline")

        def close(self) -> None:
            with self._lock:
                self._closed.set()
            self._stream.close()

    return ClosingStream


def _timeout_problem(exc: Exception, timeout_s: float) -> str:
    """An attempt that ran out of time, for a message."""
    if isinstance(exc, _DeadlinePassed):
        return (
            f"no complete answer within timeout_s={timeout_s:g} s (the server sent HTTP {exc.args[0]} headers, then kept "
            "the connection open without finishing the body, as servers and proxies that send keep-alive whitespace "
            "while the model works do)"
        )
    return f"timed out after {timeout_s:g} s ({type(exc).__name__})"


def _choice(index: int, choice: Any) -> Choice:
    """One of a response's ``choices`` as a :class:`Choice`; one with no message object (an empty choice, a
    completions-style ``text``, a message that is a string) comes back with a problem, never as an empty answer."""
    raw = clip(json.dumps(choice, ensure_ascii=False, default=repr))
    if not isinstance(choice, dict):
        return Choice(None, raw=raw, problem=f"choice {index} is not a JSON object (a {type(choice).__name__}), so it holds no message")
    message = choice.get("message")
    if isinstance(message, dict):
        return Choice.from_message(message, finish_reason=choice.get("finish_reason"))
    if message is None and "text" in choice:
        problem = (
            f"choice {index} has a completions-style 'text' and no 'message' object: the server answered as the "
            "/completions API, not /chat/completions (check that the endpoint serves chat completions for this model)"
        )
    elif message is None:
        problem = f"choice {index} has no 'message' object"
    else:
        problem = f"choice {index}'s 'message' is a {type(message).__name__}, not a message object (role, content, tool_calls)"
    return Choice(None, raw=raw, problem=problem, finish_reason=choice.get("finish_reason"))


def wire_messages(messages: Sequence[Message], *, reasoning: bool = True) -> list[Message]:
    """Messages as the chat API expects them: tool-call arguments as JSON strings; without ``reasoning``, assistant
    messages without their ``reasoning_content``."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_encoded_call(call) for call in calls]}
        if not reasoning and "reasoning_content" in message:
            message = {key: value for key, value in message.items() if key != "reasoning_content"}
        out.append(message)
    return out


def _with_reasoning(messages: Sequence[Message]) -> bool:
    return any(isinstance(message, dict) and message.get("reasoning_content") for message in messages)


def _encoded_call(call: Any) -> Any:
    if isinstance(call, dict) and isinstance(call.get("function"), dict) and not isinstance(call["function"].get("arguments"), str):
        function = {**call["function"], "arguments": json.dumps(call["function"].get("arguments") or {}, ensure_ascii=False)}
        return {**call, "function": function}
    return call


def _without_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without a ``user:password@`` part (kept out of records and messages), and that part as basic auth."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host)), (unquote(parts.username or ""), unquote(parts.password or ""))


def _without_query(url: str) -> tuple[str, list[tuple[str, str]]]:
    """``url`` without its query (and fragment), and the query's parameters, in order."""
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.query and not parts.fragment:
        return url, []
    return urlunsplit(parts._replace(query="", fragment="")).rstrip("/"), parse_qsl(parts.query, keep_blank_values=True)


def _shown_body(response: Any) -> str:
    """A response's text for a message: clipped, and an HTML page (a proxy's error page) by its title."""
    text = response.text
    if "html" in response.headers.get("content-type", "") or text.lstrip()[:15].lower().startswith(("<!doctype html", "<html")):
        found = _HTML_TITLE.search(text)
        shown = (
            _plain(found.group(2)) if found else clip(_plain(re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", text, flags=re.I | re.S)), 200)
        )
        return f"an HTML page ({shown!r}), not an API answer: a proxy or web server answered at this URL"
    return clip(text) if text.strip() else "an empty body"


def _plain(markup: str) -> str:
    """The text of an HTML fragment, on one line."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def _error_in_body(response: Any) -> tuple[int | None, str] | None:
    """``(status, text)`` for a successful response whose JSON is an error instead of an answer (``{"error": ...}``
    or vLLM's ``{"object": "error", ...}``); the status is the error's ``code`` when that is an HTTP status, else None."""
    if b'"error"' not in response.content:  # the common case: an answer, read once by the caller
        return None
    try:
        payload = response.json()
    except ValueError:
        return None
    if not isinstance(payload, dict) or "choices" in payload or "data" in payload:
        return None
    error = payload.get("error") if payload.get("error") else (payload if payload.get("object") == "error" else None)
    if not error:
        return None
    detail = error if isinstance(error, dict) else {"message": error}
    code = detail.get("code", payload.get("code"))
    try:
        status = int(code)
    except (TypeError, ValueError):
        status = 0
    message = clip(str(detail.get("message") or json.dumps(error, ensure_ascii=False)))
    if 400 <= status < 600:
        return status, f"{message} (an error with code {status} in an HTTP {response.status_code} answer)"
    return None, message


def _json_or_none(response: Any) -> Any:
    """A response's JSON body, None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: Any) -> float:
    """The wait in seconds a ``Retry-After`` header asks for (seconds or an HTTP date), at most :data:`MAX_RETRY_AFTER_S`; 0 if none."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if seconds == seconds else 0.0
