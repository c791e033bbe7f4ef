"""A chat template that is not valid Jinja is refused by ``probe_template`` (the trainer, the local generator and the local
server all probe first), naming the syntax error; one that is valid but refuses a conversation names the file it came from
when the caller says so. REAL tokenizers (the tiny test tokenizer with the templates set on it)."""

from __future__ import annotations

import pytest

from ee_middleware.errors import ChatTemplateError
from ee_middleware.models.chat_template import TemplateDoesNotCompileError, probe_template, render_prompt
from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, build_test_tokenizer

ALTERNATING = (
    "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] or '') + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Valid, but refuses two turns of one role in a row (as Mistral's and Gemma's templates do)."""


@pytest.mark.parametrize(
    ("template", "line", "detail"),
    [
        ("{% for m in messages %}{{ m.content }}{% endfor", 1, "unexpected end of template"),
        ("{% for m in messages %}\n{{ m.content }}\n", None, "Unexpected end of template"),
        ("{% for m in messages %}{{ m.content }\n{% endfor %}", 1, "unexpected '}'"),
    ],
)
def test_a_template_that_is_not_valid_jinja_is_refused_naming_the_syntax_error(template: str, line: int | None, detail: str) -> None:
    """Before: the probe swallowed the error ("not judged here") and every later render failed with a message blaming a
    limit of "the model's own template (e.g. strict user/assistant alternation)"."""
    tokenizer = build_test_tokenizer(["hello world"], chat_template=template)
    with pytest.raises(TemplateDoesNotCompileError) as refused:
        probe_template(tokenizer)
    assert isinstance(refused.value, ChatTemplateError)
    assert detail.lower() in refused.value.detail.lower()
    assert "not valid Jinja" in str(refused.value) and refused.value.detail in str(refused.value)
    if line is not None:
        assert refused.value.line == line and f"line {line}" in str(refused.value)


def test_a_valid_template_is_not_refused() -> None:
    probe_template(build_test_tokenizer(["hello world"], chat_template=TOOL_CHAT_TEMPLATE))
    probe_template(build_test_tokenizer(["hello world"], chat_template=ALTERNATING))


def test_a_conversation_a_given_template_file_refuses_names_that_file_not_the_model_s_own_template() -> None:
    tokenizer = build_test_tokenizer(["hello world"], chat_template=ALTERNATING)
    support = probe_template(tokenizer)
    twice = [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]
    with pytest.raises(ChatTemplateError) as given:
        render_prompt(tokenizer, twice, None, support, template_file="/srv/templates/mine.jinja")
    assert "The chat template /srv/templates/mine.jinja cannot render these messages (roles user, user)" in str(given.value)
    assert "Conversation roles must alternate" in str(given.value)
    assert "model's own template" not in str(given.value)
    with pytest.raises(ChatTemplateError, match="the model's own template"):  # the tokenizer's own: as before
        render_prompt(tokenizer, twice, None, support)
