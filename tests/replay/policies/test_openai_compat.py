"""The OpenAI-compatible policy against a real local HTTP server: a scripted stand-in for vLLM.

The server is the standard library's ``ThreadingHTTPServer`` on 127.0.0.1, answering
``POST /v1/chat/completions`` with scripted responses and recording every request it gets.
"""

from __future__ import annotations

import json
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ee_middleware.errors import ModelRequestError, ModelResponseError, ModelServerError, PolicyError
from ee_middleware.models.openai_compat import FewerChoicesWarning
from ee_middleware.models.protocol import Choice, Sampling
from ee_middleware.replay.policies.chat import ChatPolicy, OpenAIPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint, Policy
from ee_middleware.testing.http import serving


@dataclass
class ScriptedReply:
    status: int = 200
    body: Any = None
    delay_s: float = 0.0


@dataclass
class ScriptedVLLMStandIn:
    """A real HTTP server that answers chat completions from a script (the last reply repeats)."""

    script: list[ScriptedReply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    base_url: str = ""

    def reply(self) -> ScriptedReply:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def make_handler(stand_in: ScriptedVLLMStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            stand_in.requests.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
            stand_in.headers.append(dict(self.headers))
            reply = stand_in.reply()
            if reply.delay_s:
                time.sleep(reply.delay_s)
            data = reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test): nothing to answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def vllm_stand_in() -> Iterator[ScriptedVLLMStandIn]:
    stand_in = ScriptedVLLMStandIn()
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), make_handler(stand_in))) as stand_in.base_url:
        yield stand_in


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(*messages: Any) -> dict[str, Any]:
    choices = [{"index": i, "message": m, "finish_reason": "tool_calls"} for i, m in enumerate(messages)]
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "support-bot", "choices": choices}


