"""``ee eval likelihood`` on what a user brings: held-out states whose expert action does not fit --max-length, and two
adapters kept in folders of the same name (``ee improve`` keeps each run's as ``RUNS/<run>/adapter``). A tiny random
Llama and real LoRA adapters, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from ee_middleware.evals.likelihood import BASE, load_heldout, report, score_likelihood  # noqa: E402
from ee_middleware.models.chat_template import probe_template  # noqa: E402
from ee_middleware.models.truncation import tokenize_pair  # noqa: E402
from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, save_tiny_llama  # noqa: E402
from tests.cli.json_failure import json_failure  # noqa: E402
from tests.trainers.training.conftest import build_tokenizer, il_row, write_dataset  # noqa: E402

SHORT = ["a", "b", "c", "d", "e"]
LONG = ["quarterly-financial-reports-archive-" * 4 + "2024", "photos-from-the-summer-holiday-by-the-sea-" * 4 + "raw"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny", build_tokenizer(TOOL_CHAT_TEMPLATE))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose heldout/il.parquet holds 5 states with a short expert action and 2 with a long one."""
    import polars as pl

    from ee_middleware.trainers.datasets.split import HELDOUT, SPLIT_METADATA_KEY

    folder = tmp_path_factory.mktemp("data")
    rows = [il_row(i, name) for i, name in enumerate([SHORT[0], LONG[0], *SHORT[1:3], LONG[1], *SHORT[3:]])]
    train_file = write_dataset(folder, "il", rows)
    (folder / "heldout").mkdir()
    pl.read_parquet(train_file).write_parquet(folder / "heldout" / "il.parquet", metadata={SPLIT_METADATA_KEY: HELDOUT})
    return folder


