"""A task refused for the model server's setup (llama-server started without --jinja) got no answer: it is counted as
``no_answer`` and run again by the same command, not as the model's failure; a refusal of one request's messages stays
a model error (real conversations against a real local HTTP server answering as llama-server does)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ee_middleware.evals.clients import build_eval_client
from ee_middleware.evals.loop import run_conversation
from ee_middleware.evals.tasks import EvalTask
from ee_middleware.testing.http import send_json, serving

TOOLS = [{"type": "function", "function": {"name": "ls", "description": "List files.", "parameters": {"type": "object", "properties": {}}}}]
WITH_TOOLS = EvalTask("s", "with-tools", "c", [[{"role": "user", "content": "List my files."}]], [TOOLS], [[]])
WITHOUT_TOOLS = EvalTask("s", "without-tools", "c", [[{"role": "user", "content": "Say hi."}]], [[]], [[]])


@contextmanager
def llama_server(refusal: str) -> Iterator[str]:
    """llama-server refusing every request with tools with its HTTP 500 ``refusal``, answering the others."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("tools"):
                send_json(self, {"error": {"code": 500, "message": refusal, "type": "server_error"}}, 500)
                return
            message = {"role": "assistant", "content": "hi"}
            send_json(self, {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url


def _converse(refusal: str, task: EvalTask) -> Any:
    with llama_server(refusal) as url:
        client = build_eval_client(f"openai:{url}#m", retries=2, timeout_s=10)
        try:
            return run_conversation(client, task, None)
        finally:
            client.close()


def test_a_task_refused_for_the_servers_setup_got_no_answer_and_runs_again() -> None:
    """Before: counted as the model's failure (``no_answer`` False), so in a suite whose other tasks were answered the
    score dropped for a server flag, and the same command did not run the task again once the server was fixed."""
    refused = _converse("tools param requires --jinja flag", WITH_TOOLS)
    assert refused.error_type == "model_error" and "--jinja" in (refused.error or "")
    assert refused.no_answer, "a refusal every request with tools gets says nothing of the model"
    answered = _converse("tools param requires --jinja flag", WITHOUT_TOOLS)
    assert answered.error is None and answered.turns[0].final_text == "hi"


def test_a_chat_template_failing_on_one_conversation_stays_a_model_error() -> None:
    refused = _converse("Unknown argument ensure_ascii for function tojson at row 11, column 37", WITH_TOOLS)
    assert refused.error_type == "model_error" and "chat template failed" in (refused.error or "")
    assert not refused.no_answer
