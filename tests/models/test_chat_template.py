# ruff: noqa: RUF001, RUF002 - DeepSeek's real special tokens are spelled with fullwidth vertical bars
"""Chat-template rendering with a real Jinja chat template (a tokenizer trained on the spot, nothing downloaded)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ee_middleware.errors import ChatTemplateError
from ee_middleware.models.chat_template import (
    FALLBACK_CALLS_AS_TEXT,
    FALLBACK_CONTENT,
    FALLBACK_CONVERSATION,
    TemplateShowsNoTextError,
    TemplateSupport,
    _prepared,
    probe_template,
    render_pair,
    render_prompt,
    serving_template,
)
from ee_middleware.models.truncation import tokenize_pair

pytest.importorskip("transformers")

from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, build_test_tokenizer

from .family_templates import DEEPSEEK_R1_DISTILL, FAMILIES, QWEN_2_5, QWEN_3_THINKING, QWQ_32B, THINKING_GENERATION_PROMPT

NO_TOOLS = TemplateSupport(tools=False, tool_calls=False)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_test_tokenizer(["hello world", '<tool_call>{"name": "lookup", "arguments": {}}</tool_call>'])


def test_content_parts_are_rendered_as_their_text_not_as_a_python_list(tokenizer: Any) -> None:
    """OpenAI-style content parts (what LangChain, the OpenAI SDK and many stores hold) reach the model as text, a line
    apart as vLLM joins them."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]}]
    prompt = render_prompt(tokenizer, parts, None, NO_TOOLS)
    assert prompt == render_prompt(tokenizer, [{"role": "user", "content": "hello\n world"}], None, NO_TOOLS)
    assert "'type'" not in prompt and "[{" not in prompt


def test_a_tool_result_that_is_an_object_is_rendered_as_json(tokenizer: Any) -> None:
    state = [
        {"role": "user", "content": "look it up"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": {"stock": [1, 2], "name": "café"}},
    ]
    prompt = render_prompt(tokenizer, state, None, NO_TOOLS)
    assert '{"stock":[1,2],"name":"café"}' in prompt and "{'stock'" not in prompt
    _, completion, _ = render_pair(
        tokenizer, state[:2], [{"role": "assistant", "content": [{"type": "text", "text": "done"}]}], None, NO_TOOLS
    )
    assert completion.startswith("done")


# --- generation prompts that are not how the template starts the assistant's turn ---------------------------------

FRUIT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "check_stock",
            "description": "How many of a fruit are in stock.",
            "parameters": {"type": "object", "properties": {"fruit": {"type": "string"}}, "required": ["fruit"]},
        },
    }
]
SYSTEM = {"role": "system", "content": "You run the fruit shop."}
TASK = {"role": "user", "content": "Do we have plums?"}
PLUMS = {"id": "call_c", "type": "function", "function": {"name": "check_stock", "arguments": '{"fruit": "plums"}'}}
STATE = [
    SYSTEM,
    TASK,
    {"role": "assistant", "content": "", "tool_calls": [{**PLUMS, "id": "call_a"}]},
    {"role": "tool", "tool_call_id": "call_a", "content": "resultone"},
]
ROWS = {
    "il": (STATE, [{"role": "assistant", "content": "", "tool_calls": [PLUMS]}]),
    "il-first-step": ([SYSTEM, TASK], [{"role": "assistant", "content": "", "tool_calls": [PLUMS]}]),
    "sr": (STATE, [{"role": "assistant", "content": "Plums rationalefour first.", "tool_calls": [PLUMS]}]),
    "iwm": (
        [*STATE, {"role": "assistant", "content": "", "tool_calls": [PLUMS]}, {"role": "user", "content": "Predict what it returns."}],
        [{"role": "assistant", "content": "plums observationthree"}],
    ),
}
NAMED = "Calling check_stock for plums is better than guessing."
"""An SR rationale that names the tool it calls: the name is in the text whether or not the call is."""
SR_NAMED = (STATE, [{"role": "assistant", "content": NAMED, "tool_calls": [PLUMS]}])
PLUMS_TEXT = '<tool_call>{"name": "check_stock", "arguments": {"fruit": "plums"}}</tool_call>'
QWQ_CALL = '<tool_call>\n{"name": "check_stock", "arguments": {"fruit": "plums"}}\n</tool_call><|im_end|>\n'
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's own chat template (it ignores tools and tool calls), as tests/adapters/conftest.py has it."""


