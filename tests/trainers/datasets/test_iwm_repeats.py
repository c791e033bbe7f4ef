"""IWM from several replays of the same trajectories: an example two replay configurations both produced (the same call at
the same state, with the same observation) is trained on once, and ``datasets.json`` counts the copies left out.

Real parts end to end: the session's real BFCL expert trajectories replayed by the real job (the mutation policy, K=4,
seed 0: the ``replayed_store`` fixture), replayed again with seed 1 (a second configuration), then ``ee datasets
build``'s own code without ``--replay-id`` (every replay's rollouts: the default).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.cli.app import app
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.iwm import IWMOptions, build_iwm, repeated_rollouts
from ee_middleware.trainers.datasets.privacy import guard_rows
from ee_middleware.trainers.datasets.source import SourceReader, load_source

pytestmark = pytest.mark.timeout(300)

TINY = 1e-6
"""chunk_mb so small that every trajectory is its own group."""


@pytest.fixture(scope="module")
def two_replays_template(replayed_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two-replays") / "experience"
    shutil.copytree(replayed_store_template, root)
    summary = run_replay(ReplayConfig.load(store=root, k=4, seed=1))
    assert summary.done > 0 and not summary.failed
    return root


@pytest.fixture
def two_replays(two_replays_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "experience"
    shutil.copytree(two_replays_template, target)
    return target


def _stored_rollouts(root: Path) -> pl.DataFrame:
    store = LocalExperienceStore(root)
    try:
        return store.rollouts()
    finally:
        store.close()


def _examples(rows: pl.DataFrame) -> pl.DataFrame:
    """Each row's example up to what replay changes between configurations (the call's id, the arguments' key order):
    the state and call as values, and the target."""

    def key(prompt: str) -> str:
        messages = json.loads(prompt)
        for message in messages:
            for call in message.get("tool_calls") or []:
                call["id"] = ""
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        return json.dumps(messages, sort_keys=True, ensure_ascii=False)

    return rows.with_columns(pl.col("prompt").map_elements(key, return_dtype=pl.String).alias("_example"))


def _copies(root: Path) -> pl.DataFrame:
    """Found from the store itself, not by the code under test: the rollouts that repeat an earlier one (trajectory,
    step, branch, replay id order) of another replay at the same state: same tool, arguments equal as values, same
    observation."""
    rollouts = _stored_rollouts(root).with_columns(
        pl.col("arguments_json").map_elements(lambda a: json.dumps(json.loads(a), sort_keys=True), return_dtype=pl.String).alias("_args")
    )
    ordered = rollouts.sort("trajectory_id", "step_index", "branch_index", "replay_id")
    same = ["trajectory_id", "step_index", "tool_name", "_args", "observation"]
    return ordered.filter(pl.struct(same).is_duplicated() & ~pl.struct(same).is_first_distinct())


def test_a_build_from_two_replays_trains_each_example_once(two_replays: Path, tmp_path: Path) -> None:
    """Before: the default build used both configurations' rollouts, and every call both proposed at a state (with the
    same observation) was an IWM row twice, differing only in the call's id (the sweep's store: 10 of 80 rollout rows).
    Now the first (by branch, then replay id) stays and the copies are left out and counted."""
    copies = _copies(two_replays)
    assert _stored_rollouts(two_replays)["replay_id"].n_unique() == 2
    assert copies.height > 0, "the two configurations proposed some of the same calls"
    out = tmp_path / "ds"
    args = ["datasets", "build", "--store", str(two_replays), "--out", str(out), "--kinds", "iwm", "--max-error-share", "1"]
    result = CliRunner().invoke(app, args)  # no error cap: every row but the copies
    assert result.exit_code == 0, result.output
    assert f"repeats_left_out={copies.height}" in result.output.replace("\n", ""), "the build's summary counts them"
    manifest = json.loads((out / "datasets.json").read_text())
    iwm = manifest["datasets"]["iwm"]
    assert iwm["repeats_left_out"] == copies.height and iwm["errors_left_out"] == 0
    rows = _examples(pl.read_parquet(out / "iwm.parquet"))
    repeated = rows.group_by("_example", "completion").len().filter(pl.col("len") > 1)
    assert repeated.is_empty(), f"{repeated.height} examples are trained on more than once"
    rollout_rows = rows.filter(pl.col("branch_index").is_not_null())
    lineage = ["replay_id", "trajectory_id", "step_index", "branch_index"]
    kept, left_out = set(rollout_rows.select(lineage).rows()), set(copies.select(lineage).rows())
    assert not kept & left_out and len(kept) + len(left_out) == manifest["rollouts"], "exactly the copies are left out"


def test_the_error_cap_counts_the_rows_without_their_copies_and_the_rows_do_not_depend_on_groups(two_replays: Path, tmp_path: Path) -> None:
    """The copies go before the error cap counts, in a build cut into groups of one trajectory as in one group, and as
    the whole-source builder (``build_iwm``) leaves them out."""
    settings = {"kinds": "iwm", "iwm_max_error_share": 0.2}
    many = build_datasets(DatasetConfig.load(store=two_replays, out=tmp_path / "many", chunk_mb=TINY, **settings))
    one = build_datasets(DatasetConfig.load(store=two_replays, out=tmp_path / "one", chunk_mb=1024, **settings))
    a, b = pl.read_parquet(tmp_path / "many" / "iwm.parquet"), pl.read_parquet(tmp_path / "one" / "iwm.parquet")
    assert a.height > 0 and a.equals(b)
    assert {k: v for k, v in many["datasets"]["iwm"].items() if k not in ("seconds", "parts", "path")} == {
        k: v for k, v in one["datasets"]["iwm"].items() if k not in ("seconds", "parts", "path")
    }
    store = LocalExperienceStore(two_replays)
    source = load_source(store)
    expected, _ = guard_rows("iwm", build_iwm(source, IWMOptions(max_error_share=0.2)), store_redactor(store, create_salt=False))
    store.close()
    assert a.equals(expected)
    info = one["datasets"]["iwm"]
    assert info["errors_left_out"] > 0, "the cap was active"
    assert a["is_error"].sum() / a.height <= 0.2 and _examples(a).group_by("_example", "completion").len()["len"].max() == 1


def test_the_same_call_written_another_way_is_the_same_call(two_replays: Path) -> None:
    """Arguments are compared as values: another proposer writes the same call with its keys in another order and other
    spacing (a model's JSON), and it is still a copy."""
    rollouts = load_source(LocalExperienceStore(two_replays)).rollouts
    found = repeated_rollouts(rollouts)
    second = sorted(rollouts["replay_id"].unique().to_list())[1]

    def rewritten(arguments: str) -> str:
        value = json.loads(arguments)
        return json.dumps(dict(reversed(list(value.items()))), indent=1) if isinstance(value, dict) else arguments

    other = rollouts.with_columns(
        pl.when(pl.col("replay_id") == second)
        .then(pl.col("arguments_json").map_elements(rewritten, return_dtype=pl.String))
        .otherwise(pl.col("arguments_json"))
    )
    assert other["arguments_json"].to_list() != rollouts["arguments_json"].to_list()
    assert found.height > 0 and repeated_rollouts(other)["id"].sort().to_list() == found["id"].sort().to_list()
    changed = other.with_columns(pl.when(pl.col("replay_id") == second).then(pl.col("observation") + " (later)").otherwise("observation"))
    assert repeated_rollouts(changed).is_empty(), "another observation is another example"


def test_one_replay_reads_nothing_more_and_leaves_nothing_out(
    replayed_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a build of one replay read the rollouts again to look for copies")

    monkeypatch.setattr(SourceReader, "rollout_columns", refused)
    summary = build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / "ds", kinds="iwm"))
    assert summary["datasets"]["iwm"]["repeats_left_out"] == 0
