"""A reviewer's ``reason`` and ``by`` go through the store's redaction rules before they are stored (sweep s23,
finding 7). Was: stored verbatim in the approval log (the spool, the compacted Parquet) and printed by ``ee traces
show``; reviewers quote customers, and reviewer names are often e-mail addresses. An e-mail reviewer becomes a
pseudonym placeholder (the same for every decision they make: the store's salt); a plain name is kept. Real local
store, real redaction settings file."""

from __future__ import annotations

from pathlib import Path

from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction, store_redactor
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.approvals import decide
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.capture.redaction_corpus import parts_left

REVIEWER = "alice@northwind-bank.example"
REASON = "customer jane.doe@gmail.com / +44 20 7946 0958 disputes card 4111 1111 1111 1111, ticket TCK-4821"
PLANTED = (REVIEWER, "jane.doe", "7946", "4111", "TCK-4821")
"""Parts of the planted values, searched in the decisions' texts (outside their placeholders: a pseudonym tag is random hex)."""
WHOLE = (REVIEWER, "jane.doe", "7946 0958", "4111 1111", "TCK-4821")
"""Whole values, searched in the store's files, whose times and tags may hold a short digit run by chance ("7946" did)."""


def _files(root: Path) -> str:
    """Every file of the store, as text (Parquet's bytes too: plain strings show in them)."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


def test_reason_and_reviewer_are_redacted_by_the_store_rules(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("t1"), sample_trajectory("t2")])
    record_store_redaction(store, StoreRedaction(rules=RedactionRules(patterns={"ticket": r"TCK-\d+"})))  # the app's own rule

    [event] = decide(store, ["t1"], "rejected", by=REVIEWER, reason=REASON)
    assert not [p for p in PLANTED if p in f"{event.by} {event.reason}"], event
    expected = store_redactor(store)
    assert event.by == expected.redact_value(REVIEWER) and event.by.startswith("[REDACTED:email:")
    assert event.reason == expected.redact_value(REASON) and "[REDACTED:ticket:" in event.reason
    assert event.reason.startswith("customer [REDACTED:email:") and event.reason.endswith(", ticket [REDACTED:ticket:" + event.reason[-9:])

    [again] = decide(store, ["t2"], "approved", by=REVIEWER, reason={"t2": "fine"})  # a reason per trajectory
    assert again.by == event.by and again.reason == "fine"  # one pseudonym per reviewer, across decisions
    [overturned] = decide(store, ["t1"], "approved", by="bob", reason="checked", force=True)
    assert overturned.by == "bob" and overturned.overrides is not None and overturned.overrides.by == event.by

    history = store.approvals(["t1", "t2"])
    texts = [str(value) for row in history.to_dicts() for key, value in row.items() if isinstance(value, str) and not key.endswith("_at")]
    assert not [text for text in texts if parts_left(PLANTED, text)], texts
    store.close()
    assert not [p for p in WHOLE if p in _files(tmp_path / "store")]
    compacted = LocalExperienceStore(tmp_path / "store")
    compacted.compact()
    compacted.close()
    assert not [p for p in WHOLE if p in _files(tmp_path / "store")]


def test_a_store_without_rules_redacts_with_the_defaults(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("t1")])
    [event] = decide(store, ["t1"], "rejected", by="  alice  ".strip(), reason="wrong refund for +1 415 555 0134")
    assert event.by == "alice" and event.reason is not None and event.reason.startswith("wrong refund for [REDACTED:phone")
    store.close()
