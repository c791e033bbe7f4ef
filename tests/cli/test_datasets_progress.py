"""``ee datasets``' progress bars: on stderr, stdout holding the answer alone; none with ``--json`` or ``--no-progress``.
Was: ``ee datasets show --tokenizer`` rendered every row through the chat template (minutes on a large dataset) with no
sign of life, and ``ee datasets build`` had no ``--no-progress`` as ``ee replay run`` has. Real dataset files written as
the builders write them, a saved test tokenizer whose chat template lists the tool schemas, and the real BFCL expert
store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE
from tests.trainers.training.conftest import build_tokenizer, write_datasets

BAR = "━"
ROWS = {"il": 16, "iwm": 24, "sr": 8}


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(datasets folder, tokenizer folder)."""
    root = tmp_path_factory.mktemp("show")
    tokenizer = root / "tokenizer"
    build_tokenizer(TOOL_CHAT_TEMPLATE).save_pretrained(str(tokenizer))
    return write_datasets(root / "data", **ROWS), tokenizer


def _show(data: Path, *more: str):
    return CliRunner().invoke(app, ["datasets", "show", str(data), "-n", "0", *more])


def test_show_counts_tokens_under_a_bar_per_file_on_stderr(shown: tuple[Path, Path]) -> None:
    data, tokenizer = shown
    result = _show(data, "--tokenizer", str(tokenizer), "--max-length", "64")
    assert result.exit_code == 0, result.output
    for kind, rows in ROWS.items():
        assert f"counting tokens {kind}.parquet" in result.stderr and f"{rows}/{rows}" in result.stderr, result.stderr
        assert f"fitting {kind}.parquet to 64 tokens" in result.stderr, result.stderr
        assert f"{kind}.parquet: {rows} rows" in result.stdout
    assert BAR not in result.stdout and "counting tokens" not in result.stdout, "stdout holds the answer alone"
    assert "at max_length 64:" in result.stdout


def test_show_draws_no_bar_with_json_or_no_progress_or_without_a_tokenizer(shown: tuple[Path, Path]) -> None:
    data, tokenizer = shown
    as_json = _show(data, "--tokenizer", str(tokenizer), "--max-length", "64", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert {kind: d["rows"] for kind, d in json.loads(as_json.stdout).items()} == ROWS
    for result in (as_json, _show(data, "--tokenizer", str(tokenizer), "--no-progress"), _show(data)):
        assert result.exit_code == 0, result.output
        assert "counting tokens" not in result.stderr and BAR not in result.stderr, result.stderr
        assert BAR not in result.stdout


def test_build_draws_its_bars_on_stderr_unless_told_not_to(bfcl_store_path: Path, tmp_path: Path) -> None:
    args = ["datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bars")])
    assert result.exit_code == 0, result.output
    assert "building il" in result.stderr and BAR in result.stderr, result.stderr
    assert "building il" not in result.stdout and "il.parquet" in result.stdout
    quiet = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "quiet"), "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    assert "building il" not in quiet.stderr and BAR not in quiet.stderr, quiet.stderr
    assert "il.parquet" in quiet.stdout


def test_counting_and_fitting_report_each_row(shown: tuple[Path, Path]) -> None:
    """The bars of ``show`` move row by row: describe_dataset and budget_report call ``on_row`` after each row, with the
    rows done so far, ending at the file's rows."""
    from transformers import AutoTokenizer

    from ee_middleware.trainers.datasets.build import read_dataset
    from ee_middleware.trainers.datasets.summary import budget_report, describe_dataset

    data, tokenizer_dir = shown
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    path = data / "iwm.parquet"
    counted: list[int] = []
    fitted: list[int] = []
    describe_dataset(read_dataset(path), tokenizer, path, on_row=counted.append)
    budget_report(read_dataset(path), path, tokenizer, 64, on_row=fitted.append)
    assert counted == fitted == list(range(1, ROWS["iwm"] + 1))


@pytest.mark.parametrize("given", ["HuggingFaceTB/SmolLM2-135M", "no-such-folder"])
def test_a_tokenizer_that_is_no_folder_is_refused_without_asking_the_hub(shown: tuple[Path, Path], given: str, monkeypatch) -> None:
    """Sweep Z: a --tokenizer that is no folder went to the Hugging Face hub (about 3 s, then "unexpected OSError: We
    couldn't connect to 'https://huggingface.co' ... (a bug)"); with a network, a hub name would have been downloaded."""
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("AutoTokenizer.from_pretrained was called")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    data, _ = shown
    result = _show(data, "--tokenizer", given)
    assert result.exit_code == 1, result.output
    assert f"--tokenizer {given}: no such folder" in result.stderr and "never downloaded" in result.stderr


def test_show_prints_the_middle_of_a_huge_example_only_with_full(shown: tuple[Path, Path], tmp_path: Path) -> None:
    """A row holding a tool result of megabytes was printed whole (5.8 MB of output for a 2.7 MB result, a sweep of
    unusual data): the head and tail are shown, with how much was left out and --full."""
    from tests.trainers.training.conftest import iwm_row, write_dataset

    _, tokenizer = shown
    row = iwm_row(0, "reports")
    prompt = json.loads(row["prompt"])
    prompt[-1:-1] = [{"role": "tool", "tool_call_id": "big", "content": "x" * 200_000}]
    data = write_dataset(tmp_path / "data", "iwm", [{**row, "prompt": json.dumps(prompt)}])
    short = CliRunner().invoke(app, ["datasets", "show", str(data), "-n", "1", "--tokenizer", str(tokenizer), "--no-progress"])
    assert short.exit_code == 0, short.output
    assert len(short.stdout) < 20_000 and "characters of this example left out: --full prints it whole" in short.stdout
    whole = CliRunner().invoke(app, ["datasets", "show", str(data), "-n", "1", "--tokenizer", str(tokenizer), "--no-progress", "--full"])
    assert whole.exit_code == 0 and whole.stdout.count("x") >= 200_000 and "left out" not in whole.stdout  # (wrapped lines)
