"""``ee replay show`` re-applies the store's current rules to what it prints, as ``ee traces show`` does: the task, the
expert's calls and observations, the rollouts' and a fidelity error's diff (a sweep: a rule a recorder added after a run
was stored hid its values in ``traces show`` and in exports, but ``replay show`` printed them). Real store, real CLI
(typer's runner)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
from ee_middleware.cli.app import app
from ee_middleware.records import Observation, Rollout, ToolCall
from ee_middleware.replay.fidelity import describe_mismatch
from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory

NAME = "Zebulon Quartermaine"


def _store(tmp_path: Path, *, dreamed: bool = False) -> Path:
    """A run stored before the store's rules named the customer, replayed (a rollout and a fidelity error quoting the
    name), and the rule added since."""
    store = LocalExperienceStore(tmp_path / "store")
    trajectory = sample_trajectory("t1")
    first = trajectory.steps[0]
    call = ToolCall(id="call-0", name="lookup", arguments={"customer": NAME})
    first = first.model_copy(
        update={"action": first.action.model_copy(update={"tool_call": call}), "observation": Observation(content=f"{NAME}: gold")}
    )
    store.write([trajectory.model_copy(update={"task": f"find {NAME}", "steps": [first, *trajectory.steps[1:]]})])
    rollout = sample_rollout("r1", "t1", 0, 0)
    rollout = rollout.model_copy(
        update={
            "action": rollout.action.model_copy(update={"tool_call": ToolCall(id="alt-0", name="lookup", arguments={"customer": NAME})}),
            "observation": Observation(content=f"{NAME}: silver"),
        }
    )
    mismatch = {"step": 0, "tool": "lookup", **describe_mismatch(f"{NAME}: gold", f"{NAME}: silver")}
    record = sample_replay_record("t1", branches=1)
    record = record.model_copy(update={"details": {**record.details, "fidelity_mismatches": [mismatch]}})
    store.write_replay(record, [rollout])
    if dreamed:  # a synthetic rollout, whose experience model's reasoning names the customer
        data = sample_rollout("r2", "t1", 0, 1, replay_id="dream-1").model_dump()
        data.update(synthetic=True, synthetic_source={"model": "local:/models/exp", "reasoning": f"{NAME} has a gold card, so it works"})
        store.write_replay(sample_replay_record("t1", replay_id="dream-1", branches=1), [Rollout.model_validate(data)])
    record_store_redaction(store, StoreRedaction(rules=RedactionRules(patterns={"person": r"Zebulon \w+"})))
    store.close()
    return tmp_path / "store"


def test_replay_show_prints_nothing_a_rule_added_since_hides(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for args in ([], ["--json"]):
        shown = CliRunner().invoke(app, ["replay", "show", "t1", "--store", str(store), *args], env={"COLUMNS": "300"})
        assert shown.exit_code == 0, shown.output
        assert "Zebulon" not in shown.stdout, shown.stdout
        assert "[REDACTED:person" in shown.stdout
    shown = CliRunner().invoke(app, ["replay", "show", "t1", "--store", str(store), "--json"])
    [rollout] = json.loads(shown.stdout)
    assert rollout["observation"]["content"].endswith(": silver") and rollout["id"] == "r1"
    table = CliRunner().invoke(app, ["replay", "show", "t1", "--store", str(store)], env={"COLUMNS": "300"}).stdout
    assert "fidelity error" in table and "gold" in table and "silver" in table


def test_replay_list_prints_nothing_a_rule_added_since_hides(tmp_path: Path) -> None:
    """(the review of the commit above: ``ee replay list`` printed the same rollouts as stored)"""
    store = _store(tmp_path)
    for args in ([], ["--json"], ["--json", "--trajectory", "t1"]):
        listed = CliRunner().invoke(app, ["replay", "list", "--store", str(store), *args], env={"COLUMNS": "300"})
        assert listed.exit_code == 0, listed.output
        assert "Zebulon" not in listed.stdout, listed.stdout
        assert "[REDACTED:person" in listed.stdout


def test_an_experience_models_reasoning_is_shown_under_the_current_rules(tmp_path: Path) -> None:
    """A synthetic rollout's reasoning (shown in the table's note and in --json) was printed as stored (the review)."""
    store = _store(tmp_path, dreamed=True)
    for args in ([], ["--json"]):
        shown = CliRunner().invoke(app, ["replay", "show", "t1", "--store", str(store), *args], env={"COLUMNS": "300"})
        assert shown.exit_code == 0, shown.output
        assert "Zebulon" not in shown.stdout, shown.stdout
    [dreamed] = [r for r in json.loads(shown.stdout) if r["id"] == "r2"]
    assert dreamed["synthetic_source"]["reasoning"].endswith("has a gold card, so it works")
