"""``check_prompt_parity`` (the serving kit's prompt check) for a chat template whose served prompt the trainer cannot
train on as it is. A stand-in for a server's ``/tokenize`` (the tokenizer's own template with the generation prompt, as
vLLM renders a chat request): no vLLM here, and the local server's parity is checked in test_serving_local.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ee_middleware.adapters.testing import PARITY_PROMPT, PARITY_TOOLS, check_prompt_parity
from ee_middleware.models.chat_template import probe_template, render_prompt
from ee_middleware.testing.tiny_models import build_test_tokenizer
from tests.models.family_templates import QWQ_32B


@pytest.fixture(scope="module")
def qwq_tokenizer() -> Any:
    return build_test_tokenizer([QWQ_32B, json.dumps(PARITY_PROMPT), json.dumps(PARITY_TOOLS)], chat_template=QWQ_32B, vocab_size=600)


@pytest.fixture
def tokenize_stand_in(qwq_tokenizer: Any) -> Iterator[str]:
    support = probe_template(qwq_tokenizer)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = render_prompt(qwq_tokenizer, body["messages"], body.get("tools"), support)
            answer = json.dumps({"tokens": qwq_tokenizer(text, add_special_tokens=False)["input_ids"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_thinking_generation_prompt_is_compared_as_served_stand_in_server(tokenize_stand_in: str, qwq_tokenizer: Any) -> None:
    # QwQ's rows are trained on the conversation (the prompt ends at the assistant's header, without the '<think>\n'
    # its generation prompt adds): the kit compared the served prompt with that and failed on a server that renders
    # exactly as the base's template does.
    assert check_prompt_parity(tokenize_stand_in, "qwq", qwq_tokenizer) == 3
