"""The built-in rules' quick gate (issue 11.5): a ``needs`` string or a digit count tested before
each prefilter's regex must never skip text that the prefilters, searched as one alternation (the
gate before), find something in. Checked on the redaction corpus, its JSON and odd text."""

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
