"""The OpenAI-compatible policy: ask a chat-completions endpoint (vLLM, ...) for K alternatives.

One request per decision point: the recorded state as ``messages``, the offered ``tools``, ``n=k``
and the seed. Every tool call of every choice becomes a candidate; a choice without tool calls has
its text parsed. A server that cannot be reached, times out or keeps failing (5xx, 429) after
``retries`` raises :class:`~ee_middleware.errors.PolicyError` naming the URL; a 4xx raises it with
the server's own error text. Malformed choices become candidates with a problem.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ee_middleware._optional import import_optional
from ee_middleware.errors import PolicyError
from ee_middleware.records import Message, Proposer
from ee_middleware.replay.policies.parsing import ParseProblem, from_openai_message
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Proposals
from ee_middleware.replay.policies.schema import tool_schemas_for

_API_KEY_ENV = ("EE_OPENAI_API_KEY", "OPENAI_API_KEY")
_MAX_ERROR_TEXT = 500


class OpenAIPolicy:
    """Proposes alternatives with an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` is the API root including the version, as for the OpenAI SDK
    (``http://127.0.0.1:8000/v1`` for vLLM). ``api_key`` defaults to ``EE_OPENAI_API_KEY``, then
    ``OPENAI_API_KEY``; no key sends no ``Authorization`` header. ``retries`` is the number of extra
    attempts after a connection error, a timeout, a 429 or a 5xx, with ``backoff_s`` doubling between
    them.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
        max_tokens: int = 256,
        timeout_s: float = 60.0,
        tool_choice: str | dict[str, Any] | None = "auto",
        retries: int = 2,
        backoff_s: float = 0.5,
        extra_body: dict[str, Any] | None = None,
        name: str = "openai",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PolicyError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not model:
            raise PolicyError("The OpenAI-compatible policy needs a model name (the server's served model name)")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.tool_choice = tool_choice
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.extra_body = dict(extra_body or {})
        self._api_key = api_key if api_key is not None else next((os.environ[v] for v in _API_KEY_ENV if os.environ.get(v)), None)
        self._client: Any = None

    @property
    def url(self) -> str:
        """The chat-completions URL requests go to."""
        return f"{self.base_url}/chat/completions"

    def describe(self) -> dict[str, Any]:
        """Endpoint, model and sampling settings (never the API key)."""
        return {
            "policy": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "tool_choice": self.tool_choice,
        }

    def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        """One request with ``n=k``; every tool call of every choice is a candidate."""
        if k <= 0:
            return Proposals()
        response = self._post(self._body(point, k, seed))
        proposer = Proposer(
            policy=self.name,
            model=self.model,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=seed,
            settings={"base_url": self.base_url},
        )
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list) or not choices:
            return Proposals(
                [Candidate(call=None, proposer=proposer, raw=_clip(json.dumps(response)), problem="the response has no choices")]
            )
        param_order = tool_schemas_for(point.tools).param_order()
        candidates = []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            raw = _clip(json.dumps(message if message is not None else choice, ensure_ascii=False))
            for item in from_openai_message(message, param_order=param_order):
                if isinstance(item, ParseProblem):
                    candidates.append(Candidate(call=None, proposer=proposer, raw=raw, problem=item.problem))
                else:
                    candidates.append(Candidate(call=item, proposer=proposer, raw=raw))
        return Proposals(candidates)

    def _body(self, point: DecisionPoint, k: int, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": _wire_messages(point.state),
            "n": k,
            "seed": seed,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if point.tools:
            body["tools"] = point.tools
            if self.tool_choice is not None:
                body["tool_choice"] = self.tool_choice
        body.update(self.extra_body)
        return body

    def _post(self, body: dict[str, Any]) -> Any:
        httpx = _httpx()
        client = self._get_client(httpx)
        last_problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                last_problem = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_problem = f"HTTP {response.status_code}: {_clip(response.text)}"
                continue
            if response.status_code >= 400:
                raise PolicyError(
                    f"The server at {self.url} refused the request with HTTP {response.status_code}: {_clip(response.text)}. "
                    f"Check the model name ({self.model!r} must be served there), the API key and the request settings."
                )
            try:
                return response.json()
            except ValueError as exc:
                raise PolicyError(f"The server at {self.url} answered with something that is not JSON: {_clip(response.text)}") from exc
        raise PolicyError(
            f"No usable answer from {self.url} after {self.retries + 1} attempt(s): {last_problem}. "
            "Is the vLLM (or other OpenAI-compatible) server running and reachable? Check base_url "
            "(it should end in /v1), the port, and that the model has finished loading."
        )

    def _get_client(self, httpx: Any) -> Any:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.Client(timeout=self.timeout_s, headers=headers)
        return self._client


def _httpx() -> Any:
    return import_optional("httpx", extra="all", purpose="call an OpenAI-compatible server")


def _wire_messages(state: list[Message]) -> list[Message]:
    """The state as the chat API expects it: tool-call arguments as JSON strings."""
    messages = []
    for message in state:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_encoded_call(call) for call in calls]}
        messages.append(message)
    return messages


def _encoded_call(call: Any) -> Any:
    if isinstance(call, dict) and isinstance(call.get("function"), dict) and not isinstance(call["function"].get("arguments"), str):
        function = {**call["function"], "arguments": json.dumps(call["function"].get("arguments") or {}, ensure_ascii=False)}
        return {**call, "function": function}
    return call


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."
