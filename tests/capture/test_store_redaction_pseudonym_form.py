"""The pseudonym form is a property of the store, kept in its redaction.json (``pseudonym_form``).

Defect: 17f4b2e made pseudonyms canonical for every writer, while a store recorded before holds the tags of each value
as written (a spaced card, a dashed SSN or phone number, a spaced or lower-case IBAN, a mixed-case e-mail address).
On such a store, replay re-redacted the sandbox's observations with the new tags and counted every one holding such a
value as a fidelity mismatch, dataset builds dropped a call whose value the prompt showed under its old tag, and
capture appended runs giving those values another tag than the store's older runs. Now a redaction.json without the
field (every older ee-middleware's) reads as ``as_written``, and every writer of that store keeps the old tags; a store
made from now on records ``canonical`` (version 4, which an older ee-middleware refuses rather than append runs with
other tags)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.redaction import RedactionRules, Redactor, canonical_form
from ee_middleware.capture.store_redaction import (
    REDACTION_FILE,
    StoreRedaction,
    read_store_redaction,
    record_store_redaction,
    store_redactor,
)
from ee_middleware.errors import ConfigError
from ee_middleware.records import ToolCall
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.privacy import guard_rows
from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA, conform
from tests.capture.test_offload import no_child_left  # noqa: F401 - a fixture: no capture process is left behind

SALT_HEX = "5e" * 32
SALT = bytes.fromhex(SALT_HEX)
EMAIL = "Jane.Doe@Gmail.com"
CARD = "4111 1111 1111 1111"
PHONE = "415-555-0134"


def tag(text: str) -> str:
    """HMAC-SHA256 over ``text`` with the store's salt, first 8 hex digits: how every pseudonym's tag is made."""
    return hmac.new(SALT, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:8]


def as_written(kind: str, value: str) -> str:
    """The placeholder an ee-middleware from before canonical pseudonyms made: the tag of the value as written."""
    return f"[REDACTED:{kind}:{tag(value)}]"


def canonical(kind: str, value: str) -> str:
    return f"[REDACTED:{kind}:{tag(canonical_form(kind, value))}]"


def recorded_before(text: str) -> str:
    """``text`` as an ee-middleware from before canonical pseudonyms redacted it with the store's salt: every value the
    rules find replaced by the placeholder of its tag as written."""
    seen: list[tuple[str, object]] = []
    redacted = Redactor(salt=SALT, on_replace=lambda placeholder, value: seen.append((placeholder, value))).redact_text(text)
    for placeholder, value in seen:
        redacted = redacted.replace(placeholder, as_written(placeholder.split(":")[1], str(value)))
    return redacted


def old_store(path: Path) -> LocalExperienceStore:
    """A store as an ee-middleware from before this field left it: redaction.json exactly as that version wrote it
    (json.dumps(..., indent=2) of these keys, version 1), and its salt."""
    LocalExperienceStore(path).close()
    old = {
        "format": "ee-redaction",
        "version": 1,
        "rules": {"defaults": True, "kinds": {}, "patterns": {}},
        "pseudonyms": True,
        "vault": None,
        "custom_function": None,
    }
    (path / REDACTION_FILE).write_text(json.dumps(old, indent=2) + "\n")
    (path / "redaction.key").write_text(SALT_HEX + "\n")
    return LocalExperienceStore(path)


def new_store(path: Path) -> LocalExperienceStore:
    """A new store whose salt is fixed (so that its tags can be computed here)."""
    LocalExperienceStore(path).close()
    (path / "redaction.key").write_text(SALT_HEX + "\n")
    return LocalExperienceStore(path)


@tool
def find_customer(email: str, card: str) -> str:
    """Find a customer by e-mail and card."""
    return json.dumps({"id": "CU-1001", "phone": PHONE})


def _record(path: Path, offload: str = "thread") -> None:
    """A real agent (create_agent over a scripted model) recorded into ``path``: the user gives an e-mail address and a
    card number, the model calls the tool with them as written, the tool answers with a phone number."""
    script = [
        AIMessage(content="", tool_calls=[tool_call("find_customer", email=EMAIL, card=CARD)]),
        AIMessage(content="Found you."),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [find_customer]), app="shop", store=path, offload=offload)
    agent.invoke({"messages": [("user", f"I'm {EMAIL}, my card is {CARD}. Find me.")]})
    assert agent.flush()
    stats = agent.recorder.stats
    agent.recorder.close()
    if offload == "process":
        assert stats.offload_start_failures == 0 and stats.runs_not_offloaded == 0, "the capture process recorded the run"


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_capture_appends_runs_to_an_old_store_with_the_tags_its_older_runs_have(
    store_path: Path,
    offload: str,
    no_child_left: None,  # noqa: F811
) -> None:
    old_store(store_path)
    _record(store_path, offload)
    [trajectory] = list(LocalExperienceStore(store_path).iter_trajectories())
    email, card = as_written("email", EMAIL), as_written("credit_card", CARD)
    assert email in trajectory.task and card in trajectory.task, trajectory.task
    assert trajectory.steps[0].action.tool_call.arguments == {"email": email, "card": card}
    assert as_written("phone", PHONE) in trajectory.steps[0].observation.content
    kept = json.loads((store_path / REDACTION_FILE).read_text())
    assert kept["version"] == 1 and kept.get("pseudonym_form", "as_written") == "as_written", kept
    assert read_store_redaction(LocalExperienceStore(store_path), tagged_before=True).pseudonym_form == "as_written"


def test_a_new_store_records_canonical_pseudonyms_and_its_writers_make_them(store_path: Path) -> None:
    store = new_store(store_path)
    _record(store_path)
    [trajectory] = list(store.iter_trajectories())
    assert canonical("email", EMAIL) in trajectory.task and canonical("credit_card", CARD) in trajectory.task
    assert canonical("phone", PHONE) in trajectory.steps[0].observation.content
    kept = json.loads((store_path / REDACTION_FILE).read_text())
    assert kept["pseudonym_form"] == "canonical" and kept["version"] == 4
    assert store_redactor(store).redact_text(EMAIL) == canonical("email", EMAIL)
    assert ReplayPrivacy.of_store(store).redact_data(CARD) == canonical("credit_card", CARD)


def test_every_later_writer_of_an_old_store_makes_the_tags_as_written(store_path: Path) -> None:
    store = old_store(store_path)
    text = f"{EMAIL} {CARD} {PHONE} SSN 123-45-6789 IBAN de89 3704 0044 0532 0130 00"
    expected = (
        f"{as_written('email', EMAIL)} {as_written('credit_card', CARD)} {as_written('phone', PHONE)} "
        f"SSN {as_written('us_ssn', '123-45-6789')} IBAN {as_written('iban', 'de89 3704 0044 0532 0130 00')}"
    )
    assert store_redactor(store).redact_text(text) == expected  # replay records, datasets, approvals, ingest
    assert store_redactor(store, create_salt=False).redact_text(text) == expected  # exports, traces show, dataset builds
    assert ReplayPrivacy.of_store(store).redact_data(text) == expected  # replay's observations and proposed arguments


def test_replay_of_an_old_store_counts_no_fidelity_mismatch_for_a_dashed_phone_number(store_path: Path) -> None:
    """The profile the sandbox answers holds 415-555-0134: recorded with its tag as written, re-redacted alike now."""
    from tests.replay.test_privacy import _replay, _trajectory

    store = old_store(store_path)
    assert recorded_before(PHONE) == as_written("phone", PHONE)
    trajectory = _trajectory(SimpleNamespace(redact_text=recorded_before))  # as the older ee recorded it
    outcome = _replay(store, trajectory, [ToolCall(id="a", name="profile", arguments={"user_id": "bob_2"})])
    assert outcome.record.fidelity_mismatches == 0, outcome.record.details


def test_a_dataset_row_of_an_old_store_keeps_a_call_whose_value_the_prompt_showed(store_path: Path) -> None:
    """The prompt holds the address under the tag an older ee recorded; the call holds it as written (a store whose
    writer left it): the build redacts it with the store's redactor and finds it in the prompt."""
    store = old_store(store_path)
    prompt = json.dumps([{"role": "user", "content": f"I'm {as_written('email', EMAIL)}"}])
    call = {"id": "c", "type": "function", "function": {"name": "find_customer", "arguments": json.dumps({"email": EMAIL})}}
    row = {
        "id": "r1",
        "kind": "il",
        "prompt": prompt,
        "completion": json.dumps([{"role": "assistant", "content": "", "tool_calls": [call]}]),
    }
    frame = conform(pl.DataFrame([row], schema={k: DATASET_SCHEMA[k] for k in row}))
    kept, counts = guard_rows("il", frame, store_redactor(store, create_salt=False))  # as build_datasets does
    assert counts == {"rows_with_placeholders_seen_in_prompt": 1} and kept.height == 1


