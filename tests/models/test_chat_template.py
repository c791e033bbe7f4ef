"""Chat-template rendering with a real Jinja chat template (a tokenizer trained on the spot, nothing downloaded)."""

from __future__ import annotations

from typing import Any

import pytest

from ee_middleware.models.chat_template import TemplateSupport, render_pair, render_prompt

pytest.importorskip("transformers")

from ee_middleware.testing.tiny_models import build_test_tokenizer

NO_TOOLS = TemplateSupport(tools=False, tool_calls=False)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_test_tokenizer(["hello world", '<tool_call>{"name": "lookup", "arguments": {}}</tool_call>'])


def test_content_parts_are_rendered_as_their_text_not_as_a_python_list(tokenizer: Any) -> None:
    """OpenAI-style content parts (what LangChain, the OpenAI SDK and many stores hold) reach the model as text."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]}]
    prompt = render_prompt(tokenizer, parts, None, NO_TOOLS)
    assert prompt == render_prompt(tokenizer, [{"role": "user", "content": "hello world"}], None, NO_TOOLS)
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
