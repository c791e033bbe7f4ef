"""An experience-model prediction cut off at ``max_tokens`` (``finish_reason`` ``"length"``) is reported as such, with
the fix (more max_tokens), not as an answer in the wrong format."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox, SyntheticObservationError
from ee_middleware.store.local import LocalExperienceStore
from tests.replay.test_experience import chat_handler

CUT = '{"reasoning": "ls lists the directory", "observation": "{\\"current_directory_content\\": [\\"report.pdf\\", \\"no'


def _handler(content: str, finish_reason: str) -> type[BaseHTTPRequestHandler]:
    return chat_handler(lambda _body: (content, finish_reason))


@pytest.fixture
def cut_model() -> Iterator[Any]:
    """A real HTTP server answering like an experience model whose answer stopped at max_tokens (a stand-in for a
    served model), started for each ``(content, finish_reason)``."""
    servers: list[ThreadingHTTPServer] = []

    def start(content: str, finish_reason: str) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler(content, finish_reason))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"openai:http://127.0.0.1:{port}/v1#em"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _first_trajectory(path: Path) -> Trajectory:
    store = LocalExperienceStore(path)
    try:
        return next(iter(store.iter_trajectories()))
    finally:
        store.close()


def _predict(spec: str, store: Path, max_tokens: int) -> SyntheticObservationError:
    sandbox = ExperienceSandbox(spec, store=str(store), max_tokens=max_tokens)
    trajectory = _first_trajectory(store)
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    expert = step.action.tool_call
    assert expert is not None
    sandbox.reset(None)
    sandbox.at_step(trajectory, step)
    try:
        with pytest.raises(SyntheticObservationError) as caught:
            sandbox.execute(ToolCall(id="alt", name=expert.name, arguments={**expert.arguments, "__alt": 1}))
    finally:
        sandbox.close()
    return caught.value


def test_a_prediction_cut_at_max_tokens_names_the_cut_and_the_fix_fake_server(bfcl_store_path: Path, cut_model: Any) -> None:
    error = _predict(cut_model(CUT, "length"), bfcl_store_path, max_tokens=64)
    assert "cut off at max_tokens" in error.reason and "finish_reason 'length'" in error.reason
    assert "now 64" in error.reason and "[replay.sandbox_settings]" in error.reason and "--max-tokens" in error.reason
    assert "no JSON object with an 'observation' field" in error.reason, "what was wrong with the answer is kept"


def test_the_same_unreadable_answer_that_stopped_on_its_own_is_not_called_cut_fake_server(bfcl_store_path: Path, cut_model: Any) -> None:
    error = _predict(cut_model(CUT, "stop"), bfcl_store_path, max_tokens=64)
    assert error.reason == "no JSON object with an 'observation' field in the answer"


@pytest.mark.parametrize("lead_in", ["Here is the predicted observation: ", "Sure.\n\n", "```json\n"])
def test_an_answer_cut_inside_its_json_after_a_lead_in_is_not_called_prose_fake_server(
    bfcl_store_path: Path, cut_model: Any, lead_in: str
) -> None:
    """The answer parser reads an object after a lead-in, so more tokens would make it whole: not "before any JSON"."""
    from ee_middleware.replay.sandboxes.experience import CUT_BEFORE_JSON

    error = _predict(cut_model(lead_in + CUT, "length"), bfcl_store_path, max_tokens=64)
    assert error.reason.startswith("the answer was cut off at max_tokens") and not error.reason.startswith(CUT_BEFORE_JSON)
    prose = _predict(cut_model("The tool would list the files {} of the folder and", "length"), bfcl_store_path, max_tokens=64)
    assert prose.reason.startswith(CUT_BEFORE_JSON)
