"""``ee experience dataset``'s progress bar: on stderr, over the transitions built, with stdout holding the answer alone;
none with ``--json`` or ``--no-progress``. Was: minutes on a large store (a teacher model asked once per transition)
without any sign of life. On the real BFCL expert store, with the template teacher."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from ee_middleware.cli.app import app

BAR = "━"


def _dataset(store: Path, out: Path, *more: str):
    return CliRunner().invoke(app, ["experience", "dataset", "--store", str(store), "--out", str(out), "--held-out", "0.34", *more])


def test_the_build_shows_a_bar_over_its_transitions_on_stderr(bfcl_store_path: Path, tmp_path: Path) -> None:
    result = _dataset(bfcl_store_path, tmp_path / "em")
    assert result.exit_code == 0, result.output
    rows = pl.read_parquet(tmp_path / "em" / "em.parquet").height
    assert "building em" in result.stderr and f"{rows}/{rows}" in result.stderr and BAR in result.stderr, result.stderr
    assert result.stdout.strip() == (
        f"{rows} em rows written to {tmp_path / 'em' / 'em.parquet'} (teacher template; 0 reasoning(s) replaced by the template)"
    ), "stdout holds the answer alone"


def test_no_bar_with_json_or_no_progress(bfcl_store_path: Path, tmp_path: Path) -> None:
    as_json = _dataset(bfcl_store_path, tmp_path / "json", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["rows"] > 0
    assert "building em" not in as_json.stderr and BAR not in as_json.stderr, as_json.stderr

    quiet = _dataset(bfcl_store_path, tmp_path / "quiet", "--no-progress")
    assert quiet.exit_code == 0, quiet.output
    assert "em rows written to" in quiet.stdout
    assert "building em" not in quiet.stderr and BAR not in quiet.stderr, quiet.stderr