def _action_tokens(base_dir: Path, data_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    support = probe_template(tokenizer)
    return [len(tokenize_pair(tokenizer, s.prompt, s.completion, s.tools, support, 1024).completion_ids) for s in load_heldout(data_dir)]


def test_states_left_out_for_max_length_are_counted_named_with_the_max_length_that_keeps_them(base_dir: Path, data_dir: Path) -> None:
    """Before: at a --max-length that the 2 long expert actions reach, 5 of the 7 states were scored with no word (the
    mean biased toward short calls), and at one no action fits, 0 states, mean_nll null, an empty row, exit 0."""
    lengths = _action_tokens(base_dir, data_dir)
    short, long = max(lengths[i] for i in (0, 2, 3, 5, 6)), min(lengths[i] for i in (1, 4))
    assert short < long, lengths
    max_length = long  # an action of exactly max_length tokens leaves no room for its state: left out, as training does
    runner = CliRunner()
    args = ["eval", "likelihood", "--data", str(data_dir), "--base", str(base_dir), "--max-length", str(max_length)]

    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["states"] == 5 and row["left_out_too_long"] == 2 and row["left_out_empty"] == 0
    assert row["longest_action_tokens"] == max(lengths)
    assert {"model", "states", "mean_nll"} <= set(row)  # the keys a script reads are kept
    warning = " ".join(result.stderr.split())
    assert "2 of the 7 held-out states were left out" in warning and f"takes --max-length {max_length} tokens or more" in warning
    assert f"--max-length {max(lengths) + 1} or more keeps them all" in warning, warning

    table = runner.invoke(app, [*args, "--no-progress"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "on 5 of 7 held-out states" in table.stdout, table.output
    assert "2 of the 7 held-out states were left out" in " ".join(table.stderr.split())

    kept = runner.invoke(app, [*args[:-1], str(max(lengths) + 1), "--json"])  # the --max-length the warning names
    [row] = json.loads(kept.stdout)
    assert kept.exit_code == 0 and row["states"] == 7 and row["left_out_too_long"] == 0 and "left out" not in kept.stderr

    none = runner.invoke(app, [*args[:-1], str(min(lengths)), "--json"])
    assert none.exit_code == 1 and json_failure(none), none.output
    said = " ".join(none.stderr.split())
    assert "No held-out state could be scored" in said and "All 7 held-out states were left out" in said, said
    assert f"--max-length {max(lengths) + 1} or more keeps them all" in said


def _adapter(base_dir: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter with small random B matrices (its NLL differs from the base's and from another seed's)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(0.3)
    model.save_pretrained(folder)
    return folder


def test_two_adapters_in_folders_of_the_same_name_get_distinct_labels_in_the_table_and_json(
    base_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Before: runs/a/adapter and runs/b/adapter were both 'adapter', in the table and in --json: only their order told
    which numbers were whose."""
    first = _adapter(base_dir, tmp_path / "runs" / "a" / "adapter", seed=1)
    second = _adapter(base_dir, tmp_path / "runs" / "b" / "adapter", seed=2)
    runner = CliRunner()
    args = ["eval", "likelihood", "--data", str(data_dir), "--base", str(base_dir), "--adapter", str(first), "--adapter", str(second)]
    result = runner.invoke(app, [*args, "--limit", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    assert [r["model"] for r in rows] == [BASE, "a/adapter", "b/adapter"]
    assert [r.get("path") for r in rows] == [None, str(first), str(second)]
    # each label carries its own adapter's numbers: the same as scoring that adapter alone
    [_, alone] = report(score_likelihood(load_heldout(data_dir)[:3], base_dir, [second]))
    assert alone["model"] == "adapter" and rows[2]["mean_nll"] == pytest.approx(alone["mean_nll"], rel=1e-5)
    assert rows[1]["mean_nll"] != pytest.approx(rows[2]["mean_nll"], rel=1e-5)
    table = runner.invoke(app, [*args, "--limit", "3", "--no-progress"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "a/adapter" in table.stdout and "b/adapter" in table.stdout


def test_adapter_labels_are_the_shortest_tails_that_tell_the_folders_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.evals.likelihood import adapter_labels

    monkeypatch.chdir(tmp_path)
    assert adapter_labels(["out/adapter"]) == ["adapter"]  # a lone adapter keeps its folder's name
    assert adapter_labels(["runs/a/adapter", "runs/b/adapter", "other"]) == ["a/adapter", "b/adapter", "other"]
    assert adapter_labels(["x/night/1/adapter", "y/night/1/adapter"]) == ["x/night/1/adapter", "y/night/1/adapter"]
    assert adapter_labels(["runs/a/adapter", str(tmp_path / "runs" / "b" / "adapter")]) == ["a/adapter", "b/adapter"]
    assert adapter_labels(["one/base", "two/other"]) == ["one/base", "other"]  # never the base's own label
    with pytest.raises(ConfigError, match=r"--adapter runs/a/adapter/ names the same folder as --adapter runs/a/adapter .*give each"):
        adapter_labels(["runs/a/adapter", "runs/a/adapter/"])


def test_states_fitted_to_max_length_are_counted_and_a_left_cut_is_warned_of(base_dir: Path, data_dir: Path) -> None:
    """At a --max-length that leaves each state's prompt a few tokens, every scored state was cut from the left (its
    system message, tools and task gone) and the command printed NLLs with no word of it, nothing in --json either,
    where `ee train` warns of the same cut (a sweep of unusual data)."""
    lengths = _action_tokens(base_dir, data_dir)
    short = max(lengths[i] for i in (0, 2, 3, 5, 6))
    runner = CliRunner()
    args = ["eval", "likelihood", "--data", str(data_dir), "--base", str(base_dir), "--json"]
    cut = runner.invoke(app, [*args, "--max-length", str(short + 4)])
    assert cut.exit_code == 0, cut.output
    [row] = json.loads(cut.stdout)
    assert row["states"] == 5 and row["fitted"] == 5 and row["cut_from_the_left"] == 5, row
    said = " ".join(cut.stderr.split())
    assert "Warning: 5 of the 5 scored held-out states did not fit --max-length" in said and "cut from the left" in said, said
    whole = runner.invoke(app, [*args, "--max-length", "1024"])
    [row] = json.loads(whole.stdout)
    assert whole.exit_code == 0 and row["fitted"] == row["cut_from_the_left"] == 0 and "did not fit" not in whole.stderr
