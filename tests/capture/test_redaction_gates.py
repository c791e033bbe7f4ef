"""Faster clean text, same redaction (issue 11.5). The built-in rules' quick gate: a ``needs``
string or a digit count tested before each prefilter's regex must never skip text that the
prefilters, searched as one alternation (the gate before), find something in; checked on the
redaction corpus, its JSON and odd text. And the memo of clean texts changes no result."""

from __future__ import annotations

import json
import re

import pytest

from ee_middleware.capture.redaction import BUILTIN_RULES, KINDS, RedactionRules, Redactor, _lower
from tests.capture.redaction_corpus import build_corpus

FULL_WIDTH = {ord(str(d)): 0xFF10 + d for d in range(10)}
ARABIC_INDIC = {ord(str(d)): 0x0660 + d for d in range(10)}

ODD = [
    "",
    "call 0123456789 now".translate(ARABIC_INDIC),  # \d matches other scripts' digits
    "card 4111 1111 1111 1111".translate(FULL_WIDTH),
    "v 1.2.3",
    "ip 10.0.0.1 and " + "1.2.3".translate(ARABIC_INDIC),
    "GHP_abcdefghijklmnopqrstuvwxyz0123456789",
    "Sk-proj-abc, RK_live_x, SG.x, hf_, xoxb-, AIza, npm_, glpat-, whsec_, github_pat_",
    "a" * 39 + "/" + "b" * 5,
    "the password: x",
    "-----BEGIN PRIVATE KEY-----",
    "İstanbul ǅ ß ﬁ 1234567",  # lower() changes length: the ASCII-only lowering is searched
    "Basic dXNlcjpwYXNz bearer abcdefgh eyJ",
    "x://y",
    "6 digits 123 456",
    "7 digits 123 4567",
]


def _texts() -> list[str]:
    planted, clean = build_corpus()
    texts = [t for run in planted + clean for t in run.texts()]
    texts += [json.dumps(run.fields()) for run in planted + clean]
    return texts + ODD + [t.upper() for t in ODD]


@pytest.mark.parametrize("rules", [RedactionRules(), RedactionRules(kinds=dict.fromkeys(KINDS, True))], ids=["defaults", "all-kinds"])
def test_the_gate_finds_what_the_combined_prefilter_finds(rules):
    redactor = Redactor(rules)
    combined = re.compile("|".join(r.prefilter[-1].pattern for r in BUILTIN_RULES if r.kind in redactor.rules.enabled_kinds()))
    texts = _texts()
    found = [combined.search(_lower(t)) is not None for t in texts]
    assert [redactor._could_match(_lower(t)) for t in texts] == found
    assert 0 < sum(found) < len(texts)  # the corpus has texts on both sides


@pytest.mark.parametrize("rule", BUILTIN_RULES, ids=lambda r: r.kind)
def test_each_rules_gate_is_a_necessary_condition_of_its_prefilter(rule):
    for text in _texts():
        lowered = _lower(text)
        if rule.prefilter[-1].search(lowered) is None:
            continue
        assert not rule.needs or any(w in lowered for w in rule.needs), (rule.kind, text)
        assert not lowered.isascii() or sum(map(lowered.count, "0123456789")) >= rule.digits, (rule.kind, text)


def test_clean_texts_are_remembered_and_redaction_is_unchanged():
    seen: list[tuple[str, str]] = []
    redactor = Redactor(salt=b"s", on_replace=lambda placeholder, value: seen.append((placeholder, value)))
    texts = ["nothing here", '{"a":"b"}', "mail bob@example.com", '{"password":"x"}', "nothing here", "mail bob@example.com"]
    first = [redactor.redact_text(t) for t in texts] + [redactor.redact_json(json.loads(t)) for t in texts if t.startswith("{")]
    assert "nothing here" in redactor._clean_texts and "mail bob@example.com" not in redactor._clean_texts
    told = len(seen)
    again = [redactor.redact_text(t) for t in texts] + [redactor.redact_json(json.loads(t)) for t in texts if t.startswith("{")]
    fresh = Redactor(salt=b"s")
    assert first == again == [fresh.redact_text(t) for t in texts] + [fresh.redact_json(json.loads(t)) for t in texts if t.startswith("{")]
    assert told > 0 and len(seen) == 2 * told  # the vault is told of every replacement, every time


def test_the_memo_is_bounded(monkeypatch):
    import ee_middleware.capture.redaction as redaction

    monkeypatch.setattr(redaction, "_CLEAN_MEMO_CHARS", 640)
    redactor = Redactor()
    for i in range(200):
        assert redactor.redact_text(f"clean text number {i}") == f"clean text number {i}"
    assert redactor._clean_chars <= 640 and sum(map(len, redactor._clean_texts)) == redactor._clean_chars
    assert redactor.redact_text("x" * 11) == "x" * 11 and "x" * 11 not in redactor._clean_texts  # over 1/64 of the bound


class _CountingPattern:
    """A prefilter that counts its searches."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.inner, self.pattern, self.calls = pattern, pattern.pattern, 0

    def search(self, text: str) -> re.Match[str] | None:
        self.calls += 1
        return self.inner.search(text)


def _is_json_text(text: str) -> bool:
    """Whether ``text`` is a JSON object or array (:meth:`Redactor.redact_text` walks it as data)."""
    stripped = text.strip()
    if stripped[:1] not in ("{", "[") or stripped[-1:] not in ("}", "]"):
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


def test_each_prefilter_is_searched_at_most_once_per_text_and_results_do_not_change():
    import dataclasses

    from ee_middleware.capture.redaction import _gates

    rules = RedactionRules(kinds=dict.fromkeys(KINDS, True))
    counted = Redactor(rules)
    wrapped: dict[str, _CountingPattern] = {}
    builtin = [
        dataclasses.replace(rule, prefilter=tuple(wrapped.setdefault(p.pattern, _CountingPattern(p)) for p in rule.prefilter))
        for rule in counted._builtin
    ]
    counted._builtin, counted._rules, counted._gates = builtin, builtin + counted._user, _gates(builtin)
    plain = Redactor(rules)
    most = 0
    for text in _texts():
        if ("\\" in text and re.search(r"\\[u/nrtbf]", text)) or _is_json_text(text):
            continue  # JSON (and JSON whose escapes hide what they stand for) is walked, each string a text of its own
        for pattern in wrapped.values():
            pattern.calls = 0
        assert counted.redact_text(text) == plain.redact_text(text)
        most = max(most, *(p.calls for p in wrapped.values()))
    assert most == 1  # the gate's verdicts are the rules' verdicts: no prefilter runs twice on one text