def _tokenizer(template: str) -> Any:
    return build_test_tokenizer([template, json.dumps(FRUIT_TOOLS), json.dumps(ROWS)] * 2, chat_template=template, vocab_size=600)


def _conversation(tokenizer: Any, prompt: list[dict[str, Any]], completion: list[dict[str, Any]], support: TemplateSupport) -> str:
    """The template's own rendering of the whole conversation (with the fallbacks ``support`` asks for)."""
    messages, tools = _prepared([*prompt, *completion], FRUIT_TOOLS, support)
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)


@pytest.mark.parametrize("kind", ["il", "il-first-step", "sr", "sr-named", "iwm"])
def test_qwq_targets_keep_their_tool_calls_in_the_labels(kind: str) -> None:
    """QwQ-32B's generation prompt is '<|im_start|>assistant\\n<think>\\n' but it renders a turn without reasoning as
    '<|im_start|>assistant\\n...': the served prompt is not a prefix of the conversation. Was: the completion fell back to
    the target's text plus end-of-sequence, and as QwQ renders tool calls they were left out of it: an IL target trained
    '<|im_end|>' alone, an SR target its rationale alone. Now the row is the conversation as QwQ renders it, the loss on
    the whole turn after its header (text, calls, end of turn)."""
    tokenizer = _tokenizer(QWQ_32B)
    support = probe_template(tokenizer)
    assert support.tools and support.tool_calls
    prompt, completion = {**ROWS, "sr-named": SR_NAMED}[kind]
    pair = tokenize_pair(tokenizer, prompt, completion, FRUIT_TOOLS, support, 4096)
    expected = {
        "il": QWQ_CALL,
        "il-first-step": QWQ_CALL,
        "sr": "Plums rationalefour first.\n" + QWQ_CALL,
        "sr-named": NAMED + "\n" + QWQ_CALL,
    }
    assert tokenizer.decode(pair.completion_ids) == expected.get(kind, "plums observationthree<|im_end|>\n")
    trained_prompt = tokenizer.decode(pair.prompt_ids)
    assert trained_prompt.endswith("<|im_end|>\n<|im_start|>assistant\n"), "the prompt ends where the assistant's header ends"
    assert trained_prompt + "<think>\n" == render_prompt(tokenizer, prompt, FRUIT_TOOLS, support), "the served prompt goes on"
    assert trained_prompt + tokenizer.decode(pair.completion_ids) == _conversation(tokenizer, prompt, completion, support)
    assert pair.fallback == (FALLBACK_CONVERSATION,)


def test_a_thinking_generation_prompt_the_turn_does_not_start_with_trains_the_templates_turn() -> None:
    """DeepSeek-R1-Distill's generation prompt is '<｜Assistant｜><think>\\n'; it renders an assistant turn as
    '<｜Assistant｜>' + text + '<｜end▁of▁sentence｜>'. Was: the prompt ended in '<think>\\n' (a block the labels never
    closed) and the completion was the text plus the tokenizer's end-of-sequence token. Now the row is the template's
    turn, its calls as <tool_call> text (the template renders calls only with null content and string arguments)."""
    tokenizer = _tokenizer(DEEPSEEK_R1_DISTILL)
    support = probe_template(tokenizer)
    assert not support.tool_calls
    prompt, text, fallback = render_pair(tokenizer, *ROWS["iwm"], FRUIT_TOOLS, support)
    assert prompt.endswith("Predict what it returns.<｜Assistant｜>") and fallback == (FALLBACK_CONVERSATION,)
    assert text == "plums observationthree<｜end▁of▁sentence｜>"
    prompt, text, fallback = render_pair(tokenizer, *ROWS["il-first-step"], FRUIT_TOOLS, support)
    assert prompt.endswith("Do we have plums?<｜Assistant｜>") and fallback == (FALLBACK_CONVERSATION,)
    assert text == '<tool_call>{"name": "check_stock", "arguments": {"fruit": "plums"}}</tool_call><｜end▁of▁sentence｜>'


