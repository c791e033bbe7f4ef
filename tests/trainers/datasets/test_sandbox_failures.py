"""Rollouts whose observation is the subprocess sandbox's own failure (a time-out, a crash, the memory limit) are stored
marked (``Observation.sandbox_failure``), counted by the replay job, and left out of the datasets, which count them.

End to end with real parts: the replay job with ``isolation = "subprocess"`` (a real child process, killed after a
1 s time limit, ended by ``os._exit``, refused memory by ``RLIMIT_AS``) replays into a real local store, and
``ee datasets build`` builds IWM and SR from it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.records import Action, Observation, Step, ToolCall, Trajectory
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.retrieval import rollout_transition
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.source import load_source
from tests.replay.sandbox_failure_world import tool_schemas

pytestmark = pytest.mark.timeout(240)

SANDBOX = "tests.replay.sandbox_failure_world:make_sandbox"
POLICY = "tests.replay.sandbox_failure_world:FailingToolsPolicy"
TRAJECTORIES = 2
MEMORY_MB = 1536
"""The sandbox child's address-space limit: room for the interpreter and its imports, far below what ``hog`` asks."""
SANDBOX_TEXT = ("subprocess sandbox", "sandbox was restarted", "SubprocessSandbox(", "memory_mb", "memory limit")
"""Phrases of the sandbox's own error observations: none may reach a dataset row."""


def _trajectory(i: int) -> Trajectory:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
    task = {"role": "user", "content": f"What is a? ({i})"}
    call = ToolCall(id=f"call_{i}", name="lookup", arguments={"key": "a"})
    assistant = {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]}
    tool_message = {"role": "tool", "tool_call_id": call.id, "content": "a = 1"}
    answer = {"role": "assistant", "content": "a is 1."}
    return Trajectory(
        id=f"traj-{i}",
        app="counters",
        task=task["content"],
        tools=tool_schemas(),
        model="scripted",
        messages=[task, assistant, tool_message, answer],
        final_answer="a is 1.",
        started_at=start,
        ended_at=start + dt.timedelta(seconds=1),
        environment={"counts": {"a": 1, "b": 2}},
        steps=[
            Step(
                trajectory_id=f"traj-{i}",
                index=0,
                decision_index=0,
                state=[task],
                action=Action(kind="tool_call", tool_call=call),
                observation=Observation(content="a = 1"),
            ),
            Step(
                trajectory_id=f"traj-{i}",
                index=1,
                decision_index=1,
                state=[task, assistant, tool_message],
                action=Action(kind="answer", content="a is 1."),
            ),
        ],
    )


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A store of approved trajectories replayed under subprocess isolation, and the job's summary."""
    root = tmp_path_factory.mktemp("sandbox-failures") / "experience"
    store = LocalExperienceStore(root, create=True)
    store.write([_trajectory(i) for i in range(TRAJECTORIES)])
    store.approve([f"traj-{i}" for i in range(TRAJECTORIES)], by="test")
    store.close()
    config = ReplayConfig.load(
        store=root, sandbox=SANDBOX, policy=POLICY, k=4, isolation="subprocess", tool_timeout_s=1.0, memory_mb=MEMORY_MB
    )
    summary = run_replay(config)
    assert summary.done == TRAJECTORIES and not summary.failed, summary.to_dict()
    return root, summary.to_dict()


def test_the_job_stores_the_sandbox_failures_marked_and_counts_them(replayed: tuple[Path, dict]) -> None:
    root, summary = replayed
    assert summary["sandbox_failures"] == {"timeout": TRAJECTORIES, "crash": TRAJECTORIES, "memory": TRAJECTORIES}
    store = LocalExperienceStore(root)
    rollouts = {r.action.tool_call.name: r for r in store.iter_rollouts() if r.trajectory_id == "traj-0"}
    store.close()
    assert {name: r.observation.sandbox_failure for name, r in rollouts.items()} == {
        "lookup": None,
        "hang": "timeout",
        "die": "crash",
        "hog": "memory",
    }
    assert rollouts["lookup"].observation.content == "b = 2" and not rollouts["lookup"].is_error
    assert all(rollouts[name].is_error for name in ("hang", "die", "hog"))
    assert "subprocess sandbox" in rollouts["hang"].observation.content  # the text stays, for people reading the rollout
    trajectory = LocalExperienceStore(root).get("traj-0")
    assert rollout_transition(rollouts["lookup"], trajectory) is not None
    assert rollout_transition(rollouts["hang"], trajectory) is None, "a sandbox failure is no real transition to retrieve"


