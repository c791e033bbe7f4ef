"""A store's ``redaction.key`` and ``redaction.json`` are checked where they are read (sweep: store 1 and 3).

The key: an empty one (a partial copy or restore) gave unkeyed pseudonym tags that anyone can recompute, silently; a
short one was taken; one not of hex digits crashed with a raw ValueError; one missing from a store that holds runs was
made anew, silently, so that the same value got another tag. redaction.json: a field of the wrong shape (``patterns`` or
``kinds`` as a list, a pattern that is a number) crashed with a ValueError or AttributeError, and an invalid regex or an
unknown kind did not say it came from that file. Each is now a ConfigError naming the file, the field and the fix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from ee_middleware import record_experience
from ee_middleware.capture.redaction import NEW_KEY_ENV, SALT_BYTES, SALT_FILE, store_salt
from ee_middleware.capture.store_redaction import REDACTION_FILE, read_store_redaction, store_redactor
from ee_middleware.errors import ConfigError
from ee_middleware.scripted import ScriptedChatModel
from ee_middleware.store import LocalExperienceStore

CUSTOMER = "CUST-1234"


def _record(store: Path, tag: str, **settings: Any) -> LocalExperienceStore:
    """Record one run of a small agent into ``store`` through the public API; the store, opened."""
    from langchain.agents import create_agent

    model = ScriptedChatModel(script=[AIMessage(content=f"Done for {tag}.")])
    agent = record_experience(
        create_agent(model, []), app="shop", store=str(store), redaction_patterns={"customer": r"CUST-\d{4}"}, **settings
    )
    agent.invoke({"messages": [("user", f"I am {CUSTOMER} ({tag})")]}, {"configurable": {"thread_id": tag}})
    assert agent.flush()
    return LocalExperienceStore(store)


def _tags(store: LocalExperienceStore) -> set[str]:
    """The pseudonym tags of CUSTOMER in the stored runs' tasks."""
    return {t.task.split("I am ")[1].split(" (")[0] for t in store.iter_trajectories()}


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(NEW_KEY_ENV, raising=False)
    store = tmp_path / "experience"
    _record(store, "first")
    assert len(bytes.fromhex((store / SALT_FILE).read_text())) == SALT_BYTES  # what a new store makes, as before
    return store


# --- redaction.key ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"not-hex\n", "not all hex digits"),
        (b"ab\n", "holds a key of 1 byte(s), shorter than the 8 ee reads (it makes 32)"),
        (b"00" * 4 + b"\n", "holds a key of 4 byte(s)"),
    ],
)
def test_a_damaged_key_is_refused_by_recording_and_reading_naming_the_file_and_the_fix(recorded: Path, content: bytes, said: str) -> None:
    key = recorded / SALT_FILE
    key.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        _record(recorded, "second")
    message = str(refused.value)
    assert str(key) in message and said in message, message
    assert "Restore the file from a backup of the store" in message and f"{NEW_KEY_ENV}=1" in message
    assert "another tag than in the stored runs" in message  # what deleting it costs
    assert len(content.strip()) < 4 or content.strip().decode() not in message  # (a key is a secret: not shown)
    store = LocalExperienceStore(recorded)
    for read in (lambda: store_salt(store), lambda: store_redactor(store), lambda: store_redactor(store, create_salt=False)):
        with pytest.raises(ConfigError, match="Restore the file from a backup"):
            read()
    assert [t.thread_id for t in store.iter_trajectories()] == ["first"]  # nothing recorded with the damaged key


def test_an_empty_key_no_longer_makes_tags_anyone_can_recompute(recorded: Path) -> None:
    (recorded / SALT_FILE).write_bytes(b"")
    unkeyed = hmac.new(b"", CUSTOMER.encode(), hashlib.sha256).hexdigest()[:8]
    with pytest.raises(ConfigError):
        _record(recorded, "second")
    assert not any(unkeyed in tag for tag in _tags(LocalExperienceStore(recorded)))


def test_a_missing_key_of_a_store_holding_runs_is_not_made_anew_silently(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [before] = _tags(LocalExperienceStore(recorded))
    (recorded / SALT_FILE).unlink()
    with pytest.raises(ConfigError) as refused:
        _record(recorded, "second")
    message = str(refused.value)
    assert f"{recorded / SALT_FILE} is missing" in message and "already holds runs" in message, message
    assert "Restore the file from a backup of the store" in message and f"set {NEW_KEY_ENV}=1" in message
    assert not (recorded / SALT_FILE).exists()
    with pytest.raises(ConfigError, match="is missing"):
        store_redactor(LocalExperienceStore(recorded))  # replay, datasets: the same refusal
    assert store_redactor(LocalExperienceStore(recorded), create_salt=False).salt is None  # exports make no key, as before

    monkeypatch.setenv(NEW_KEY_ENV, "1")  # new pseudonyms, asked for
    store = _record(recorded, "second")
    assert len(bytes.fromhex((recorded / SALT_FILE).read_text())) == SALT_BYTES
    assert len(_tags(store)) == 2 and before in _tags(store)  # the same value, another tag from now on: as asked
    monkeypatch.delenv(NEW_KEY_ENV)
    _record(recorded, "third")  # the new key is the store's now
    assert len(_tags(LocalExperienceStore(recorded))) == 2


def test_a_store_whose_runs_hold_no_tags_gets_a_key_when_pseudonyms_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NEW_KEY_ENV, raising=False)
    store = tmp_path / "experience"
    _record(store, "plain", redaction_pseudonyms=False)
    assert not (store / SALT_FILE).exists()
    _record(store, "tagged")  # no tags to keep consistent: a key is made, as before
    assert len(bytes.fromhex((store / SALT_FILE).read_text())) == SALT_BYTES


