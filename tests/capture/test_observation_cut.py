"""A tool result longer than ``max_observation_chars`` is redacted whole, then cut (sweep s23, finding 4a).

Was: the messages path (the tool message every later model input and the step's state carry) cut the raw text at the
cap and redacted afterwards, so the value the cut fell in survived in part (``card 4111 1111 1111``, 12 of 16 digits;
``mail jane.doe@gma``); the observation path redacted, then cut, and could leave a broken placeholder (``key [RED``).
Now every path redacts first and cuts after, never inside a placeholder (one the cut would split is left out whole).

A huge result is not redacted whole: only its first ``max_chars`` + :data:`~ee_middleware.capture.assembler.CUT_MARGIN`
characters are (more where redaction shrank them), which gives what redacting it whole and cutting gives for every value
shorter than the margin. Real agents (``create_agent``, ``ScriptedChatModel``), the real OTel SDK and the real store."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.payloads import PayloadEncoder
from ee_middleware.capture.redaction import PLACEHOLDER, Redactor
from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.redaction_corpus import build_corpus, parts_left

PAD = "x" * 50
RESULT = PAD + " card 4111 1111 1111 1111 mail jane.doe@gmail.com iban DE89 3704 0044 0532 0130 00 key sk_live_51HxYzAbCdEfGhIjKlMnOp"
PARTS = ("4111", "1111", "jane", "gma", "DE89", "3704", "0532", "sk_live", "51HxYz")
"""Pieces of the planted values: none may be left in any stored or exported text."""


def safe_cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, a placeholder the cut would split left out whole (the test's own reading of
    the rule, independent of capture's)."""
    if len(text) <= limit:
        return text
    for found in PLACEHOLDER.finditer(text):
        if found.start() < limit < found.end():
            return text[: found.start()]
    return text[:limit]


def broken_placeholders(text: str) -> list[str]:
    """What is left of a placeholder cut in two: ``[RED`` without its end."""
    return re.findall(r"\[RED[A-Z_:a-z0-9.-]*", PLACEHOLDER.sub("", text))


@tool
def fetch(q: str) -> str:
    """Fetch a record."""
    return RESULT


def _record(store_path: Path, cap: int, tracer_provider: Any) -> Any:
    # a fixed call id: a random one's hex digits held a planted value's digits now and then ("call_e43486833704": 3704)
    call = {**tool_call("fetch", q="r"), "id": "call-fetch"}
    model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[call]), AIMessage(content="ok")])
    agent = record_experience(
        create_agent(model, [fetch]), app="cut", store=store_path, max_observation_chars=cap, tracer_provider=tracer_provider
    )
    agent.invoke({"messages": [("user", "fetch")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    [trajectory] = list(store.iter_trajectories())
    return store, trajectory


@pytest.mark.parametrize("cap", [70, 93, 127, 140, 157])
def test_a_value_the_cut_falls_in_leaves_no_part_anywhere(store_path: Path, tracer_provider: Any, span_exporter: Any, cap: int) -> None:
    """Was, at cap 70: ``card 4111 1111 1111`` in the observation and the state; at 93 ``mail jane.doe@gma`` in the
    state; at 127 ``iban DE89 3704 0044 0532 01``; at 157 ``key [RED`` in the tool span's result."""
    store, trajectory = _record(store_path, cap, tracer_provider)
    full = store_redactor(store).redact_value(RESULT)  # the result redacted whole, with the store's salt
    expected = safe_cut(full, cap)
    observation = trajectory.steps[0].observation
    state_tool = [m["content"] for m in trajectory.steps[1].state if m.get("role") == "tool"]
    message_tool = [m["content"] for m in trajectory.messages if m.get("role") == "tool"]
    assert observation is not None
    assert observation.content == expected, (observation.content, expected)
    assert state_tool == [expected] and message_tool == [expected]
    assert observation.truncated_chars == len(full) - len(expected)
    spans = span_exporter.get_finished_spans()
    texts = [observation.content, *state_tool, *message_tool]
    texts += [str(v) for s in spans for k, v in (s.attributes or {}).items() if k in (sc.TOOL_CALL_RESULT, sc.INPUT_MESSAGES)]
    for text in texts:
        assert not parts_left(PARTS, text), text
        assert not broken_placeholders(text), text
    store.close()


def _long_text(seed: int, size: int) -> str:
    """Prose lines from the redaction corpus (every built-in kind planted, and clean values), ``size`` characters."""
    planted, clean = build_corpus(seed)
    lines = [text for run in planted + clean for text in run.texts()]
    rng = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        line = rng.choice(lines)
        out.append(line)
        length += len(line) + 1
    return "\n".join(out)


def _long_json(seed: int, size: int) -> str:
    planted, clean = build_corpus(seed)
    rows = [run.fields() for run in planted + clean]
    out: list[dict[str, Any]] = []
    while len(json.dumps(out)) < size:
        out.extend(rows)
    return json.dumps(out)


@pytest.mark.parametrize("make", [_long_text, _long_json])
def test_a_long_result_gives_what_redacting_it_whole_then_cutting_gives(make: Any) -> None:
    """The tool span's result and the tool message (the observation, and the state of every later decision) of a result
    far over the cap: exactly the whole result redacted, then cut (was: the tool message cut raw, then redacted)."""
    redactor = Redactor(salt=b"store-salt")
    text = make(7, 120_000)
    full = redactor.redact_value(text)
    for cap in range(1_000, 20_000, 997):
        encoder = PayloadEncoder(redactor, cap)
        result, _, truncated = encoder.tool_result(text)
        expected = safe_cut(full, cap)
        assert result == expected, cap
        assert truncated > 0
        [message] = json.loads(encoder.messages([ToolMessage(content=text, tool_call_id="c1")]))
        assert message["parts"][0]["response"] == expected, cap


def test_a_huge_result_is_redacted_in_a_window_not_whole() -> None:
    """A 5 MB tool result: redacting it whole took 1 to 4 s of the finisher thread for a 200,000-character cut. Now only
    a window past the cap is redacted (a ``redact_fn`` sees at most that much: the behaviour checked, not its time)."""
    seen: list[int] = []

    def scrub(text: str) -> str:  # a redact_fn: told every text redaction reads
        seen.append(len(text))
        return text

    redactor = Redactor(salt=b"s", custom=scrub)
    text = _long_text(3, 5_000_000)
    encoder = PayloadEncoder(redactor, 200_000)
    result, _, truncated = encoder.tool_result(text)
    assert len(result) <= 200_000 and truncated > 4_000_000
    assert max(seen) < 500_000, max(seen)  # the cap, a margin, and as much more as redaction shrank that by
    assert result == safe_cut(Redactor(salt=b"s").redact_value(text[:400_000]), 200_000)
