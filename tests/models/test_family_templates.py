"""Rendering agent states with the chat templates of real model families (tests/models/family_templates.py).

Each row shape the dataset builders write (an IL state with tool results, parallel calls and their results, an IWM
question about a call, an SR target whose rationale sits beside its call) is rendered with each family's template on a
tokenizer trained on the spot. Nothing may be lost on the way: every system text, task, tool result, call and rationale
reaches the rendered prompt or completion, or rendering raises a clear error; never a Jinja traceback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ee_middleware.models.chat_template import probe_template, render_pair, render_prompt

pytest.importorskip("transformers")

from ee_middleware.testing.tiny_models import build_test_tokenizer

from .family_templates import FAMILIES, THINKING_GENERATION_PROMPT

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "check_stock",
            "description": "How many of a fruit are in stock.",
            "parameters": {"type": "object", "properties": {"fruit": {"type": "string"}}, "required": ["fruit"]},
        },
    },
    {"type": "function", "function": {"name": "list_fruits", "description": "Every fruit sold.", "parameters": {"type": "object"}}},
]


def call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


SYSTEM = {"role": "system", "content": "You run the fruit shop systemtext."}
TASK = {"role": "user", "content": "Do we have pears and plums?"}
PARALLEL = {"role": "assistant", "content": "", "tool_calls": [call("call_a", "check_stock", fruit="pears"), call("call_b", "list_fruits")]}
RESULTS = [
    {"role": "tool", "tool_call_id": "call_a", "content": "pears resultone"},
    {"role": "tool", "tool_call_id": "call_b", "content": "apples plums resulttwo"},
]
STATE = [SYSTEM, TASK, PARALLEL, *RESULTS]
ROWS = {
    "il": (STATE, [{"role": "assistant", "content": "", "tool_calls": [call("call_c", "check_stock", fruit="plums")]}]),
    "iwm": (
        [
            *STATE,
            {"role": "assistant", "content": "", "tool_calls": [call("call_c", "check_stock", fruit="plums")]},
            {"role": "user", "content": "Predict exactly what the tool call above returns."},
        ],
        [{"role": "assistant", "content": "plums observationthree"}],
    ),
    "sr": (
        STATE,
        [{"role": "assistant", "content": "Plums rationalefour first.", "tool_calls": [call("call_c", "check_stock", fruit="plums")]}],
    ),
    "sr-naming-its-tool": (
        STATE,
        [
            {
                "role": "assistant",
                "content": "Calling check_stock for plums is better than guessing.",
                "tool_calls": [call("call_c", "check_stock", fruit="plums")],
            }
        ],
    ),
}
MUST_SHOW = {"systemtext", "pears and plums", "resultone", "resulttwo", "check_stock", "list_fruits"}


@pytest.fixture(scope="module", params=sorted({**FAMILIES, **THINKING_GENERATION_PROMPT}))
def family(request: pytest.FixtureRequest) -> tuple[str, Any]:
    template = {**FAMILIES, **THINKING_GENERATION_PROMPT}[request.param]
    corpus = [template, json.dumps(TOOLS), json.dumps(ROWS)] * 2
    return request.param, build_test_tokenizer(corpus, chat_template=template, vocab_size=600)


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_every_family_renders_each_row_kind_with_nothing_lost(family: tuple[str, Any], kind: str) -> None:
    name, tokenizer = family
    prompt, completion = ROWS[kind]
    support = probe_template(tokenizer)
    prompt_text, completion_text, _ = render_pair(tokenizer, prompt, completion, TOOLS, support)
    missing = {text for text in MUST_SHOW if text not in prompt_text}
    assert not missing, f"{name} {kind}: {missing} missing from the prompt ({support})\n{prompt_text}"
    target = completion[0]
    assert target["content"] in completion_text, f"{name} {kind}: the text is missing ({support})\n{completion_text}"
    for tool in {c["function"]["name"] for c in target.get("tool_calls", [])}:  # each call adds its name to the text's
        calls = sum(c["function"]["name"] == tool for c in target["tool_calls"])
        shown = completion_text.count(tool) - target["content"].count(tool)
        assert shown >= calls, f"{name} {kind}: a {tool} call is missing from the completion ({support})\n{completion_text}"
    assert "plums" in completion_text


def test_the_text_beside_a_call_survives_a_template_that_drops_it() -> None:
    """Llama 3.x renders an assistant message with tool_calls as the call's JSON alone: an SR target's rationale (or an
    IL target's text beside its calls) would be silently dropped from the labels. Such a template gets the calls as
    ``<tool_call>`` text after the message's text, and the tool schemas with the matching instructions."""
    tokenizer = build_test_tokenizer([FAMILIES["llama-3-2"], json.dumps(TOOLS)], chat_template=FAMILIES["llama-3-2"])
    support = probe_template(tokenizer)
    assert not support.tool_calls and not support.tools
    assert "text beside" in support.describe()["tool_calls"]
    _, completion_text, _ = render_pair(tokenizer, *ROWS["sr"], TOOLS, support)
    assert completion_text.startswith("Plums rationalefour first.\n<tool_call>")


def test_a_template_that_skips_tool_messages_gets_them_as_user_turns() -> None:
    """Phi-3 and Phi-4 render only system, user and assistant messages: tool results vanished from every prompt. They
    come as one user turn of ``<tool_response>`` blocks per run of results (Qwen's own rendering), said in describe()."""
    tokenizer = build_test_tokenizer([FAMILIES["phi-3"]], chat_template=FAMILIES["phi-3"])
    support = probe_template(tokenizer)
    assert not support.tool_role and support.system_role
    text = render_prompt(tokenizer, STATE, None, support)
    assert (
        "<|user|>\n<tool_response>\npears resultone\n</tool_response>\n<tool_response>\napples plums resulttwo\n</tool_response><|end|>"
        in text
    )
    assert "user turn" in support.describe()["tool_results"]


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn() -> None:
    """Gemma 2 raises 'System role not supported' on any system message (and the tool listing is one)."""
    tokenizer = build_test_tokenizer([FAMILIES["gemma-2"]], chat_template=FAMILIES["gemma-2"])
    support = probe_template(tokenizer)
    assert not support.system_role and not support.tool_role
    text = render_prompt(tokenizer, STATE, TOOLS, support)
    assert text.startswith("<|im_start|><start_of_turn>user\nYou run the fruit shop systemtext.\n\nYou may call these tools:")
    assert "first user turn" in support.describe()["system"]


def test_a_conversation_the_template_still_refuses_names_the_template_limit_and_the_fix() -> None:
    """Two user turns in a row (a question after a tool result) break strict alternation even after the fallbacks."""
    from ee_middleware.errors import ChatTemplateError

    tokenizer = build_test_tokenizer([FAMILIES["gemma-2"]], chat_template=FAMILIES["gemma-2"])
    messages = [TASK, {"role": "user", "content": "And cherries?"}]
    with pytest.raises(ChatTemplateError, match=r"roles user, user.*must alternate") as caught:
        render_prompt(tokenizer, messages, None, probe_template(tokenizer))
    assert "chat_template" in str(caught.value)


def test_a_fitted_multi_turn_state_keeps_alternating_for_strict_templates() -> None:
    """Fitting a long state drops the oldest turns between the task and the latest ones. When the first turn kept is
    the user's next request (the assistant's answer to the task was dropped), Gemma and Mistral raised on two user
    turns in a row: the row was an error at every max_length that needed the cut. The request joins the marked task."""
    from ee_middleware.models.truncation import OMITTED_MARKER, count_tokens, fit_messages

    tokenizer = build_test_tokenizer([FAMILIES["gemma-2"], json.dumps(ROWS)], chat_template=FAMILIES["gemma-2"])
    support = probe_template(tokenizer)
    answer = {"role": "assistant", "content": "We have pears. " + "Details follow. " * 200}
    later = {"role": "user", "content": "Now order plums laterrequest."}
    state = [*STATE, answer, later, {"role": "assistant", "content": "", "tool_calls": [call("call_d", "list_fruits")]}]
    state.append({"role": "tool", "tool_call_id": "call_d", "content": "plums resultfive"})
    whole = count_tokens(tokenizer, render_prompt(tokenizer, state, TOOLS, support))
    fit = fit_messages(tokenizer, state, TOOLS, support, budget=whole - 400)
    assert fit.dropped_messages == 4 and fit.tokens <= whole - 400
    task = OMITTED_MARKER.format(n=4)
    assert f"Do we have pears and plums?\n\n{task}\n\nNow order plums laterrequest." in fit.text and "resultfive" in fit.text
