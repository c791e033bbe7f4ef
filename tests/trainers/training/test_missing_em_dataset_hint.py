"""A missing dataset's error names the command that builds that kind: em.parquet comes from `ee experience dataset`.

`ee datasets build` refuses the em kind ("Unknown dataset kind(s) em"), so naming it for a missing em.parquet sent the
user to a command that cannot make the file. Followed as written, the named command must make the file `ee train` asked for.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.trainers.training.data import load_dataset


def _train(data: Path, schedule: str, tmp_path: Path) -> tuple[int, str]:
    args = ["train", "--base-model", str(tmp_path / "no-model"), "--data", str(data), "--schedule", schedule, "--max-steps", "1"]
    result = CliRunner().invoke(app, [*args, "--output-dir", str(tmp_path / "adapter"), "--no-progress"])
    return result.exit_code, " ".join(result.stderr.split())


def test_a_missing_em_dataset_names_ee_experience_dataset_and_following_it_builds_the_file(bfcl_store_path: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    code, message = _train(data, "experience-model", tmp_path)
    assert code == 1 and "No EM dataset at" in message, message
    assert f"ee experience dataset --store STORE --out {data}" in message and "ee datasets build" not in message, message

    built = CliRunner().invoke(app, ["experience", "dataset", "--store", str(bfcl_store_path), "--out", str(data)])
    assert built.exit_code == 0, built.output
    assert load_dataset(data, "em").rows
    code, message = _train(data, "experience-model", tmp_path)
    assert "No EM dataset" not in message, message


def test_a_missing_il_dataset_still_names_ee_datasets_build(tmp_path: Path) -> None:
    code, message = _train(tmp_path, "il", tmp_path)
    assert code == 1 and f"ee datasets build --store STORE --out {tmp_path}" in message, message
