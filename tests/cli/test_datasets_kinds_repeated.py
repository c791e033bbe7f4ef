"""``ee datasets build --kinds`` given more than once builds every kind named (it kept the last, click's rule for a
single-valued option, and built less than asked without a word). The real BFCL expert store."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()


def test_kinds_given_twice_builds_both(bfcl_store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il", "--kinds", "iwm", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "il.parquet").is_file() and (out / "iwm.parquet").is_file()
    assert not (out / "sr.parquet").exists()
    assert json.loads((out / "datasets.json").read_text())["config"]["kinds"] == ["il", "iwm"]


def test_kinds_comma_separated_and_repeated_together(bfcl_store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il,iwm", "--kinds", "il", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "datasets.json").read_text())["config"]["kinds"] == ["il", "iwm"]  # once each, in order
