from __future__ import annotations

import json

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from ee_middleware.messages import clean_text, dumps, genai_to_openai, langchain_to_openai, openai_to_genai, parse_arguments


def test_langchain_openai_genai_round_trip():
    messages = [
        SystemMessage("be brief"),
        HumanMessage("hi ✓"),
        AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}]),
        ToolMessage("42", tool_call_id="c1"),
        AIMessage("the answer is 42"),
    ]
    openai = langchain_to_openai(messages)
    assert openai[2]["tool_calls"][0] == {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    assert openai[3] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    assert genai_to_openai(openai_to_genai(openai)) == openai


def test_arguments_and_odd_values_never_raise():
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("not json") == {"_raw": "not json"}
    assert parse_arguments("[1, 2]") == {"_raw": [1, 2]}
    assert parse_arguments(None) == {}
    assert json.loads(dumps({"b": b"\x00\x01", "f": float("nan"), "o": object, "s": {3}})) == {
        "b": {"type": "bytes", "base64": "AAE="},
        "f": "nan",
        "o": "<class 'object'>",
        "s": [3],
    }
    assert clean_text("ok \ud83d\ude80 \udc00") == "ok 🚀 \ufffd"
