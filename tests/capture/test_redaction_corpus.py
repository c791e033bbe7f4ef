"""The seeded redaction corpus through real create_agent graphs: 0 planted secrets of a default kind
in plain text under the store or in the user's exporter, whole or as a tail after a placeholder, and no ordinary value
changed."""

from __future__ import annotations

from tests.capture.redaction_corpus import (
    KINDS,
    PLACES,
    Outcome,
    Plant,
    Run,
    _count_clean,
    _count_planted,
    build_corpus,
    report,
    run_corpus,
)


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


def test_a_tail_of_a_planted_value_after_a_placeholder_counts_as_found():
    """A rule that stops inside a value (at the ``&`` of ``NfngA&723iAD``) leaves its tail in plain text: counted, as
    the whole value is (privacy sweep s23, finding 3: 5 such tails in the seed-7 corpus went uncounted)."""
    plant = Plant("env_assignment", "user_message", "NfngA&723iAD", "export STRIPE_SECRET_KEY=NfngA&723iAD")
    for stored, found in [
        ("export STRIPE_SECRET_KEY=[REDACTED:secret:1a2b3c4d]&723iAD", True),
        ('{"text": "export STRIPE_SECRET_KEY=[REDACTED:secret]&723iAD"}', True),
        ("export STRIPE_SECRET_KEY=[REDACTED:secret:1a2b3c4d]", False),
        ("export STRIPE_SECRET_KEY=[REDACTED:secret:1a2b3c4d] 723i", False),  # (not the value's tail: apart from it)
    ]:
        outcome = Outcome()
        _count_planted([Run("user_message", [plant])], {"store": stored, "exporter": ""}, outcome)
        assert outcome.found["env_assignment", "user_message"] == int(found), stored
        assert outcome.partial["env_assignment", "user_message"] == int(found), stored
