"""A user's ``redact_fn`` is given the run's data, not the message encoding's own words (``role``, ``assistant``, ...).

A real ``create_react_agent`` graph recorded into the real local store. A scrubber built on a model costs milliseconds a
call; it was called on every key and fixed value of the GenAI encoding too (157 calls for a run of three tool calls,
120 of them on ``role``, ``parts``, ``type``, ``assistant`` and the like).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ee_middleware import record_experience
from ee_middleware.capture.redaction import ENCODING_WORDS, Redactor
from ee_middleware.store import LocalExperienceStore
from tests.conftest import USER_TASK

SEEN: list[str] = []
"""Every string :func:`scrub_pears` was given."""


def scrub_pears(text: str) -> str:
    """A user's ``redact_fn`` (module level: a recorder records it by its importable name) that hides pears."""
    SEEN.append(text)
    return text.replace("pear", "[fruit]")


def test_a_recorded_run_gives_redact_fn_its_data_and_none_of_the_encodings_words(react_graph: Any, store_path: Path) -> None:
    SEEN.clear()
    agent = record_experience(react_graph, app="shop", store=store_path, redact_fn=scrub_pears)
    try:
        agent.invoke(USER_TASK)
        assert agent.flush()
    finally:
        agent.recorder.close()
    given = set(SEEN)
    assert not given & ENCODING_WORDS, sorted(given & ENCODING_WORDS)
    assert "Do we have pears? If not, order 5." in given  # the user's message, and the tools' arguments and results
    assert any("pear" in text for text in given - {"Do we have pears? If not, order 5."})
    store = LocalExperienceStore(store_path)
    try:
        [trajectory] = list(store.iter_trajectories())
    finally:
        store.close()
    stored = json.dumps(trajectory.model_dump(mode="json"))
    assert "[fruit]" in stored and "pear" not in stored  # what it hid is hidden everywhere, as before
    assert {m["role"] for m in trajectory.messages} >= {"user", "assistant", "tool"}  # the encoding's words kept as they are


def test_redact_value_skips_the_encodings_words_only_where_the_encoding_has_them() -> None:
    SEEN.clear()
    message = {"role": "assistant", "parts": [{"type": "text", "content": "two pears"}], "finish_reason": "stop"}
    assert Redactor(custom=scrub_pears).redact_value(message) == {
        "role": "assistant",
        "parts": [{"type": "text", "content": "two [fruit]s"}],
        "finish_reason": "stop",
    }
    assert SEEN == ["two pears"]
    SEEN.clear()
    # a user's own keys and values are the data: given to it, whatever they are
    assert Redactor(custom=scrub_pears).redact_value({"pear_count": "pear", "Role": "Assistant"}) == {
        "[fruit]_count": "[fruit]",
        "Role": "Assistant",
    }
    assert sorted(SEEN) == ["Assistant", "Role", "pear", "pear_count"]
    SEEN.clear()
    # the same words as the run's data (a message that says "stop", a tool's result "error", an argument "image"): given
    said = [
        {"role": "user", "parts": [{"type": "text", "content": "stop"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "error"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c2", "name": "show", "arguments": {"kind": "image"}}]},
    ]
    assert Redactor(custom=scrub_pears).redact_value(said) == said
    assert sorted(SEEN) == ["c1", "c2", "error", "image", "kind", "show", "stop"]
