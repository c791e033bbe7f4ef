"""An output path given empty or blank, by a flag (``--out "$OUT"`` with the variable unset) or by a config file's key
(``out = ""``), is refused before any work, naming the flag or the key: before, a ``Path`` option read ``--out ""`` as
``.`` and the command wrote its files into the working directory (``ee datasets build`` did not; ``eval run``,
``train --output-dir``, ``experience eval/dataset`` and ``datasets export --format hf`` did, and every ``out = ""``).
The real CLI; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "flag", "what"),
    [
        (["eval", "run", "--suite", "bfcl:multi_turn_base:1", "--model-spec", "noop", "--out", ""], "--out", "the output folder"),
        (["train", "--data", "data", "--output-dir", " "], "--output-dir", "the adapter's folder"),
        (["experience", "eval", "--store", "s", "--model", "m", "--out", ""], "--out", "the output folder"),
        (["experience", "dataset", "--store", "s", "--out", "\t"], "--out", "the output folder"),
        (["datasets", "export", "d.parquet", "--format", "hf", "--out", ""], "--out", "the output folder"),
        (["datasets", "export", "d.parquet", "--out", ""], "--out", "the file to write"),
        (["traces", "export", "--store", "s", "--format", "jsonl", "--out", " "], "--out", "the file to write"),
        (["datasets", "build", "--store", "s", "--out", ""], "--out", "the output folder"),
    ],
)
def test_a_blank_output_flag_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], flag: str, what: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {flag}:" in said and f"is empty or blank: name {what}" in said, said
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "table", "lines", "key"),
    [
        (["datasets", "build"], "datasets", ['store = "s"', 'out = ""'], "out"),
        (["train"], "train", ['base_model = "m"', 'output_dir = " "'], "output_dir"),
        (["eval", "run"], "eval", ['suites = ["bfcl:multi_turn_base:1"]', 'model = "noop"', 'out = ""'], "out"),
        (["experience", "eval"], "experience_eval", ['store = "s"', 'model = "m"', 'out = ""'], "out"),
        (["experience", "dataset"], "experience_dataset", ['store = "s"', 'out = ""'], "out"),
        (["curriculum", "propose"], "curriculum_propose", ['store = "s"', 'out = ""'], "out"),
        (["train"], "train", ['base_model = "m"', 'base_cache_dir = ""'], "base_cache_dir"),  # (review) a folder ee writes too
        (
            ["improve"],
            "improve",
            ['store = "s"', 'app = "a"', 'base_model = "m"', 'registry = "r"', 'runs = "runs"', 'base_cache_dir = " "'],
            "base_cache_dir",
        ),
    ],
)
def test_a_blank_output_key_in_a_config_file_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], table: str, lines: list[str], key: str
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "ee.toml"
    config.write_text(f"[{table}]\n" + "\n".join(lines) + "\n")
    result = runner.invoke(app, [*command, "--config", str(config)])
    said = " ".join(result.output.split())
    assert result.exit_code in (1, 2), result.output
    assert f"{key}:" in said and "is empty or blank" in said and f"[{table}]" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ee.toml"]
