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


def test_objects_and_lists_below_role_type_and_finish_reason_are_walked() -> None:
    """(review) The words' check asked whether an object or a list was one of them: a TypeError (unhashable) for a
    schema's ``"type": ["string", "null"]`` or a result's ``"type": {...}``, with or without a redact_fn; capture dropped
    such runs and dataset builds raised."""
    data = {
        "type": {"kind": "account", "owner": "dana@example.org"},
        "schema": {"type": ["string", "null"], "description": "mail dana@example.org"},
        "role": ["admin"],
        "finish_reason": {"why": "stop"},
    }
    for redactor in (Redactor(), Redactor(custom=scrub_pears)):
        redacted = redactor.redact_value(data)
        assert redacted["type"]["owner"] == "[REDACTED:email]" and redacted["schema"]["type"] == ["string", "null"]
        assert json.loads(redactor.redact_json(data))["type"]["owner"] == "[REDACTED:email]"


def test_a_key_the_stores_rules_name_a_secret_is_replaced_with_a_redact_fn_too() -> None:
    from ee_middleware.capture.redaction import RedactionRules

    rules = RedactionRules(keys=["role"])
    message = {"role": "developer", "content": "hi"}
    assert Redactor(rules).redact_value(message)["role"] == "[REDACTED:secret]"
    assert Redactor(rules, custom=scrub_pears).redact_value(message)["role"] == "[REDACTED:secret]"


def test_a_run_whose_tool_returns_a_type_object_is_stored(tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    from ee_middleware.scripted import ScriptedChatModel, tool_call

    @tool
    def lookup(q: str) -> str:
        """Look up an account."""
        return json.dumps({"type": {"kind": "account"}, "owner": "dana@example.org"})

    script = [AIMessage(content="", tool_calls=[tool_call("lookup", q="dana")]), AIMessage(content="done")]
    agent = record_experience(create_react_agent(ScriptedChatModel(script=script), [lookup]), app="shop", store=tmp_path / "s")
    try:
        agent.invoke({"messages": [("user", "who owns it")]})
        assert agent.flush()
    finally:
        agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "s", create=False)
    [trajectory] = list(store.iter_trajectories())
    store.close()
    assert "dana@example.org" not in trajectory.model_dump_json() and '"kind": "account"' in trajectory.steps[0].observation.content