# --- redaction.json --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda rules: rules.update(patterns=[r"CUST-\d+"]), "rules.patterns must be an object of regular expressions by kind"),
        (lambda rules: rules.update(kinds=["phone"]), "rules.kinds must be an object of built-in kinds switched on or off"),
        (lambda rules: rules["patterns"].update(customer=5), "rules.patterns.customer must be a regular expression (a string), got 5"),
        (lambda rules: rules["patterns"].update(customer=r"CUST-(\d{4"), "rules.patterns.customer: Redaction pattern"),
        (lambda rules: rules.update(kinds={"telephone": False}), "rules.kinds.telephone: unknown redaction kind 'telephone'"),
        (lambda rules: rules.update(kinds={"phone": "no"}), "rules.kinds.phone must be true or false, got 'no'"),
        (lambda rules: rules.update(defaults="false"), "rules.defaults must be true or false"),
    ],
)
def test_a_wrong_field_in_redaction_json_is_named_with_the_file(recorded: Path, change: Any, said: str) -> None:
    path = recorded / REDACTION_FILE
    data = json.loads(path.read_text())
    change(data["rules"])
    path.write_text(json.dumps(data, indent=2) + "\n")
    store = LocalExperienceStore(recorded)
    for read in (lambda: read_store_redaction(store), lambda: store_redactor(store), lambda: _record(recorded, "second")):
        with pytest.raises(ConfigError) as refused:
            read()
        message = str(refused.value)
        assert message.startswith(f"{path}: ") and said in message, message
        assert "restore the file from a backup of the store" in message


def test_a_wrong_top_level_field_in_redaction_json_is_named_with_the_file(recorded: Path) -> None:
    path = recorded / REDACTION_FILE
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "vault": 7}))
    with pytest.raises(ConfigError, match=r"redaction\.json: vault must be the redaction vault's path, or null, got 7"):
        read_store_redaction(LocalExperienceStore(recorded))
    path.write_text(json.dumps({**data, "pseudonyms": "no"}))
    with pytest.raises(ConfigError, match=r"redaction\.json: pseudonyms must be true or false, got 'no'"):
        read_store_redaction(LocalExperienceStore(recorded))


def test_a_store_written_without_tags_gets_a_key_when_rules_are_recorded_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.capture.redaction import RedactionRules
    from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
    from ee_middleware.testing.store_conformance import sample_trajectory

    monkeypatch.delenv(NEW_KEY_ENV, raising=False)
    store = LocalExperienceStore(tmp_path / "experience")
    store.write([sample_trajectory("t1")])  # runs written through the API, no pseudonyms in them
    record_store_redaction(store, StoreRedaction(rules=RedactionRules(patterns={"ticket": r"TCK-\d+"})))
    assert len(store_salt(store)) == SALT_BYTES  # nothing to keep consistent with: made, as before


def test_a_key_another_writer_made_while_this_one_looked_is_used_not_refused(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review R16: a writer that read no key, then found the other writer's tagged runs while checking the store, refused
    with 'redaction.key is missing' though that writer had made the key meanwhile."""
    import ee_middleware.store.metadata as metadata

    real, first = metadata.read_meta, [True]

    def read_meta(store: Any, name: str) -> bytes | None:
        if name == SALT_FILE and first[0]:  # read a moment before the other writer made it
            first[0] = False
            return None
        return real(store, name)

    monkeypatch.setattr(metadata, "read_meta", read_meta)
    monkeypatch.delenv(NEW_KEY_ENV, raising=False)
    assert store_salt(LocalExperienceStore(recorded)) == bytes.fromhex((recorded / SALT_FILE).read_text().strip())


def test_a_short_key_an_earlier_ingest_kept_is_still_read(recorded: Path) -> None:
    """Review R16: ingest kept a caller's salt as it was before it refused short ones (Redactor's own example has 10
    bytes); such a store was refused on every read, with no fix that keeps its tags."""
    (recorded / SALT_FILE).write_text(b"store-salt".hex() + "\n")
    assert store_salt(LocalExperienceStore(recorded)) == b"store-salt"


@pytest.mark.parametrize("given", ["file", "keyword"])
def test_an_invalid_pattern_is_refused_before_a_store_keeps_it(recorded: Path, tmp_path: Path, given: str) -> None:
    """A pattern that is no regex was accepted by the capture config and written into the store's redaction.json, which
    every later reader of the store then refused, with the store to blame and no way out by correcting the config (a
    CLI/config sweep). It is refused where it is given, naming it there; the store is left as it was."""
    from langchain.agents import create_agent

    from ee_middleware.capture.config import CaptureConfig

    kept = (recorded / REDACTION_FILE).read_bytes()
    config = tmp_path / "capture.toml"
    config.write_text(f'[capture]\napp = "shop"\nstore = "{recorded}"\n[capture.redaction_patterns]\nticket = "TICKET-(\\\\d+"\n')
    graph = create_agent(ScriptedChatModel(script=[AIMessage(content="Done.")]), [])
    with pytest.raises(ConfigError, match=r"'TICKET-\(\\\\d\+' for kind 'ticket' is not a valid regex") as raised:
        if given == "file":
            CaptureConfig.load(config)
        else:
            record_experience(graph, app="shop", store=str(recorded), redaction_patterns={"ticket": "TICKET-(\\d+"})
    if given == "file":
        assert f"[capture.redaction_patterns] of {config}" in str(raised.value)
    with pytest.raises(ConfigError, match="not a valid regex"):
        record_experience(graph, config=str(config))
    assert (recorded / REDACTION_FILE).read_bytes() == kept
    assert len(list(LocalExperienceStore(recorded).iter_trajectories())) == 1, "the store reads as before"