def test_the_union_keeps_as_written_and_an_old_file_stays_readable_by_older_versions(store_path: Path) -> None:
    legacy = StoreRedaction(rules=RedactionRules(canonical_pseudonyms=False))
    new = StoreRedaction(rules=RedactionRules(kinds={"ip_address": True}, patterns={"ticket": r"TCK-\d+"}))
    for merged in (legacy.union(new), new.union(legacy)):
        assert merged.pseudonym_form == "as_written" and "ip_address" in merged.rules.enabled_kinds()
        assert merged.rules.patterns == {"ticket": r"TCK-\d+"}
    assert new.union(new).pseudonym_form == "canonical" and legacy.union(legacy).pseudonym_form == "as_written"
    assert StoreRedaction.from_dict(legacy.to_dict()) == legacy and StoreRedaction.from_dict(new.to_dict()) == new

    store = old_store(store_path)
    before = (store_path / REDACTION_FILE).read_bytes()
    assert record_store_redaction(store, StoreRedaction()).pseudonym_form == "as_written"
    assert (store_path / REDACTION_FILE).read_bytes() == before, "nothing new to keep: the older version's file is left"
    record_store_redaction(store, new)  # a writer with more rules: the file is written again, still as written
    kept = json.loads((store_path / REDACTION_FILE).read_text())
    assert kept["pseudonym_form"] == "as_written" and kept["version"] == 1 and kept["rules"]["patterns"] == {"ticket": r"TCK-\d+"}
    assert "canonical_pseudonyms" not in kept["rules"]
    assert store_redactor(store).redact_text(EMAIL) == as_written("email", EMAIL)


