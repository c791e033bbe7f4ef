"""``ee traces show`` and ``list`` re-apply the store's current rules to all the user data they print, and ``ee traces
approve/reject`` store ``--reason`` and ``--by`` redacted (sweep s23, findings 7 and 11b).

Was: ``show`` re-redacted the task, answer, error, messages and steps, but printed the ``environment`` (the whole
customer database a second recorder without the store's rules had stored), the tool schemas and the approval text as
stored; and the reviewer's ``--reason`` (a customer's card and address quoted) and ``--by`` (an e-mail address) were
stored verbatim. Real store, real CLI (typer's runner)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
from ee_middleware.cli.app import app
from ee_middleware.records import ApprovalEvent
from ee_middleware.testing.store_conformance import sample_trajectory

NATIONAL = "020 7946 0958"
PLANTED = (NATIONAL, "jane.doe@gmail.com", "ops.lead@northwind-bank.example", "4111 1111 1111 1111", "carol@northwind-bank.example")
TOOL = {
    "type": "function",
    "function": {
        "name": "find_customer",
        "description": "Find a customer, e.g. jane.doe@gmail.com. Runs as ops.lead@northwind-bank.example.",
        "parameters": {"type": "object", "properties": {"email": {"type": "string", "examples": ["jane.doe@gmail.com"]}}},
    },
}


def _store(tmp_path: Path) -> LocalExperienceStore:
    """A store holding what capture without the store's rules wrote (a second recorder, an older version): the
    environment, the tool schemas and an approval's text in plain text."""
    store = LocalExperienceStore(tmp_path / "store")
    trajectory = sample_trajectory("t1")
    first = trajectory.steps[0]
    first = first.model_copy(update={"state": [*first.state, {"role": "user", "content": f"call me on {NATIONAL}"}]})
    trajectory = trajectory.model_copy(
        update={
            "environment": {"customers": {"CU-1001": {"phones": [NATIONAL], "email": "jane.doe@gmail.com"}}},
            "tools": [TOOL],
            "steps": [first, *trajectory.steps[1:]],
        }
    )
    store.write([trajectory])
    record_store_redaction(store, StoreRedaction(rules=RedactionRules(patterns={"phone_national": r"\b0\d{2,4} \d{3,4} \d{4}\b"})))
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    store.set_approval(
        [
            ApprovalEvent(
                trajectory_id="t1", status="approved", by="carol@northwind-bank.example", at=at, reason="card 4111 1111 1111 1111 ok"
            )
        ]
    )
    return store


def test_show_redacts_the_environment_the_tools_and_the_approvals(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for args in ([], ["--json"]):
        shown = CliRunner().invoke(app, ["traces", "show", "t1", "--store", str(store.root), *args], env={"COLUMNS": "300"})
        assert shown.exit_code == 0, shown.output
        assert not [p for p in PLANTED if p in shown.stdout], shown.stdout
        assert "[REDACTED:phone_national" in shown.stdout and "[REDACTED:email" in shown.stdout
        assert "find_customer" in shown.stdout  # the tool's name kept
        if args:  # the states (only --json shows them)
            state = json.loads(shown.stdout)["steps"][0]["state"]
            assert state[-1]["content"].startswith("call me on [REDACTED:phone_national")
    listed = CliRunner().invoke(app, ["traces", "list", "--store", str(store.root), "--json"])
    assert listed.exit_code == 0 and not [p for p in PLANTED if p in listed.stdout], listed.stdout


def test_reject_stores_the_reason_and_the_reviewer_redacted(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("t1")])
    reason = "customer jane.doe@gmail.com / +44 20 7946 0958 disputes card 4111 1111 1111 1111"
    by = "ops.lead@northwind-bank.example"
    out = CliRunner().invoke(app, ["traces", "reject", "t1", "--store", str(store.root), "--by", by, "--reason", reason])
    assert out.exit_code == 0, out.output
    spooled = "\n".join(p.read_text() for p in (tmp_path / "store").rglob("*.jsonl"))
    assert "disputes card [REDACTED:credit_card:" in spooled
    assert not [p for p in (*PLANTED, "7946 0958") if p in spooled], spooled
    shown = CliRunner().invoke(app, ["traces", "show", "t1", "--store", str(store.root)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "rejected by [REDACTED:email:" in shown.stdout, shown.stdout
