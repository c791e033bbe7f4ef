"""``ee replay run`` refuses numbers the store or the machine cannot hold: a seed outside 64 bits (it was stored, and
then every read of the store failed), and more workers than a job can start (100000 never started, and Ctrl-C did not
stop it); a store written before with such a seed is still read."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError, RecordError
from ee_middleware.records import ReplayRecord
from ee_middleware.replay.config import ReplayConfig, max_workers
from ee_middleware.store import LocalExperienceStore, spool

REPO_ROOT = Path(__file__).resolve().parents[2]

runner = CliRunner()


def ee(*args: str):
    return runner.invoke(app, list(args))


def _as_an_older_version_wrote(store: Path, kind: str, data: dict) -> None:
    """A record put into the store's spool as an older ee-middleware wrote it: the store's writes refuse it now."""
    writer = spool.SpoolWriter(store / "spool")
    writer.append([{"kind": kind, "data": data}])
    writer.seal()


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 99999999999999999999999])
def test_a_seed_outside_64_bits_is_refused_and_the_store_stays_readable(bfcl_store_path: Path, seed: int) -> None:
    store = str(bfcl_store_path)
    result = ee("replay", "run", "--store", store, "--k", "1", "--limit", "1", "--seed", str(seed), "--no-progress")
    assert result.exit_code == 1, result.output
    assert "seed" in result.stderr and "64-bit" in result.stderr and "unexpected" not in result.stderr, result.stderr
    listed = ee("traces", "list", "--store", store, "--json")
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.stdout)) == 6


def test_the_seeds_64_bit_range_is_taken_whole() -> None:
    for seed in (2**63 - 1, -(2**63), 0, -1):
        assert ReplayConfig.load(None, store="s", seed=seed).seed == seed


def test_a_seed_outside_64_bits_in_a_toml_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "replay.toml"
    config.write_text('[replay]\nstore = "s"\nseed = 18446744073709551616\n')
    with pytest.raises(ConfigError, match=r"seed.*64-bit"):
        ReplayConfig.load(config)


def test_a_store_holding_a_seed_outside_64_bits_is_read_and_compacted_without_losing_it(bfcl_store_path: Path) -> None:
    # as an older ee-middleware wrote it: the replay record reached the spool, and every read failed on it after
    store = LocalExperienceStore(bfcl_store_path)
    trajectory = store.trajectories()["id"][0]
    record = ReplayRecord(replay_id="r1", trajectory_id=trajectory, status="done", policy="mutate", sandbox="bfcl", k=1, seed=2**63)
    with pytest.raises(RecordError, match="seed 9223372036854775808"):
        store.write_replay(record)  # refused now (tests/store/test_int64_writes.py)
    _as_an_older_version_wrote(bfcl_store_path, "replay", record.model_dump(mode="json"))
    plain = ee("traces", "list", "--store", str(bfcl_store_path), "--json")
    assert plain.exit_code == 1 and "unexpected" not in plain.stderr, plain.output
    assert "seed 9223372036854775808" in plain.stderr and "--allow-partial" in plain.stderr, plain.stderr
    partial = ee("traces", "list", "--store", str(bfcl_store_path), "--json", "--allow-partial")
    assert partial.exit_code == 0, partial.output
    assert len(json.loads(partial.stdout)) == 6
    compacted = ee("store", "compact", "--store", str(bfcl_store_path))
    assert compacted.exit_code == 0, compacted.output
    kept = list((bfcl_store_path / "quarantine").glob("*.jsonl"))
    assert kept and any(b"9223372036854775808" in path.read_bytes() for path in kept)  # kept for inspection, not deleted
    after = ee("traces", "list", "--store", str(bfcl_store_path), "--json")
    assert after.exit_code == 0, after.output


def test_more_workers_than_a_job_starts_are_refused_at_once(bfcl_store_path: Path) -> None:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ee_middleware.cli",
                "replay",
                "run",
                "--store",
                str(bfcl_store_path),
                "--k",
                "1",
                "--workers",
                "100000",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("ee replay run --workers 100000 was still setting up workers after 60 s")
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stderr
    assert "workers=100000 is more than the 1024 workers a replay job starts" in done.stderr, done.stderr
    assert LocalExperienceStore(bfcl_store_path).replays().height == 0


def test_ray_takes_more_workers_than_local_but_not_without_end() -> None:
    assert ReplayConfig.load(None, store="s", workers=1024, executor="ray").workers == 1024
    with pytest.raises(ConfigError, match="at most 1024"):
        ReplayConfig.load(None, store="s", workers=1025, executor="ray")


def test_a_job_starts_no_more_workers_than_it_has_trajectories_to_replay(bfcl_store_path: Path) -> None:
    most = max_workers("local")
    result = ee(
        "replay", "run", "--store", str(bfcl_store_path), "--k", "1", "--limit", "2", "--workers", str(most), "--no-progress", "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["selected"] == 2 and summary["workers"] == 2, summary


def test_a_job_file_written_for_a_larger_machine_starts_the_workers_this_one_takes(bfcl_store_path: Path) -> None:
    """A [replay] workers above this machine's 8 per core is capped with a warning, not refused: the same job file runs on
    a laptop and a server (review R5 of f968d49: it refused every stage of ee improve)."""
    most = max_workers("local")
    assert ReplayConfig.load(None, store="s", workers=most + 1).workers == most + 1
    # the number it says is the number started: here one per trajectory, fewer than the machine takes (sweep of 2026-12-07)
    with pytest.warns(UserWarning, match=r"starting 2 \(2 trajectories to replay, one worker each\)"):
        result = ee(
            "replay",
            "run",
            "--store",
            str(bfcl_store_path),
            "--k",
            "1",
            "--limit",
            "2",
            "--workers",
            str(most + 1),
            "--no-progress",
            "--json",
        )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["workers"] == 2


def test_a_trajectory_with_an_integer_outside_64_bits_is_skipped_alone_and_named(bfcl_store_path: Path) -> None:
    # a step's truncated_chars is the user's (ee traces ingest, an app's recorder): the steps table holds 64 bits
    store = LocalExperienceStore(bfcl_store_path)
    original = store.get(store.trajectories()["id"][0])
    steps = [s.model_copy(update={"trajectory_id": "huge"}) for s in original.steps]
    observed = next(i for i, s in enumerate(steps) if s.observation is not None)
    steps[observed] = steps[observed].model_copy(
        update={"observation": steps[observed].observation.model_copy(update={"truncated_chars": 2**63})}
    )
    huge = original.model_copy(update={"id": "huge", "steps": steps})
    with pytest.raises(RecordError, match="truncated_chars 9223372036854775808"):
        store.write([huge])  # refused now (tests/store/test_int64_writes.py)
    _as_an_older_version_wrote(bfcl_store_path, "trajectory", huge.model_dump(mode="json"))
    plain = ee("traces", "list", "--store", str(bfcl_store_path), "--json")
    assert plain.exit_code == 1 and "unexpected" not in plain.stderr, plain.output
    assert "truncated_chars 9223372036854775808" in plain.stderr, plain.stderr
    partial = ee("traces", "list", "--store", str(bfcl_store_path), "--json", "--allow-partial")
    assert partial.exit_code == 0, partial.output
    assert len(json.loads(partial.stdout)) == 6  # the others, all of them
