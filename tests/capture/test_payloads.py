"""A model's reply is encoded once per run (issue 11.5): its fragment makes its own span's output,
the next span's input and the run's output, exactly as encoding each of them whole does."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.payloads import PayloadEncoder
from ee_middleware.capture.redaction import Redactor
from ee_middleware.messages import langchain_to_openai, openai_to_genai

REPLIES = [
    AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"q": "bob@example.com", "password": "hunter2"}, "id": "c1"}]),
    AIMessage(content="Call +1 415 555 0134; token sk-abcdefghijklmnop1234", name="agent"),
    AIMessage(content=[{"type": "text", "text": "a "}, {"type": "text", "text": "b"}], tool_calls=[{"name": "x", "args": {}, "id": "c2"}]),
    AIMessage(content='{"note": "{\\"api_key\\": \\"abc123secretvalue\\"}"}'),  # JSON two strings deep: walked, not scanned
    AIMessage(content="nothing to hide"),
]


def _whole(encoder: PayloadEncoder, outputs: list) -> tuple[str, tuple[str, ...]]:
    """The reply encoded whole and its finish reasons, as capture did before reusing fragments."""
    output = openai_to_genai(langchain_to_openai(outputs))
    for message in output:
        message["finish_reason"] = "tool_call" if any(p["type"] == "tool_call" for p in message["parts"]) else "stop"
    return encoder.redactor.redact_json(output), tuple(m["finish_reason"] for m in output)


@pytest.mark.parametrize(
    "redactor",
    [
        Redactor(salt=b"s"),
        Redactor(defaults=False),
        Redactor(salt=b"s", extra_patterns={"stopword": r"stop"}),  # a user rule that matches finish_reason
        Redactor(custom=lambda text: text.replace("tool_call", "TC")),
    ],
    ids=["builtin", "off", "user-pattern", "custom"],
)
@pytest.mark.parametrize("reply", range(len(REPLIES)))
def test_a_reply_encodes_as_it_would_whole(redactor, reply):
    encoder = PayloadEncoder(redactor, 1000)
    cache: dict = {}
    history = [HumanMessage("hi, I am alice@example.com"), *REPLIES[:reply]]
    history += [ToolMessage("r", tool_call_id="c1")] if reply else []
    attrs = encoder.chat_attributes(history, [REPLIES[reply]], None, cache)
    assert (attrs[sc.OUTPUT_MESSAGES], attrs[sc.RESPONSE_FINISH_REASONS]) == _whole(encoder, [REPLIES[reply]])
    # the next span's input holds the reply as encoded alone
    following = encoder.chat_attributes([*history, REPLIES[reply]], [], None, cache)[sc.INPUT_MESSAGES]
    assert following == encoder.messages([*history, REPLIES[reply]])
    assert json.loads(following)[-1] == {k: v for k, v in json.loads(attrs[sc.OUTPUT_MESSAGES])[0].items() if k != "finish_reason"}


def test_two_replies_in_one_generation():
    encoder = PayloadEncoder(Redactor(salt=b"s"), 1000)
    attrs = encoder.chat_attributes([HumanMessage("q")], REPLIES[:2], None, {})
    assert (attrs[sc.OUTPUT_MESSAGES], attrs[sc.RESPONSE_FINISH_REASONS]) == _whole(encoder, REPLIES[:2])
    assert attrs[sc.RESPONSE_FINISH_REASONS] == ("tool_call", "stop")


def test_the_runs_output_reuses_the_last_replys_fragment():
    encoder = PayloadEncoder(Redactor(salt=b"s"), 1000)
    cache: dict = {}
    encoder.chat_attributes([HumanMessage("q")], [REPLIES[1]], None, cache)
    reused = encoder.graph_output_attributes({"messages": [HumanMessage("q"), REPLIES[1]]}, cache)
    fresh = encoder.graph_output_attributes({"messages": [HumanMessage("q"), REPLIES[1]]})
    assert reused == fresh
    assert reused[sc.OUTPUT_MESSAGES] == encoder.redactor.redact_json(openai_to_genai(langchain_to_openai([REPLIES[1]])))
    assert "[REDACTED:phone:" in reused[sc.OUTPUT_MESSAGES] and "[REDACTED:api_key:" in reused[sc.EE_FINAL_ANSWER]
