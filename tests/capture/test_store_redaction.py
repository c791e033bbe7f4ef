"""The redaction rules kept with a store (redaction.json) and the opt-in redaction vault, written by
capture of a real LangGraph agent (the retail example) and by OTLP ingest."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from ee_middleware.capture.redaction import PLACEHOLDER, RedactionRules, Redactor, store_salt
from ee_middleware.capture.store_redaction import (
    REDACTION_FILE,
    VERSION,
    StoreRedaction,
    read_store_redaction,
    record_store_redaction,
    store_redactor,
)
from ee_middleware.capture.vault import AMBIGUOUS, KEY_ENV, Vault, new_key
from ee_middleware.errors import ConfigError
from ee_middleware.store import LocalExperienceStore
from tests.capture.redaction_capture import files_text
from tests.examples.conftest import EXAMPLES

assert EXAMPLES.is_dir()  # importing it put examples/ on sys.path: the retail agent is a real LangGraph graph

EMAIL = re.compile(r"[\w.+-]+@example\.com")


def _one_task(prefix: str) -> list:
    from retail_db.agent import make_tasks

    return [next(t for t in make_tasks() if t.user.startswith(prefix))]


def record_experts(*args, **kwargs):
    from retail_db.agent import record_experts

    return record_experts(*args, **kwargs)


def test_capture_keeps_its_rules_with_the_store_and_later_writers_make_the_same_pseudonyms(tmp_path: Path) -> None:
    task = _one_task("Hi, I'm")
    store = tmp_path / "experience"
    record_experts(store, tmp_path, tasks=task, redaction_kinds={"ip_address": True}, redaction_patterns={"order": r"#W\d{7}"})
    saved = json.loads((store / REDACTION_FILE).read_text())
    assert saved["rules"]["kinds"] == {"ip_address": True} and saved["rules"]["patterns"] == {"order": r"#W\d{7}"}
    assert saved["pseudonyms"] is True and saved["vault"] is None
    opened = LocalExperienceStore(store)
    [trajectory] = opened.iter_trajectories()
    email = EMAIL.search(task[0].user).group(0)
    redactor = store_redactor(opened)
    assert "ip_address" in redactor.rules.enabled_kinds() and redactor.salt == store_salt(opened)
    # the same value gets the same pseudonym from a later writer as it got from capture
    assert redactor.redact_text(email) in trajectory.task
    assert redactor.redact_text("order #W1234567").startswith("order [REDACTED:order:")


def test_a_second_recorder_with_other_rules_leaves_the_union(tmp_path: Path) -> None:
    store = tmp_path / "experience"
    record_experts(store, tmp_path, tasks=_one_task("Hi, I'm"), redaction_kinds={"phone": False}, redaction_patterns={"t": "TCK-1"})
    record_experts(store, tmp_path, tasks=_one_task("Hi, I'm"), redaction_kinds={"ip_address": True}, redaction_patterns={"t": "TCK-2"})
    settings = read_store_redaction(LocalExperienceStore(store))
    kinds = settings.rules.enabled_kinds()
    assert "phone" in kinds and "ip_address" in kinds, "a kind either recorder redacts stays redacted"
    assert settings.rules.patterns == {"t": "TCK-1", "t_2": "TCK-2"}


def test_a_store_without_the_file_gets_the_defaults_and_recording_nothing_keeps_nothing(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "s")
    assert read_store_redaction(store) == StoreRedaction(recorded=False)
    assert "email" in store_redactor(store).rules.enabled_kinds()
    record_experts(tmp_path / "plain", tmp_path, tasks=_one_task("Hi, I'm"), redact=False)
    assert not store_redactor(LocalExperienceStore(tmp_path / "plain")).enabled, "redact=False is recorded: later writers change nothing"


def test_the_vault_maps_every_pseudonym_in_the_store_to_its_value_and_stays_out_of_the_store(tmp_path: Path) -> None:
    task = _one_task("Please cancel order")
    store = tmp_path / "experience"
    record_experts(store, tmp_path, tasks=task, vault=True)
    vault_path = tmp_path / "experience.vault"
    assert json.loads((store / REDACTION_FILE).read_text())["vault"] == str(vault_path)
    assert stat.S_IMODE(vault_path.stat().st_mode) == 0o600
    vault = Vault(vault_path)
    [trajectory] = LocalExperienceStore(store).iter_trajectories()
    placeholders = set(PLACEHOLDER.findall(json.dumps(trajectory.model_dump(mode="json"))))
    assert placeholders and all(vault.lookup(p) for p in placeholders)
    phone = re.search(r"\d{3}-555-\d{4}", task[0].user).group(0)
    assert phone in {vault.lookup(p) for p in placeholders}
    assert phone not in files_text(store), "the real value is only in the vault"


def test_an_encrypted_vault_holds_no_plain_value_and_refuses_a_wrong_or_missing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    monkeypatch.setenv(KEY_ENV, key)
    task = _one_task("Please cancel order")
    record_experts(tmp_path / "experience", tmp_path, tasks=task, vault=str(tmp_path / "keys" / "v.jsonl"))
    path = tmp_path / "keys" / "v.jsonl"
    phone = re.search(r"\d{3}-555-\d{4}", task[0].user).group(0)
    assert phone not in path.read_text() and json.loads(path.read_text().splitlines()[0])["encryption"] == "fernet"
    assert phone in {Vault(path).lookup(p) for p in Vault(path)._values}
    monkeypatch.setenv(KEY_ENV, new_key())
    with pytest.raises(ConfigError, match="not the key"):
        Vault(path)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=f"set {KEY_ENV}"):
        Vault(path)


def test_a_vault_others_can_read_is_refused_and_ambiguous_tags_are_not_restored(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v", create=True)
    vault.add("[REDACTED:email:00000000]", "a@example.com")
    vault.add("[REDACTED:email:00000000]", "b@example.com")
    vault.add("[REDACTED:phone:11111111]", "415-555-0100")
    vault.close()
    reread = Vault(tmp_path / "v")
    assert reread.lookup("[REDACTED:email:00000000]") is AMBIGUOUS
    assert reread.lookup("[REDACTED:phone:11111111]") == "415-555-0100"
    os.chmod(tmp_path / "v", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Vault(tmp_path / "v")
    with pytest.raises(ConfigError, match="No redaction vault"):
        Vault(tmp_path / "missing")


def test_a_vault_needs_pseudonyms(tmp_path: Path) -> None:
    from ee_middleware.capture.config import CaptureConfig

    with pytest.raises(ConfigError, match="redaction_pseudonyms"):
        CaptureConfig(vault=True, redaction_pseudonyms=False)


def test_ingest_records_the_rules_it_redacts_with(tmp_path: Path) -> None:
    from ee_middleware.ingest.service import ingest_files
    from tests.ingest.otlp_builders import GENAI_FILE, _request, _write

    store = LocalExperienceStore(tmp_path / "s")
    ingest_files([tmp_path / "missing.json"], store)
    assert not read_store_redaction(store).recorded, "an ingest that found no run leaves the store as it was"
    spans = _write(tmp_path / "t.jsonl", _request(GENAI_FILE))
    ingest_files([spans], store)
    assert read_store_redaction(store).recorded and store_redactor(store).salt == store_salt(store)
    ingest_files([spans], store, redactor=Redactor(RedactionRules(kinds={"ip_address": True})))
    assert "ip_address" in read_store_redaction(store).rules.enabled_kinds()
    record_store_redaction(store, StoreRedaction(vault=str(tmp_path / "a.vault")))
    with pytest.raises(ConfigError, match="one vault per store"):
        record_store_redaction(store, StoreRedaction(vault=str(tmp_path / "b.vault")))


def test_encryption_without_cryptography_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from ee_middleware.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # as if the package were not installed
    monkeypatch.setenv(KEY_ENV, "any")
    with pytest.raises(MissingExtraError, match=r"ee-middleware\[vault\]"):
        Vault(tmp_path / "v", create=True)


CODENAME = "Project Nightjar"


def hide_codename(text: str) -> str:
    """The app's own ``redact_fn`` (module level, so later writers can import it): no built-in rule knows the codename."""
    return text.replace(CODENAME, "[codename]")


