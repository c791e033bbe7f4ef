"""Redaction at the sandbox boundary: the vault's real values go in, observations come out redacted with
the store's own rules and salt, and what cannot be restored is flagged (a real PythonSandbox over a
small customer database; the store's redaction.json, salt and vault as capture writes them)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.capture.redaction import RedactionRules, Redactor, store_salt
from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
from ee_middleware.capture.vault import KEY_ENV, Vault, new_key
from ee_middleware.errors import ConfigError
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall, Trajectory
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox
from ee_middleware.store import LocalExperienceStore
from tests.replay.test_runner import _ScriptedPolicy

USERS = {"ann@example.com": "ann_1", "bob@example.com": "bob_2"}
PROFILES = {"ann_1": {"email": "ann@example.com", "phone": "415-555-0134"}, "bob_2": {"email": "bob@example.com", "phone": "212-555-0199"}}
TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {a: {"type": "string"}}, "required": [a]}}}
    for n, a in (("find_user", "email"), ("profile", "user_id"))
]


def _sandbox() -> PythonSandbox:
    def find_user(world: dict[str, Any], email: str) -> str:
        world["lookups"].append(email)
        return world["users"].get(email, "Error: user not found")

    def profile(world: dict[str, Any], user_id: str) -> str:
        return json.dumps(world["profiles"][user_id]) if user_id in world["profiles"] else "Error: no such user"

    return PythonSandbox(
        lambda env: {"users": dict(USERS), "profiles": PROFILES, "lookups": []},
        tools={"find_user": find_user, "profile": profile},
        is_error_result=lambda v: isinstance(v, str) and v.startswith("Error"),
    )


def _store(tmp_path: Path, *, vault: bool) -> tuple[LocalExperienceStore, Redactor]:
    """A store as capture leaves it: rules and salt (and the vault, when asked)."""
    store = LocalExperienceStore(tmp_path / "experience")
    settings = StoreRedaction(RedactionRules(), vault=str(tmp_path / "experience.vault") if vault else None)
    record_store_redaction(store, settings)
    opened = Vault(settings.vault, create=True) if vault else None
    redactor = Redactor(settings.rules, salt=store_salt(store), on_replace=opened.add if opened is not None else None)
    redactor.redact_text("ann@example.com bob@example.com 415-555-0134")
    if opened is not None:
        opened.close()
    return store, redactor


def _trajectory(redactor: Redactor) -> Trajectory:
    """The expert looks ann up by e-mail, then reads her profile (recorded redacted, as capture stores it)."""
    email = redactor.redact_text("ann@example.com")
    steps = [
        ("find_user", {"email": email}, "ann_1"),
        ("profile", {"user_id": "ann_1"}, redactor.redact_text(json.dumps(PROFILES["ann_1"]))),
    ]
    state = [{"role": "user", "content": f"I'm {email}, show my profile"}]
    return Trajectory.parse(
        {
            "id": "t1",
            "app": "crm",
            "tools": TOOLS,
            "started_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "ended_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "environment": {},
            "messages": state,
            "steps": [
                {
                    "trajectory_id": "t1",
                    "index": i,
                    "decision_index": i,
                    "state": state,
                    "action": {"kind": "tool_call", "tool_call": {"id": f"c{i}", "name": name, "arguments": args}},
                    "observation": {"content": observation},
                }
                for i, (name, args, observation) in enumerate(steps)
            ],
        }
    )


def _replay(store: LocalExperienceStore, trajectory: Trajectory, calls: list[ToolCall], sandbox: PythonSandbox | None = None) -> Any:
    settings = ReplaySettings(replay_id="r", policy="scripted", k=len(calls), privacy=ReplayPrivacy.of_store(store))
    return replay_trajectory(trajectory, sandbox or _sandbox(), Proposer(_ScriptedPolicy(calls), k=len(calls), refill=None), settings)


def test_with_the_vault_the_expert_path_gets_real_values_and_matches_the_redacted_recording(tmp_path: Path) -> None:
    store, redactor = _store(tmp_path, vault=True)
    trajectory = _trajectory(redactor)
    sandbox = _sandbox()
    ann, bob = redactor.redact_text("ann@example.com"), redactor.redact_text("bob@example.com")
    outcome = _replay(store, trajectory, [ToolCall(id="a", name="find_user", arguments={"email": bob})], sandbox)
    assert outcome.record.fidelity_mismatches == 0 and outcome.record.unrestorable == 0, outcome.record.details
    assert sandbox.world["lookups"][-1] == "ann@example.com", "the sandbox received the real value"
    alternatives = [r for r in outcome.rollouts if r.step_index == 0]
    assert alternatives[0].observation.content == "bob_2", "a proposed pseudonym is restored too"
    assert alternatives[0].action.tool_call.arguments == {"email": bob} and alternatives[0].unrestored == []
    # the profile alternative at step 1 shows bob's real e-mail in the sandbox: it is stored as the pseudonym
    assert ann in trajectory.steps[1].observation.content
    assert all("@example.com" not in r.observation.content and "555-" not in r.observation.content for r in outcome.rollouts)


def test_without_a_vault_steps_are_flagged_unrestorable_and_observations_still_redacted(tmp_path: Path) -> None:
    store, redactor = _store(tmp_path, vault=False)
    trajectory = _trajectory(redactor)
    bob = redactor.redact_text("bob@example.com")
    calls = [
        ToolCall(id="a", name="find_user", arguments={"email": bob}),
        ToolCall(id="b", name="profile", arguments={"user_id": "bob_2"}),
        ToolCall(id="c", name="find_user", arguments={"email": "bob@example.com"}),  # a proposer that wrote a plain value
    ]
    outcome = _replay(store, trajectory, calls)
    record = outcome.record
    assert record.fidelity_mismatches == 0, "the profile observation compares equal once redacted alike"
    assert record.unrestorable == 1 and record.details["unrestorable_steps"][0]["arguments"] == ["email"]
    assert record.details["unrestorable_steps"][0]["reasons"] == ["no redaction vault (record with vault=True to replay real values)"]
    by_call = {(r.step_index, r.branch_index): r for r in outcome.rollouts}
    assert by_call[0, 0].unrestored == [bob] and by_call[0, 0].observation.content == "Error: user not found"
    assert by_call[0, 1].unrestored == [] and by_call[0, 1].observation.content == redactor.redact_text(json.dumps(PROFILES["bob_2"]))
    assert by_call[0, 2].action.tool_call.arguments == {"email": bob}, "a plain value in proposed arguments is stored redacted"
    assert by_call[0, 2].observation.content == "bob_2" and by_call[0, 2].unrestored == []
    assert record.details["unrestored_branches"] == 2


def test_the_replay_buffer_leaves_out_a_rollout_the_sandbox_answered_for_a_placeholder_as_builds_do(tmp_path: Path) -> None:
    """A proposed pseudonym the vault has no value for reaches the sandbox as the placeholder ('user not found'): builds
    leave that rollout out (``Rollout.unrestored``), and the experience model's replay buffer served it as a real
    transition. Now both read the same rollouts (the real store, replay and buffer; the builds' own load_source)."""
    from ee_middleware.replay.retrieval import TransitionIndex
    from ee_middleware.trainers.datasets.source import load_source
    from tests.replay.test_retrieval_selection import served, served_rollouts

    store, redactor = _store(tmp_path, vault=True)
    trajectory = _trajectory(redactor)
    bob = redactor.redact_text("bob@example.com")
    carol = Redactor(RedactionRules(), salt=store_salt(store)).redact_text("carol@example.com")  # never in the vault
    calls = [ToolCall(id="a", name="find_user", arguments={"email": bob}), ToolCall(id="b", name="find_user", arguments={"email": carol})]
    outcome = _replay(store, trajectory, calls)
    store.write([trajectory])
    store.approve([trajectory.id], by="test")
    store.write_replay(outcome.record, outcome.rollouts)
    unrestored = {r.id for r in store.iter_rollouts() if r.unrestored}
    assert unrestored and all(store.get_rollout(i).unrestored == [carol] for i in unrestored), "the vault misses carol's value"
    assert {store.get_rollout(i).observation.content for i in unrestored} == {"Error: user not found"}

    index = TransitionIndex.of()
    index.refresh(store)
    built = set(load_source(store).rollouts["id"].to_list())
    store.close()
    assert not unrestored & served_rollouts(index), "the buffer serves a rollout the sandbox answered for a placeholder"
    assert served_rollouts(index) == built and built, "the buffer and dataset builds read other rollouts"
    assert not [t for t in served(index) if carol in json.dumps(t.arguments)], "a transition shows carol's placeholder"
    assert any(t.arguments == {"email": bob} and t.observation == "bob_2" for t in served(index)), "restored ones stay in use"


def test_replay_privacy_of_a_store_the_vault_override_and_a_wrong_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = _store(tmp_path, vault=True)
    privacy = ReplayPrivacy.of_store(store)
    assert privacy.vault == str(tmp_path / "experience.vault") and privacy.salt == store_salt(store).hex()
    monkeypatch.setenv("EE_VAULT", "off")
    assert ReplayPrivacy.of_store(store).vault is None
    monkeypatch.setenv("EE_VAULT", str(tmp_path / "nowhere.vault"))
    assert ReplayPrivacy.of_store(store).vault is None, "a missing vault is left out (with a warning), not fatal"
    monkeypatch.delenv("EE_VAULT")
    monkeypatch.setenv(KEY_ENV, new_key())
    with pytest.raises(ConfigError, match="without encryption"):
        ReplayPrivacy.of_store(store)
    plain = LocalExperienceStore(tmp_path / "plain")
    record_store_redaction(plain, StoreRedaction(RedactionRules(defaults=False)))
    assert ReplayPrivacy.of_store(plain) == ReplayPrivacy(), "a store recorded with redact=False: replay redacts nothing"


def test_replay_reads_ee_vault_as_capture_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = _store(tmp_path, vault=True)
    recorded = str(tmp_path / "experience.vault")
    for spelling, vault in [(" No ", None), ("FALSE", None), ("1", recorded), ("on", recorded)]:
        monkeypatch.setenv("EE_VAULT", spelling)
        assert ReplayPrivacy.of_store(store).vault == vault, spelling
    monkeypatch.setenv("EE_VAULT", "flase")
    with pytest.raises(ConfigError, match="EE_VAULT='flase' looks like a misspelt on/off value"):
        ReplayPrivacy.of_store(store)


def test_the_store_redacts_whatever_writes_replay_records(tmp_path: Path) -> None:
    store, redactor = _store(tmp_path, vault=False)
    rollout = Rollout(
        id="x",
        replay_id="r",
        trajectory_id="t1",
        step_index=0,
        branch_index=0,
        action=Action(kind="tool_call", tool_call=ToolCall(id="a", name="find_user", arguments={"email": "ann@example.com"})),
        proposer=ProposerInfo(policy="someone-elses-job"),
        observation=Observation(content='{"phone": "415-555-0134"}'),
        sandbox="s",
        duration_ms=1.0,
    )
    record = ReplayRecord(
        replay_id="r", trajectory_id="t1", status="failed", reason="boom for ann@example.com", policy="p", sandbox="s", k=1, seed=0,
        details={"fidelity_mismatches": [{"recorded": "x", "replayed": "ann@example.com", "diff": "+ann@example.com"}]},
    )  # fmt: skip
    store.write_replay(record, [rollout])
    stored = store.get_rollout("x")
    assert stored.action.tool_call.arguments == {"email": redactor.redact_text("ann@example.com")}
    assert stored.observation.content == json.dumps({"phone": redactor.redact_text("415-555-0134")})
    row = store.replays().row(0, named=True)
    assert "ann@example.com" not in row["reason"] + row["details_json"]
    assert redactor.redact_text("ann@example.com") in row["details_json"]


@pytest.mark.parametrize(
    "arguments",
    [
        {}, {"a": 1, "b": None, "c": True, "d": 2.5}, {"a": "[REDACTED:email]"}, {"a": "x [REDACTED:phone:ab12] y"},
        {"[REDACTED:name]": 1}, {"a": ["b", {"c": "[REDACTED:x]"}]}, {"a": ("[REDACTED:x]",)}, {"a": "[REDACTED"},
        {"a": "REDACTED:x"}, {"a": ["[", "REDACTED:"]}, {"REDACTED": ["x"]}, {"a": "é [REDACTED:x]\n"}, {"a": [[[]]]},
    ],
)  # fmt: skip
def test_restore_finds_placeholders_exactly_where_the_json_text_has_them(arguments: dict) -> None:
    """restore() scans the arguments instead of encoding them: the same answer as the JSON text's."""
    from ee_middleware.replay.privacy import _mentions_placeholder

    assert _mentions_placeholder(arguments) == ("[REDACTED:" in json.dumps(arguments, ensure_ascii=False))


# -- the environment reference and argument keys: a real LangGraph agent recorded by record_experience ----------------

EMAIL = "ann@kundenmail.de"
UNKNOWN_TAG = "[REDACTED:email:00000000]"
"""A pseudonym no vault holds."""


def _crm_world(environment: dict[str, Any]) -> dict[str, Any]:
    """The user's CRM world, rebuilt from the environment reference (the customer's e-mail comes from it)."""
    return {"customers": {"C1": {"email": environment["customer_email"], "tier": "gold"}}, "tags": {}}


def _customer_domain(world: dict[str, Any], customer_id: str) -> str:
    email = world["customers"][customer_id]["email"]
    return email.split("@", 1)[1] if "@" in email else "Error: no valid e-mail on file"


def _find_customer(world: dict[str, Any], email: str) -> str:
    found = [{"id": i, **c} for i, c in world["customers"].items() if c["email"] == email]
    return json.dumps(found[0]) if found else "Error: no customer with that e-mail"


def _tag_contacts(world: dict[str, Any], tags: dict[str, str]) -> str:
    known = {c["email"] for c in world["customers"].values()}
    world["tags"].update(tags)
    return f"tagged {sum(t in known for t in tags)} customer(s), {sum(t not in known for t in tags)} other contact(s)"


def _record_crm(tmp_path: Path, *, vault: bool) -> tuple[LocalExperienceStore, Trajectory]:
    """A create_agent CRM bot (ScriptedChatModel) recorded by record_experience with the default redaction: its
    environment reference holds the customer's e-mail, and it tags the customer by e-mail (a placeholder in a KEY)."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import record_once

    environment = {"crm": "v1", "customer_email": EMAIL}
    world = _crm_world(environment)

    @tool
    def customer_domain(customer_id: str) -> str:
        """The domain of a customer's e-mail address."""
        return _customer_domain(world, customer_id)

    @tool
    def find_customer(email: str) -> str:
        """Find a customer by e-mail."""
        return _find_customer(world, email)

    @tool
    def tag_contacts(tags: dict[str, str]) -> str:
        """Tag contacts, by e-mail address."""
        return _tag_contacts(world, tags)

    script = [
        AIMessage(content="", tool_calls=[tool_call("customer_domain", customer_id="C1")]),
        AIMessage(content="", tool_calls=[tool_call("find_customer", email=EMAIL)]),
        AIMessage(content="", tool_calls=[tool_call("tag_contacts", tags={EMAIL: "vip"})]),
        AIMessage(content="Done: tagged as vip."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [customer_domain, find_customer, tag_contacts])
    agent = record_experience(graph, app="crm", store=tmp_path / "crm", vault=vault, environment=lambda inputs, config: environment)
    trajectory = record_once(agent, tmp_path / "crm", {"messages": [("user", f"I am {EMAIL}: tag me as vip")]})
    assert PLACEHOLDER_TEXT in json.dumps(trajectory.environment) and EMAIL not in json.dumps(trajectory.environment)
    tags = _recorded_tags(trajectory)
    assert EMAIL not in tags and len(tags) == 1, tags
    return LocalExperienceStore(tmp_path / "crm"), trajectory


PLACEHOLDER_TEXT = "[REDACTED:email:"


def _recorded_tags(trajectory: Trajectory) -> dict[str, str]:
    [tags] = [
        s.action.tool_call.arguments["tags"] for s in trajectory.steps if s.action.tool_call and s.action.tool_call.name == "tag_contacts"
    ]
    return tags


def _crm_sandbox(built: list[dict[str, Any]]) -> PythonSandbox:
    """The user's CRM sandbox: its world builder notes the environment it was given in ``built``."""

    def build(environment: dict[str, Any]) -> dict[str, Any]:
        built.append(dict(environment))
        return _crm_world(environment)

    tools = {"customer_domain": _customer_domain, "find_customer": _find_customer, "tag_contacts": _tag_contacts}
    return PythonSandbox(build, tools=tools, kind="crm", is_error_result=lambda v: isinstance(v, str) and v.startswith("Error"))


def _replay_crm(store: LocalExperienceStore, trajectory: Trajectory, sandbox: PythonSandbox, calls: list[ToolCall]) -> Any:
    settings = ReplaySettings(replay_id="r", policy="scripted", k=max(len(calls), 1), privacy=ReplayPrivacy.of_store(store))
    return replay_trajectory(trajectory, sandbox, Proposer(_ScriptedPolicy(calls), k=max(len(calls), 1), refill=None), settings)


def test_the_environment_reference_is_restored_from_the_vault_before_the_world_is_built(tmp_path: Path) -> None:
    """Before: the sandbox was reset to the environment as stored, so the user's world builder got the customer's e-mail
    as '[REDACTED:email:...]' although the vault held it; the lookups by e-mail then found no one and replay reported a
    fidelity mismatch (and 0 unrestorable steps). Now the environment gets the vault's values as arguments do."""
    store, trajectory = _record_crm(tmp_path, vault=True)
    built: list[dict[str, Any]] = []
    outcome = _replay_crm(store, trajectory, _crm_sandbox(built), [])
    record = outcome.record
    assert built and all(env == {"crm": "v1", "customer_email": EMAIL} for env in built), built
    assert (record.status, record.fidelity_mismatches, record.unrestorable) == ("done", 0, 0), record.details
    assert "unrestored_environment" not in record.details
    assert trajectory.environment["customer_email"].startswith(PLACEHOLDER_TEXT), "what is stored keeps the placeholder"


def test_placeholders_in_argument_keys_are_restored_and_flagged_when_they_cannot_be(tmp_path: Path) -> None:
    """Before: restore() mapped the values only, so tag_contacts(tags={'[REDACTED:email:...]': 'vip'}) reached the
    sandbox with the pseudonym as the key although the vault held the address, and a key the vault lacks was not flagged
    (the rollout's unrestored was empty: dataset builders kept it). Now keys are restored, or flagged, as values are."""
    store, trajectory = _record_crm(tmp_path, vault=True)
    recorded_tags = _recorded_tags(trajectory)
    sandbox = _crm_sandbox([])
    proposed = ToolCall(id="p", name="tag_contacts", arguments={"tags": {UNKNOWN_TAG: "vip", **recorded_tags}})
    outcome = _replay_crm(store, trajectory, sandbox, [proposed])
    assert outcome.record.fidelity_mismatches == 0 and outcome.record.unrestorable == 0, outcome.record.details
    assert sandbox.world["tags"] == {EMAIL: "vip"}, "the expert's tag reached the sandbox under the real address"
    assert outcome.rollouts and all(r.unrestored == [UNKNOWN_TAG] for r in outcome.rollouts)
    assert all(r.action.tool_call.arguments == proposed.arguments for r in outcome.rollouts), "what is stored keeps the placeholders"
    assert outcome.record.details["unrestored_branches"] == len(outcome.rollouts)
    restored, missing = ReplayPrivacy.of_store(store).restore(proposed)
    assert restored.arguments == {"tags": {UNKNOWN_TAG: "vip", EMAIL: "vip"}}
    assert [(u.placeholder, u.reason) for u in missing] == [(UNKNOWN_TAG, "not in the redaction vault")]


def test_an_environment_the_vault_cannot_restore_flags_every_expert_step_not_a_fidelity_mismatch(tmp_path: Path) -> None:
    """Capture's default keeps no vault: the world is built from the environment's placeholder. Before: the step whose
    answer depends on it (customer_domain) was a plain fidelity mismatch and nothing named the cause. Now every expert
    step is unrestorable (its world is not the recorded one), listed with the environment's keys, the rollouts carry the
    placeholder (dataset builders leave them out), the record says which keys and why, and `ee replay show` says so."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    store, trajectory = _record_crm(tmp_path, vault=False)
    placeholder = trajectory.environment["customer_email"]
    built: list[dict[str, Any]] = []
    calls = [ToolCall(id="p", name="customer_domain", arguments={"customer_id": "C1"})]
    outcome = _replay_crm(store, trajectory, _crm_sandbox(built), calls)
    record = outcome.record
    assert built[-1]["customer_email"] == placeholder, "no vault: the world builder gets the placeholder, as before"
    assert record.fidelity_mismatches == 0 and record.unrestorable == 3, record.details
    steps = record.details["unrestorable_steps"]
    assert [(s["tool"], s["arguments"], s["environment"]) for s in steps] == [
        ("customer_domain", [], ["customer_email"]),
        ("find_customer", ["email"], ["customer_email"]),
        ("tag_contacts", ["tags"], ["customer_email"]),
    ]
    assert steps[0]["observation_matched"] is False and steps[0]["placeholders"] == [placeholder]
    environment_reason = "in the environment reference the sandbox's world is built from: no redaction vault"
    assert any(r.startswith(environment_reason) for r in steps[0]["reasons"]), steps[0]["reasons"]
    assert record.details["unrestored_environment"]["keys"] == ["customer_email"]
    assert record.details["unrestored_environment"]["placeholders"] == [placeholder]
    assert outcome.rollouts and all(placeholder in r.unrestored for r in outcome.rollouts)
    assert record.details["unrestored_branches"] == len(outcome.rollouts)
    store.write_replay(record, outcome.rollouts)
    store.close()
    shown = CliRunner().invoke(app, ["replay", "show", trajectory.id, "--store", str(tmp_path / "crm")], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert "the environment reference's customer_email" in shown.output and "world was built with" in shown.output, shown.output


CODENAME = "Nightjar"


def hide_codename(text: str) -> str:
    """The app's own ``redact_fn`` (module level, so that replay imports it by the name redaction.json records)."""
    return text.replace(CODENAME, "[codename]")


def test_the_redact_fn_capture_applied_redacts_what_the_sandbox_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Privacy sweep defect 2: replay redacted the sandbox's answers with the rules alone, so what the user's
    ``redact_fn`` removed at capture came back in plain text (rollouts, the fidelity diff) and every step whose
    observation held it was a fidelity mismatch. A ``redact_fn`` that cannot be imported stops replay before any work."""
    monkeypatch.setenv("EE_TRUSTED_REDACT_FNS", "*")  # the names the store records are trusted (the refusal: test_store_redaction_trust.py)
    monkeypatch.setitem(PROFILES, "ann_1", {**PROFILES["ann_1"], "project": CODENAME})
    store = LocalExperienceStore(tmp_path / "experience")
    settings = StoreRedaction(RedactionRules(), custom_function=f"{__name__}.hide_codename")
    record_store_redaction(store, settings)
    trajectory = _trajectory(Redactor(settings.rules, salt=store_salt(store), custom=hide_codename))
    assert "[codename]" in trajectory.steps[1].observation.content
    calls = [ToolCall(id="a", name="profile", arguments={"user_id": "ann_1"})]
    outcome = _replay(store, trajectory, calls)
    assert outcome.record.fidelity_mismatches == 0, outcome.record.details
    assert outcome.rollouts and all(CODENAME not in r.model_dump_json() for r in outcome.rollouts)
    assert any("[codename]" in r.observation.content for r in outcome.rollouts)

    saved = store.root / "redaction.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "custom_function": "no_such_module_here.scrub"}))
    with pytest.raises(ConfigError, match=r"no_such_module_here\.scrub"):
        ReplayPrivacy.of_store(store)


def _rate(world: dict[str, Any], cur: str) -> str:
    return f"1 EUR = {world['rates'][cur]} {cur}"


def test_an_environment_placeholder_the_world_never_reads_keeps_the_rollouts(tmp_path: Path) -> None:
    """Review of ea2b114: a placeholder anywhere in the environment reference flagged every expert step and every
    rollout, even where the world builder never reads that key (an e-mail kept for audit), so capture's defaults (no
    vault, e-mails redacted) left every rollout of such an app out of the datasets. The expert's path is checked as
    usual: it observes what was recorded, so the rollouts are kept; the record still says which keys kept placeholders."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import record_once

    @tool
    def fx_rate(cur: str) -> str:
        """The exchange rate of one euro."""
        return _rate({"rates": {"USD": 1.1, "GBP": 0.85}}, cur)

    script = [AIMessage("", tool_calls=[tool_call("fx_rate", cur="USD")]), AIMessage("", tool_calls=[tool_call("fx_rate", cur="GBP")])]
    environment = {"rates_snapshot": "2026-11-30", "requested_by": "ops@example.com"}
    agent = record_experience(
        create_agent(ScriptedChatModel(script=[*script, AIMessage("done")]), [fx_rate]),
        app="fx",
        store=tmp_path / "s",
        environment=environment,
    )
    trajectory = record_once(agent, tmp_path / "s", {"messages": [("user", "USD and GBP rates?")]})
    placeholder = trajectory.environment["requested_by"]
    assert placeholder.startswith(PLACEHOLDER_TEXT)
    sandbox = PythonSandbox(
        lambda env: {"rates": {"USD": 1.1, "GBP": 0.85}, "snapshot": env["rates_snapshot"]}, tools={"fx_rate": _rate}, kind="fx"
    )
    calls = [ToolCall(id="p", name="fx_rate", arguments={"cur": "GBP"})]
    store = LocalExperienceStore(tmp_path / "s")
    settings = ReplaySettings(replay_id="r", policy="scripted", k=1, privacy=ReplayPrivacy.of_store(store))
    outcome = replay_trajectory(trajectory, sandbox, Proposer(_ScriptedPolicy(calls), k=1, refill=None), settings)
    record = outcome.record
    assert record.fidelity_mismatches == 0 and record.unrestorable == 0, record.details
    assert record.details["unrestored_environment"]["keys"] == ["requested_by"]
    assert [r.observation.content for r in outcome.rollouts] == ["1 EUR = 0.85 GBP"]  # (at step 1 it is the expert's own call)
    assert all(r.unrestored == [] for r in outcome.rollouts) and "unrestored_branches" not in record.details
    store.close()


def test_a_recording_made_under_older_rules_is_no_fidelity_mismatch(tmp_path: Path) -> None:
    """A rule added since capture (a later recorder's pattern, or a built-in rule that now finds more) redacts the
    sandbox's answer, while the recorded observation still holds the value: the recording is compared redacted with the
    store's current rules too, so it is no fidelity mismatch (and its rollouts are not left out of datasets)."""
    store, redactor = _store(tmp_path, vault=True)
    trajectory = _trajectory(redactor)  # recorded under the rules of the time: no 'user_id' pattern
    assert "ann_1" in trajectory.steps[0].observation.content
    record_store_redaction(store, StoreRedaction(RedactionRules(patterns={"user_id": r"\b[a-z]+_\d\b"})))
    outcome = _replay(store, trajectory, [ToolCall(id="a", name="profile", arguments={"user_id": "bob_2"})])
    assert outcome.record.fidelity_mismatches == 0, outcome.record.details


def test_a_plug_in_store_that_keeps_metadata_gives_replay_capture_s_rules_and_salt(tmp_path: Path) -> None:
    """Defect: with a plug-in store (no local folder) replay found no redaction.json and no salt: it wrote the sandbox's
    answers with plain [REDACTED:email] where the recording had pseudonyms (every redacted observation a fidelity mismatch)
    and a customer id in plain text that capture's own pattern had redacted. Now capture keeps both through the store's
    read_meta/write_meta (a user's own SQLite store, tests/store/sqlite_plugin.py) and replay, on its own handle, reads them."""
    from tests.store.sqlite_plugin import SqliteMetaStore

    location = str(tmp_path / "experience.sqlite")
    capture = SqliteMetaStore(location)
    record_store_redaction(capture, StoreRedaction(RedactionRules(patterns={"customer": r"CUST-\d{4}"})))
    redactor = Redactor(RedactionRules(patterns={"customer": r"CUST-\d{4}"}), salt=store_salt(capture))
    trajectory = _trajectory(redactor)
    replay_store = SqliteMetaStore(location)
    bob = redactor.redact_text("bob@example.com")
    outcome = _replay(replay_store, trajectory, [ToolCall(id="b", name="profile", arguments={"user_id": "bob_2"})])  # type: ignore[arg-type]
    assert outcome.record.fidelity_mismatches == 0, outcome.record.details
    by_call = {(r.step_index, r.branch_index): r for r in outcome.rollouts}
    assert (
        by_call[0, 0].observation.content == redactor.redact_text(json.dumps(PROFILES["bob_2"]))
        and bob in by_call[0, 0].observation.content
    )
    privacy = ReplayPrivacy.of_store(replay_store)
    assert (
        privacy.redact_observation(Observation(content="for CUST-1234")).content == redactor.redact_text("for CUST-1234") != "for CUST-1234"
    )
