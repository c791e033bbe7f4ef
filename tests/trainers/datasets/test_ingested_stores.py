"""Datasets built from stores made by ``ee traces ingest`` from other stacks' real traces (tests/ingest/fixtures):
trajectories without tool schemas, tools that returned images."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from ee_middleware.cli.app import app

FIXTURES = Path(__file__).parents[2] / "ingest" / "fixtures"
runner = CliRunner()


def ingested(tmp_path: Path, fixture: str) -> Path:
    """A store holding ``fixture``'s runs, ingested and approved by the real CLI."""
    store = tmp_path / "experience"
    result = runner.invoke(app, ["traces", "ingest", str(FIXTURES / fixture), "--store", str(store), "--approve-by", "alice"])
    assert result.exit_code == 0, result.output
    return store


def test_a_build_from_trajectories_without_tool_schemas_says_how_many_and_what_to_do(tmp_path: Path) -> None:
    """Strands spans record no tool definitions: every IL row teaches calls to tools its prompt never shows. Before,
    the build said nothing about it (the rows just had ``tools: []``)."""
    store = ingested(tmp_path, "strands_shop.jsonl")
    out = tmp_path / "data"
    result = runner.invoke(app, ["datasets", "build", "--store", str(store), "--out", str(out), "--kinds", "il,iwm", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    il = pl.read_parquet(out / "il.parquet")
    calls = il.filter(pl.col("completion").str.contains('"tool_calls"'))
    assert calls.height == 3 and set(il["tools"]) == {"[]"}  # the rows are kept as they are: nothing is invented
    missing = summary["tool_schemas_missing"]
    assert missing["trajectories"] == 2
    assert missing["rows"]["il"] == il.height and missing["rows"]["iwm"] == pl.read_parquet(out / "iwm.parquet").height
    assert "no tool schemas" in missing["warning"] and "gen_ai.tool.definitions" in missing["warning"]
    assert json.loads((out / "datasets.json").read_text())["tool_schemas_missing"] == missing

    table = runner.invoke(app, ["datasets", "build", "--store", str(store), "--out", str(out), "--kinds", "il"])
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert "warning: 2 of 2 trajectories record no tool schemas" in text and "5 il rows" in text

    shown = runner.invoke(app, ["datasets", "show", str(out), "--examples", "1"])
    assert shown.exit_code == 0, shown.output
    assert "calls_without_tool_schemas=5" in shown.stdout and "tools offered: none" in shown.stdout


def test_a_build_from_trajectories_with_tool_schemas_warns_of_nothing(tmp_path: Path) -> None:
    store = ingested(tmp_path, "openinference_langgraph.jsonl")
    result = runner.invoke(app, ["datasets", "build", "--store", str(store), "--out", str(tmp_path / "data"), "--kinds", "il", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "tool_schemas_missing" not in summary
    assert all(json.loads(t) for t in pl.read_parquet(tmp_path / "data" / "il.parquet")["tools"])
    shown = runner.invoke(app, ["datasets", "show", str(tmp_path / "data"), "--examples", "1"])
    assert "calls_without_tool_schemas" not in shown.stdout and "tools offered: check_stock, order" in shown.stdout