def _rows_text(path: Path) -> str:
    return "\n".join(pl.read_parquet(path).select(pl.concat_str("prompt", "completion", separator="\n")).to_series().to_list())


def test_ee_datasets_build_leaves_sandbox_failures_out_and_counts_them(replayed: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = replayed
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["datasets", "build", "--store", str(root), "--out", str(out), "--kinds", "iwm,sr"])
    assert result.exit_code == 0, result.output
    assert "left out 6 rollout(s) whose observation is the sandbox's own failure" in result.output
    manifest = json.loads((out / "datasets.json").read_text())
    assert manifest["sandbox_failures_left_out"] == {"total": 6, "timeout": 2, "crash": 2, "memory": 2}
    assert manifest["rollouts"] == TRAJECTORIES  # only the real lookup alternatives
    iwm, sr = _rows_text(out / "iwm.parquet"), _rows_text(out / "sr.parquet")
    assert "b = 2" in iwm and "b = 2" in sr, "the real alternatives are still used"
    for phrase in SANDBOX_TEXT:
        assert phrase not in iwm and phrase not in sr, f"{phrase!r} (the sandbox's own message) reached a dataset row"
    iwm_rows = pl.read_parquet(out / "iwm.parquet")
    assert iwm_rows.height == 2 * TRAJECTORIES  # per state: the lookup alternative and the expert step


def test_include_sandbox_failures_keeps_them_and_load_source_counts_them(replayed: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = replayed
    summary = build_datasets(DatasetConfig.load(store=root, out=tmp_path / "all", kinds="iwm", include_sandbox_failures=True))
    assert summary["sandbox_failures_left_out"]["total"] == 0 and summary["rollouts"] == 4 * TRAJECTORIES
    assert "subprocess sandbox" in _rows_text(tmp_path / "all" / "iwm.parquet")

    store = LocalExperienceStore(root)
    source = load_source(store)
    assert source.sandbox_failures == {"timeout": 2, "crash": 2, "memory": 2} and source.rollouts.height == TRAJECTORIES
    assert load_source(store, include_sandbox_failures=True).rollouts.height == 4 * TRAJECTORIES
    store.close()


def test_a_store_written_before_the_sandbox_failure_column_still_reads(replayed: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(replayed[0], old)
    store = LocalExperienceStore(old)
    store.compact()  # the spool into Parquet parts
    store.close()
    parts = sorted((old / "rollouts").glob("part-*.parquet"))
    assert parts
    for part in parts:  # as schema 1.2 wrote them: no sandbox_failure column
        frame = pl.read_parquet(part)
        assert "sandbox_failure" in frame.columns
        frame.drop("sandbox_failure").with_columns(pl.lit("1.2").alias("schema_version")).write_parquet(part)

    store = LocalExperienceStore(old)
    rollouts = list(store.iter_rollouts())
    assert len(rollouts) == 4 * TRAJECTORIES
    assert all(r.observation.sandbox_failure is None and r.schema_version == "1.2" for r in rollouts)
    assert store.rollouts()["sandbox_failure"].null_count() == 4 * TRAJECTORIES
    store.close()
    summary = build_datasets(DatasetConfig.load(store=old, out=tmp_path / "ds", kinds="iwm"))
    assert summary["sandbox_failures_left_out"]["total"] == 0  # unmarked: an old store cannot say which failed
    assert summary["rollouts"] == 4 * TRAJECTORIES
