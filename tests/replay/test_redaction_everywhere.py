"""Secrets and PII planted in the retail database (a sandbox world) never reach the store, the datasets or
the exports in plain text, and redaction no longer corrupts the expert path: the real retail agent
(LangGraph), its SQLite sandbox, the mutation policy, real Parquet, real exports. See redaction_corpus.py."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import polars as pl

from ee_middleware.capture.redaction import PLACEHOLDER
from tests.replay.redaction_corpus import PLACES, report, run_pipeline


def test_default_settings_keep_every_planted_value_out_and_the_expert_path_faithful(tmp_path: Path) -> None:
    outcome = run_pipeline(tmp_path, seed=7)
    assert sum(outcome.planted.values()) > 200 and outcome.files > 15
    assert outcome.total_found == 0, report(outcome)
    replay = outcome.replay
    assert replay["done"] == 24 and replay["failed"] == {}
    assert replay["fidelity_mismatches"] == 0, replay["fidelity_examples"]
    # without a vault, lookups by e-mail or phone received the pseudonym: flagged and counted, not mismatches
    assert replay["unrestorable"] > 0 and replay["vault"] is None
    assert {e["tool"] for e in replay["unrestorable_examples"]} <= {"find_user_by_email", "find_user_by_phone"}
    # no IL row teaches a placeholder the model was not shown
    il = pl.read_parquet(tmp_path / "datasets" / "il.parquet")
    for prompt, completion in il.select("prompt", "completion").iter_rows():
        assert all(p in prompt for p in PLACEHOLDER.findall(completion)), completion
    built = outcome.datasets["datasets"]
    assert built["il"]["placeholders"]["rows_with_placeholders_seen_in_prompt"] > 0


def test_with_the_vault_the_expert_path_reexecutes_with_the_real_values(tmp_path: Path) -> None:
    outcome = run_pipeline(tmp_path, seed=11, capture={"vault": True})
    assert outcome.total_found == 0, report(outcome)
    replay = outcome.replay
    assert replay["unrestorable"] == 0 and replay["unrestored_branches"] == 0
    assert replay["fidelity_mismatches"] == 0, replay["fidelity_examples"]
    vault = Path(replay["vault"])
    assert vault == tmp_path / "experience.vault" and stat.S_IMODE(vault.stat().st_mode) == 0o600
    assert json.loads((tmp_path / "experience" / "redaction.json").read_text())["vault"] == str(vault)


def test_the_search_finds_values_that_are_not_redacted(tmp_path: Path) -> None:
    """The control: recorded with redact=False (and so replayed and built without), the values are there."""
    outcome = run_pipeline(tmp_path, seed=7, k=2, capture={"redact": False})
    found_places = {place for (_, place), n in outcome.found.items() if n}
    assert {"store/trajectories", "store/rollouts", "datasets/il", "datasets/iwm", "exports/traces", "exports/datasets"} <= found_places
    assert found_places <= set(PLACES)
