"""The local server started directly (``python -m ee_middleware.adapters.serving.local_server``, as
:func:`~ee_middleware.adapters.serving.launch.local_command` and ``ServerProcess`` start it, or ``LocalModelServer`` in
Python) with a chat template that shows no message text: the refusal speaks of serving and names --chat-template. It
said what training would do ("every prompt and completion would be trained on without its task") and to change the
tokenizer's template; only ``ee serve local`` reworded it. REAL tiny Llama bases and server processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ee_middleware.models.chat_template import TemplateShowsNoTextError

from .conftest import CORPUS
from .test_serving_sharegpt_base import CHATML_TEMPLATE, SHAREGPT_TEMPLATE


@pytest.fixture(scope="module")
def sharegpt_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose own chat template reads message['from'] and message['value'] (ShareGPT-style)."""
    pytest.importorskip("peft")
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("sharegpt-base"), build_test_tokenizer(CORPUS, chat_template=SHAREGPT_TEMPLATE))


def _said(message: str) -> str:
    return " ".join(message.split())


def test_a_local_server_refuses_a_base_template_showing_no_text_in_serving_words(sharegpt_base: Path, tmp_path: Path) -> None:
    from ee_middleware.adapters.serving.local_server import LocalModelServer

    with pytest.raises(TemplateShowsNoTextError) as refused:
        LocalModelServer(sharegpt_base)
    message = _said(str(refused.value))
    assert f"The chat template of {sharegpt_base} renders no text of a user and an assistant message" in message
    assert "The local server would render every request without its messages" in message
    assert "Serve it with a template that renders role/content messages: --chat-template FILE" in message
    assert "would be trained on" not in message and "tokenizer.chat_template" not in message

    given = tmp_path / "sharegpt.jinja"
    given.write_text(SHAREGPT_TEMPLATE)
    with pytest.raises(TemplateShowsNoTextError, match="Give --chat-template a template that renders role/content") as refused:
        LocalModelServer(sharegpt_base, chat_template=given)
    assert f"The chat template {given} renders no text" in _said(str(refused.value))

    chatml = tmp_path / "chatml.jinja"
    chatml.write_text(CHATML_TEMPLATE)
    assert LocalModelServer(sharegpt_base, chat_template=chatml).support.tools is not None  # the fix it names serves


def test_the_local_server_process_started_directly_says_why_it_does_not_serve(sharegpt_base: Path) -> None:
    from ee_middleware.adapters.serving.launch import free_port, local_command

    command = local_command(str(sharegpt_base), port=free_port(), served_model_name="sharegpt", max_lora_rank=8)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]  # the message alone, not a crash
    said = _said(done.stderr)
    assert "The local server would render every request without its messages" in said and "--chat-template FILE" in said, said[-2000:]
    assert "would be trained on" not in said