def test_a_thinking_generation_prompt_the_turn_starts_with_keeps_the_served_prompt() -> None:
    """Qwen3's 2507 Thinking models open '<think>\\n' in the generation prompt and render the turn's <think> block
    after it: the served prompt is a prefix, so the row keeps it and the labels hold the reasoning, then the call."""
    tokenizer = _tokenizer(QWEN_3_THINKING)
    support = probe_template(tokenizer)
    prompt, completion = ROWS["il"]
    reasoned = [{**completion[0], "reasoning_content": "Plums are next."}]
    for target, labels in ((completion, "\n</think>\n\n"), (reasoned, "Plums are next.\n</think>\n\n")):
        pair = tokenize_pair(tokenizer, prompt, target, FRUIT_TOOLS, support, 4096)
        assert tokenizer.decode(pair.prompt_ids) == render_prompt(tokenizer, prompt, FRUIT_TOOLS, support)
        assert tokenizer.decode(pair.completion_ids) == labels + QWQ_CALL and not pair.fallback


def test_calls_a_rendering_loses_are_trained_as_text() -> None:
    """A state whose last message is an assistant reply with its reasoning: QwQ shows that reasoning when the reply is
    last and strips it once another turn follows, so the row cannot be split at the reply's end and its completion is
    the target's text plus end-of-sequence. Was: the target's calls (structured, as QwQ renders them) were dropped from
    it. Now they are written as <tool_call> text after the text, and the fallback says so."""
    tokenizer = _tokenizer(QWQ_32B)
    prompt = [TASK, {"role": "assistant", "content": "<think>\nPlums?\n</think>\n\nLet me check."}]
    completion = ROWS["sr"][1]
    _, text, fallback = render_pair(tokenizer, prompt, completion, FRUIT_TOOLS, probe_template(tokenizer))
    assert text == 'Plums rationalefour first.\n<tool_call>{"name": "check_stock", "arguments": {"fruit": "plums"}}</tool_call><|im_end|>'
    assert fallback == (FALLBACK_CONTENT, FALLBACK_CALLS_AS_TEXT)


def test_a_target_naming_its_tool_gets_its_calls_on_the_content_path() -> None:
    """The same QwQ row with a rationale that names the tool. Was: the completion (text plus end-of-sequence, which
    never holds the calls) was taken to show them because the tool's name was in the text, so the row trained the
    rationale without its call, with no fallback counted. Now that completion never counts as showing calls."""
    tokenizer = _tokenizer(QWQ_32B)
    prompt = [TASK, {"role": "assistant", "content": "<think>\nPlums?\n</think>\n\nLet me check."}]
    completion = [{"role": "assistant", "content": NAMED, "tool_calls": [PLUMS]}]
    _, text, fallback = render_pair(tokenizer, prompt, completion, FRUIT_TOOLS, probe_template(tokenizer))
    assert text == NAMED + "\n" + PLUMS_TEXT + "<|im_end|>"
    assert fallback == (FALLBACK_CONTENT, FALLBACK_CALLS_AS_TEXT)


def _losing_calls_after_tool_results(template: str) -> str:
    """``template`` (Qwen 2.5's or QwQ's) changed to drop the calls of an assistant turn that follows a tool result:
    it passes the probe (a call right after the user's turn) and loses the calls of every later step."""
    loop = "{%- for tool_call in message.tool_calls %}"
    assert template.count(loop) == 1
    return template.replace(
        loop,
        '{%- set kept = [] if loop.index0 > 0 and messages[loop.index0 - 1].role == "tool" else message.tool_calls %}'
        "{%- for tool_call in kept %}",
    )