def test_a_canonical_file_is_a_version_older_readers_refuse_and_a_wrong_form_is_refused(tmp_path: Path) -> None:
    data = StoreRedaction().to_dict()
    assert data["version"] == 4 > 3, "ee-middleware up to this field read versions up to 3 and refuses a newer one"
    assert StoreRedaction(rules=RedactionRules(keys=frozenset({"dob"}), canonical_pseudonyms=False)).to_dict()["version"] == 3
    with pytest.raises(ConfigError, match="pseudonym_form"):
        StoreRedaction.from_dict({**data, "pseudonym_form": "lower"})
    with pytest.raises(ConfigError, match="written by a newer ee-middleware"):
        StoreRedaction.from_dict({**data, "version": 5})


def test_ee_store_info_shows_the_pseudonym_form(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    def ee(*args: str):
        return CliRunner().invoke(app, list(args))

    old_store(tmp_path / "old")
    new = new_store(tmp_path / "new")
    record_store_redaction(new, StoreRedaction())
    off = new_store(tmp_path / "off")
    record_store_redaction(off, StoreRedaction(pseudonyms=False))
    for name, form in (("old", "as_written"), ("new", "canonical"), ("off", "off")):
        result = ee("store", "info", "--store", str(tmp_path / name), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["pseudonyms"] == form
    shown = ee("store", "info", "--store", str(tmp_path / "old"))
    assert "as written" in " ".join(shown.stdout.split()), shown.stdout


def _store_from_before_redaction_json(path: Path, task: str) -> None:
    """A store as an ee-middleware from before ``redaction.json`` existed left it: a run (its task ``task``), the
    pseudonym key, and no settings file."""
    agent = record_experience(create_agent(ScriptedChatModel(script=[AIMessage(content="ok")]), []), app="shop", store=path, redact=False)
    agent.invoke({"messages": [("user", task)]})
    assert agent.flush()
    agent.recorder.close()
    (path / REDACTION_FILE).unlink()
    (path / "redaction.key").write_text(SALT_HEX + "\n")


def test_a_store_tagged_before_redaction_json_existed_keeps_its_tags_as_written(store_path: Path) -> None:
    """A store whose runs an ee-middleware from before ``redaction.json`` tagged (its tags are of values as written,
    its key beside them, no settings file): the first recorder of this version wrote the file as canonical, so the same
    e-mail address got a second tag in the new runs, and readers (replay, datasets) re-redacted with canonical tags.
    Now it reads as ``as_written``, and the file it gets says so."""
    _store_from_before_redaction_json(store_path, f"I'm {as_written('email', EMAIL)}, buy apples.")
    assert read_store_redaction(LocalExperienceStore(store_path), tagged_before=True).pseudonym_form == "as_written"
    _record(store_path)
    assert json.loads((store_path / REDACTION_FILE).read_text())["pseudonym_form"] == "as_written"
    recorded = [t.task for t in LocalExperienceStore(store_path).iter_trajectories()]
    assert all(as_written("email", EMAIL) in task for task in recorded), recorded


def test_a_store_with_a_key_but_no_tagged_runs_and_no_redaction_json_gets_canonical_tags(store_path: Path) -> None:
    """A key made for a store whose runs hold no tags (replay makes one for an expert store recorded without
    redaction): nothing decides the form there, so it is canonical, as for any new store."""
    _store_from_before_redaction_json(store_path, "Buy apples.")
    assert read_store_redaction(LocalExperienceStore(store_path), tagged_before=True).pseudonym_form == "canonical"
    _record(store_path)
    assert json.loads((store_path / REDACTION_FILE).read_text())["pseudonym_form"] == "canonical"
    tasks = [t.task for t in LocalExperienceStore(store_path).iter_trajectories()]
    assert any(canonical("email", EMAIL) in task for task in tasks), tasks
