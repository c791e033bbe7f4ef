"""``ee bfcl record-experts`` and ``ee replay run|list|show``: --json contracts, tables, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.records import ToolCall
from ee_middleware.store import LocalExperienceStore
from tests.replay.policies_for_tests import FixedCallsPolicy

runner = CliRunner()

ROLLOUT_FIELDS = {
    "schema_version", "id", "replay_id", "trajectory_id", "step_index", "branch_index", "action", "proposer",
    "observation", "is_error", "synthetic", "sandbox", "duration_ms", "created_at", "unrestored", "synthetic_source",
}  # fmt: skip


def ee(*args: str) -> object:
    return runner.invoke(app, list(args))


def test_record_experts_then_replay_then_inspect(tmp_path: Path) -> None:
    store = str(tmp_path / "experience")
    result = ee("bfcl", "record-experts", "--store", store, "--category", "multi_turn_base", "--limit", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["category"] == "multi_turn_base" and len(report["recorded"]) == 3 and report["failed"] == {}

    result = ee("replay", "run", "--store", store, "--sandbox", "bfcl", "--policy", "mutate", "--k", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 3 and summary["branches"] == 2 * summary["states"] and summary["fidelity_mismatches"] == 0

    result = ee("replay", "run", "--store", store, "--k", "2")
    assert result.exit_code == 0, result.output
    assert "already replayed earlier" in result.stdout and "branches stored" in result.stdout

    result = ee("replay", "list", "--store", store, "--json")
    assert result.exit_code == 0, result.output
    rollouts = json.loads(result.stdout)
    assert isinstance(rollouts, list) and len(rollouts) == summary["branches"]
    assert set(rollouts[0]) == ROLLOUT_FIELDS
    assert rollouts[0]["synthetic"] is False and rollouts[0]["sandbox"] == "bfcl" and rollouts[0]["proposer"]["policy"] == "mutate"

    trajectory_id = rollouts[0]["trajectory_id"]
    result = ee("replay", "show", trajectory_id[:10], "--store", store, "--json")
    shown = json.loads(result.stdout)
    assert result.exit_code == 0 and shown and {r["trajectory_id"] for r in shown} == {trajectory_id}

    result = ee("replay", "show", rollouts[0]["id"], "--store", store, "--json")
    assert result.exit_code == 0 and [r["id"] for r in json.loads(result.stdout)] == [rollouts[0]["id"]]

    result = ee("replay", "show", trajectory_id, "--store", store)
    assert result.exit_code == 0 and "expert" in result.stdout and "step 0" in result.stdout

    result = ee("replay", "list", "--store", store, "--limit", "3")
    assert result.exit_code == 0 and "3 rollouts" in result.stdout


def test_errors_are_one_red_line_and_exit_1(tmp_path: Path) -> None:
    missing = ee("replay", "run", "--store", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "No experience store" in missing.output
    ee("bfcl", "record-experts", "--store", str(tmp_path / "s"), "--limit", "1", "--no-progress")
    bad_sandbox = ee("replay", "run", "--store", str(tmp_path / "s"), "--sandbox", "nope")
    assert bad_sandbox.exit_code == 1 and "Unknown sandbox 'nope'" in bad_sandbox.output
    bad_policy = ee("replay", "run", "--store", str(tmp_path / "s"), "--policy", "telepathy")
    assert bad_policy.exit_code == 1 and "telepathy" in bad_policy.output
    down = ee("replay", "run", "--store", str(tmp_path / "s"), "--policy", "openai:http://127.0.0.1:9/v1#m")
    assert down.exit_code == 1 and "127.0.0.1:9" in down.output and "server" in down.output and "Bad options" not in down.output
    unknown = ee("replay", "show", "zzz", "--store", str(tmp_path / "s"))
    assert unknown.exit_code == 1 and "No trajectory or rollout 'zzz'" in unknown.output
    bad_category = ee("bfcl", "record-experts", "--store", str(tmp_path / "s"), "--category", "simple")
    assert bad_category.exit_code == 1 and "multi_turn_base" in bad_category.output


# --- fidelity errors: where the sandbox parts from the recording, with a short diff -------------------

_LEDGER_TOOL = {
    "type": "function",
    "function": {"name": "balance", "description": "An account's balance.", "parameters": {"type": "object", "properties": {}}},
}


def ledger_sandbox() -> Any:
    """A sandbox whose `balance` answers a little differently from what was recorded (named by spec in the test)."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda env: dict(env or {}), tools={"balance": lambda world: {**_LEDGER, "status": "frozen"}})


_LEDGER = {"account": "ACC-778201", "owner": "Mateo Rossi", "currency": "EUR", "opened": "2024-02-11", "status": "active", "balance": 120.5}


def _ledger_store(path: Path, ids: tuple[str, ...] = ("ledger-1",), *, tool: str = "balance", then: str | None = None) -> str:
    """A store of approved trajectories ``ids`` that each call ``tool`` once (``balance`` answers ``_LEDGER``), and then
    ``then`` when given; the first id."""
    from ee_middleware.store import LocalExperienceStore

    store = LocalExperienceStore(path)
    trajectories = [_ledger_trajectory(i, tool, then) for i in ids]
    store.write(trajectories)
    store.approve(list(ids), by="test")
    store.close()
    return ids[0]


def _ledger_trajectory(trajectory_id: str, tool: str, then: str | None = None) -> Any:
    import datetime as dt

    from ee_middleware.records import Trajectory

    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is my balance?"}]
    steps = []
    for index, name in enumerate([tool, *([then] if then else [])]):
        call_id = f"c{index + 1}"
        if index:
            messages.append({"role": "tool", "tool_call_id": f"c{index}", "content": json.dumps(_LEDGER)})
        steps.append(
            {
                "trajectory_id": trajectory_id,
                "index": index,
                "decision_index": index,
                "state": list(messages),
                "action": {"kind": "tool_call", "tool_call": {"id": call_id, "name": name, "arguments": {}}},
                "observation": {"content": json.dumps(_LEDGER)},
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}],
            }
        )
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return Trajectory.parse(
        {
            "id": trajectory_id,
            "app": "ledger",
            "tools": [_LEDGER_TOOL],
            "started_at": now,
            "ended_at": now,
            "environment": {},
            "messages": messages,
            "steps": steps,
        }
    )