@pytest.mark.parametrize("rationale", ["Plums rationalefour first.", NAMED])
@pytest.mark.parametrize(("template", "way"), [(QWEN_2_5, ()), (QWQ_32B, (FALLBACK_CONVERSATION,))], ids=["served-prompt", "conversation"])
def test_calls_a_template_drops_are_trained_as_text_even_when_the_text_names_the_tool_simulated(
    template: str, way: tuple[str, ...], rationale: str
) -> None:
    """Simulated template (no real one at hand drops the calls it passed the probe with): Qwen 2.5's and QwQ's, dropping
    the calls of a turn after a tool result. Was: with a rationale naming the tool, the rendering (the served prompt
    continued, or the conversation split after the header) was taken to show the call, which it does not hold. Now a
    call counts as shown only if its name occurs once more than in the turn rendered without its calls."""
    tokenizer = _tokenizer(_losing_calls_after_tool_results(template))
    support = probe_template(tokenizer)
    assert support.tool_calls
    prompt = STATE
    _, text, fallback = render_pair(
        tokenizer, prompt, [{"role": "assistant", "content": rationale, "tool_calls": [PLUMS]}], FRUIT_TOOLS, support
    )
    assert text == rationale + "\n" + PLUMS_TEXT + "<|im_end|>\n"
    assert fallback == (*way, FALLBACK_CALLS_AS_TEXT)


@pytest.mark.parametrize("name", ["tool-chat", "smollm2", *sorted(FAMILIES), *sorted(THINKING_GENERATION_PROMPT)])
def test_rows_the_template_continues_keep_their_bytes(name: str) -> None:
    """Where the served prompt is a prefix of the conversation's rendering (every row of these templates but the ones
    whose generation prompt opens <think>, and Mistral's, which moves its system message), the row is that prompt and
    what the template renders after it, byte for byte, as before the fallbacks for other templates existed."""
    template = {"tool-chat": TOOL_CHAT_TEMPLATE, "smollm2": SMOLLM2_TEMPLATE, **FAMILIES, **THINKING_GENERATION_PROMPT}[name]
    tokenizer = _tokenizer(template)
    support = probe_template(tokenizer)
    continued = 0
    for prompt, completion in [*ROWS.values(), SR_NAMED]:
        served = render_prompt(tokenizer, prompt, FRUIT_TOOLS, support)
        conversation = _conversation(tokenizer, prompt, completion, support)
        if conversation.startswith(served):
            prompt_text, completion_text, fallback = render_pair(tokenizer, prompt, completion, FRUIT_TOOLS, support)
            assert (prompt_text, completion_text) == (served, conversation[len(served) :]) and not fallback
            continued += 1
    assert continued == len(ROWS) + 1 or name in ("mistral-v3", "qwq-32b", "deepseek-r1-distill")


# --- templates that read messages in another shape -----------------------------------------------------------------

SHAREGPT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + (message['from'] or '') + '\n' + (message['value'] or '') + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>gpt\n' }}{% endif %}"
)
"""A ShareGPT-keyed community template (axolotl fine-tunes): it reads message['from'] and message['value']."""
CONTENT_PARTS_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""SmolVLM-Instruct's (Idefics3's) template: it shows a message's text only from a list of content parts."""
NINE_CHARACTER_IDS_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>tools\n' + (tools | tojson) + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- for call in (message.tool_calls or []) %}{%- if call.id is not string or call.id | length != 9 %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{%- endif %}{%- endfor %}"
    "{%- if message.role == 'tool' and (message.tool_call_id is not string or message.tool_call_id | length != 9) %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{%- endif %}"
    "{{ '<|im_start|>' + message.role + '\n' + (message.content or '') }}"
    "{%- for call in (message.tool_calls or []) %}"
    "{{ '[TOOL_CALLS]' + ({'name': call.function.name, 'arguments': call.function.arguments, 'id': call.id} | tojson) }}"
    "{%- endfor %}"
    "{%- if message.role == 'tool' %}{{ '[CALL_ID]' + message.tool_call_id }}{%- endif %}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)
"""Mistral's 9-character id rule (v0.3, Nemo) in a template that otherwise shows tools, calls beside their text and
results (a SIMULATED template: Mistral v3's own also drops the text beside a call)."""


def test_a_template_that_shows_no_message_text_is_refused_naming_the_fix() -> None:
    """A ShareGPT-style template rendered every row as '<|im_start|>\\n<|im_end|>\\n': no task, no tools, no target, and
    `ee train` wrote an adapter."""
    with pytest.raises(ChatTemplateError) as refused:
        probe_template(_tokenizer(SHAREGPT_TEMPLATE))
    message = str(refused.value)
    assert "renders no text of a user and an assistant message" in message
    assert "message['from']" in message and "tokenizer.chat_template = TEMPLATE" in message


