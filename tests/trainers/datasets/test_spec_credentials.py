"""``ee datasets build`` writes no credential of a model spec: a store whose replay records hold a policy spec with
``user:password@`` (replayed before ``ee replay run`` masked it) and a teacher given as ``openai:http://user:pw@...``
give a ``datasets.json`` (copied into adapter manifests and reports), files and output with ``***@`` in their place;
the teacher's server still gets the credentials (S22 finding 3).

Against a real store and a real HTTP server (:class:`~ee_middleware.testing.http.ScriptedChatServer`, its handler
wrapped to keep each request's ``Authorization`` header, which the server does not keep)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, Step, ToolCall, Trajectory
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import ScriptedChatServer
from tests.capture.redaction_capture import files_text

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a key up.", "parameters": {"type": "object"}}}]
POLICY_PASSWORD, TEACHER_PASSWORD = "p0licyPW", "t34cherPW"
OLD_POLICY = f"openai:http://alice:{POLICY_PASSWORD}@10.0.0.7:8000/v1#flight-bot"
"""The spec as ``ee replay run`` stored it before it masked credentials."""


def _trajectory(i: int) -> Trajectory:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
    state = [{"role": "user", "content": f"What is k{i}?"}]
    call = ToolCall(id=f"call_{i}", name="lookup", arguments={"key": f"k{i}"})
    after = [
        *state,
        {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
        {"role": "tool", "tool_call_id": call.id, "content": "1"},
    ]
    return Trajectory(
        id=f"traj-{i}",
        app="kv",
        task=state[0]["content"],
        tools=TOOLS,
        messages=[*after, {"role": "assistant", "content": "1."}],
        final_answer="1.",
        started_at=start,
        ended_at=start,
        steps=[
            Step(
                trajectory_id=f"traj-{i}",
                index=0,
                decision_index=0,
                state=state,
                action=Action(kind="tool_call", tool_call=call),
                observation=Observation(content="1"),
            ),
            Step(trajectory_id=f"traj-{i}", index=1, decision_index=1, state=after, action=Action(kind="answer", content="1.")),
        ],
    )


def _rollout(i: int, replay_id: str) -> Rollout:
    return Rollout(
        id=f"r-{replay_id}-{i}",
        replay_id=replay_id,
        trajectory_id=f"traj-{i}",
        step_index=0,
        branch_index=0,
        action=Action(kind="tool_call", tool_call=ToolCall(id="alt", name="lookup", arguments={"key": "nope"})),
        proposer=ProposerInfo(policy="openai", model="flight-bot"),
        observation=Observation(content="no such key", is_error=True),
        is_error=True,
        sandbox="python",
        duration_ms=1.0,
    )


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """Three trajectories replayed by two configurations whose records hold the policy's password; the second found a
    fidelity mismatch in traj-2 (``datasets.json`` lists such replays with their policy)."""
    path = tmp_path / "experience"
    store = LocalExperienceStore(path)
    store.write([_trajectory(i) for i in range(3)])
    store.approve([f"traj-{i}" for i in range(3)], by="test")
    for replay_id, sandbox in (("replay-a", "python"), ("replay-b", f"mcp:http://svc:{POLICY_PASSWORD}@10.0.0.8/mcp")):
        for i in range(3):
            mismatch = replay_id == "replay-b" and i == 2
            record = ReplayRecord(
                replay_id=replay_id,
                trajectory_id=f"traj-{i}",
                status="done",
                policy=OLD_POLICY,
                sandbox=sandbox,
                k=1,
                seed=0,
                fidelity_mismatches=1 if mismatch else 0,
                details={"fidelity_mismatches": [{"step": 0, "tool": "lookup"}]} if mismatch else {},
            )
            store.write_replay(record, [_rollout(i, replay_id)])
    store.close()
    return path


def _leaks(text: str) -> list[str]:
    return [secret for secret in (POLICY_PASSWORD, TEACHER_PASSWORD) if secret in text]


def test_datasets_json_and_the_build_show_no_credential_of_the_policy_sandbox_or_teacher(old_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with ScriptedChatServer(["Looking up a missing key errors; the expert's key exists."], models=["t"]) as server:
        host = server.base_url.removeprefix("http://")
        teacher = f"openai:http://bob:{TEACHER_PASSWORD}@{host}#t"
        result = CliRunner().invoke(
            app,
            ["datasets", "build", "--store", str(old_store), "--out", str(out), "--teacher", teacher, "--include-fidelity-mismatches"],
            terminal_width=400,
        )
        assert result.exit_code == 0, result.output
        left_out = CliRunner().invoke(app, ["datasets", "build", "--store", str(old_store), "--out", str(tmp_path / "ds2")])
        assert left_out.exit_code == 0, left_out.output
    assert server.requests, "the teacher asked its server"
    expected = "Basic " + base64.b64encode(f"bob:{TEACHER_PASSWORD}".encode()).decode()
    authorization = [h.get("authorization") for h in server.request_headers]
    assert authorization and set(authorization) == {expected}, "every teacher request carried the spec's credentials"

    assert not _leaks(result.stdout + result.stderr) and not _leaks(left_out.stdout + left_out.stderr)
    manifest = json.loads((out / "datasets.json").read_text())
    assert {replay["policy"] for replay in manifest["replays"]["used"]} == {"openai:http://***@10.0.0.7:8000/v1#flight-bot"}
    assert {replay["sandbox"] for replay in manifest["replays"]["used"]} == {"python", "mcp:http://***@10.0.0.8/mcp"}
    assert manifest["config"]["teacher"] == f"openai:http://***@{host}#t"
    assert not _leaks(files_text(out)), "no file of the build holds a password"
    mismatches = json.loads((tmp_path / "ds2" / "datasets.json").read_text())["fidelity_mismatches_left_out"]["replays"]
    assert [replay["policy"] for replay in mismatches] == ["openai:http://***@10.0.0.7:8000/v1#flight-bot"]
    assert not _leaks(files_text(tmp_path / "ds2"))


def test_an_unknown_replay_id_lists_the_stores_replays_without_credentials(old_store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["datasets", "build", "--store", str(old_store), "--out", str(tmp_path / "ds"), "--replay-id", "nope"])
    assert result.exit_code != 0
    assert "replay-a (policy openai:http://***@10.0.0.7:8000/v1#flight-bot, sandbox python" in " ".join(result.output.split())
    assert not _leaks(result.output)


def test_replay_show_names_an_old_records_policy_without_credentials(old_store: Path) -> None:
    shown = CliRunner().invoke(app, ["replay", "show", "traj-0", "--store", str(old_store)], terminal_width=400)
    assert shown.exit_code == 0, shown.output
    assert "policy openai:http://***@10.0.0.7:8000/v1#flight-bot" in shown.stdout
    assert not _leaks(shown.stdout + shown.stderr)
