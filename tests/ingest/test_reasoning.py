"""``ee traces ingest`` keeps a reasoning model's reasoning with each action it led to (``Action.reasoning``): the real
OpenTelemetry SDK writes OpenTelemetry's OpenAI v2 chat spans whose output messages carry a ``reasoning`` part (as
vLLM's reasoning parsers return it), and each step of that reply, its parallel calls included, carries the reasoning."""

from __future__ import annotations

from ee_middleware.messages import openai_to_genai
from tests.ingest.test_conversations import _call, _ingest, _request_file

THOUGHT = "Check both fruits at once."
REPLIES = [
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": THOUGHT,
        "tool_calls": [_call("call_1", "check_stock", {"fruit": "pears"}), _call("call_2", "check_stock", {"fruit": "apples"})],
    },
    {"role": "assistant", "content": "No pears, 12 apples."},  # a reply without reasoning
]


def test_ingested_steps_carry_the_reasoning_of_their_reply(tmp_path, store):
    assert openai_to_genai(REPLIES[:1])[0]["parts"][0] == {"type": "reasoning", "content": THOUGHT}  # as the spans carry it
    path, _ = _request_file(tmp_path, ("Pears and apples?", REPLIES))
    report, (t,) = _ingest(store, path)
    assert report.problems == 0, report.errors
    assert [(s.decision_index, s.action.kind, s.action.reasoning) for s in t.steps] == [
        (0, "tool_call", THOUGHT),
        (0, "tool_call", THOUGHT),
        (1, "answer", None),
    ]
    assert [m.get("reasoning_content") for m in t.messages if m["role"] == "assistant"] == [THOUGHT, None]