def _as_vllm_sends_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's "openai" content format (for a template that loops over message['content']): text as parts."""
    from .test_serving_template import as_vllm_sends

    sent = as_vllm_sends(messages, parts_as_text=False)
    for message in sent:
        if isinstance(message.get("content"), str):
            message["content"] = [{"type": "text", "text": message["content"]}]
    return sent


def test_a_template_that_reads_content_parts_gets_the_rows_text_as_parts() -> None:
    """SmolVLM's template rendered string content as nothing ('User: <end_of_utterance>'); it gets each message's text as
    one text part, as vLLM gives it, and a server's derived template renders requests as the trainer does."""
    from .test_serving_template import CONVERSATIONS, TOOLS

    tokenizer = _tokenizer(CONTENT_PARTS_TEMPLATE)
    support = probe_template(tokenizer)
    assert support.content_parts and "content" in support.describe()
    for name, (prompt, completion) in ROWS.items():
        prompt_text, completion_text, _ = render_pair(tokenizer, prompt, completion, FRUIT_TOOLS, support)
        assert all(text in prompt_text for text in ("You run the fruit shop.", "Do we have plums?", '"check_stock"')), name
        if name != "il-first-step":
            assert "Tool: resultone<end_of_utterance>" in prompt_text
        target = completion[0]
        assert (target["content"] or "") in completion_text
        assert (PLUMS_TEXT in completion_text) == bool(target.get("tool_calls")), name
    served = serving_template(tokenizer.chat_template, support)
    assert served is not None
    for messages in CONVERSATIONS.values():
        expected = render_prompt(tokenizer, messages, TOOLS, support)
        rendered = tokenizer.apply_chat_template(
            _as_vllm_sends_parts(messages), tools=TOOLS, chat_template=served, add_generation_prompt=True, tokenize=False
        )
        assert rendered == expected


def test_a_template_that_requires_nine_character_call_ids_renders_calls_and_results_itself_simulated() -> None:
    """The probe's ids ('p0') and the stores' ('call_1_0', 'call_85d9d18cd977') were refused, so the template was taken
    for one without tool support. Each id is given as 9 alphanumerics made from it: the same for a call and its result,
    a valid id kept; a server's derived template makes the same ids."""
    from .test_serving_template import CONVERSATIONS, TOOLS, as_vllm_sends

    tokenizer = _tokenizer(NINE_CHARACTER_IDS_TEMPLATE)
    support = probe_template(tokenizer)
    assert (support.tools, support.tool_calls, support.tool_role, support.call_id_format) == (True, True, True, "9 alphanumerics")
    assert set(support.describe().values()) - {"chat template"} == {support.describe()["call_ids"]}
    from ee_middleware.models.chat_template import nine_alphanumeric_id

    prompt, completion = ROWS["sr"]
    prompt_text, completion_text, fallback = render_pair(tokenizer, prompt, completion, FRUIT_TOOLS, support)
    assert not fallback and "Plums rationalefour first." in completion_text and '"name": "check_stock"' in completion_text
    call_a, call_c = nine_alphanumeric_id("call_a"), nine_alphanumeric_id("call_c")
    assert f'"id": "{call_a}"' in prompt_text and f"[CALL_ID]{call_a}" in prompt_text and f'"id": "{call_c}"' in completion_text
    assert call_a != call_c and all(len(i) == 9 and i.isascii() and i.isalnum() for i in (call_a, call_c))
    assert nine_alphanumeric_id("aB3dE6gH9") == "aB3dE6gH9"
    served = serving_template(tokenizer.chat_template, support)
    assert served is not None
    odd_ids = ["call_1_0", "call_85d9d18cd977", "aB3dE6gH9", "ünïcode-id", "", "toolu_01A09q90qw90lq917835lq9"]
    conversations = [
        *CONVERSATIONS.values(),
        *(
            [
                TASK,
                {"role": "assistant", "content": "", "tool_calls": [{**PLUMS, "id": i}]},
                {"role": "tool", "tool_call_id": i, "content": "3"},
            ]
            for i in odd_ids
        ),
    ]
    for messages in conversations:
        expected = render_prompt(tokenizer, messages, TOOLS, support)
        sent = as_vllm_sends(messages, parts_as_text=False)
        assert (
            tokenizer.apply_chat_template(sent, tools=TOOLS, chat_template=served, add_generation_prompt=True, tokenize=False) == expected
        )