def _replay_holding(value: str) -> tuple[object, list[object]]:
    """A replay record and rollout whose sandbox answer and fidelity diff quote ``value``, as replay writes them."""
    from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall

    rollout = Rollout(
        id="r-0", replay_id="r", trajectory_id="t1", step_index=0, branch_index=0,
        action=Action(kind="tool_call", tool_call=ToolCall(id="a", name="check_stock", arguments={"item": value})),
        proposer=ProposerInfo(policy="mutate"), observation=Observation(content=f"no stock for {value}"), sandbox="s", duration_ms=1.0,
    )  # fmt: skip
    record = ReplayRecord(
        replay_id="r", trajectory_id="t1", status="done", reason=f"mismatch on {value}", policy="mutate", sandbox="s", k=1, seed=0,
        details={"fidelity_mismatches": [{"recorded": "[codename]", "replayed": value}]},
    )  # fmt: skip
    return record, [rollout]


def test_later_writers_apply_the_redact_fn_capture_applied(react_graph, store_path: Path) -> None:
    """Defect: capture ran ``redact_fn``, but redaction.json kept only its name and every later writer (replay records,
    datasets, exports) applied the built-in rules alone, so a replay record stored the value in plain text."""
    from ee_middleware import record_experience
    from tests.conftest import record_once

    task = {"messages": [("user", f"Do we have pears for {CODENAME}? If not, order 5.")]}
    trajectory = record_once(record_experience(react_graph, app="shop", store=store_path, redact_fn=hide_codename), store_path, task)
    assert CODENAME not in trajectory.task and "[codename]" in trajectory.task
    store = LocalExperienceStore(store_path)
    assert read_store_redaction(store).custom_function == f"{__name__}.hide_codename"
    assert store_redactor(store, create_salt=False).redact_text(f"for {CODENAME}") == "for [codename]"
    store.write_replay(*_replay_holding(CODENAME))
    store.close()
    assert CODENAME not in files_text(store_path), "the replay record and rollout were written with the redact_fn"


