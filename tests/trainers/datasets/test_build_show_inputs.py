"""``ee datasets build`` and ``show`` with inputs a user brings (sweep of 2026-12-07): a seed outside the sampler's range
failed the build as an unexpected OverflowError only where the IWM error cap took effect; ``show --tokenizer`` of a
folder without a tokenizer gave transformers' advice to install sentencepiece, as an unexpected error; without a
tokenizer ``show`` cut every message to 300 characters and the prompt to its last 4 messages, ``--full`` or not; a teacher
whose close() failed failed the build after it had replaced the earlier one; a row whose tool call has no "function"
crashed ``show``, was exported, and ``ee train`` blamed the base model's chat template. Real store, real builds."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()


def ee(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def built(replayed_store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    result = ee("datasets", "build", "--store", replayed_store, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(("seed", "said"), [("-1", "greater than or equal to 0"), (str(2**64), f"less than or equal to {2**64 - 1}")])
def test_a_seed_outside_the_samplers_range_is_refused_naming_the_flag(replayed_store: Path, tmp_path: Path, seed: str, said: str) -> None:
    out = tmp_path / "data"
    result = ee("datasets", "build", "--store", replayed_store, "--out", out, "--kinds", "iwm", "--max-error-share", "0.01", "--seed", seed)
    assert result.exit_code == 1, result.output
    assert f"--seed: Input should be {said}" in result.output and "unexpected" not in result.output, result.output
    highest = ee(
        "datasets",
        "build",
        "--store",
        replayed_store,
        "--out",
        out,
        "--kinds",
        "iwm",
        "--max-error-share",
        "0.01",
        "--seed",
        str(2**64 - 1),
    )
    assert highest.exit_code == 0, highest.output


def test_show_with_a_folder_holding_no_tokenizer_says_so(built: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", built):
        result = ee("datasets", "show", built, "--tokenizer", folder, "-n", "0", "--json")
        assert result.exit_code == 1, result.output
        error = json.loads(result.stdout)["error"]
        assert error["type"] == "ModelLoadError" and f"--tokenizer {folder} holds no tokenizer files" in error["message"], error
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    result = ee("datasets", "show", built, "--tokenizer", broken, "-n", "0")
    assert result.exit_code == 1 and f"Cannot load the tokenizer in {broken} (--tokenizer) offline" in result.output, result.output
    assert "unexpected" not in result.output


def test_show_without_a_tokenizer_prints_every_message_whole_with_full_and_says_what_it_leaves_out_without(
    built: Path, tmp_path: Path
) -> None:
    frame = pl.read_parquet(built / "il.parquet").head(1)
    prompt = json.loads(frame["prompt"][0])
    prompt[0]["content"] = "START-OF-REQUEST " + "A" * 20_000 + " END-OF-REQUEST"
    long = tmp_path / "long"
    long.mkdir()
    frame.with_columns(pl.lit(json.dumps(prompt)).alias("prompt")).write_parquet(long / "il.parquet")
    whole = ee("datasets", "show", long, "-n", "1", "--full")
    assert whole.exit_code == 0, whole.output
    assert "START-OF-REQUEST " + "A" * 20_000 + " END-OF-REQUEST" in whole.stdout.replace("\n", "")
    assert all(m["content"].split()[0] in whole.stdout for m in prompt if isinstance(m.get("content"), str) and m["content"].strip())
    cut = ee("datasets", "show", long, "-n", "1")
    assert cut.exit_code == 0, cut.output
    assert "characters of this example left out: --full prints it whole" in cut.stdout and "START-OF-REQUEST" in cut.stdout


def test_a_teacher_whose_close_fails_leaves_the_earlier_build_whole(replayed_store: Path, built: Path) -> None:
    before = {p.name: p.read_bytes() for p in built.iterdir() if p.is_file()}
    result = ee(
        "datasets", "build", "--store", replayed_store, "--out", built, "--kinds", "sr", "--no-progress",
        "--teacher", "tests.trainers.datasets.teacher_plugins:make_closes_badly",
    )  # fmt: skip
    assert result.exit_code == 1 and "close failed" in result.output, result.output
    assert {p.name: p.read_bytes() for p in built.iterdir() if p.is_file()} == before
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")], "no staging folder left"


def test_a_row_whose_tool_call_has_no_function_is_named_by_show_export_and_train(built: Path, tmp_path: Path) -> None:
    malformed = tmp_path / "malformed"
    malformed.mkdir()
    bad = json.dumps([{"role": "assistant", "content": "", "tool_calls": [{"id": "x", "type": "function"}]}])
    pl.read_parquet(built / "il.parquet").head(3).with_columns(pl.lit(bad).alias("completion")).write_parquet(malformed / "il.parquet")
    said = "row 0 (id '"
    for command in (
        ("datasets", "show", malformed, "-n", "1"),
        ("datasets", "export", malformed / "il.parquet", "--out", tmp_path / "out.jsonl"),
    ):
        result = ee(*command)
        assert result.exit_code == 1, (command, result.output)
        assert said in result.output and """tool_calls must each have a "function" with a "name" (OpenAI shape)""" in result.output
        assert "unexpected" not in result.output, result.output
    assert not (tmp_path / "out.jsonl").exists()
    from ee_middleware.errors import EEError
    from ee_middleware.trainers.training.data import load_dataset

    with pytest.raises(EEError, match=r"tool_calls must each have a \"function\" with a \"name\""):
        load_dataset(malformed, "il")


def test_show_of_a_file_that_is_no_dataset_names_the_build_folder(built: Path) -> None:
    result = ee("datasets", "show", built / "datasets.json")
    assert result.exit_code == 1, result.output
    assert f"{built / 'datasets.json'} is not a dataset file" in result.output and f"ee datasets show {built}" in result.output
    assert "--out" not in result.output, "no advice to build into a file"


@pytest.mark.parametrize("flag", ["--max-error-share", "--heldout-share"])
def test_a_nan_share_checked_by_the_configuration_is_said_to_be_no_number_naming_the_flag(
    replayed_store: Path, tmp_path: Path, flag: str
) -> None:
    """NaN was "Input should be less than or equal to 1" (it compares false with every bound), named by its setting."""
    result = ee("datasets", "build", "--store", replayed_store, "--out", tmp_path / "data", flag, "nan")
    assert result.exit_code == 1, result.output
    assert f"{flag}: Input should be a number, not NaN (got nan)" in result.output, result.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("command", "flag", "bounds"),
    [
        (("datasets", "build", "--store", "S", "--out", "D"), "--max-synthetic-share", ">= 0 and <= 1"),
        (("datasets", "build", "--store", "S", "--out", "D"), "--chunk-mb", "> 0 and <= 1e+06"),
        (("experience", "dataset", "--store", "S", "--out", "D"), "--held-out", ">= 0 and <= 1"),
        (("experience", "eval", "--store", "S", "--model", "openai:http://127.0.0.1:9/v1#m"), "--held-out", ">= 0 and <= 1"),
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_bounded_flag_out_of_its_bounds_is_a_usage_error_saying_them(
    command: tuple[str, ...], flag: str, bounds: str, value: str
) -> None:
    result = ee(*command, flag, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}': must be a number {bounds}, got {value}" in result.output, result.output


def test_a_build_from_part_of_a_damaged_store_records_what_it_could_not_read(replayed_store: Path, tmp_path: Path) -> None:
    """With --allow-partial the build went on without the rollouts of an unreadable part, and datasets.json said nothing:
    its notes said "no rollouts: run ee replay run first", and ee train trained on it unawares."""
    from ee_middleware.store import LocalExperienceStore

    LocalExperienceStore(replayed_store).compact()
    (part,) = replayed_store.glob("rollouts/part-*.parquet")
    part.write_bytes(part.read_bytes()[:200])
    out = tmp_path / "data"
    refused = ee("datasets", "build", "--store", replayed_store, "--out", out, "--no-progress")
    assert refused.exit_code == 1 and str(part) in refused.output, refused.output
    partial = ee("datasets", "build", "--store", replayed_store, "--out", out, "--no-progress", "--allow-partial")
    assert partial.exit_code == 0, partial.output
    recorded = json.loads((out / "datasets.json").read_text())["incomplete_store_read"]
    assert len(recorded) == 1 and str(part) in recorded[0] and "Its rows are missing" in recorded[0], recorded
    assert f"warning: Skipped unreadable Parquet part {part}" in partial.stderr
    whole = ee("datasets", "build", "--store", replayed_store, "--out", tmp_path / "other", "--no-progress", "--kinds", "il")
    assert whole.exit_code == 1  # (still damaged: refused without --allow-partial)


def test_training_on_datasets_built_from_part_of_a_damaged_store_says_so(built: Path) -> None:
    import warnings

    from ee_middleware.trainers.training.api import _warn_if_built_from_part
    from ee_middleware.trainers.training.data import unread_at_build

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_built_from_part(built)  # a whole build: nothing said
    record = json.loads((built / "datasets.json").read_text())
    record["incomplete_store_read"] = ["Skipped unreadable Parquet part /s/rollouts/part-1.parquet: cut off."]
    (built / "datasets.json").write_text(json.dumps(record))
    assert unread_at_build(built) == record["incomplete_store_read"]
    with pytest.warns(UserWarning, match=r"built from part of a damaged store \(1 file\(s\) could not be read.*part-1\.parquet"):
        _warn_if_built_from_part(built)
