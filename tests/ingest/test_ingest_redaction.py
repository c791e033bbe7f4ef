"""What ``ee traces ingest`` and :func:`~ee_middleware.ingest.ingest_files` redact beyond the runs' spans (r9b findings 5
and 7): the reviewer ``--approve-by`` names, and a caller's own ``redactor=``, which now applies the store's rules, key
names, ``redact_fn`` and salt too (as every recorder applies the store's recorded rules besides its own). The stores
are made by the real recorder, the spans are OTLP GenAI spans, and what is checked is what the store holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.recorder import Recorder
from ee_middleware.capture.redaction import RedactionRules, Redactor, store_salt
from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.errors import ConfigError
from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import GENAI_FILE, TRACE, _request

MAIL = "zed.new@example.org"
PLAIN = ("Jane Doe", "CU-1001", "1985-07-14", MAIL)
"""A name (the app's redact_fn), a customer id (its pattern), a birth date (its redaction key) and an e-mail address."""


def scrub_names(text: str) -> str:
    """The app's ``redact_fn`` (importable: the store's ``redaction.json`` names it)."""
    return text.replace("Jane Doe", "[NAME]")


def _spans(tmp_path: Path, extra: str = "") -> Path:
    """The GenAI run of ``otlp_builders`` with each of :data:`PLAIN` in its task and its tool call's arguments."""
    text = json.dumps(_request(GENAI_FILE))
    text = text.replace('\\"invoice\\": 7', f'\\"invoice\\": 7, \\"email\\": \\"{MAIL}\\", \\"dob\\": \\"1985-07-14\\"').replace(
        "Refund invoice 7", f"Refund invoice 7 of Jane Doe, CU-1001, {MAIL}{extra}"
    )
    path = tmp_path / "spans.jsonl"
    path.write_text(text + "\n")
    return path


def _app_store(tmp_path: Path) -> Path:
    """A store the app recorded into with its own rules: a pattern, a key name and a redact_fn."""
    path = tmp_path / "experience"
    Recorder(
        CaptureConfig(store=str(path), redaction_patterns={"cust_id": r"\bCU-\d{4}\b"}, redaction_keys=["dob"], redact_fn=scrub_names)
    ).close()
    return path


def _held(store_path: Path) -> str:
    """Everything the store holds, as text: its trajectories and decisions, and its files as written."""
    store = LocalExperienceStore(store_path)
    parts = [t.model_dump_json() for t in store.iter_trajectories()]
    parts.append(store.approvals().write_ndjson())
    parts += [p.read_bytes().decode("utf-8", "replace") for p in store_path.rglob("*") if p.is_file()]
    return "\n".join(parts)


def _stored_email(store_path: Path) -> str:
    [trajectory] = list(LocalExperienceStore(store_path).iter_trajectories())
    call = trajectory.steps[0].action.tool_call
    assert call is not None
    return call.arguments["email"]


def test_approve_by_is_stored_redacted_as_traces_approve_stores_it(tmp_path: Path) -> None:
    """r9b finding 5: ``--approve-by dave@corp.example`` was stored in plain text (``ee traces list`` showed a pseudonym
    over it); now the reviewer gets the pseudonym the store's rules and salt give it, as ``decide()`` stores it."""
    store_path = tmp_path / "experience"
    report = ingest_files([_spans(tmp_path)], str(store_path), approve_by="dave@corp.example")
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    assert "dave@corp" not in _held(store_path)
    store = LocalExperienceStore(store_path)
    [trajectory] = list(store.iter_trajectories())
    assert trajectory.approval.status == "approved"
    assert trajectory.approval.by == store_redactor(store).redact_text("dave@corp.example")


def test_a_callers_redactor_applies_the_stores_rules_and_salt_too(tmp_path: Path) -> None:
    """r9b finding 7: with ``redactor=Redactor(RedactionRules(), salt=...)`` the store's pattern, key name and redact_fn
    were skipped (each value stored in plain text) and the caller's salt made other pseudonyms than the store's."""
    store_path = _app_store(tmp_path)
    caller = Redactor(RedactionRules(), salt=b"0" * 32)
    report = ingest_files([_spans(tmp_path)], str(store_path), redactor=caller)
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    held = _held(store_path)
    assert [value for value in PLAIN if value in held] == []
    store = LocalExperienceStore(store_path)
    assert _stored_email(store_path) == store_redactor(store).redact_text(MAIL), "the store's salt: one value, one pseudonym"


def scrub_orgs(text: str) -> str:
    """A caller's own ``custom`` function (importable, as a ``redact_fn`` must be)."""
    return text.replace("Acme", "[ORG]")


def refuse_to_scrub(text: str) -> str:
    """A ``redact_fn`` that raises, quoting the text it was given."""
    if "Jane" in text:
        raise ValueError(f"cannot scrub {text!r}")
    return text


def test_a_callers_redactor_keeps_its_own_rules_and_function(tmp_path: Path) -> None:
    """The caller's redactor still applies all of its own: an ``extra_patterns=`` rule and its ``custom`` function, on
    top of the store's rules (a recorder's own rules are applied with the store's alike)."""
    store_path = _app_store(tmp_path)
    caller = Redactor(extra_patterns={"ticket": r"TCK-\d+"}, custom=scrub_orgs)
    report = ingest_files([_spans(tmp_path, extra=" ticket TCK-991 at Acme")], str(store_path), redactor=caller)
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    held = _held(store_path)
    assert [value for value in (*PLAIN, "TCK-991", "Acme") if value in held] == []


def test_a_callers_function_is_recorded_with_the_store_and_applied_by_later_writers(tmp_path: Path) -> None:
    """Sweep F: the caller's ``custom`` function was applied to its own ingest only: redaction.json did not name it, so
    a later ``ee traces ingest`` (and exports) wrote what it removes in plain text. A function no other process could
    import is refused, as a recorder's ``redact_fn`` is; a redactor without a salt no longer turned the store's
    pseudonyms off for good."""
    store_path = tmp_path / "experience"
    with pytest.raises(ConfigError, match="redact_fn cannot be used"):
        ingest_files([_spans(tmp_path)], str(store_path), redactor=Redactor(custom=lambda text: text))
    report = ingest_files([_spans(tmp_path, extra=" at Acme")], str(store_path), redactor=Redactor(custom=scrub_orgs))
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    recorded = json.loads((store_path / "redaction.json").read_text())
    assert recorded["custom_function"] == f"{__name__}.scrub_orgs" and recorded["pseudonyms"] is True
    later = tmp_path / "later.jsonl"  # another run, ingested with no redactor
    later.write_text(_spans(tmp_path, extra=" at Acme Corp").read_text().replace(TRACE, "6" + TRACE[1:]))
    again = ingest_files([later], str(store_path))
    assert (len(again.ingested), again.problems) == (1, 0), again.errors
    assert "Acme" not in _held(store_path)
    assert "[REDACTED:email:" in _held(store_path)  # pseudonyms (a tag per value), not plain placeholders


def test_a_redact_fn_that_raises_is_reported_without_the_text_it_quoted(tmp_path: Path) -> None:
    """Sweep F: the report quoted the function's message, which held the very text it was to scrub."""
    report = ingest_files([_spans(tmp_path)], str(tmp_path / "experience"), redactor=Redactor(custom=refuse_to_scrub))
    assert report.ingested == [] and report.problems == 1
    [error] = report.errors
    assert "Jane" not in error and "RedactFnError: the redact_fn" in error and "refuse_to_scrub raised builtins.ValueError" in error


def test_a_callers_salt_becomes_a_new_stores_salt(tmp_path: Path) -> None:
    """Into a store that has no salt yet, the caller's salt is kept as the store's, so that the later writers (replay,
    datasets, exports, other recorders) give a value the pseudonym the ingested runs hold."""
    store_path = tmp_path / "experience"
    caller = Redactor(salt=b"1" * 32)
    report = ingest_files([_spans(tmp_path)], str(store_path), redactor=caller)
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    store = LocalExperienceStore(store_path)
    assert store_salt(store) == b"1" * 32
    assert _stored_email(store_path) == caller.redact_text(MAIL) == store_redactor(store).redact_text(MAIL)


def test_a_callers_short_salt_is_refused_before_it_becomes_the_stores_key(tmp_path: Path) -> None:
    """Kept as redaction.key, a salt under 32 bytes made every later read of the store fail (a key too short)."""
    store_path = tmp_path / "experience"
    with pytest.raises(ConfigError, match=r"pseudonym salt of 4 byte\(s\).*at least 32.*secrets.token_bytes\(32\)"):
        ingest_files([_spans(tmp_path)], str(store_path), redactor=Redactor(salt=b"salt"))
    assert not (store_path / "redaction.key").exists()
