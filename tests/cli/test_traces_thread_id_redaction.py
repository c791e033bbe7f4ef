"""``ee traces list`` and ``show`` re-apply the store's current rules to the thread id, as to the task (review r9b,
finding 4).

Was: both re-redacted the task but printed the thread id as stored, so a run recorded before a rule existed (or in the
seconds before a recorder read the store's rules again) showed ``thread=CU-1001:2a140a`` beside a task whose
``CU-1001`` was redacted. Real store, real CLI (typer's runner)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory

CUSTOMER = "CU-1001"


def _store(tmp_path: Path) -> LocalExperienceStore:
    """A run stored with its customer id in plain text in the task and the thread id; the store's rules redact it now
    (a pattern another writer recorded since)."""
    store = LocalExperienceStore(tmp_path / "store")
    trajectory = sample_trajectory("t1").model_copy(update={"task": f"I am {CUSTOMER}", "thread_id": f"{CUSTOMER}:2a140a"})
    store.write([trajectory])
    record_store_redaction(store, StoreRedaction(rules=RedactionRules(patterns={"customer": r"\bCU-\d{4}\b"})))
    return store


def test_list_and_show_redact_the_thread_id_with_the_store_s_current_rules(tmp_path: Path) -> None:
    store = _store(tmp_path)
    listed = CliRunner().invoke(app, ["traces", "list", "--store", str(store.root), "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["task"].startswith("I am [REDACTED:customer")
    assert row["thread_id"].startswith("[REDACTED:customer") and row["thread_id"].endswith(":2a140a"), row["thread_id"]
    for args in (["--json"], []):
        shown = CliRunner().invoke(app, ["traces", "show", "t1", "--store", str(store.root), *args], env={"COLUMNS": "300"})
        assert shown.exit_code == 0, shown.output
        assert CUSTOMER not in shown.stdout, shown.stdout
        assert "[REDACTED:customer" in shown.stdout
    shown = CliRunner().invoke(app, ["traces", "show", "t1", "--store", str(store.root), "--json"])
    assert json.loads(shown.stdout)["thread_id"] == row["thread_id"], "the same pseudonym in list and show"