PARTS_ONLY_TEMPLATE = (
    "{%- for message in messages %}{%- if message.content is string %}"
    "{{ raise_exception('content must be a list of parts') }}{%- endif %}"
    "{{ '<|' + message.role + '|>' }}{%- for part in message.content %}{%- if part.type == 'text' %}{{ part.text }}"
    "{%- endif %}{%- endfor %}{{ '\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|assistant|>' }}{%- endif %}"
)
"""A template that refuses string content and shows a message's text only from its text parts (SIMULATED: SmolVLM's
and Idefics3's loops show nothing of a string rather than refusing it)."""


def test_a_template_that_refuses_string_content_gets_the_rows_text_as_parts_simulated() -> None:
    """The probe stopped at the first refusal of string content, so content_parts stayed false and every row failed
    with "content must be a list of parts"; the same template shows every row given parts, as vLLM gives it them."""
    tokenizer = _tokenizer(PARTS_ONLY_TEMPLATE)
    support = probe_template(tokenizer)
    assert support.content_parts and "content" in support.describe()
    for name, (prompt, completion) in ROWS.items():
        prompt_text, completion_text, _ = render_pair(tokenizer, prompt, completion, FRUIT_TOOLS, support)
        assert "You run the fruit shop." in prompt_text and "Do we have plums?" in prompt_text, name
        assert (completion[0]["content"] or "") in completion_text, name
        assert (PLUMS_TEXT in completion_text) == bool(completion[0].get("tool_calls")), name


def test_a_template_refusing_string_content_and_showing_no_parts_is_left_to_the_rows_simulated() -> None:
    """Refused as a string and shown as nothing given parts: not judged by the probe (its own error comes when a row is
    rendered), as before; a template showing no string content and refusing parts is refused (ShareGPT-style)."""
    refuses_strings = (
        "{%- for message in messages %}{%- if message.content is string %}{{ raise_exception('no strings') }}{%- endif %}"
        "{{ '<|' + message.role + '|>\n' }}{%- endfor %}"
    )
    assert not probe_template(_tokenizer(refuses_strings)).content_parts
    refuses_parts = (
        "{%- for message in messages %}{%- if message.content is not string %}{{ raise_exception('no parts') }}{%- endif %}"
        "{{ '<|' + (message['from'] or '') + '|>' + (message['value'] or '') + '\n' }}{%- endfor %}"
    )
    with pytest.raises(TemplateShowsNoTextError) as refused:
        probe_template(_tokenizer(refuses_parts))
    assert refused.value.missing == ("user", "assistant")


CALL_IDS = [
    "call_1", "call-1", "call.1", "call 1", "call:1", "call/1", "tool:0", "tool.0", "fc_a/1", "fc_a_1", "调用1", "工具1",
    "ünïcode-id", "call_1_0", "call_85d9d18cd977", "call_85d9d18cd978", "toolu_01A09q90qw90lq917835lq9",
    "3f2b8c1e-9d4a-4b7e-8f6a-1c2d3e4f5a6b", "aB3dE6gH9", "aB3dE6gH-", "aB3dE6gH", "aB3dE6gH90", "", "\ud800x", "😀", 1, 2, 123456789,
]  # fmt: skip
"""Ids from many sources, among them ids that differ only in punctuation, in non-ASCII letters or in type."""


def _made_ids_by_the_serving_template(tokenizer: Any, served: str, ids: list[Any]) -> list[str]:
    """The id each of ``ids`` gets from the serving template's preamble, read back from its rendering of a call and its
    result with that id (as vLLM sends them)."""
    made = []
    for call_id in ids:
        messages = [
            TASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**PLUMS, "id": call_id, "function": {**PLUMS["function"], "arguments": {}}}],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "3"},
        ]
        rendered = tokenizer.apply_chat_template(messages, chat_template=served, add_generation_prompt=True, tokenize=False)
        in_call = json.loads(rendered.split("[TOOL_CALLS]", 1)[1].split("<|im_end|>", 1)[0])["id"]
        in_result = rendered.split("[CALL_ID]", 1)[1].split("<|im_end|>", 1)[0]
        assert in_call == in_result, call_id
        made.append(in_call)
    return made


