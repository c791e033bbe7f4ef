"""Assembly decodes the history that chat spans repeat once per run (issue 11.5); each state must
still be exactly what decoding that span's own ``gen_ai.input.messages`` gives."""

from __future__ import annotations

import json

import pytest

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import assemble
from ee_middleware.capture.spandata import SpanData
from ee_middleware.errors import IngestError
from ee_middleware.messages import genai_to_openai

TOOLS = json.dumps([{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}])


def _user(text):
    return {"role": "user", "parts": [{"type": "text", "content": text}]}


def _call(i):
    return {"role": "assistant", "parts": [{"type": "tool_call", "id": f"c{i}", "name": "lookup", "arguments": {"q": i}}]}


def _result(i):
    return {"role": "tool", "parts": [{"type": "tool_call_response", "id": f"c{i}", "response": f"r{i}"}]}


def _spans(inputs: list[str]) -> list[SpanData]:
    root = SpanData("t" * 32, "0" * 16, None, "invoke_agent a", 0, 100, {sc.OPERATION_NAME: sc.OP_INVOKE_AGENT})
    chats = [
        SpanData(
            "t" * 32,
            f"{i + 1:016x}",
            "0" * 16,
            "chat m",
            10 * i + 1,
            10 * i + 2,
            {
                sc.OPERATION_NAME: sc.OP_CHAT,
                # a model per span: a span given the same history as the one before is then no second ask of it
                # (whose first reply assembly leaves out), so every span is a step whose state is checked
                sc.REQUEST_MODEL: f"m{i}",
                sc.INPUT_MESSAGES: text,
                sc.OUTPUT_MESSAGES: json.dumps(
                    [_call(i)] if i < len(inputs) - 1 else [{"role": "assistant", "parts": [{"type": "text", "content": "done"}]}]
                ),
                sc.TOOL_DEFINITIONS: TOOLS,
            },
        )
        for i, text in enumerate(inputs)
    ]
    return [root, *chats]


def _history(n: int) -> list[dict]:
    out = [_user("find it")]
    for i in range(n):
        out += [_call(i), _result(i)]
    return out


@pytest.mark.parametrize(
    "inputs",
    [
        # each span's input is the last one plus new messages (what record_experience writes)
        [json.dumps(_history(n), separators=(",", ":")) for n in range(4)],
        # other layouts: spaces, a pretty-printed one, a span that repeats the last input
        [json.dumps(_history(0)), json.dumps(_history(1)), json.dumps(_history(1)), json.dumps(_history(2), indent=2)],
        # a branch: the third span does not extend the second (another history), then extends again
        [json.dumps(_history(1)), json.dumps(_history(2)), json.dumps([_user("other")]), json.dumps([_user("other"), _call(9)])],
        # text that starts like the last input but is not a continuation of it
        ['[{"role":"user","parts":[]}]', '[{"role":"user","parts":[]}] ', '[{"role":"user","parts":[]},\n{"role":"user","parts":[]}]'],
    ],
)
def test_each_state_is_its_own_span_decoded_whole(inputs):
    trajectory = assemble(_spans(inputs))
    expected = [genai_to_openai(json.loads(text)) for text in inputs]
    assert [step.state for step in trajectory.steps] == expected
    assert [tool["function"]["name"] for tool in trajectory.tools] == ["lookup"]


@pytest.mark.parametrize("tail", [',{"role":"user","parts":[}]', '{"role":"user","parts":[]}]'])
def test_a_bad_continuation_is_reported_with_its_span_and_position(tail):
    good = json.dumps(_history(1), separators=(",", ":"))
    bad = good[:-1] + tail if tail.startswith(",") else good + tail
    with pytest.raises(
        IngestError, match=r"Span 0000000000000002 \(chat m\): attribute gen_ai.input.messages is not valid JSON .* at char \d+"
    ):
        assemble(_spans([good, bad]))


@pytest.mark.parametrize("redacted", [False, True])
def test_the_steps_share_their_states_messages_instead_of_each_holding_copies(redacted):
    """A run's steps held a copy of every message of their state each (``Step`` validation copies each dict): memory grew
    with the square of a run's length, 2 GiB for a looping agent's 2,000 steps and 17.5 GB in a production process for
    5,000 (an MCP sweep). Each message is now one dict for the run, whatever its redaction; the states are unchanged."""
    from ee_middleware.capture.assembler import AssemblyOptions
    from ee_middleware.capture.redaction import Redactor

    inputs = [json.dumps(_history(n), separators=(",", ":")) for n in range(30)]
    options = AssemblyOptions(redactor=Redactor()) if redacted else None
    trajectory = assemble(_spans(inputs), options)
    assert [step.state for step in trajectory.steps] == [genai_to_openai(json.loads(text)) for text in inputs]
    distinct = {id(message) for step in trajectory.steps for message in step.state}
    assert len(distinct) == len(trajectory.steps[-1].state) == 1 + 2 * 29
    assert all(
        later.state[: len(earlier.state)] == earlier.state for earlier, later in zip(trajectory.steps, trajectory.steps[1:], strict=False)
    )
