"""Tool-call ids a server reuses within a conversation: the loop gives each call its own id before anything keys on it,
and each tool result goes back to the model paired with its own call.

The model is a fake server (a real local HTTP server speaking the OpenAI chat API, with scripted answers in the shapes
TGI and Xinference send); the client is the real one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ee_middleware.evals.clients import build_eval_client
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.evals.tasks import Conversation, EvalTask
from ee_middleware.records import Observation, ToolCall
from ee_middleware.testing.http import ScriptedChatServer

TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
]
TASK = EvalTask("s", "t1", "c", [[{"role": "user", "content": "Weather in Paris and Rome?"}]], [TOOLS], [[]])


def _call(call_id: str, city: str) -> dict[str, Any]:
    # TGI's shape: arguments as an object, a null description
    return {"id": call_id, "type": "function", "function": {"description": None, "name": "get_weather", "arguments": {"city": city}}}


def _text_call(city: str) -> str:
    return '<tool_call>{"name": "get_weather", "arguments": {"city": "' + city + '"}}</tool_call>'


TGI = [  # "id": "0" on every call, one call an answer
    {"role": "assistant", "content": None, "tool_calls": [_call("0", "Paris")]},
    {"role": "assistant", "content": None, "tool_calls": [_call("0", "Rome")]},
    {"role": "assistant", "content": "Paris 20C, Rome 25C"},
]
XINFERENCE = [  # parallel calls of one answer under one id (xorbitsai/inference#4237)
    {"role": "assistant", "content": None, "tool_calls": [_call("call_a1", "Paris"), _call("call_a1", "Rome")]},
    {"role": "assistant", "content": "Paris 20C, Rome 25C"},
]
TEXT_REPEATED = [  # the same call written as text twice: its id comes from its name and arguments, the same both times
    {"role": "assistant", "content": _text_call("Paris")},
    {"role": "assistant", "content": _text_call("Paris")},
    {"role": "assistant", "content": "Paris 20C"},
]


class _Weather:
    """An environment whose observation names the call it answers."""

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []

    def execute(self, call: ToolCall) -> Observation:
        self.calls.append(call)
        return Observation(content=f"weather in {call.arguments['city']}")


def _converse(answers: list[dict[str, Any]]) -> tuple[Conversation, _Weather, list[dict[str, Any]]]:
    """The n-th request gets ``answers[n]`` (the last once they run out); returns every request body too. The server has
    no model listing: ``GET /models`` is answered 404, as FastAPI answers a path it does not serve."""
    environment = _Weather()
    with ScriptedChatServer(answers, models=None) as server:
        client = build_eval_client(f"openai:{server.base_url}#m", retries=0, timeout_s=10)
        try:
            return run_conversation(client, TASK, environment, LoopConfig()), environment, server.requests
        finally:
            client.close()


def _pairs(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(the city a call asked for, the tool result sent back under its id) for every call of ``messages``."""
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    calls = [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    return [(json.loads(c["function"]["arguments"])["city"], results.get(c["id"], "<no result>")) for c in calls]


@pytest.mark.parametrize(
    ("answers", "cities"),
    [(TGI, ["Paris", "Rome"]), (XINFERENCE, ["Paris", "Rome"]), (TEXT_REPEATED, ["Paris", "Paris"])],
    ids=["tgi-same-id-every-call", "xinference-same-id-in-one-answer", "text-call-repeated"],
)
def test_each_call_gets_its_own_id_and_the_model_gets_each_result_with_its_own_call(
    answers: list[dict[str, Any]], cities: list[str]
) -> None:
    """Before: the calls kept the server's ids ("0", "0"), so the model was sent two tool results under one id and
    nothing could tell which call each answered."""
    conversation, environment, seen = _converse(answers)
    assert conversation.error is None, conversation.error
    ids = [call.id for call in conversation.calls]
    assert [call.arguments["city"] for call in conversation.calls] == cities
    assert len(set(ids)) == len(ids) and all(ids), ids
    assert [call.id for call in environment.calls] == ids, "the environment is asked with the ids the conversation holds"
    expected = [(city, f"weather in {city}") for city in cities]
    assert _pairs(conversation.messages) == expected
    assert _pairs(seen[-1]["messages"]) == expected, "what the model is sent pairs each result with its own call"


def test_an_id_the_server_gives_once_is_kept() -> None:
    answers = [
        {"role": "assistant", "content": None, "tool_calls": [_call("call_p", "Paris"), _call("call_r", "Rome")]},
        {"role": "assistant", "content": "done"},
    ]
    conversation, _, _ = _converse(answers)
    assert [call.id for call in conversation.calls] == ["call_p", "call_r"]
