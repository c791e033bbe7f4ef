"""The experience sandbox's check that its model's endpoint is up, before any work: a server that answers chat but has
no model listing (``GET /v1/models`` refused) is up; one that gives no answer is not.

The experience model is a real local HTTP server speaking the OpenAI chat API with a scripted answer; the sandbox and
its client are the real ones."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.registry import build_sandbox
from ee_middleware.testing.http import Reply, ScriptedChatServer

PREDICTION = {"reasoning": "a listing", "observation": "notes.txt", "is_error": False}


def _server(models_status: int, models_body: Any) -> ScriptedChatServer:
    """Chat answered with :data:`PREDICTION`; ``GET /models`` answered ``models_status`` with ``models_body``."""
    return ScriptedChatServer([json.dumps(PREDICTION)], models=Reply(models_body, models_status))


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, {"detail": "Not Found"}), (405, {"detail": "Method Not Allowed"}), (401, {"error": {"message": "key for chat only"}})],
    ids=["no-listing-404", "no-listing-405", "listing-refused-401"],
)
def test_an_endpoint_without_a_model_listing_is_up_and_predicts(status: int, body: Any) -> None:
    """Before: SandboxError 'The experience model's endpoint cannot be reached ... refused the request with HTTP 404',
    though every chat request would have worked (ee improve's check counts a refusal as an answer)."""
    with _server(status, body) as server:
        sandbox = build_sandbox(f"experience:openai:{server.base_url}#em", top_k=0)
        try:
            sandbox.reset(None)
            observation = sandbox.execute(ToolCall(id="c1", name="ls", arguments={}))
        finally:
            sandbox.close()
    assert observation.content == "notes.txt" and not observation.is_error


def test_an_endpoint_that_fails_with_5xx_cannot_be_reached() -> None:
    with _server(503, {"error": {"message": "loading"}}) as server, pytest.raises(SandboxError, match=r"cannot be reached.*503"):
        build_sandbox(f"experience:openai:{server.base_url}#em", top_k=0)


def test_an_endpoint_that_is_down_cannot_be_reached() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SandboxError, match="cannot be reached"):
        build_sandbox(f"experience:openai:http://127.0.0.1:{port}/v1#em")