def assistant(*calls: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


GOOD_AND_BAD = completion(
    assistant(tool_call("call_1", "check_stock", '{"item": "apple"}')),
    assistant(
        tool_call("call_2", "set_priority", '{"order_id": "A-1017", "level": "high"}'),
        tool_call("call_3", "check_stock", '{"item": "banana"}'),
    ),
    assistant(tool_call("call_4", "order_item", '{"item": "pear", "quantity": ')),  # malformed argument JSON
    {"role": "assistant", "content": '<tool_call>{"name": "check_stock", "arguments": {"item": "kiwi"}}</tool_call>'},
    {"role": "assistant", "content": "I think pears are out of stock."},
    {"role": "assistant"},
    "not even an object",
)


def policy_for(stand_in: ScriptedVLLMStandIn, **settings: Any) -> OpenAIPolicy:
    settings.setdefault("backoff_s", 0.01)
    return OpenAIPolicy(stand_in.base_url, "support-bot", **settings)


def test_scripted_vllm_stand_in_tool_calls_and_content_become_candidates(
    vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint
) -> None:
    vllm_stand_in.script = [ScriptedReply(body=GOOD_AND_BAD)]
    policy = policy_for(vllm_stand_in, temperature=0.8, top_p=0.9)
    assert isinstance(policy, Policy)
    proposals = policy.propose(shop_point, 7, seed=42)
    parsed = [(c.call.id, c.call.name, c.call.arguments) if c.call else c.problem for c in proposals.candidates]
    assert parsed[:3] == [
        ("call_1", "check_stock", {"item": "apple"}),
        ("call_2", "set_priority", {"order_id": "A-1017", "level": "high"}),
        ("call_3", "check_stock", {"item": "banana"}),
    ]
    assert parsed[3].startswith("order_item: arguments are not valid JSON")
    assert parsed[4][1:] == ("check_stock", {"item": "kiwi"})
    assert parsed[5:] == [
        "no tool call found in the output",
        "the message has neither tool_calls nor content",
        "choice 6's 'message' is a str, not a message object (role, content, tool_calls)",
    ]
    meta = proposals.candidates[0].proposer
    assert (meta.policy, meta.model, meta.temperature, meta.top_p, meta.seed) == ("openai", "support-bot", 0.8, 0.9, 42)
    assert meta.settings == {"base_url": vllm_stand_in.base_url}
    assert json.loads(proposals.candidates[3].raw or "")["tool_calls"][0]["id"] == "call_4", "the raw choice is kept"
    policy.close()


def test_scripted_vllm_stand_in_receives_the_state_tools_n_and_seed(vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint) -> None:
    answers = [
        assistant(tool_call(f"c{i}", "check_stock", json.dumps({"item": item}))) for i, item in enumerate(("apple", "pear", "fig", "kiwi"))
    ]
    vllm_stand_in.script = [ScriptedReply(body=completion(*answers))]
    policy = policy_for(vllm_stand_in, api_key="sk-test", max_tokens=64)
    policy.propose(shop_point, 4, seed=9)
    [request] = vllm_stand_in.requests
    body = request["body"]
    assert request["path"] == "/v1/chat/completions"
    assert body["model"] == "support-bot" and body["n"] == 4 and body["seed"] == 9
    assert body["messages"] == shop_point.state and body["tools"] == shop_point.tools
    assert body["tool_choice"] == "auto" and body["temperature"] == 1.0 and body["max_tokens"] == 64
    assert "top_p" not in body
    assert vllm_stand_in.headers[0]["Authorization"] == "Bearer sk-test"
    assert "sk-test" not in json.dumps(policy.describe())


def test_scripted_vllm_stand_in_api_key_from_environment(
    vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EE_OPENAI_API_KEY", "sk-env")
    vllm_stand_in.script = [ScriptedReply(body=completion({"role": "assistant", "content": "pwd()"}))]
    policy_for(vllm_stand_in).propose(shop_point, 1, seed=0)
    assert vllm_stand_in.headers[0]["Authorization"] == "Bearer sk-env"


def test_scripted_vllm_stand_in_through_the_proposer(vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint) -> None:
    vllm_stand_in.script = [ScriptedReply(body=GOOD_AND_BAD)]
    result = Proposer(policy_for(vllm_stand_in), k=6).propose(shop_point, seed=1)
    assert len(result.accepted) == 6
    assert [c.call.arguments.get("item") for c in result.accepted[:4] if c.call] == ["apple", None, "banana", "kiwi"]
    assert result.counts == {"unparsable": 4}
    assert result.refilled == 2


def test_scripted_vllm_stand_in_500_then_success_is_retried(vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint) -> None:
    good = completion(assistant(tool_call("c", "check_stock", '{"item": "apple"}')))
    vllm_stand_in.script = [ScriptedReply(500, {"error": "engine busy"}), ScriptedReply(429, "slow down"), ScriptedReply(body=good)]
    proposals = policy_for(vllm_stand_in, retries=2).propose(shop_point, 1, seed=0)
    assert len(vllm_stand_in.requests) == 3
    assert proposals.candidates[0].call is not None


def test_scripted_vllm_stand_in_keeps_failing_gives_a_server_error(vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint) -> None:
    vllm_stand_in.script = [ScriptedReply(503, {"error": "model still loading"})]
    with pytest.raises(ModelServerError, match=r"after 3 attempt\(s\): HTTP 503: .*model still loading.*reachable and answered HTTP 503"):
        policy_for(vllm_stand_in, retries=2).propose(shop_point, 1, seed=0)
    assert len(vllm_stand_in.requests) == 3


def test_scripted_vllm_stand_in_4xx_includes_the_server_text_and_is_not_retried(
    vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint
) -> None:
    vllm_stand_in.script = [ScriptedReply(404, {"error": {"message": "The model `support-bot` does not exist."}})]
    with pytest.raises(ModelRequestError, match=r"HTTP 404: .*The model `support-bot` does not exist") as info:
        policy_for(vllm_stand_in).propose(shop_point, 1, seed=0)
    assert info.value.status == 404 and info.value.url == f"{vllm_stand_in.base_url}/chat/completions"
    assert len(vllm_stand_in.requests) == 1


def test_scripted_vllm_stand_in_timeout(vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint) -> None:
    vllm_stand_in.script = [ScriptedReply(body=completion(), delay_s=0.5)]
    with pytest.raises(ModelServerError, match=r"timed out after 0.1 s"):
        policy_for(vllm_stand_in, timeout_s=0.1, retries=0).propose(shop_point, 1, seed=0)


def test_scripted_vllm_stand_in_non_json_or_empty_answers(vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint) -> None:
    vllm_stand_in.script = [ScriptedReply(body="<html>proxy error</html>")]
    with pytest.raises(ModelResponseError, match=r"not JSON: an HTML page \('proxy error'\)"):
        policy_for(vllm_stand_in).propose(shop_point, 1, seed=0)
    vllm_stand_in.script = [ScriptedReply(body={"choices": []})]
    [candidate] = policy_for(vllm_stand_in).propose(shop_point, 1, seed=0).candidates
    assert candidate.call is None and candidate.problem == "the response has no choices"


def test_server_down_names_the_url(shop_point: DecisionPoint) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    policy = OpenAIPolicy(url, "support-bot", retries=1, backoff_s=0.01)
    with pytest.raises(ModelServerError, match=rf"No usable answer from {url}/chat/completions after 2 attempt\(s\).*Is the vLLM"):
        policy.propose(shop_point, 2, seed=0)


def test_bad_construction() -> None:
    with pytest.raises(PolicyError, match="http"):
        OpenAIPolicy("localhost:8000/v1", "m")
    with pytest.raises(PolicyError, match="model name"):
        OpenAIPolicy("http://localhost:8000/v1", "")


def test_a_server_that_ignores_n_gives_k_model_alternatives_not_refills(
    vllm_stand_in: ScriptedVLLMStandIn, shop_point: DecisionPoint
) -> None:
    """Ollama's /v1 and llama-cpp-python answer one choice whatever n is. Before: 1 model alternative and 3 schema
    mutations from the refill for K=4, with nothing saying so."""
    items = ("apple", "banana", "kiwi", "plum")
    answers = [completion(assistant(tool_call(f"c{i}", "check_stock", json.dumps({"item": item})))) for i, item in enumerate(items)]
    vllm_stand_in.script = [ScriptedReply(body=answer) for answer in answers]
    policy = policy_for(vllm_stand_in)
    with pytest.warns(FewerChoicesWarning, match=r"answered 1 choice\(s\) where n=4"):
        result = Proposer(policy, k=4).propose(shop_point, seed=7)
    assert [c.call.arguments for c in result.accepted if c.call] == [{"item": item} for item in items]
    assert result.refilled == 0 and not any("refill_for" in c.proposer.settings for c in result.accepted)
    assert [(r["body"]["n"], r["body"]["seed"]) for r in vllm_stand_in.requests] == [(4, 7), (3, 8), (2, 9), (1, 10)]
    assert (policy.client.short_answers, policy.client.extra_requests, policy.short_answers) == (1, 3, 0)
    policy.close()


class OneAnswerClient:
    """A client of one's own (the ChatClient protocol) that answers one choice whatever n is."""

    model = "my-model"

    def __init__(self) -> None:
        self.asked: list[int] = []

    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        self.asked.append(n)
        return [Choice.from_message(assistant(tool_call("c", "check_stock", '{"item": "apple"}')))]

    def describe(self) -> dict[str, Any]:
        return {"model": self.model}

    def close(self) -> None:
        pass


def test_a_client_of_ones_own_that_answers_fewer_than_k_is_warned_about_once_and_counted(shop_point: DecisionPoint) -> None:
    client = OneAnswerClient()
    policy = ChatPolicy(client, name="mine")
    with pytest.warns(FewerChoicesWarning, match=r"asked 'my-model' for 4 answers and got 1.*refill"):
        result = Proposer(policy, k=4).propose(shop_point, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Proposer(policy, k=3).propose(shop_point, seed=1)
    assert result.refilled == 3 and client.asked == [4, 3]
    assert (policy.short_answers, policy.missing_answers) == (2, 5)
