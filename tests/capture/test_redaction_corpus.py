"""The seeded redaction corpus through real create_agent graphs: 0 planted secrets of a default kind
in plain text under the store or in the user's exporter, and no ordinary value changed."""

from __future__ import annotations

from tests.capture.redaction_corpus import KINDS, PLACES, Outcome, _count_clean, build_corpus, report, run_corpus


def test_default_kinds_never_reach_disk_or_the_users_exporter(tmp_path):
    outcome = run_corpus(seed=7, workdir=tmp_path)
    assert outcome.trajectories_stored == outcome.runs and not outcome.capture_failures
    assert sum(outcome.planted.values()) == len(KINDS) * len(PLACES)
    leaked = {key: n for key, n in outcome.found.items() if key[0] != "ip_address"}
    assert leaked == {}, report(outcome)
    # the control: ip_address is off by default, so every planted one is found in plain text (the
    # search sees values wherever they are stored, in Parquet or the spool, and in the exporter)
    assert {place: outcome.found["ip_address", place] for place in PLACES} == dict.fromkeys(PLACES, 1)
    assert outcome.false_positives == [], report(outcome)
    assert outcome.clean_values > 400


def test_switching_kinds_in_the_capture_config(tmp_path):
    outcome = run_corpus(seed=3, workdir=tmp_path, capture_settings={"redaction_kinds": {"ip_address": True, "email": False}})
    assert sum(outcome.found["ip_address", p] for p in PLACES) == 0
    assert sum(outcome.found["email", p] for p in PLACES) == len(PLACES)
    assert {k for k, _ in outcome.found} == {"email"}


def test_the_corpus_is_seeded_and_the_clean_count_sees_changes():
    assert [[p.value for p in r.plants] for r in build_corpus(5)[0]] == [[p.value for p in r.plants] for r in build_corpus(5)[0]]
    assert build_corpus(5)[0][0].plants[0].value != build_corpus(6)[0][0].plants[0].value
    _, clean = build_corpus(5)
    outcome = Outcome()
    stored = " ".join(clean[0].clean).replace(clean[0].clean[3], "[REDACTED:x]")
    _count_clean(clean[:1], {"store": stored, "exporter": ""}, outcome)
    assert outcome.false_positives == [(clean[0].place, clean[0].clean[3])]
