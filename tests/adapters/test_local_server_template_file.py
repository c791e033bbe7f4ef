"""``ee serve local --chat-template FILE`` with a file that is not valid Jinja is refused at start, naming the file and the
syntax error; a valid file that refuses a request's conversation is named in the 400 the request gets. REAL tiny Llama,
REAL server (the ``ee`` command in a process, and the HTTP server in this one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ee_middleware.adapters.serving.launch import free_port
from ee_middleware.adapters.serving.rendering import servers_folder
from ee_middleware.testing.http import serving

BROKEN = "{% for m in messages %}{{ m.content }}{% endfor"
"""A missing ``%}``."""

ALTERNATING = (
    "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] or '') + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_ee_serve_local_refuses_a_template_file_that_is_not_valid_jinja_at_start(tiny_base: Path, tmp_path: Path) -> None:
    """Before: it started and served; every chat and /tokenize request got a 500 blaming "the model's own template (e.g.
    strict user/assistant alternation)", and `ee eval run` said the server was down."""
    template = tmp_path / "broken.jinja"
    template.write_text(BROKEN)
    port = free_port()
    command = [sys.executable, "-m", "ee_middleware.cli", "serve", "local", "--base", str(tiny_base), "--port", str(port)]
    done = subprocess.run([*command, "--chat-template", str(template)], capture_output=True, text=True, timeout=240)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stderr
    assert f"The local server cannot serve the chat template {template} (--chat-template): it is not valid Jinja (line 1:" in said
    assert "unexpected end of template" in said and "Traceback" not in done.stderr
    assert "serving" not in done.stdout
    assert not (servers_folder() / f"{port}.json").exists()


def test_a_local_server_started_in_python_refuses_it_too(tiny_base: Path, tmp_path: Path) -> None:
    from ee_middleware.adapters.serving.local_server import LocalModelServer
    from ee_middleware.models.chat_template import TemplateDoesNotCompileError

    template = tmp_path / "broken.jinja"
    template.write_text(BROKEN)
    with pytest.raises(TemplateDoesNotCompileError, match=f"chat template {template} \\(--chat-template\\): it is not valid Jinja"):
        LocalModelServer(tiny_base, chat_template=template)


def test_a_request_the_given_template_refuses_is_a_400_naming_the_file(tiny_base: Path, tmp_path: Path) -> None:
    """Before: a 500 saying "This is a limit of the model's own template", although the template was the user's file."""
    from ee_middleware.adapters.serving.local_server import LocalModelServer, make_http_server

    template = tmp_path / "alternating.jinja"
    template.write_text(ALTERNATING)
    app = LocalModelServer(tiny_base, served_model_name="tiny", chat_template=template)
    twice = [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]
    with serving(make_http_server(app, port=0)) as url:
        fine = httpx.post(f"{url}/chat/completions", json={"messages": twice[:1], "max_tokens": 2}, timeout=60)
        assert fine.status_code == 200, fine.text
        for path, body in (("/v1/chat/completions", {"messages": twice, "max_tokens": 2}), ("/tokenize", {"messages": twice})):
            refused = httpx.post(url.removesuffix("/v1") + path, json=body, timeout=60)
            assert refused.status_code == 400, (path, refused.text)
            message = refused.json()["error"]["message"]
            assert f"The chat template {template} cannot render these messages (roles user, user)" in message
            assert "Conversation roles must alternate" in message and "model's own template" not in message
