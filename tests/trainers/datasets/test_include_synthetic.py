"""Synthetic (experience-model) rollouts stay out of datasets unless --include-synthetic, which datasets.json records."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall
from ee_middleware.store.local import LocalExperienceStore


def _add_rollouts(store_path: Path, kinds: tuple[bool, ...] = (False, True)) -> None:
    store = LocalExperienceStore(store_path)
    trajectory = next(iter(store.iter_trajectories(status="approved")))
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    rollouts = [
        Rollout(
            id=f"r-{synthetic}",
            replay_id="r",
            trajectory_id=trajectory.id,
            step_index=step.index,
            branch_index=int(synthetic),
            action=Action(kind="tool_call", tool_call=ToolCall(id="x", name="ls", arguments={"a": synthetic})),
            proposer=ProposerInfo(policy="test", settings={"experience": {"model": "m"}} if synthetic else {}),
            observation=Observation(content="guessed" if synthetic else "real"),
            synthetic=synthetic,
            sandbox="experience" if synthetic else "bfcl",
            duration_ms=1.0,
        )
        for synthetic in kinds
    ]
    store.write_replay(
        ReplayRecord(replay_id="r", trajectory_id=trajectory.id, status="done", policy="t", sandbox="bfcl", k=2, seed=0), rollouts
    )
    store.close()


def test_synthetic_rollouts_need_include_synthetic(bfcl_store_path: Path, tmp_path: Path) -> None:
    _add_rollouts(bfcl_store_path)
    counts = {}
    for flag in ([], ["--include-synthetic"]):
        out = tmp_path / ("with" if flag else "without")
        args = [
            "datasets",
            "build",
            "--store",
            str(bfcl_store_path),
            "--out",
            str(out),
            "--kinds",
            "iwm",
            "--replay-id",
            "r",
            *flag,
            "--json",
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "datasets.json").read_text())
        assert manifest["config"]["include_synthetic"] is bool(flag)
        counts[bool(flag)] = manifest["rollouts"]
    assert counts == {False: 1, True: 2}


def test_a_build_that_leaves_every_rollout_out_says_which_flag_uses_them(bfcl_store_path: Path, tmp_path: Path) -> None:
    """A store whose only rollouts are synthetic (or of another replay than --replay-id) was told 'no rollouts: run
    `ee replay run` first', which replays again for nothing. The warnings now name what left them out and the flag."""
    _add_rollouts(bfcl_store_path, kinds=(True,))
    base = ["datasets", "build", "--store", str(bfcl_store_path), "--kinds", "iwm,sr", "--json"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "synthetic")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rollouts"] == 0 and summary["rollouts_left_out"] == {
        "synthetic": 1,
        "other_replays": 0,
        "synthetic_grounded_on_held_out": 0,
    }
    for kind in ("iwm", "sr"):
        warning = summary["datasets"][kind]["warning"]
        assert "1 synthetic (experience-model) rollout(s) left out: --include-synthetic uses them" in warning
        assert "ee replay run" not in warning
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "typo"), "--replay-id", "rr", "--include-synthetic"])
    assert result.exit_code == 1 and "holds no replay of that id" in result.output, result.output  # a typo is refused (0cdf42a)
    store = LocalExperienceStore(bfcl_store_path)  # another replay, which replayed nothing
    trajectory_id = next(iter(store.iter_trajectories(status="approved"))).id
    store.write_replay(ReplayRecord(replay_id="rr", trajectory_id=trajectory_id, status="done", policy="t", sandbox="bfcl", k=2, seed=0))
    store.close()
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "other"), "--replay-id", "rr", "--include-synthetic"])
    summary = json.loads(result.stdout)
    assert summary["rollouts_left_out"] == {"synthetic": 0, "other_replays": 1, "synthetic_grounded_on_held_out": 0}
    assert "1 rollout(s) of other replays left out by --replay-id" in summary["datasets"]["iwm"]["warning"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "with"), "--include-synthetic"])
    summary = json.loads(result.stdout)
    assert summary["rollouts"] == 1 and "warning" not in summary["datasets"]["iwm"] and "warning" not in summary["datasets"]["sr"]


def test_a_build_of_trajectories_that_call_no_tool_does_not_send_the_user_to_replay(tmp_path: Path) -> None:
    """They told 'no rollouts: run `ee replay run` first', and replay skips every such trajectory (no state to branch)."""
    import datetime as dt

    from ee_middleware.records import Action, Step, Trajectory

    store = LocalExperienceStore(tmp_path / "store", create=True)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    state = [{"role": "user", "content": "hi"}]
    step = Step(trajectory_id="t-chat", index=0, decision_index=0, state=state, action=Action(kind="answer", content="hello"))
    store.write(
        [
            Trajectory(
                id="t-chat", app="chat", task="hi", messages=[*state, {"role": "assistant", "content": "hello"}],
                final_answer="hello", started_at=start, ended_at=start, steps=[step],
            )
        ]
    )  # fmt: skip
    store.approve(["t-chat"], by="test")
    store.close()
    args = ["datasets", "build", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--kinds", "il,iwm", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    warning = json.loads(result.stdout)["datasets"]["iwm"]["warning"]
    assert "no trajectory of this build calls a tool" in warning and "ee replay run" not in warning


def test_an_unknown_replay_id_names_its_store_without_credentials(bfcl_store_path: Path) -> None:
    """The refusal of an unknown --replay-id names the store as given: a plug-in store's URL with user:password@ showed
    the password."""
    import pytest

    from ee_middleware.cli.common import check_replay_id
    from ee_middleware.errors import ConfigError

    _add_rollouts(bfcl_store_path)
    store = LocalExperienceStore(bfcl_store_path)
    try:
        with pytest.raises(ConfigError) as caught:
            check_replay_id(store, "typo", "pg://ee:S3cretPw@db.internal/exp", given="--replay-id typo", without="leave it out")
    finally:
        store.close()
    assert "S3cretPw" not in str(caught.value) and "pg://***@db.internal/exp holds no replay of that id" in str(caught.value)
