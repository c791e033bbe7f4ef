"""``ee datasets export`` reads every row as ``ee train`` and ``ee datasets show`` read them, and never writes over the
dataset it exports. Was (a sweep): a prompt that was no JSON, null or a dict ended in ``unexpected JSONDecodeError /
TypeError / AttributeError (a bug in ee-middleware ...)``; a completion with no assistant message, or ``tools`` of
``"null"``, was exported as a line no fine-tuning service takes, exit 0; ``--out`` naming the dataset replaced the
Parquet file with JSONL ("Wrote 2 examples"), and the dataset was gone. A real create_agent run recorded into a real
local store, a real ``ee datasets build``, the real CLI."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

runner = CliRunner()


@tool
def check_stock(item: str) -> str:
    """How many of an item the shop has."""
    return "3"


@pytest.fixture(scope="module")
def il_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export-rows")
    script = [AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]), AIMessage(content="Pears: 3.")]
    agent = record_experience(
        create_agent(ScriptedChatModel(script=script), [check_stock]), app="shop", store=folder / "store", approve_if=lambda t: True
    )
    agent.invoke({"messages": [("user", "Any pears?")]})
    agent.flush()
    agent.recorder.close()
    build_datasets(DatasetConfig.load(store=folder / "store", out=folder / "data", kinds="il"))
    return folder / "data" / "il.parquet"


def _with_first_row(il_file: Path, tmp_path: Path, column: str, value: str | None) -> Path:
    frame = pl.read_parquet(il_file)
    first = pl.int_range(pl.len()) == 0
    bad = frame.with_columns(pl.when(first).then(pl.lit(value, dtype=pl.Utf8)).otherwise(pl.col(column)).alias(column))
    path = tmp_path / "data" / "il.parquet"
    path.parent.mkdir()
    bad.write_parquet(path)
    return path


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        ("prompt", "not json", "prompt is not valid JSON"),
        ("prompt", None, "prompt must be JSON text, got NoneType"),
        ("prompt", '{"role": "user", "content": "x"}', "prompt must be a JSON list, got dict"),
        ("completion", "[]", "completion must be a list with one assistant message"),
        ("completion", '[{"role": "user", "content": "x"}]', "completion must be a list with one assistant message"),
        ("tools", "null", "tools must be a JSON list, got NoneType"),
    ],
)
def test_a_row_that_is_no_chat_pair_is_named_and_nothing_is_written(
    il_file: Path, tmp_path: Path, column: str, value: str | None, said: str
) -> None:
    bad = _with_first_row(il_file, tmp_path, column, value)
    out = tmp_path / "il.jsonl"
    result = runner.invoke(app, ["datasets", "export", str(bad), "--out", str(out)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"{bad} row 0" in text and said in text and "unexpected" not in text, text
    assert not out.exists()


def test_out_naming_the_dataset_itself_is_refused_and_the_dataset_stays(il_file: Path) -> None:
    before = il_file.read_bytes()
    result = runner.invoke(app, ["datasets", "export", str(il_file), "--out", str(il_file.parent / "." / "il.parquet")])
    assert result.exit_code == 2, result.output
    assert "is the dataset itself" in " ".join(result.output.split()), result.output
    assert il_file.read_bytes() == before
    assert runner.invoke(app, ["datasets", "export", str(il_file), "--out", str(il_file.with_suffix(".jsonl"))]).exit_code == 0


def test_rows_built_from_experience_model_predictions_are_said_to_lose_their_mark_in_jsonl(il_file: Path, tmp_path: Path) -> None:
    """Was (a sweep): exported as if real tools had answered them, without a word (--format hf keeps the column)."""
    frame = pl.read_parquet(il_file)
    marked = tmp_path / "data" / "il.parquet"
    marked.parent.mkdir()
    frame.with_columns(synthetic=pl.int_range(pl.len()) == 0).write_parquet(marked)
    result = runner.invoke(app, ["datasets", "export", str(marked), "--out", str(tmp_path / "il.jsonl")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert f"warning: 1 of the {frame.height} rows were built from experience-model predictions" in said, said
    assert "--format hf to keep the column" in said
    plain = runner.invoke(app, ["datasets", "export", str(il_file), "--out", str(tmp_path / "plain.jsonl")])
    assert plain.exit_code == 0 and "experience-model" not in plain.stderr


def test_a_file_without_ids_is_still_exported(il_file: Path, tmp_path: Path) -> None:
    """The review of the row check: it read an ``id`` column, which an export never needed ('unexpected
    ColumnNotFoundError')."""
    bare = tmp_path / "bare.parquet"
    pl.read_parquet(il_file).select("prompt", "completion", "tools").write_parquet(bare)
    result = runner.invoke(app, ["datasets", "export", str(bare), "--out", str(tmp_path / "bare.jsonl")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "bare.jsonl").read_text().splitlines()) == pl.read_parquet(il_file).height
