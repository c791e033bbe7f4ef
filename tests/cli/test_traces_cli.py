"""The ``ee`` CLI: contracts of ``--json`` outputs, approvals, export, ingest, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.cli.app import app
from ee_middleware.ingest.otlp_json import spans_to_otlp_json
from ee_middleware.records import SCHEMA_VERSION
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.conftest import USER_TASK

runner = CliRunner()


def ee(*args: str) -> object:
    return runner.invoke(app, list(args))


@pytest.fixture
def recorded(react_graph, store_path: Path, tracer_provider, span_exporter, inventory) -> Path:
    agent = record_experience(react_graph, app="shop", store=store_path, tracer_provider=tracer_provider)
    for i in range(3):
        inventory.stock["pear"] = 0
        agent.invoke(USER_TASK, {"configurable": {"thread_id": f"t{i}"}})
    agent.recorder.close()  # as when the agent's process ends: its spool segment can be compacted
    return store_path


def test_list_json_contract(recorded: Path):
    result = ee("traces", "list", "--store", str(recorded), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and len(rows) == 3
    for row in rows:
        assert {"id", "app", "approval", "num_steps"} <= set(row)
        assert (row["app"], row["approval"], row["num_steps"]) == ("shop", "pending", 3)
        assert len(row["id"]) == 32


def test_show_json_has_every_step_with_call_and_observation(recorded: Path):
    first = json.loads(ee("traces", "list", "--store", str(recorded), "--json").stdout)[0]["id"]
    result = ee("traces", "show", first[:8], "--store", str(recorded), "--json")
    assert result.exit_code == 0, result.output
    trajectory = json.loads(result.stdout)
    assert trajectory["id"] == first and trajectory["schema_version"] == SCHEMA_VERSION
    steps = trajectory["steps"]
    assert [s["action"]["kind"] for s in steps] == ["tool_call", "tool_call", "answer"]
    assert steps[0]["action"]["tool_call"]["name"] == "check_stock"
    assert steps[0]["action"]["tool_call"]["arguments"] == {"item": "pear"}
    assert steps[0]["observation"]["content"] == "0"


def test_tables_for_people(recorded: Path):
    listing = ee("traces", "list", "--store", str(recorded))
    assert listing.exit_code == 0 and "3 trajectories" in listing.stdout and "pending" in listing.stdout
    first = json.loads(ee("traces", "list", "--store", str(recorded), "--json").stdout)[0]["id"]
    shown = ee("traces", "show", first, "--store", str(recorded))
    assert shown.exit_code == 0 and "check_stock" in shown.stdout and "order_item" in shown.stdout


def test_approve_reject_and_filter(recorded: Path):
    ids = [r["id"] for r in json.loads(ee("traces", "list", "--store", str(recorded), "--json").stdout)]
    ok = ee("traces", "approve", ids[0][:10], ids[1], "--store", str(recorded), "--by", "alice", "--reason", "looks right")
    assert ok.exit_code == 0, ok.output
    assert ee("traces", "reject", ids[2], "--store", str(recorded), "--by", "bob").exit_code == 0
    approved = json.loads(ee("traces", "list", "--store", str(recorded), "--status", "approved", "--json").stdout)
    assert [r["id"] for r in approved] == ids[:2]
    assert approved[0]["approval_by"] == "alice" and approved[0]["approval_reason"] == "looks right"
    rejected = json.loads(ee("traces", "list", "--store", str(recorded), "--status", "rejected", "--json").stdout)
    assert [r["id"] for r in rejected] == [ids[2]]


def test_errors_exit_non_zero_with_a_clear_message(recorded: Path, tmp_path: Path):
    missing = ee("traces", "approve", "does-not-exist", "--store", str(recorded), "--by", "x")
    assert missing.exit_code == 1 and "No trajectory 'does-not-exist'" in missing.output
    no_store = ee("traces", "list", "--store", str(tmp_path / "nowhere"))
    assert no_store.exit_code == 1 and "No experience store" in no_store.output
    bad_status = ee("traces", "list", "--store", str(recorded), "--status", "maybe")
    assert bad_status.exit_code == 2
    assert ee("traces", "approve", "x", "--store", str(recorded)).exit_code == 2, "--by is required"


def test_export_jsonl_and_parquet(recorded: Path, tmp_path: Path):
    ids = [r["id"] for r in json.loads(ee("traces", "list", "--store", str(recorded), "--json").stdout)]
    ee("traces", "approve", ids[0], ids[1], "--store", str(recorded), "--by", "alice")
    out = tmp_path / "train.jsonl"
    result = ee("traces", "export", "--store", str(recorded), "--format", "jsonl", "--out", str(out))
    assert result.exit_code == 0 and "Wrote 2" in result.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and set(lines[0]) == {"messages", "tools"}
    roles = [m["role"] for m in lines[0]["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert lines[0]["tools"][0]["function"]["name"] == "check_stock"
    parquet = tmp_path / "train.parquet"
    assert ee("traces", "export", "--store", str(recorded), "--format", "parquet", "--out", str(parquet), "--status", "all").exit_code == 0
    frame = pl.read_parquet(parquet)
    assert frame.height == 3 and frame["messages"].list.len().to_list() == [6, 6, 6]
    assert frame["messages"][0][1]["tool_calls"][0]["function"]["name"] == "check_stock"


def test_ingest_command_and_exit_codes(react_graph, tmp_path: Path, tracer_provider, span_exporter):
    agent = record_experience(react_graph, app="shop", store=tmp_path / "live", tracer_provider=tracer_provider)
    agent.invoke(USER_TASK)
    agent.flush()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(spans_to_otlp_json(list(span_exporter.get_finished_spans()))) + "\n")
    target = tmp_path / "ingested"
    result = ee("traces", "ingest", str(good), "--store", str(target), "--approve-by", "importer", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ingested"], report["errors"]) == (1, [])
    assert LocalExperienceStore(target).trajectories()["approval"].to_list() == ["approved"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{broken\n")
    result = ee("traces", "ingest", str(bad), "--store", str(target))
    assert result.exit_code == 1
    assert "1 already stored" in result.stdout and "not valid JSON" in result.stdout


def test_ingest_of_nothing_creates_no_store(tmp_path: Path, store_path: Path):
    """A misspelt --store with a file that holds nothing to ingest leaves no stray store (with a fresh salt) behind."""
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "not_otlp.json").write_text(json.dumps({"hello": "world"}))
    for file in ("missing.jsonl", "empty.jsonl", "not_otlp.json"):
        target = tmp_path / "typo" / "store"
        result = ee("traces", "ingest", str(tmp_path / file), "--store", str(target))
        assert result.exit_code == 1, result.output
        assert not (tmp_path / "typo").exists(), f"{file}: {sorted(p.name for p in (tmp_path / 'typo').rglob('*'))}"
    LocalExperienceStore(store_path).write([sample_trajectory("t-1")])
    before = sorted((p.relative_to(store_path), p.stat().st_mtime_ns) for p in store_path.rglob("*"))
    result = ee("traces", "ingest", str(tmp_path / "missing.jsonl"), "--store", str(store_path))
    assert result.exit_code == 1
    assert sorted((p.relative_to(store_path), p.stat().st_mtime_ns) for p in store_path.rglob("*")) == before


def test_store_info_and_compact(recorded: Path):
    result = ee("store", "compact", "--store", str(recorded))
    assert result.exit_code == 0 and "Compacted 1" in result.stdout
    info = json.loads(ee("store", "info", "--store", str(recorded), "--json").stdout)
    assert info["trajectories"] == 3 and info["parquet_parts"]["trajectories"] == 1 and info["spool_segments"] == 0


def test_the_installed_ee_script_runs(recorded: Path):
    ee_script = Path(sys.executable).parent / "ee"
    help_text = subprocess.run([str(ee_script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "traces" in help_text and "store" in help_text
    version = subprocess.run([str(ee_script), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("ee-middleware ")
    failed = subprocess.run([str(ee_script), "traces", "show", "nope", "--store", str(recorded)], capture_output=True, text=True)
    assert failed.returncode == 1 and "error: No trajectory 'nope'" in failed.stderr


def test_overturning_a_decision_needs_force_and_the_history_keeps_both(recorded: Path):
    ids = [r["id"] for r in json.loads(ee("traces", "list", "--store", str(recorded), "--json").stdout)]
    assert ee("traces", "approve", ids[0], ids[1], "--store", str(recorded), "--by", "alice", "--reason", "good").exit_code == 0
    refused = ee("traces", "reject", ids[0][:10], ids[2], "--store", str(recorded), "--by", "bob")
    assert refused.exit_code == 1 and "opposite decision" in refused.stderr and "--force" in refused.stderr, refused.output
    assert f"{ids[0][:12]} was approved by alice" in refused.stderr
    listed = {r["id"]: r["approval"] for r in json.loads(ee("traces", "list", "--store", str(recorded), "--json").stdout)}
    assert listed == {ids[0]: "approved", ids[1]: "approved", ids[2]: "pending"}, "a refused batch records nothing"
    forced = ee("traces", "reject", ids[0], "--store", str(recorded), "--by", "bob", "--reason", "wrong tool", "--force")
    assert forced.exit_code == 0 and "overturned approved by alice" in forced.stdout, forced.output
    again = ee("traces", "approve", ids[0], "--store", str(recorded), "--by", "carol")
    assert again.exit_code == 1 and "was rejected by bob" in again.stderr
    assert ee("traces", "approve", ids[0], "--store", str(recorded), "--by", "carol", "--force").exit_code == 0

    shown = json.loads(ee("traces", "show", ids[0], "--store", str(recorded), "--json").stdout)
    assert shown["approval"]["status"] == "approved" and shown["approval"]["by"] == "carol" and len(shown["steps"]) == 3
    history = [(d["status"], d["by"], d["reason"], d["overrides_status"], d["overrides_by"]) for d in shown["approval_history"]]
    assert history == [
        ("approved", "alice", "good", None, None),
        ("rejected", "bob", "wrong tool", "approved", "alice"),
        ("approved", "carol", None, "rejected", "bob"),
    ]
    text = ee("traces", "show", ids[0], "--store", str(recorded))
    assert text.exit_code == 0 and "approval history" in text.stdout
    assert "approved by alice" in text.stdout and "rejected by bob" in text.stdout
    untouched = json.loads(ee("traces", "show", ids[2], "--store", str(recorded), "--json").stdout)
    assert untouched["approval_history"] == [] and untouched["approval"]["status"] == "pending"


def test_listed_ids_that_share_their_start_are_shown_long_enough_to_use(store_path: Path):
    ids = ["bfcl-simple_python_0", "bfcl-simple_python_1", "bfcl-simple_python_10", "3f2a9c1b7d0e4aa18e5f6a7b8c9d0e1f"]
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory(i) for i in ids])
    store.approve(["bfcl-simple_python_0"], by="alice")
    # unique among all ids, not only among those listed
    listed = runner.invoke(app, ["traces", "list", "--store", str(store_path), "--status", "pending"], env={"COLUMNS": "160"})
    assert listed.exit_code == 0, listed.output
    cells = [line.split()[0] for line in listed.stdout.splitlines() if " pending " in line]
    assert cells == ["bfcl-simple_python_1", "bfcl-simple_python_10", "3f2a9c1b7d0e"]
    for cell, full in zip(cells, ids[1:], strict=True):
        shown = ee("traces", "show", cell, "--store", str(store_path), "--json")
        assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == full, shown.output
    approved = ee("traces", "approve", "bfcl-simple_python_1", "--store", str(store_path), "--by", "alice")
    assert approved.stdout.startswith("Approved 1 trajectory(ies): bfcl-simple_python_1\n"), approved.output


def test_stored_text_that_looks_like_markup_is_shown_as_it_is(store_path: Path):
    """Code and brackets in tasks, observations and reasons (arr[i], list[/], [red]) were read as rich markup: shown
    altered ([i] became italics and vanished) or the command failed with 'unexpected MarkupError'."""
    from ee_middleware.records import Observation

    t = sample_trajectory("markup")
    t.steps[0].observation = Observation(content="x = arr[i] + list[/]")
    t = t.model_copy(update={"task": "fix [/] in [red]sort[i][/red]", "error": "boom [/]"})
    store = LocalExperienceStore(store_path)
    store.write([t])
    store.approve(["markup"], by="[bold]ann", reason="see [/i]")
    wide = {"COLUMNS": "200"}
    listed = runner.invoke(app, ["traces", "list", "--store", str(store_path)], env=wide)
    assert listed.exit_code == 0 and "fix [/] in [red]sort[i][/red]" in listed.stdout, listed.output
    shown = runner.invoke(app, ["traces", "show", "markup", "--store", str(store_path)], env=wide)
    assert shown.exit_code == 0, shown.output
    for text in ("x = arr[i] + list[/]", "task: fix [/] in [red]sort[i][/red]", "error: boom [/]", "[bold]ann", "see [/i]"):
        assert text in shown.stdout, text


def test_show_says_which_tools_a_step_was_offered_and_its_reasoning(store_path: Path):
    """Schema 1.4 records the tools offered at a decision (when they differ from the run's) and the model's reasoning
    before it; `ee traces show` printed neither, so a user could not see why a step's dataset row offers fewer tools, nor
    what a reasoning model thought."""
    t = sample_trajectory("seen")
    first = t.steps[0]
    action = first.action.model_copy(update={"reasoning": "The user asks for [pears]: look them up first."})
    steps = [first.model_copy(update={"tools": [], "action": action}), *t.steps[1:]]
    store = LocalExperienceStore(store_path)
    store.write([t.model_copy(update={"steps": steps})])
    shown = runner.invoke(app, ["traces", "show", "seen", "--store", str(store_path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "offered: no tool" in shown.stdout
    assert "reasoning: The user asks for [pears]: look them up first." in shown.stdout
    narrowed = sum(step.tools is not None for step in steps)
    assert 0 < narrowed < len(steps) and shown.stdout.count("offered:") == narrowed, "only where the step's tools were not the run's"


def test_show_marks_an_error_observation_once(tmp_path: Path) -> None:
    """A tool that answered "Error: no stock for kiwi" (LangGraph's ToolNode writes errors so) was shown by `ee traces
    show` as "error: Error: no stock for kiwi"; it is shown once, still marked, and other errors keep the "error:" mark."""
    from ee_middleware.records import Observation

    trajectory = sample_trajectory("err")
    steps = [s.model_copy() for s in trajectory.steps]
    steps[0] = steps[0].model_copy(update={"observation": Observation(content="Error: no stock for kiwi", is_error=True)})
    steps[1] = steps[1].model_copy(update={"observation": Observation(content="timed out", is_error=True)})
    store = LocalExperienceStore(tmp_path / "s")
    store.write([trajectory.model_copy(update={"steps": steps})])
    store.close()
    shown = CliRunner().invoke(app, ["traces", "show", "err", "--store", str(tmp_path / "s")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Error: no stock for kiwi" in shown.stdout and "error: Error" not in shown.stdout
    assert "error: timed out" in shown.stdout


def test_list_and_show_apply_the_store_s_current_rules_as_export_does(recorded: Path):
    """Privacy sweep defect 11: a rule added after capture (a later recorder's pattern: the store keeps the union) hid
    its values in exports and dataset builds, but ``ee traces list`` and ``show`` printed them as stored."""
    from ee_middleware.capture.redaction import RedactionRules
    from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction

    store = LocalExperienceStore(recorded)
    record_store_redaction(store, StoreRedaction(RedactionRules(patterns={"fruit": r"(?i)\bpears?\b"})))
    store.close()
    listed = ee("traces", "list", "--store", str(recorded), "--json")
    assert listed.exit_code == 0 and "pear" not in listed.stdout.lower() and "[REDACTED:fruit" in listed.stdout, listed.output
    first = json.loads(listed.stdout)[0]["id"]
    for args in (["--json"], []):
        shown = ee("traces", "show", first[:12], "--store", str(recorded), *args)
        assert shown.exit_code == 0, shown.output
        assert "pear" not in shown.stdout.lower() and "[REDACTED:fruit" in shown.stdout, shown.stdout
    table = ee("traces", "list", "--store", str(recorded))
    assert "pear" not in table.stdout.lower(), table.stdout


def test_show_labels_the_runs_own_error_apart_from_the_commands(tmp_path: Path) -> None:
    """A run's stored error was printed on stdout as "error: cancelled: CancelledError" by a command that exits 0, the
    form the CLI keeps for its own failures (on stderr, exit 1): scripts grepping for "error:" misread it (a sweep)."""
    trajectory = sample_trajectory("stopped").model_copy(update={"status": "interrupted", "error": "cancelled: CancelledError"})
    store = LocalExperienceStore(tmp_path / "s")
    store.write([trajectory])
    store.close()
    shown = CliRunner().invoke(app, ["traces", "show", "stopped", "--store", str(tmp_path / "s")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert "run error: cancelled: CancelledError" in lines and not any(line.startswith("error:") for line in lines), lines


def test_a_private_error_class_is_not_the_json_errors_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose marker this process may not read failed `--json` commands with "type": "_MarkerRefused", a private
    class no script can match on (a CLI sweep); it is named by the public class it is, StoreError."""
    import pathlib

    from tests.cli.json_failure import json_failure

    LocalExperienceStore(tmp_path / "s").close()
    read = pathlib.Path.read_bytes

    def refused(self: pathlib.Path) -> bytes:
        if self.name == "ee-store.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refused)
    listed = CliRunner().invoke(app, ["traces", "list", "--store", str(tmp_path / "s"), "--json"])
    assert listed.exit_code == 1, listed.output
    assert json_failure(listed)["type"] == "StoreError", listed.stdout


def test_list_json_says_each_runs_answer_and_why_it_stopped(tmp_path: Path) -> None:
    """The README says a stopped run's error says why (`ee traces list/show`), but `list --json` had no error (nor the
    answer) of any run (an async/review sweep)."""
    stopped = sample_trajectory("stopped").model_copy(update={"status": "interrupted", "error": "cancelled: CancelledError"})
    store = LocalExperienceStore(tmp_path / "s")
    store.write([stopped, sample_trajectory("done")])
    store.close()
    listed = CliRunner().invoke(app, ["traces", "list", "--store", str(tmp_path / "s"), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows["stopped"]["error"] == "cancelled: CancelledError" and rows["done"]["error"] is None
    assert rows["done"]["final_answer"] == sample_trajectory("done").final_answer
