"""``ee eval likelihood`` reads its settings from ``--config`` (``[likelihood]``), flags override the file, and the
file's mistakes are refused naming the file, the table and the key.

Before, the command had no ``--config``. The model is a tiny random Llama scored on CPU; the held-out states are real
held-out IL rows (as ``ee datasets build --heldout-...`` marks them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.cli.test_experience_config import help_entries

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "likelihood.toml"
    config.write_text(text)
    return config


def _tiny_base(folder: Path, *, max_positions: int = 1024) -> Path:
    pytest.importorskip("peft")
    from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, save_tiny_llama
    from tests.trainers.training.conftest import build_tokenizer

    return save_tiny_llama(folder, build_tokenizer(TOOL_CHAT_TEMPLATE), max_positions=max_positions)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_base(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def heldout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose heldout/il.parquet holds 4 states marked held out."""
    pytest.importorskip("peft")
    import polars as pl

    from ee_middleware.trainers.datasets.split import HELDOUT, SPLIT_METADATA_KEY
    from tests.trainers.training.conftest import FOLDERS, il_row, write_dataset

    folder = tmp_path_factory.mktemp("data")
    train_file = write_dataset(folder, "il", [il_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(4)])
    (folder / "heldout").mkdir()
    pl.read_parquet(train_file).write_parquet(folder / "heldout" / "il.parquet", metadata={SPLIT_METADATA_KEY: HELDOUT})
    return folder


def test_likelihood_reads_its_table_and_flags_override_it(base_dir: Path, heldout_dir: Path, tmp_path: Path) -> None:
    config = _config(
        tmp_path, f'[likelihood]\ndata = "{heldout_dir}"\nbase_model = "{base_dir}"\nlimit = 2\nmax_length = 512\nnum_threads = 1\n'
    )
    from_file = runner.invoke(app, ["eval", "likelihood", "--config", str(config), "--json"])
    assert from_file.exit_code == 0, from_file.output
    [base] = json.loads(from_file.stdout)
    assert base["states"] == 2, base

    flagged = runner.invoke(app, ["eval", "likelihood", "-c", str(config), "--limit", "1", "--json"])
    assert flagged.exit_code == 0, flagged.output
    assert json.loads(flagged.stdout)[0]["states"] == 1, "--limit overrides the file's limit"

    missing = tmp_path / "no-data"
    other = runner.invoke(app, ["eval", "likelihood", "-c", str(config), "--data", str(missing)])
    assert other.exit_code == 1 and f"No held-out IL dataset in {missing}" in _flat(other.stderr), "--data overrides the file's data"


def test_a_max_length_of_the_file_is_named_by_its_key(heldout_dir: Path, tmp_path: Path) -> None:
    """A base with 48 positions: the refusal (before the model loads) names the file's key, not a --max-length nobody gave."""
    short = _tiny_base(tmp_path / "short", max_positions=48)
    config = _config(tmp_path, f'[likelihood]\ndata = "{heldout_dir}"\nbase_model = "{short}"\nmax_length = 1024\n')
    result = runner.invoke(app, ["eval", "likelihood", "-c", str(config), "--no-progress"])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert f"max_length in [likelihood] of {config} 1024 is longer than the base model's context (48 tokens" in error, error
    assert f"Set max_length in [likelihood] of {config} to 48 or less" in error and "--max-length" not in error, error
    flagged = runner.invoke(app, ["eval", "likelihood", "-c", str(config), "--max-length", "1024", "--no-progress"])
    assert flagged.exit_code == 1 and "--max-length 1024 is longer than the base model's context" in _flat(flagged.stderr), flagged.output


def test_data_from_the_file_is_read_before_any_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-data"
    config = _config(tmp_path, f'[likelihood]\ndata = "{missing}"\nbase_model = "{tmp_path / "no-model"}"\n')
    result = runner.invoke(app, ["eval", "likelihood", "-c", str(config)])
    assert result.exit_code == 1, result.output
    assert f"No held-out IL dataset in {missing}" in _flat(result.stderr), result.stderr


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("threads = 2", "threads: Extra inputs are not permitted (did you mean num_threads?): in [likelihood] of CONFIG"),
        ('adapter = ["a"]', "adapter: Extra inputs are not permitted (did you mean adapters?)"),
        ('limit = "3"', "limit: Input should be a valid integer (got '3'): in [likelihood] of CONFIG, TOML is typed: \"3\" is a string"),
        ('adapters = "a"', "adapters: Input should be a valid list of strings (got 'a'): in [likelihood] of CONFIG"),
        ("max_length = 4", "max_length: Input should be greater than or equal to 8 (got 4)"),
    ],
    ids=["unknown-key", "flag-name", "wrong-type", "not-a-list", "out-of-range"],
)
def test_a_files_mistake_is_refused_naming_the_file_the_table_and_the_key(line: str, expected: str, tmp_path: Path) -> None:
    config = _config(tmp_path, f'[likelihood]\ndata = "{tmp_path}"\nbase_model = "{tmp_path}"\n{line}\n')
    result = runner.invoke(app, ["eval", "likelihood", "--config", str(config)])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert error.startswith("error: Invalid likelihood eval configuration:") and f"[likelihood] of {config}" in error, error
    assert expected.replace("CONFIG", str(config)) in error, error


def test_without_a_base_the_flag_and_the_key_are_named(tmp_path: Path) -> None:
    config = _config(tmp_path, f'[likelihood]\ndata = "{tmp_path}"\n')
    result = runner.invoke(app, ["eval", "likelihood", "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert "needs --base (or base_model in the [likelihood] table of the --config file)." in _flat(result.stderr), result.stderr
    bare = runner.invoke(app, ["eval", "likelihood"])
    assert (
        bare.exit_code == 2
        and "Usage: ee eval likelihood" in bare.stderr
        and "needs --data (or data in the [likelihood] table" in _flat(bare.stderr)
    ), bare.output


def test_likelihood_is_ee_s_own_table(tmp_path: Path) -> None:
    config = _config(tmp_path, f'[likelihood]\ndata = "{tmp_path}"\n')
    result = runner.invoke(app, ["eval", "run", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "it has [likelihood] (read by ee eval likelihood)" in _flat(result.stderr), result.stderr


def test_help_names_the_config_table_and_the_defaults() -> None:
    result = runner.invoke(app, ["eval", "likelihood", "--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert result.exit_code == 0, result.output
    assert "TOML file with a [likelihood] table; flags override it." in _flat(result.output)
    entries = help_entries(result.output)
    flags = ("--max-length", "--decode", "--max-new-tokens", "--limit", "--threads", "--device")
    missing = [flag for flag in flags if "[default:" not in entries.get(flag, "")]
    assert not missing, missing