def test_made_call_ids_differ_for_ids_that_differ_and_the_serving_template_makes_the_same() -> None:
    """Every character outside [0-9a-zA-Z] counted alike, so call_1 and call-1, tool:0 and tool.0, 调用1 and 工具1 got one
    id, in training rows and in the serving template's preamble alike: a call and another call's result then matched.
    Now each id gets its own, the same in Python and in Jinja; a valid id is kept."""
    from ee_middleware.models.chat_template import NINE_ALPHANUMERIC, nine_alphanumeric_id

    made = [nine_alphanumeric_id(call_id) for call_id in CALL_IDS]
    assert len(set(made)) == len(CALL_IDS), [(i, m) for i, m in zip(CALL_IDS, made, strict=True) if made.count(m) > 1]
    assert all(len(m) == 9 and m.isascii() and m.isalnum() for m in made)
    assert nine_alphanumeric_id("aB3dE6gH9") == "aB3dE6gH9" and nine_alphanumeric_id(None) == nine_alphanumeric_id("")
    tokenizer = _tokenizer(NINE_CHARACTER_IDS_TEMPLATE)
    support = TemplateSupport(tools=True, tool_calls=True, call_id_format=NINE_ALPHANUMERIC)
    served = serving_template(tokenizer.chat_template, support)
    assert served is not None
    assert _made_ids_by_the_serving_template(tokenizer, served, CALL_IDS) == made


def test_the_made_ids_modulus_is_the_largest_prime_below_62_to_the_9th() -> None:
    sympy = pytest.importorskip("sympy")
    from ee_middleware.models.chat_template import _ID_MODULUS

    assert sympy.isprime(_ID_MODULUS) and sympy.nextprime(_ID_MODULUS) > 62**9


def test_made_call_ids_are_distinct_for_every_short_id_and_for_many_random_ones() -> None:
    """Every id of up to 2 printable ASCII characters, and of up to 6 bytes by construction (a base-257 numeral below
    the prime modulus); 200,000 random ids of the usual alphabet (letters, digits, '_' and '-') give none alike."""
    import random
    import string

    from ee_middleware.models.chat_template import _ID_BASE, _ID_MODULUS, nine_alphanumeric_id

    assert _ID_BASE**6 < _ID_MODULUS < 62**9
    printable = string.printable[:95]
    short = [*printable, *(a + b for a in printable for b in printable)]
    assert len({nine_alphanumeric_id(i) for i in short}) == len(short)
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "_-"
    ids = {"call_" + "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 24))) for _ in range(200_000)}
    assert len({nine_alphanumeric_id(i) for i in ids}) == len(ids)


def test_mistral_v3_says_why_its_tools_and_results_take_the_fallbacks() -> None:
    """Mistral v3 shows tools, calls and results itself when the ids are 9 alphanumerics, but drops the text beside a call
    and refuses a reply after a tool result that answers a call written as text. Its manifest said the template ignores
    tools; its rows render as before."""
    tokenizer = _tokenizer(FAMILIES["mistral-v3"])
    support = probe_template(tokenizer)
    assert (support.tools, support.tool_calls, support.tool_role, support.call_id_format) == (False, False, False, None)
    described = support.describe()
    assert "ignores tools" not in described["tools"] and "shows tools" in described["tools"]
    assert "drops the text beside them" in described["tool_calls"] and "a reply after them" in described["tool_results"]
    shown = tokenizer.apply_chat_template(
        [
            TASK,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{**PLUMS, "id": "abcdefghi", "function": {**PLUMS["function"], "arguments": {}}}],
            },
        ],
        tools=FRUIT_TOOLS,
        tokenize=False,
    )
    assert "[AVAILABLE_TOOLS]" in shown and "[TOOL_CALLS]" in shown  # the template shows tools (so the manifest says)
