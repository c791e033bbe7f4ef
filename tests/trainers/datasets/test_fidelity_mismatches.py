"""Rollouts of a replay whose sandbox did not reproduce the expert's own calls (fidelity mismatches) stay out of IWM
and SR, counted in ``datasets.json``; a build from several replays of the same trajectories says which it used.

Real parts end to end: two trajectories recorded from a real LangGraph agent (``create_agent`` + ``record_experience``),
replayed by the real job into a real local store with real ``PythonSandbox`` es: the production tools (twice, K=2 and
K=3: two replay configurations) and a sandbox whose ``cancel_booking`` parameter is misnamed (``bid``), so that every
call to it answers ``bid: Field required``; then ``ee datasets build`` without ``--replay-id``, as a user runs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.iwm import repeated_rollouts
from ee_middleware.trainers.datasets.source import load_source
from tests.trainers.datasets.booking_world import books_hopper, cancels_b1, record_trajectory

pytestmark = pytest.mark.timeout(240)

GOOD = "tests.trainers.datasets.booking_world:make_sandbox"
BROKEN = "tests.trainers.datasets.booking_world:make_broken_sandbox"
POLICY = "tests.trainers.datasets.booking_world:BookingPolicy"
BROKEN_ANSWER = "Field required"
"""What the misnamed parameter makes every cancel_booking call answer (pydantic's validation message)."""


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two approved trajectories (one cancels B1, one only books a room), replayed by three configurations."""
    root = tmp_path_factory.mktemp("booking") / "experience"
    cancels = record_trajectory(root, *cancels_b1())
    books = record_trajectory(root, *books_hopper())
    replays = {}
    for name, sandbox, k in (("good", GOOD, 2), ("good_k3", GOOD, 3), ("broken", BROKEN, 2)):
        summary = run_replay(ReplayConfig.load(store=root, sandbox=sandbox, policy=POLICY, k=k))
        assert summary.done == 2 and not summary.failed, summary.to_dict()
        replays[name] = summary
    assert replays["good"].fidelity_mismatches == replays["good_k3"].fidelity_mismatches == 0
    # the broken sandbox mismatches where the expert cancels (step 1 of the first trajectory) and nowhere else
    assert replays["broken"].fidelity_mismatches == 1, replays["broken"].to_dict()
    (example,) = replays["broken"].fidelity_examples
    assert (example["trajectory_id"], example["step"], example["tool"]) == (cancels.id, 1, "cancel_booking")
    assert BROKEN_ANSWER in example["replayed"]
    return {
        "root": root,
        "cancels": cancels.id,
        "books": books.id,
        **{f"{name}_id": summary.replay_id for name, summary in replays.items()},
    }


@pytest.fixture
def store(store_template: dict[str, object], tmp_path: Path) -> dict[str, object]:
    target = tmp_path / "experience"
    shutil.copytree(store_template["root"], target)  # type: ignore[arg-type]
    return {**store_template, "root": target}


def _rows_text(path: Path) -> str:
    return "\n".join(pl.read_parquet(path).select(pl.concat_str("prompt", "completion", separator="\n")).to_series().to_list())


def _rollouts(root: Path) -> pl.DataFrame:
    s = LocalExperienceStore(root)
    rollouts = s.rollouts()
    s.close()
    return rollouts


def test_ee_datasets_build_leaves_out_what_a_broken_sandbox_answered(store: dict[str, object], tmp_path: Path) -> None:
    """Before: the broken replay's rollouts were used, and IWM taught cancel_booking -> 'bid: Field required' with no
    warning. Now the replay that mismatched is left out from its first mismatching step on, and so are that sandbox's
    cancel_booking answers anywhere (the other trajectory too, whose own expert calls it reproduced); its other
    rollouts before that step (the world still production's) and the good replays' rollouts are all used."""
    root, broken = store["root"], store["broken_id"]
    rollouts = _rollouts(root)  # type: ignore[arg-type]
    assert rollouts.filter(pl.col("observation").str.contains(BROKEN_ANSWER)).height > 0, "the broken sandbox's answers are stored"
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["datasets", "build", "--store", str(root), "--out", str(out), "--kinds", "il,iwm,sr"])
    assert result.exit_code == 0, result.output
    iwm, sr = _rows_text(out / "iwm.parquet"), _rows_text(out / "sr.parquet")
    assert BROKEN_ANSWER not in iwm and BROKEN_ANSWER not in sr, "a row teaches the broken sandbox's answer"
    assert "cancelled B2: Turing at 14:00" in iwm, "the good sandbox's cancel_booking answers are still taught"

    manifest = json.loads((out / "datasets.json").read_text())
    of_broken = rollouts.filter(pl.col("replay_id") == broken)
    of_cancels = of_broken.filter(pl.col("trajectory_id") == store["cancels"])
    wrong = (pl.col("step_index") >= 1) | (pl.col("tool_name") == "cancel_booking")
    in_mismatched, before = of_cancels.filter(wrong), of_cancels.filter(~wrong)
    assert before.height > 0 and in_mismatched.height > 0, "the broken replay has rollouts on both sides of its mismatch"
    elsewhere = of_broken.filter((pl.col("trajectory_id") == store["books"]) & (pl.col("tool_name") == "cancel_booking"))
    assert elsewhere.height == 2 and BROKEN_ANSWER in elsewhere["observation"][0]
    left = manifest["fidelity_mismatches_left_out"]
    assert left["rollouts"] == in_mismatched.height + elsewhere.height
    assert left["trajectories"] == 2
    (replay,) = left["replays"]
    assert replay["replay_id"] == broken and replay["trajectory_id"] == store["cancels"]
    assert (replay["tool"], replay["first_step"], replay["fidelity_mismatches"], replay["rollouts"]) == (
        "cancel_booking",
        1,
        1,
        in_mismatched.height,
    )
    assert left["wrong_tools"] == [{"replay_id": broken, "tool": "cancel_booking", "trajectories": 1, "rollouts": elsewhere.height}]
    assert manifest["rollouts"] == rollouts.height - left["rollouts"]

    replays = manifest["replays"]
    assert "every replay's rollouts" in replays["rule"]
    used = {r["replay_id"]: r for r in replays["used"]}
    assert set(used) == {store["good_id"], store["good_k3_id"], broken}
    assert used[store["good_k3_id"]] | {"newest_finished_at": None} == {
        "replay_id": store["good_k3_id"],
        "policy": POLICY,
        "sandbox": "python",
        "k": 3,
        "seed": 0,
        "trajectories": 2,
        "rollouts": 12,
        "newest_finished_at": None,
    }
    assert used[broken]["rollouts"] == of_broken.height - left["rollouts"]  # before its mismatch, and the books trajectory's other calls
    assert used[broken]["rollouts"] >= before.height
    assert replays["trajectories_with_several"] == 2

    assert "rollouts from 3 replays:" in result.stdout and "2 trajectories have rollouts of more than one replay" in result.stdout
    warning = " ".join(result.stderr.split())
    assert f"warning: left out {left['rollouts']} rollouts of replays whose sandbox answered the expert's own recorded" in warning
    assert (
        f"replay {broken} of {store['cancels']}: cancel_booking at step 1): its {in_mismatched.height} rollouts from that step on, and 2 calls"
        in warning
    )
    assert "--include-fidelity-mismatches" in warning


def test_include_fidelity_mismatches_keeps_them_and_load_source_agrees(store: dict[str, object], tmp_path: Path) -> None:
    root = store["root"]
    rollouts = _rollouts(root)  # type: ignore[arg-type]
    kept = build_datasets(DatasetConfig.load(store=root, out=tmp_path / "all", kinds="iwm", include_fidelity_mismatches=True))
    assert kept["rollouts"] == rollouts.height and kept["fidelity_mismatches_left_out"]["rollouts"] == 0
    assert BROKEN_ANSWER in _rows_text(tmp_path / "all" / "iwm.parquet")

    left_out = build_datasets(DatasetConfig.load(store=root, out=tmp_path / "some", kinds="iwm"))
    store_ = LocalExperienceStore(root)  # type: ignore[arg-type]
    source = load_source(store_)
    assert (
        source.rollouts.height == left_out["rollouts"]
        and source.fidelity_mismatch_rollouts == (left_out["fidelity_mismatches_left_out"]["rollouts"])
    )
    lineage = ["replay_id", "trajectory_id", "step_index", "branch_index"]
    rows = pl.read_parquet(tmp_path / "some" / "iwm.parquet").filter(pl.col("branch_index").is_not_null())
    # the good K=3 configuration proposes the good K=2 one's calls again: those copies are one example (test_iwm_repeats.py)
    repeats = repeated_rollouts(source.rollouts)
    assert repeats.height > 0 and left_out["datasets"]["iwm"]["repeats_left_out"] == repeats.height
    used = source.rollouts.join(repeats, on="id", how="anti")
    assert sorted(rows.select(lineage).rows()) == sorted(used.select(lineage).rows()), "the same rollouts"
    assert load_source(store_, include_fidelity_mismatches=True).rollouts.height == rollouts.height
    store_.close()


def test_the_broken_replay_alone_gives_no_rollouts_and_says_why(store: dict[str, object], tmp_path: Path) -> None:
    """``--replay-id`` of the broken configuration (as ``ee improve`` builds from its own replay): nothing of it is
    trusted where the sandbox got the expert's call wrong, and IWM's warning says so instead of 'run ee replay run'."""
    summary = build_datasets(DatasetConfig.load(store=store["root"], out=tmp_path / "ds", kinds="iwm", replay_id=store["broken_id"]))
    assert BROKEN_ANSWER not in _rows_text(tmp_path / "ds" / "iwm.parquet")
    assert summary["replays"]["rule"].startswith(f"only replay {store['broken_id']}")
    assert [r["replay_id"] for r in summary["replays"]["used"]] == [store["broken_id"]]
    assert summary["replays"]["trajectories_with_several"] == 0
    assert summary["rollouts_left_out"]["other_replays"] > 0 and summary["fidelity_mismatches_left_out"]["rollouts"] > 0
