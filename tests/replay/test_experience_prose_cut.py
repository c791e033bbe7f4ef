"""Prose that mentions the JSON shape asked for and runs to ``max_tokens`` is cut off before its JSON (CUT_BEFORE_JSON:
the model may not answer in the shape at all), not "cut off" inside it (more tokens would not help).

The experience model is a scripted stand-in behind a real local HTTP server (ScriptedChatServer); the sandbox, its
client and the store of real BFCL expert trajectories are the real ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.replay.sandboxes import experience
from ee_middleware.replay.sandboxes.experience import (
    CUT_BEFORE_JSON,
    SyntheticObservationError,
    _began_json,
    parse_prediction,
)
from ee_middleware.testing.http import ScriptedChatServer
from tests.replay.test_experience_cut_off import _predict as predict_first_alternative

PROSE = [
    # the reviewer's (r6#3): a key named in an example object that closes, then more prose
    "To predict what the tool returns I need to think about the format. The answer must be an object like "
    '{"observation": ..., "is_error": ...}. The command lists the directory, and directories in this project usually '
    "contain a src folder, a tests folder and a README, so the listing would most likely show",
    'The user said "write {"key": value} pairs" earlier, so the config file probably has several of those entries; the '
    "tool reads it and returns its contents, which most likely include the database host, the port and the",
    # an example with real values that closes, and prose after it
    'An answer looks like {"reasoning": "why", "observation": "what", "is_error": false} and for ls it would list the',
    # keys named in prose without a value after them, never closed
    'I must write {"observation" and "is_error" fields, so let me think about what the folder holds: probably the',
    "The tool would list the files {} of the folder and",
    # an example that never closes, its values placeholders; an object of other keys (an echoed call); a set in prose
    'The answer is {"observation": ..., "is_error": ... so the listing of the folder shows "a',
    '{"tool": "ls", "arguments": {"path": "/tmp"',
    "The folder holds {a, b and",
]

CUT_INSIDE = [
    '{"reasoning": "ls lists the folder", "observation": "{\\"current_directory_content\\": [\\"report.pdf\\", \\"no',
    'Here is the predicted observation: {"reasoning": "ls lists the folder {and its } braces", "observation": "rep',
    'Like {"observation": "x"}. So: {"reasoning": "the folder holds one file", "observation": {"files": ["a',
    '```json\n{\n  "reasoning": "it lists',
    "```json\n",
    "Sure: {",
    '{"obs',
]

COMPLETE_AND_CUT = [
    # (the whole answer, which the answer parser accepts; where max_tokens cut it)
    ('{"result": {"observation": "total 12", "is_error": false}}', '{"result": {"observation": "total'),
    ('{"id": 1, "result": {"observation": "total 12"}}', '{"id": 1, "result": {"observation": "tot'),
    ('{"tool": "ls", "observation": "total 12", "is_error": false}', '{"tool": "ls", "observation": "total'),
    ('{"tool": "ls", "arguments": {}, "observation": "total 12"}', '{"tool": "ls", "arguments": {}, "obser'),
    ('[{"observation": "total 12"}]', '[{"observation": "total'),
    ('{"reward": NaN, "observation": "total 12"}', '{"reward": NaN, "observation": "tot'),
    ('He said "{" first. {"observation": "total 12"}', 'He said "{" first. {"observation": "tot'),
    ('Think {it\'s "x" or "y. So: {"observation": "total 12"}', 'Think {it\'s "x" or "y. So: {"observation": "tot'),
]
"""Answers cut inside an object the parser reads: the asked one is a wrapper key's value or a list's item, follows other
keys (a NaN reward, an echoed tool call), or follows prose whose braces and quotes do not pair."""


@pytest.mark.parametrize("text", PROSE)
def test_prose_mentioning_the_json_shape_did_not_begin_it(text: str) -> None:
    assert not _began_json(text)


@pytest.mark.parametrize("text", CUT_INSIDE)
def test_an_answer_cut_inside_its_json_began_it(text: str) -> None:
    assert _began_json(text)


@pytest.mark.parametrize(("complete", "cut"), COMPLETE_AND_CUT)
def test_an_answer_cut_inside_an_object_the_parser_reads_began_it(complete: str, cut: str) -> None:
    """Before (1458084): False for the wrapped one and those whose asked key follows another (its ``finditer`` never read
    the inner ``{``; a first key not asked was no start). The unpaired-prose ones keep what 1458084 read right."""
    assert complete.startswith(cut) and parse_prediction(complete)["observation"] == "total 12"
    assert _began_json(cut)


@pytest.mark.parametrize(
    "text",
    [
        '{"reasoning": ' * 7000 + "1" + "}" * 7000 + " and some prose",
        "word { " * 15000,
        '{"a": 1, ' * 15000,
        '{"' + "{" * 100000 + '" x',
        '{"{"' * 25000,
        '{"observation": "x", "is_error": false} ' * 2500,
    ],
    ids=["nested-asked-keys-closed", "braces-in-prose", "other-keys", "brace-run-in-key", "brace-quote", "closed-examples"],
)
def test_began_json_takes_linear_time_on_long_answers(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before fca7696: over 10 s for the first (each asked key's head was scanned to its end: quadratic). One pass now:
    counted as the characters the scan reads (an index, the stretch a ``find`` or a regex search covers), not timed."""
    counted = _CountingText(text)
    monkeypatch.setattr(experience, "_QUOTE_OR_ESCAPE", _CountingPattern(experience._QUOTE_OR_ESCAPE, counted))
    monkeypatch.setattr(experience, "_FENCE_AT_END", _CountingPattern(experience._FENCE_AT_END, counted))
    _began_json(counted)
    assert 0 < counted.reads <= 8 * len(text), (counted.reads, len(text))  # fca7696^ read the first 188 times over


class _CountingText(str):
    """A text that counts the characters read of it: one per index, the stretch a ``find`` covers."""

    reads = 0

    def __getitem__(self, key: Any) -> str:
        part = str.__getitem__(self, key)
        self.reads += len(part)
        return part

    def find(self, sub: str, start: Any = None, end: Any = None) -> int:
        found = str.find(self, sub, start, end)
        begin = start or 0
        self.reads += (found if found >= 0 else len(self)) - begin
        return found


class _CountingPattern:
    """A compiled pattern whose searches in ``counted`` add the stretch each covered to its reads."""

    def __init__(self, pattern: re.Pattern[str], counted: _CountingText) -> None:
        self.pattern, self.counted = pattern, counted

    def search(self, text: str, pos: int = 0) -> re.Match[str] | None:
        match = self.pattern.search(text, pos)
        if text is self.counted:
            self.counted.reads += (match.end() if match is not None else len(text)) - pos
        return match


def _predict(spec: str, store_path: Path) -> SyntheticObservationError:
    """The sandbox's failure on an alternative at the first call of the store's first trajectory (max_tokens 64)."""
    return predict_first_alternative(spec, store_path, max_tokens=64)


def test_prose_naming_the_keys_cut_at_max_tokens_gets_the_before_json_advice_scripted_server(bfcl_store_path: Path) -> None:
    """Before: 'the answer was cut off at max_tokens (...)' for PROSE[0] and PROSE[1], which the replay job counts as
    answers on their way to the JSON, so its summary lost the advice that the model may not answer in the JSON shape."""
    for text in (PROSE[0], PROSE[1], PROSE[3]):  # (PROSE[2]'s example is itself a readable answer)
        with ScriptedChatServer([(text, "length")], models=["em"]) as server:
            error = _predict(f"openai:{server.base_url}#em", bfcl_store_path)
        assert error.reason.startswith(CUT_BEFORE_JSON), error.reason
    with ScriptedChatServer([(CUT_INSIDE[1], "length")], models=["em"]) as server:
        error = _predict(f"openai:{server.base_url}#em", bfcl_store_path)
    assert error.reason.startswith("the answer was cut off at max_tokens (finish_reason 'length'"), error.reason


def test_a_wrapped_answer_cut_at_max_tokens_gets_the_raise_max_tokens_advice_scripted_server(bfcl_store_path: Path) -> None:
    """Before (1458084): CUT_BEFORE_JSON ('the model may not be answering in the JSON shape') for an answer the parser
    reads once whole: more tokens are the fix."""
    for _, cut in COMPLETE_AND_CUT:
        with ScriptedChatServer([(cut, "length")], models=["em"]) as server:
            error = _predict(f"openai:{server.base_url}#em", bfcl_store_path)
        assert error.reason.startswith("the answer was cut off at max_tokens (finish_reason 'length'; raise max_tokens, now 64"), (
            cut,
            error.reason,
        )