def test_a_fidelity_error_shows_where_it_differs_with_a_diff(tmp_path: Path) -> None:
    store = str(tmp_path / "experience")
    trajectory_id = _ledger_store(Path(store))
    spec = "tests.cli.test_replay_cli:ledger_sandbox"
    result = runner.invoke(app, ["replay", "run", "--store", store, "--sandbox", spec, "--k", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["fidelity_mismatches"] == 1
    (example,) = summary["fidelity_examples"]
    recorded = json.dumps(_LEDGER)
    assert {"trajectory_id", "step", "tool", "recorded", "replayed"} <= set(example), "the fields --json always had"
    assert example["recorded"] == recorded[:300] and example["position"] == recorded.index('"active"') + 1
    assert '- "status": "active",' in example["diff"] and '+ "status": "frozen",' in example["diff"]

    table = runner.invoke(app, ["replay", "run", "--store", store, "--sandbox", spec, "--k", "1", "--seed", "1"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert f"fidelity error {trajectory_id[:12]} step 0 (balance): differs at character {example['position']}" in table.stdout
    assert '    - "status": "active",' in table.stdout and '    + "status": "frozen",' in table.stdout

    shown = runner.invoke(app, ["replay", "show", trajectory_id, "--store", store], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "fidelity error step 0, replay" in shown.stdout and '+ "status": "frozen",' in shown.stdout
    shown_json = runner.invoke(app, ["replay", "show", trajectory_id, "--store", store, "--json"])
    assert isinstance(json.loads(shown_json.stdout), list), "--json of show stays a list of rollouts"


def test_policy_settings_reach_the_policy_and_shape_the_replay_id(tmp_path: Path) -> None:
    from ee_middleware.replay.config import ReplayConfig

    plain = ReplayConfig(store=tmp_path)
    tuned = ReplayConfig(store=tmp_path, policy_settings={"invalid_share": 0.3})
    assert tuned.policy_options() == {"invalid_share": 0.3} and plain.policy_options() == {}
    assert tuned.replay_id != plain.replay_id, "settings that shape rollouts make another replay configuration"

    store = str(tmp_path / "experience")
    _ledger_store(Path(store))
    spec = "tests.cli.test_replay_cli:ledger_sandbox"
    bad_value = ee("replay", "run", "--store", store, "--sandbox", spec, "--policy-setting", "invalid_share=2")
    assert bad_value.exit_code == 1 and "invalid_share must be a number between 0 and 1, got 2" in bad_value.output
    unknown = ee("replay", "run", "--store", store, "--sandbox", spec, "--policy-setting", "telepathy=1")
    assert unknown.exit_code == 1 and "telepathy" in unknown.output
    malformed = ee("replay", "run", "--store", store, "--sandbox", spec, "--policy-setting", "invalid_share")
    assert malformed.exit_code == 1 and "KEY=VALUE" in malformed.output
    ok = ee("replay", "run", "--store", store, "--sandbox", spec, "--policy-setting", "invalid_share=0.3", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["replay_id"] == ReplayConfig(store=store, sandbox=spec, policy_settings={"invalid_share": 0.3}).replay_id


def test_show_lists_unrestorable_steps_with_what_the_sandbox_received(tmp_path: Path) -> None:
    from tests.replay.test_privacy import _replay, _store, _trajectory

    store, redactor = _store(tmp_path, vault=False)
    trajectory = _trajectory(redactor)
    store.write([trajectory])
    store.approve([trajectory.id], by="test")
    bob = redactor.redact_text("bob@example.com")
    outcome = _replay(store, trajectory, [ToolCall(id="a", name="find_user", arguments={"email": bob})])
    assert outcome.record.unrestorable == 1
    store.write_replay(outcome.record, outcome.rollouts)
    store.close()

    shown = runner.invoke(app, ["replay", "show", trajectory.id, "--store", str(tmp_path / "experience")], terminal_width=400)
    assert shown.exit_code == 0, shown.output
    ann = redactor.redact_text("ann@example.com")
    text = " ".join(shown.stdout.split())
    assert "unrestorable step 0, replay r (find_user): the expert's email argument(s) were redacted" in text, text
    assert f"the sandbox received {ann}; its observation was not checked" in text
    assert "no redaction vault (record with vault=True to replay real values)" in text
    assert "unrestorable step 1" not in text, "the profile step was restored: nothing to say"


def test_the_summary_counts_the_sandboxs_own_failures(tmp_path: Path) -> None:
    from tests.trainers.datasets.test_sandbox_failures import MEMORY_MB, POLICY, SANDBOX, TRAJECTORIES, _trajectory

    root = tmp_path / "experience"
    store = LocalExperienceStore(root, create=True)
    store.write([_trajectory(i) for i in range(TRAJECTORIES)])
    store.approve([f"traj-{i}" for i in range(TRAJECTORIES)], by="test")
    store.close()
    args = ["replay", "run", "--store", str(root), "--sandbox", SANDBOX, "--policy", POLICY, "--k", "4", "--isolation", "subprocess"]
    result = runner.invoke(app, [*args, "--tool-timeout", "1", "--memory-mb", str(MEMORY_MB), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "of them the sandbox's own failures (left out of datasets)" in result.output
    assert "sandbox failures: crash=2, memory=2, timeout=2" in " ".join(result.output.split())


def test_show_prints_stored_text_as_it_is_not_as_markup(tmp_path: Path) -> None:
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory

    root = tmp_path / "experience"
    store = LocalExperienceStore(root, create=True)
    trajectory = sample_trajectory("t-markup").model_copy(update={"task": "sum arr[i] for [red] rows [/]"})
    trajectory.steps[0].observation.content = "[bold]x[/] = arr[i]"
    store.write([trajectory])
    rollout = sample_rollout("r-1", trajectory.id, 0, 0)
    rollout.observation.content = "Error: list[/] index [i] out of range"
    store.write_replay(sample_replay_record(trajectory.id, branches=1), [rollout])
    store.close()
    shown = runner.invoke(app, ["replay", "show", trajectory.id, "--store", str(root)], terminal_width=400)
    assert shown.exit_code == 0, shown.output  # was: "unexpected MarkupError" on the closing tag [/]
    text = " ".join(shown.stdout.split())
    assert "task: sum arr[i] for [red] rows [/]" in text
    assert "[bold]x[/]" in text and "list[/] index [i]" in text  # (table cells wrap)


# --- ids in tables and lines: as long as it takes to tell them apart, and each one resolves ---------------


def test_replay_run_prints_ids_that_share_their_start_long_enough_to_use(tmp_path: Path) -> None:
    """Ids were cut to 12 characters: ``ledger-account-1`` and ``ledger-account-2`` both read ``ledger-accou``."""
    root = tmp_path / "experience"
    _ledger_store(root, ("ledger-account-1", "ledger-account-2"))
    _ledger_store(root, ("ledger-account-3",), tool="transfer", then="balance")  # no sandbox has transfer: skipped
    spec = "tests.cli.test_replay_cli:ledger_sandbox"
    result = runner.invoke(
        app, ["replay", "run", "--store", str(root), "--sandbox", spec, "--k", "1", "--no-progress"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "fidelity error ledger-account-1 step 0 (balance)" in result.stdout, result.stdout
    assert "fidelity error ledger-account-2 step 0 (balance)" in result.stdout
    assert "skipped ledger-account-3: " in result.stdout
    for shown in ("ledger-account-1", "ledger-account-2", "ledger-account-3"):
        found = ee("traces", "show", shown, "--store", str(root), "--json")
        assert found.exit_code == 0 and json.loads(found.stdout)["id"] == shown, found.output

    json_result = runner.invoke(app, ["replay", "run", "--store", str(root), "--sandbox", spec, "--k", "1", "--seed", "2", "--json"])
    summary = json.loads(json_result.stdout)
    assert sorted(e["trajectory_id"] for e in summary["fidelity_examples"]) == ["ledger-account-1", "ledger-account-2"]
    assert list(summary["skipped"]) == ["ledger-account-3"], "--json keeps whole ids"


def test_replay_list_shows_ids_that_share_their_start_long_enough_to_use(tmp_path: Path) -> None:
    """The id and trajectory columns were cut to 10 characters: BFCL's ``bfcl-multi_turn_base_12`` and ``..._13`` both
    read ``bfcl-multi``, and a rollout ``bfcl-multi_turn_base_12-r0`` too; none of them could be pasted back."""
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory

    root = tmp_path / "experience"
    store = LocalExperienceStore(root, create=True)
    trajectories = ["bfcl-multi_turn_base_12", "bfcl-multi_turn_base_13", "bfcl-multi_turn_base_130"]
    store.write([sample_trajectory(t) for t in trajectories])
    rollouts = {
        "bfcl-multi_turn_base_12-r0": "bfcl-multi_turn_base_12",
        "bfcl-multi_turn_base_12-r1": "bfcl-multi_turn_base_12",
        "5be0c2d9a1f4-0001": "bfcl-multi_turn_base_13",
        "5be0c2d9a1f4-0002": "bfcl-multi_turn_base_130",
    }
    for n, (rollout, trajectory) in enumerate(rollouts.items()):
        store.write_replay(sample_replay_record(trajectory, branches=1), [sample_rollout(rollout, trajectory, 0, n)])
    store.close()

    listed = runner.invoke(app, ["replay", "list", "--store", str(root)], env={"COLUMNS": "160"})
    assert listed.exit_code == 0, listed.output
    rows = [line.split()[:2] for line in listed.stdout.splitlines() if "lookup(" in line]
    assert len(rows) == 4 and len({tuple(row) for row in rows}) == 4, listed.stdout
    for rollout_cell, trajectory_cell in rows:
        rollout = json.loads(ee("replay", "show", rollout_cell, "--store", str(root), "--json").stdout)
        assert len(rollout) == 1 and rollout[0]["id"].startswith(rollout_cell), (rollout_cell, rollout)
        assert rollouts[rollout[0]["id"]] == rollout[0]["trajectory_id"]
        trajectory = ee("traces", "show", trajectory_cell, "--store", str(root), "--json")
        assert trajectory.exit_code == 0 and json.loads(trajectory.stdout)["id"] == rollout[0]["trajectory_id"], trajectory.output
        only = ee("replay", "list", "--store", str(root), "--trajectory", trajectory_cell, "--json")
        assert only.exit_code == 0 and {r["trajectory_id"] for r in json.loads(only.stdout)} == {rollout[0]["trajectory_id"]}

    as_json = json.loads(ee("replay", "list", "--store", str(root), "--json").stdout)
    assert sorted(r["id"] for r in as_json) == sorted(rollouts), "--json keeps whole ids"
    for trajectory, count in (("bfcl-multi_turn_base_12", 2), ("bfcl-multi_turn_base_13", 1)):  # the filters pick from the rollouts read
        filtered = ee("replay", "list", "--store", str(root), "--replay-id", "replay-1", "-t", trajectory, "--json")
        assert len(json.loads(filtered.stdout)) == count, filtered.output


# --- an empty answer says why it is empty ----------------------------------------------------------------


def _file_with(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_replay_run_says_why_nothing_was_replayed(tmp_path: Path) -> None:
    """A store of pending trajectories (recorded without approve_if) replayed nothing: a table of zeros, exit 0, no
    word on why; a misspelt --app the same."""
    from ee_middleware.testing.store_conformance import sample_trajectory

    root = tmp_path / "experience"
    store = LocalExperienceStore(root, create=True)
    store.write([sample_trajectory(f"t-{i}", app="shop") for i in range(3)])
    store.reject(["t-2"], by="alice")
    store.close()
    spec = "tests.cli.test_replay_cli:ledger_sandbox"
    pending = ee("replay", "run", "--store", str(root), "--sandbox", spec, "--no-progress")
    assert pending.exit_code == 0, pending.output
    assert "trajectories replayed" in pending.stdout
    note = " ".join(pending.stderr.split())
    assert f"no approved trajectories in {root} to replay (2 pending, 1 rejected)" in note, note
    assert "ee traces approve" in note
    as_json = ee("replay", "run", "--store", str(root), "--sandbox", spec, "--json")
    assert json.loads(as_json.stdout)["selected"] == 0 and "ee traces approve" in as_json.stderr, "--json stays JSON on stdout"

    misspelt = ee("replay", "run", "--store", str(root), "--sandbox", spec, "--app", "shopp", "--no-progress")
    note = " ".join(misspelt.stderr.split())
    assert misspelt.exit_code == 0 and f"no trajectories of app 'shopp' in {root} (its apps: shop)" in note, note

    empty = tmp_path / "empty"
    LocalExperienceStore(empty, create=True).close()
    nothing = ee("replay", "run", "--store", str(empty), "--sandbox", spec, "--no-progress")
    assert nothing.exit_code == 0 and f"no trajectories in {empty} to replay" in " ".join(nothing.stderr.split())

    store = LocalExperienceStore(root)
    store.approve(["t-0"], by="alice")
    store.close()
    # sweep U: a [replay] trajectory_ids list that names none of them was said to be a store with no approved trajectory
    listed = _file_with(tmp_path / "ids.toml", f'[replay]\ntrajectory_ids = ["nope"]\nsandbox = "{spec}"\n')
    chosen = ee("replay", "run", "--store", str(root), "--config", str(listed), "--no-progress")
    note = " ".join(chosen.stderr.split())
    assert chosen.exit_code == 0 and f"none of the trajectory_ids given ('nope') is an approved trajectory in {root}, which holds 1" in note
    done = ee("replay", "run", "--store", str(root), "--sandbox", spec, "--no-progress")
    # (the ledger sandbox lacks the sample's tool: the one trajectory selected is skipped, which replays nothing)
    assert done.exit_code == 1 and "error: nothing was replayed" in done.stderr, done.stderr
    assert "no approved" not in done.stderr and "no trajectories" not in done.stderr, done.stderr
    again = ee("replay", "run", "--store", str(root), "--sandbox", spec, "--no-progress")
    assert again.exit_code == 0 and "no approved" not in again.stderr, "all replayed already: the table says so"


def test_replay_show_says_why_a_trajectory_has_no_rollouts(tmp_path: Path) -> None:
    """``ee replay show`` printed the trajectory's header line and nothing else, exit 0, when it had no rollouts (never
    replayed, skipped, or a --replay-id it has none under); and a rollout id was shown whatever --replay-id said."""
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory

    root = tmp_path / "experience"
    store = LocalExperienceStore(root, create=True)
    store.write([sample_trajectory(t) for t in ("never", "skipped", "failed", "replayed")])
    store.write_replay(sample_replay_record("skipped", status="skipped"), [])
    store.write_replay(sample_replay_record("failed", status="failed"), [])
    store.write_replay(sample_replay_record("replayed", branches=1), [sample_rollout("r-1", "replayed", 0, 0)])
    store.write([sample_trajectory("other")])
    store.write_replay(sample_replay_record("other", replay_id="replay-2", branches=1), [sample_rollout("r-2", "other", 0, 0)])
    store.close()

    def show(*args: str) -> Any:
        result = runner.invoke(app, ["replay", "show", *args, "--store", str(root)], env={"COLUMNS": "200"})
        return result.exit_code, " ".join(result.stdout.split()), result

    code, text, _ = show("never")
    assert code == 0 and "No rollouts of never: it has not been replayed (its approval: pending;" in text, text
    assert "ee replay run replays approved trajectories" in text
    code, text, _ = show("skipped")
    assert code == 0 and "No rollouts of skipped: replay replay-1 skipped it (skipped on purpose)." in text, text
    code, text, _ = show("failed")
    assert code == 0 and "No rollouts of failed: replay replay-1 failed on it (failed on purpose), and its next run retries it." in text, (
        text
    )
    code, text, _ = show("replayed", "--replay-id", "replay-2")
    assert code == 0 and "No rollouts of replayed under replay replay-2; it has rollouts under replay replay-1." in text, text
    code, text, _ = show("replayed")
    assert code == 0 and "No rollouts" not in text and "#0 mutate" in text, text
    code, text, result = show("r-1", "--replay-id", "replay-2")
    assert code == 1 and "Rollout r-1 is of replay replay-1, not replay-2" in result.output, result.output
    assert show("r-1", "--replay-id", "replay-1")[0] == 0
    code, text, result = show("replayed", "--replay-id", "replay-3")  # no replay of that id at all: a typo
    assert code == 1 and "--replay-id replay-3: " in result.output and "holds no replay of that id" in result.output
    as_json = runner.invoke(app, ["replay", "show", "never", "--store", str(root), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == []


# --- observations in tables: an error is marked on every row, and a tool that returned nothing says so -------------


def desk_sandbox() -> Any:
    """A booking desk whose `cancel` raises for an unknown booking and whose `bookings` lists none (a tool returning [])."""
    from ee_middleware.replay import PythonSandbox

    def cancel(world: dict[str, Any], booking_id: str) -> str:
        if booking_id not in world["bookings"]:
            raise ValueError(f"no booking {booking_id}")
        del world["bookings"][booking_id]
        return f"cancelled {booking_id}"

    def bookings(world: dict[str, Any]) -> list[str]:
        return sorted(world["bookings"])

    return PythonSandbox(lambda env: {"bookings": {}}, tools={"cancel": cancel, "bookings": bookings}, format_error=str)


_DESK_TOOLS = [
    {"type": "function", "function": {"name": "cancel", "description": "Cancel a booking.", "parameters": {
        "type": "object", "properties": {"booking_id": {"type": "string"}}, "required": ["booking_id"]}}},
    {"type": "function", "function": {"name": "bookings", "description": "The bookings.", "parameters": {
        "type": "object", "properties": {}}}},
]  # fmt: skip


def _desk_trajectory() -> Any:
    """Step 0 cancels an unknown booking (an error observation, as LangChain's handle_tool_error showed it), step 1 lists
    the bookings and gets nothing back (LangChain stores a tool's [] as '')."""
    import datetime as dt

    from ee_middleware.records import Trajectory

    calls = [("c1", "cancel", {"booking_id": "B-9"}, "no booking B-9", True), ("c2", "bookings", {}, "", False)]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Cancel B-9, then show my bookings."}]
    steps = []
    for index, (call_id, name, arguments, observation, is_error) in enumerate(calls):
        steps.append(
            {
                "trajectory_id": "desk-1",
                "index": index,
                "decision_index": index,
                "state": list(messages),
                "action": {"kind": "tool_call", "tool_call": {"id": call_id, "name": name, "arguments": arguments}},
                "observation": {"content": observation, "is_error": is_error},
            }
        )
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": observation},
        ]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return Trajectory.parse(
        {
            "id": "desk-1",
            "app": "desk",
            "tools": _DESK_TOOLS,
            "started_at": now,
            "ended_at": now,
            "environment": {},
            "messages": messages,
            "steps": steps,
        }
    )


def test_tables_mark_expert_errors_and_empty_observations(tmp_path: Path) -> None:
    """`ee replay show` marked an alternative's error observation but not the expert's (the same text, one row with
    'error:' and one without), and an empty observation (a tool that returned nothing) was a blank cell, as if there were
    none: in `replay show`, `replay list` and `traces show`."""
    root = tmp_path / "experience"
    store = LocalExperienceStore(root, create=True)
    store.write([_desk_trajectory()])
    store.approve(["desk-1"], by="test")
    store.close()
    spec = "tests.cli.test_replay_cli:desk_sandbox"
    result = ee("replay", "run", "--store", str(root), "--sandbox", spec, "--k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fidelity_mismatches"] == 0

    shown = runner.invoke(app, ["replay", "show", "desk-1", "--store", str(root)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    expert_rows = [line for line in shown.stdout.splitlines() if "expert" in line]
    assert len(expert_rows) == 2
    assert "error: no booking B-9" in expert_rows[0]
    assert "(empty)" in expert_rows[1] and "error" not in expert_rows[1]

    rollouts = json.loads(ee("replay", "list", "--store", str(root), "--json").stdout)
    empty = [r for r in rollouts if r["observation"]["content"] == ""]
    assert empty, "the alternatives include a call of `bookings`, which returns nothing"
    listed = runner.invoke(app, ["replay", "list", "--store", str(root)], terminal_width=200)
    assert listed.exit_code == 0 and listed.stdout.count("(empty)") == len(empty)

    traced = runner.invoke(app, ["traces", "show", "desk-1", "--store", str(root)], terminal_width=200)
    assert traced.exit_code == 0, traced.output
    assert "error: no booking B-9" in traced.stdout
    assert [line for line in traced.stdout.splitlines() if "bookings" in line and "(empty)" in line]


# --- a help desk recorded with a real create_agent: a refused last call before a final answer, and "Error: ..." texts ---


_TICKETS = {"T-1": "printer on floor 2 is jammed"}


def helpdesk_sandbox() -> Any:
    """The help desk's ticket lookup, which answers an unknown ticket with an "Error: ..." string as the app's does (marked
    an error by is_error_result); its send_email is not provided, so replay never sends mail."""
    from ee_middleware.replay import PythonSandbox

    def get_ticket(world: dict[str, Any], ticket_id: str) -> str:
        return world["tickets"].get(ticket_id, f"Error: no ticket {ticket_id}")

    return PythonSandbox(
        lambda env: {"tickets": dict(env["tickets"])},
        tools={"get_ticket": get_ticket},
        is_error_result=lambda value: str(value).startswith("Error:"),
    )


class HelpdeskLookups(FixedCallsPolicy):
    """Proposes looking up a ticket that does not exist, at every state (``package.module:Class`` spec)."""

    name = "lookups"
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("get_ticket", {"ticket_id": "T-404"})]


def _helpdesk_store(root: Path) -> str:
    """One approved run of a real create_agent help desk: it looks up T-1, emails the reporter, then answers in plain
    text; the trajectory's id."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from tests.conftest import record_once

    @tool
    def get_ticket(ticket_id: str) -> str:
        """A ticket's description."""
        return _TICKETS.get(ticket_id, f"Error: no ticket {ticket_id}")

    @tool
    def send_email(to: str, body: str) -> str:
        """Email someone."""
        return f"sent to {to}"

    script = [
        AIMessage(content="", tool_calls=[tool_call("get_ticket", ticket_id="T-1")]),
        AIMessage(content="", tool_calls=[tool_call("send_email", to="ana@example.com", body="We are on it.")]),
        AIMessage(content="I emailed Ana: the jammed printer is being fixed."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [get_ticket, send_email])
    agent = record_experience(graph, app="helpdesk", store=root, environment=lambda inputs, config: {"tickets": dict(_TICKETS)})
    trajectory = record_once(agent, root, {"messages": [("user", "What is T-1 about? Tell Ana we are on it.")]})
    assert trajectory.final_answer and [s.action.tool_call.name for s in trajectory.steps if s.action.tool_call] == [
        "get_ticket",
        "send_email",
    ]
    store = LocalExperienceStore(root)
    store.approve([trajectory.id], by="test")
    store.close()
    return trajectory.id


def test_a_refused_last_call_followed_by_a_final_answer_is_not_said_to_have_nothing_after_it(tmp_path: Path) -> None:
    """The help desk emails, then answers in plain text; send_email has no sandbox, so its call is not executed at the
    trajectory's last tool-call step. ``ee replay run`` said "nothing follows the call (a structured answer given as a
    tool call)", though the final answer follows it: it now says what is true in both cases."""
    root = tmp_path / "experience"
    _helpdesk_store(root)
    sandbox, policy = "tests.cli.test_replay_cli:helpdesk_sandbox", "tests.cli.test_replay_cli:HelpdeskLookups"
    result = runner.invoke(
        app,
        ["replay", "run", "--store", str(root), "--sandbox", sandbox, "--policy", policy, "--k", "1", "--no-progress"],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.startswith("not executed")]
    assert "send_email=1" in line and "nothing follows" not in line and "structured answer given as a tool call)" not in line
    assert "no later state depends on it" in line and "only the final answer, if any, comes after it" in line


def test_show_prints_an_error_text_that_says_error_once(tmp_path: Path) -> None:
    """A rollout whose tool answered "Error: no ticket T-404" (an error) was shown as "error: Error: no ticket T-404": the
    text is shown once, its own "Error:" marked red as the "error:" mark is; an error without the word keeps the mark."""
    root = tmp_path / "experience"
    trajectory_id = _helpdesk_store(root)
    sandbox, policy = "tests.cli.test_replay_cli:helpdesk_sandbox", "tests.cli.test_replay_cli:HelpdeskLookups"
    ran = ee("replay", "run", "--store", str(root), "--sandbox", sandbox, "--policy", policy, "--k", "1", "--json")
    assert ran.exit_code == 0 and json.loads(ran.stdout)["errors"] == 2, ran.output
    shown = runner.invoke(app, ["replay", "show", trajectory_id, "--store", str(root)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.stdout.splitlines() if "lookups" in line]
    assert len(rows) == 2 and all("Error: no ticket T-404" in row and "error: Error" not in row for row in rows), shown.stdout
    colour = runner.invoke(app, ["replay", "show", trajectory_id, "--store", str(root)], env={"COLUMNS": "300", "FORCE_COLOR": "1"})
    assert colour.stdout.count("\x1b[31mError:\x1b[0m no ticket T-404") == 2, colour.stdout


# --- a key-value app recorded with a real create_agent (tests/replay/kv_world.py) ---------------------------------------

KV_SANDBOX = "tests.replay.kv_world:make_sandbox"


@pytest.mark.parametrize("how", [[], ["--isolation", "subprocess"], ["--workers", "2"]], ids=["in-process", "subprocess", "workers"])
def test_what_tools_print_goes_to_stderr_and_json_stdout_is_the_summary_alone(tmp_path: Path, how: list[str]) -> None:
    """A tool that prints (a print, a write to file descriptor 1, a child process it starts) wrote into `ee replay run
    --json`'s stdout before the summary, in process, in the subprocess sandbox's child and in the workers, so `| jq` and
    any script reading the summary failed. Now the job's file descriptor 1 is stderr: stdout is the JSON alone, and what
    the tools printed is on stderr. (The real `ee` process: a test runner's captured sys.stdout never sees file
    descriptor 1.)"""
    import os
    import subprocess
    import sys

    from tests.replay.kv_world import PRINTED, record_kv

    root = tmp_path / "experience"
    record_kv(root, [("note", {"text": "hello"}), ("kv_get", {"key": "a"})], runs=2)
    command = [sys.executable, "-m", "ee_middleware.cli", "replay", "run", "--store", str(root), "--sandbox", KV_SANDBOX]
    command += ["--policy", "tests.replay.kv_world:Notes", "--k", "1", "--no-progress", "--json", *how]
    repository = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repository), os.environ.get("PYTHONPATH", "")])}
    ran = subprocess.run(command, capture_output=True, text=True, cwd=repository, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert PRINTED not in ran.stdout, ran.stdout
    summary = json.loads(ran.stdout)
    assert summary["done"] == 2 and summary["branches"] == 4, summary
    for where in ("by print", "on fd 1", "by a child process"):  # not lost: on stderr
        assert f"{PRINTED} {where}: hello" in ran.stderr and f"{PRINTED} {where}: from an alternative" in ran.stderr, ran.stderr


def test_an_expert_call_the_sandbox_fails_on_fails_the_trajectory_and_the_next_run_retries_it(tmp_path: Path) -> None:
    """The expert's kv_set takes longer in the sandbox than --tool-timeout: the subprocess sandbox kills its child and
    restores the world to before the call. Replay went on from there: step 1's kv_get answered 'Error: no key s' where
    production read 9, its alternatives were branched from that wrong world and stored, the trajectory was recorded done
    with two 'fidelity mismatches' (the first the sandbox's own time-out), and a re-run did not retry it. Now the
    trajectory fails there, saying which step, tool and failure, keeps no branch, and the next run retries it."""
    from tests.replay.kv_world import record_kv

    root = tmp_path / "experience"
    [trajectory_id] = record_kv(root, [("kv_set", {"key": "s", "value": "9"}), ("kv_get", {"key": "s"})], environment={"slow_keys": ["s"]})
    args = ["replay", "run", "--store", str(root), "--sandbox", KV_SANDBOX, "--policy", "tests.replay.kv_world:Lookups", "--k", "1"]
    args += ["--isolation", "subprocess", "--tool-timeout", "1", "--no-progress"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 0 and summary["branches"] == 0 and summary["fidelity_mismatches"] == 0, summary
    reason = summary["failed"][trajectory_id]
    assert reason.startswith("the sandbox could not execute the expert's call at step 0 (kv_set): timeout: Error: tool 'kv_set' timed out")
    assert "the next run retries it" in reason and "--tool-timeout" in reason

    store = LocalExperienceStore(root)
    [record] = store.replays().iter_rows(named=True)
    assert record["status"] == "failed" and record["reason"] == reason
    assert json.loads(record["details_json"])["expert_sandbox_failure"] == {
        "step": 0, "tool": "kv_set", "failure": "timeout", "observation": reason.split("timeout: ", 1)[1].split(". Its world")[0] + ".",
    }  # fmt: skip
    assert store.rollouts().is_empty(), "no branch of the trajectory is kept"
    store.close()

    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 1 and json.loads(again.stdout)["selected"] == 1, again.output
    table = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert "failed (retried next run)" in table.stdout and f"failed {trajectory_id[:12]}" in table.stdout, table.output


def test_a_run_that_skipped_every_trajectory_it_selected_exits_1_and_says_how_to_replay_them(tmp_path: Path) -> None:
    """Every trajectory's world snapshot was missing: the run skipped them all and exited 0 with 'error': null, so a
    nightly job passed while replaying nothing, and once the snapshots were back a plain re-run replayed nothing either
    (skipped ones are done for the configuration) without a word of --again (a user-journey sweep)."""
    from tests.replay.kv_world import record_kv

    root, snapshot = tmp_path / "experience", tmp_path / "kv-snapshot.json"
    ids = record_kv(
        root, [("kv_set", {"key": "s", "value": "9"}), ("kv_get", {"key": "s"})], runs=2, environment={"snapshot": str(snapshot)}
    )
    args = ["replay", "run", "--store", str(root), "--sandbox", "tests.replay.kv_world:make_snapshot_sandbox"]
    args += ["--policy", "tests.replay.kv_world:Lookups", "--k", "1", "--no-progress"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 0 and sorted(summary["skipped"]) == sorted(ids), summary
    assert summary["error"].startswith("nothing was replayed: every one of the 2 trajectories this run selected was skipped")
    assert "environment cannot be rebuilt" in summary["error"] and "replay with --again" in summary["error"]
    assert f"error: {summary['error']}" in result.stderr

    snapshot.write_text(json.dumps({"kv": {}}), encoding="utf-8")
    plain = runner.invoke(app, [*args, "--json"])
    assert plain.exit_code == 0 and json.loads(plain.stdout)["already_done"] == 2, plain.output
    again = runner.invoke(app, [*args, "--again", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["done"] == 2, again.output


def test_a_run_whose_new_trajectories_all_answered_without_a_tool_exits_0(tmp_path: Path) -> None:
    """A night whose only new approved trajectories are plain answers (no tool called) replays nothing and has nothing to
    fix: it exits 0 without the note of --again (a review of the rule above)."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel

    root = tmp_path / "experience"
    graph = create_agent(ScriptedChatModel(script=[AIMessage(content="Hello!")]), [])
    agent = record_experience(graph, app="kv", store=root, approve_if=lambda t: True)
    agent.invoke({"messages": [("user", "hi")]})
    agent.flush()
    agent.recorder.close()
    args = ["replay", "run", "--store", str(root), "--sandbox", KV_SANDBOX, "--policy", "tests.replay.kv_world:Lookups", "--k", "1"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stdout and "--again" not in result.stderr and "error:" not in result.stderr, result.output


def test_a_run_that_skipped_some_trajectories_notes_how_to_replay_them(tmp_path: Path) -> None:
    from tests.replay.kv_world import record_kv

    root, snapshot = tmp_path / "experience", tmp_path / "kv-snapshot.json"
    record_kv(root, [("kv_set", {"key": "s", "value": "9"}), ("kv_get", {"key": "s"})], environment={"snapshot": str(snapshot)})
    snapshot.write_text(json.dumps({"kv": {}}), encoding="utf-8")
    record_kv(
        root, [("kv_set", {"key": "s", "value": "9"}), ("kv_get", {"key": "s"})], environment={"snapshot": str(tmp_path / "gone.json")}
    )
    args = ["replay", "run", "--store", str(root), "--sandbox", "tests.replay.kv_world:make_snapshot_sandbox"]
    result = runner.invoke(app, [*args, "--policy", "tests.replay.kv_world:Lookups", "--k", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "note: A skipped trajectory is done for this configuration" in result.stderr and "--again" in result.stderr


def test_a_sandbox_failure_on_the_expert_s_last_call_keeps_the_trajectory_and_its_branches(tmp_path: Path) -> None:
    """The expert's LAST call (kv_set) takes longer in the sandbox than --tool-timeout. No later state depends on it,
    yet since 4b1e644 the trajectory failed: the branches of every earlier step were dropped, each run exited 1 and
    retried it with the same result. Now it is done with its rollouts (the last state's alternatives too), the record's
    details and the summary say which call failed and how, and a re-run has nothing left to replay."""
    from tests.replay.kv_world import record_kv

    root = tmp_path / "experience"
    calls = [("kv_get", {"key": "a"}), ("kv_get", {"key": "b"}), ("kv_set", {"key": "s", "value": "9"})]
    [trajectory_id] = record_kv(root, calls, environment={"slow_keys": ["s"]})
    args = ["replay", "run", "--store", str(root), "--sandbox", KV_SANDBOX, "--policy", "tests.replay.kv_world:Lookups", "--k", "1"]
    args += ["--isolation", "subprocess", "--tool-timeout", "1", "--no-progress"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"], summary["states"], summary["branches"]) == (1, {}, 3, 3), summary
    assert summary["final_call_sandbox_failures"] == {"kv_set": 1} and summary["fidelity_mismatches"] == 0, summary

    store = LocalExperienceStore(root)
    [record] = store.replays().iter_rows(named=True)
    assert (record["trajectory_id"], record["status"], record["reason"]) == (trajectory_id, "done", None)
    failure = json.loads(record["details_json"])["expert_sandbox_failure"]
    assert (failure["step"], failure["tool"], failure["failure"]) == (2, "kv_set", "timeout"), failure
    assert failure["observation"].startswith("Error: tool 'kv_set' timed out"), failure
    assert sorted(store.rollouts()["step_index"]) == [0, 1, 2], "the branches of every state are kept"
    store.close()

    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["selected"] == 0, again.output
    table = runner.invoke(app, [*args, "--again"], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    [line] = [line for line in table.stdout.splitlines() if line.startswith("sandbox failed")]
    assert "last tool call: kv_set=1" in line and "--tool-timeout" in line, line


def test_the_stored_fidelity_diff_is_the_one_the_run_printed(tmp_path: Path) -> None:
    """A tool that tells the time answers differently in the sandbox: `ee replay run --json` showed the diff's sandbox line
    as '+2026-12-01T04:10:17.917664', but the store redacted the runner's diff again and '+2026-12-01' read as a phone
    number, so `ee replay show` (and the record's details) showed '[REDACTED:phone:...]T04:10:17.917664'. The store now
    redacts each diff line without its marker: what was printed is what is kept."""
    from tests.replay.kv_world import PRODUCTION_CLOCK, SANDBOX_CLOCK, record_kv

    root = tmp_path / "experience"
    [trajectory_id] = record_kv(root, [("clock", {})])
    result = ee(
        "replay", "run", "--store", str(root), "--sandbox", KV_SANDBOX, "--policy", "tests.replay.kv_world:Lookups", "--k", "1", "--json"
    )
    assert result.exit_code == 0, result.output
    [example] = json.loads(result.stdout)["fidelity_examples"]
    assert example["diff"].splitlines()[-2:] == [f"-{PRODUCTION_CLOCK}", f"+{SANDBOX_CLOCK}"]

    store = LocalExperienceStore(root)
    [stored] = json.loads(store.replays()["details_json"][0])["fidelity_mismatches"]
    store.close()
    assert stored["diff"] == example["diff"]
    shown = runner.invoke(app, ["replay", "show", trajectory_id, "--store", str(root)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert f"+{SANDBOX_CLOCK}" in shown.stdout and "REDACTED" not in shown.stdout, shown.stdout


def _ee_process(*args: str) -> Any:
    """The real ``ee`` process (its own stdout, as a shell pipes it), run from the repository."""
    import os
    import subprocess
    import sys

    repository = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repository), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, cwd=repository, env=env, timeout=300)


def test_replay_run_json_is_valid_utf8_when_tools_answer_lone_surrogates(tmp_path: Path) -> None:
    """Tools whose text holds lone surrogates (a non-UTF-8 file name from os.listdir, a string cut inside an emoji):
    `ee replay run --json` wrote the sandbox's raw text into its summary's fidelity examples, as an invalid byte (0xE9)
    or failing with exit 1 and no output ('surrogates not allowed'), and reported a faithful sandbox as mismatching.
    Now the summary is valid UTF-8 JSON, exit 0, with no mismatch."""
    from tests.replay.surrogate_world import PREVIEWED, record_files

    store = tmp_path / "experience"
    record_files(store)
    ran = _ee_process("-m", "ee_middleware.cli", "replay", "run", "--store", str(store), "--sandbox", "tests.replay.surrogate_world:make_sandbox",
                      "--policy", "mutate", "--k", "2", "--no-progress", "--json")  # fmt: skip
    assert ran.returncode == 0, ran.stderr.decode(errors="replace")
    summary = json.loads(ran.stdout.decode("utf-8"))
    assert summary["done"] == 1 and summary["fidelity_mismatches"] == 0, summary

    listed = ee("replay", "list", "--store", str(store), "--json")
    assert listed.exit_code == 0, listed.output
    previews = [r["observation"]["content"] for r in json.loads(listed.stdout) if r["action"]["tool_call"]["name"] == "preview"]
    assert previews and set(previews) == {PREVIEWED}


def test_json_answers_hold_no_lone_surrogate() -> None:
    """print_json, every command's --json answer, wrote a lone surrogate in any text as an invalid byte or failed
    ('surrogates not allowed'): it writes U+FFFD there, as capture stores it."""
    script = "from ee_middleware.cli.common import print_json; print_json({'name': 'caf\\udce9.txt', 'title': 'Great day \\ud83d'})"
    ran = _ee_process("-c", script)
    assert ran.returncode == 0, ran.stderr.decode(errors="replace")
    assert json.loads(ran.stdout.decode("utf-8")) == {"name": "caf\ufffd.txt", "title": "Great day \ufffd"}


def test_the_progress_bar_of_replay_run_again_names_the_new_attempts_replay_id(tmp_path: Path) -> None:
    """Sweep S3: `--again` drew its bar as `replay <the first attempt's id>` while its summary said the new one's."""
    store = str(tmp_path / "experience")
    _ledger_store(Path(store))
    args = ["replay", "run", "--store", store, "--sandbox", "tests.cli.test_replay_cli:ledger_sandbox", "--k", "1"]
    first = json.loads(ee(*args, "--json").stdout)["replay_id"]
    again = runner.invoke(app, [*args, "--again"], terminal_width=200)
    assert again.exit_code == 0, again.output
    second = json.loads(ee(*args, "--json").stdout)["replay_id"]  # a plain run continues the newest attempt
    assert second != first and f"replay {second}" in again.stderr and f"replay {first}" not in again.stderr, again.stderr


def test_a_k_beyond_its_limit_is_a_usage_error_that_names_it(tmp_path: Path) -> None:
    # --k 0 was a usage error (exit 2) but --k 300 a configuration error (exit 1), and the help named no maximum.
    for k in ("0", "300"):
        result = ee("replay", "run", "--store", tmp_path, "--k", k)
        assert result.exit_code == 2, (k, result.output)
    assert "1<=x<=256" in " ".join(ee("replay", "run", "--help").output.split())


def test_sandbox_setting_passes_options_to_the_sandbox_factory(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox factory with a required option could be given it only in a config file's [replay.sandbox_settings],
    and the error for leaving it out said nothing of that (a sweep): --sandbox-setting gives it, as --policy-setting
    gives the policy's, and the error names both ways."""
    package = tmp_path / "shop_sandbox"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from ee_middleware.bfcl.sandbox import BFCLSandbox\n\n"
        "def make(world_size, label='x'):\n"
        "    assert world_size == 3 and label == 'big', (world_size, label)\n"
        "    return BFCLSandbox()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = ("replay", "run", "--store", bfcl_store_path, "--sandbox", "shop_sandbox:make", "--k", "1", "--limit", "1", "--no-progress")
    missing = ee(*run)
    assert missing.exit_code == 1
    said = " ".join(missing.stderr.split())
    assert "missing a required argument: 'world_size'" in said and "give its options with --sandbox-setting KEY=VALUE" in said, said
    given = ee(*run, "--sandbox-setting", "world_size=3", "--sandbox-setting", "label=big", "--json")
    assert given.exit_code == 0, given.output
    assert json.loads(given.stdout)["done"] == 1