def test_a_redact_fn_that_cannot_be_imported_stops_later_writers_naming_it(
    react_graph, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lambda (or a function of a script run as __main__) cannot be imported by a later writer: it must not be dropped
    silently (the value it removed would be written in plain text), so writing fails, naming it and the fix."""
    monkeypatch.setenv("EE_TRUSTED_REDACT_FNS", "*")  # the names the store records are trusted (the refusal: test_store_redaction_trust.py)
    from ee_middleware import record_experience
    from tests.conftest import USER_TASK, record_once

    record_once(record_experience(react_graph, app="shop", store=store_path, redact_fn=hide_codename), store_path, USER_TASK)
    # a lambda's name, as an ee-middleware that still accepted one at capture recorded it (a recorder now refuses it)
    recorded = json.loads((store_path / REDACTION_FILE).read_text())
    (store_path / REDACTION_FILE).write_text(json.dumps({**recorded, "custom_function": f"{__name__}.<lambda>"}))
    store = LocalExperienceStore(store_path)
    with pytest.raises(ConfigError, match=rf"redact_fn={__name__}\..*<lambda>.*cannot be imported.*module level"):
        store.write_replay(*_replay_holding(CODENAME))
    store.close()
    assert CODENAME not in files_text(store_path)
    settings = json.loads((store_path / REDACTION_FILE).read_text())
    (store_path / REDACTION_FILE).write_text(json.dumps({**settings, "custom_function": "no_such_module_here.scrub"}))
    with pytest.raises(ConfigError, match=r"redact_fn=no_such_module_here\.scrub.*No module named 'no_such_module_here'.*PYTHONPATH"):
        store_redactor(store)


OTHER_CODENAME = "Project Kestrel"


def hide_other_codename(text: str) -> str:
    """The second app's own ``redact_fn``: it knows a codename the first app's does not."""
    return text.replace(OTHER_CODENAME, "[other codename]")


def test_apps_sharing_a_store_with_different_redact_fns_have_every_one_applied_by_later_writers(store_path: Path, tools: list) -> None:
    """Defect (deploy sweep 5): two services (two real LangGraph agents) record into one store, each with its own
    redact_fn. redaction.json kept only the first one's name, so replay, datasets, exports and ingest never applied the
    second's: a replay record of the second app stored its codename in plain text. Both are kept and both applied."""
    from langgraph.prebuilt import create_react_agent

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel
    from tests.conftest import EXPERT_SCRIPT

    def agent(app: str, redact_fn):
        graph = create_react_agent(ScriptedChatModel(script=list(EXPERT_SCRIPT), model_name="scripted-expert"), tools)
        return record_experience(graph, app=app, store=store_path, redact_fn=redact_fn)

    billing, shipping = agent("billing", hide_codename), agent("shipping", hide_other_codename)
    again = agent("billing", hide_codename)  # a second worker of the first app changes nothing
    for recorded, name in ((billing, CODENAME), (shipping, OTHER_CODENAME)):
        recorded.invoke({"messages": [("user", f"Do we have pears for {name}? If not, order 5.")]})
        recorded.flush()
    for recorded in (billing, shipping, again):
        recorded.recorder.close()
    saved = json.loads((store_path / REDACTION_FILE).read_text())
    assert saved["custom_function"] == [f"{__name__}.hide_codename", f"{__name__}.hide_other_codename"]
    store = LocalExperienceStore(store_path)
    assert sorted(store.trajectories()["app"].to_list()) == ["billing", "shipping"]
    both = store_redactor(store, create_salt=False).redact_text(f"{CODENAME} and {OTHER_CODENAME}")
    assert both == "[codename] and [other codename]"
    store.write_replay(*_replay_holding(OTHER_CODENAME))
    store.write_replay(*_replay_holding(CODENAME))
    store.close()
    text = files_text(store_path)
    assert CODENAME not in text and OTHER_CODENAME not in text, "replay records of either app were written with both"
    from ee_middleware.replay.privacy import ReplayPrivacy

    privacy = ReplayPrivacy.of_store(LocalExperienceStore(store_path))
    assert privacy.redact_data(f"{OTHER_CODENAME}, {CODENAME}") == "[other codename], [codename]", "replay workers too"


def test_a_store_recorded_with_one_redact_fn_before_keeps_loading_and_takes_a_second(store_path: Path) -> None:
    """A redaction.json written before several redact_fns were kept names one (a string) or none: it loads as it did,
    is rewritten unchanged by the same app, and becomes a list once a second app records with another one."""
    store = LocalExperienceStore(store_path)
    first = f"{__name__}.hide_codename"
    old = {"format": "ee-redaction", "version": 1, "rules": RedactionRules().to_dict(), "pseudonyms": True, "vault": None}
    (store_path / REDACTION_FILE).write_text(json.dumps({**old, "custom_function": first}))
    assert read_store_redaction(store).custom_function == first
    assert read_store_redaction(store).custom_functions == (first,)
    record_store_redaction(store, StoreRedaction(custom_function=first))
    assert json.loads((store_path / REDACTION_FILE).read_text())["custom_function"] == first
    merged = record_store_redaction(store, StoreRedaction(custom_function=f"{__name__}.hide_other_codename"))
    assert merged.custom_functions == (first, f"{__name__}.hide_other_codename")
    assert read_store_redaction(store) == merged
    (store_path / REDACTION_FILE).write_text(json.dumps({**old, "custom_function": 7}))
    with pytest.raises(ConfigError, match=r"custom_function must be .*got 7"):
        read_store_redaction(store)
    store.close()


def test_settings_with_several_redact_fns_say_so_and_a_newer_file_is_refused_clearly(tmp_path: Path) -> None:
    """Several redact_fns are written as version 2 (one or none stays version 1, as ever) in a store whose pseudonyms
    are as written (recorded before canonical ones; a canonical store is version 4); a redaction.json from a
    newer ee-middleware than this one is refused naming the file, not half-read (it may redact in ways this one
    cannot)."""
    one = StoreRedaction(rules=RedactionRules(canonical_pseudonyms=False), custom_function="scrub_a.scrub")
    several = one.union(StoreRedaction(custom_function="scrub_b.scrub"))
    assert one.to_dict()["version"] == 1
    assert several.to_dict()["version"] == 2
    assert StoreRedaction(custom_function=("scrub_a.scrub", "scrub_b.scrub")).to_dict()["version"] == 4
    assert StoreRedaction.from_dict(several.to_dict()).custom_functions == ("scrub_a.scrub", "scrub_b.scrub")
    newer = several.to_dict() | {"version": VERSION + 1}
    with pytest.raises(ConfigError, match=rf"version {VERSION + 1}: it was written by a newer ee-middleware.*Upgrade"):
        StoreRedaction.from_dict(newer, where=str(tmp_path / "redaction.json"))
