"""Held-out action likelihood on a tiny random Llama: a zero adapter changes nothing, a trained one lowers the NLL."""

from __future__ import annotations

import json
import math
import re
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
from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, save_metadata_gguf, save_tiny_llama  # noqa: E402
from ee_middleware.trainers.training import TrainConfig, train  # noqa: E402
from tests.trainers.training.conftest import FOLDERS, build_tokenizer, il_row, write_dataset  # noqa: E402

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny", build_tokenizer(TOOL_CHAT_TEMPLATE))


@pytest.fixture(scope="module")
def heldout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder: the training il.parquet and, in heldout/, the same rows marked held out (as --heldout-... marks them)."""
    import polars as pl

    from ee_middleware.trainers.datasets.split import HELDOUT, SPLIT_METADATA_KEY

    folder = tmp_path_factory.mktemp("data")
    train_file = write_dataset(folder, "il", [il_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(12)])
    (folder / "heldout").mkdir()
    pl.read_parquet(train_file).write_parquet(folder / "heldout" / "il.parquet", metadata={SPLIT_METADATA_KEY: HELDOUT})
    return folder


@pytest.fixture(scope="module")
def zero_adapter(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter whose B matrices are zero (peft's default init): the model it makes is the base."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("zero") / "zero-adapter"
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_adapter(base_dir: Path, heldout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained on these very states (so it must give the expert's actions more probability)."""
    out = tmp_path_factory.mktemp("trained") / "trained-adapter"
    config = TrainConfig(
        base_model=str(base_dir),
        data=heldout_dir,
        output_dir=out,
        max_steps=20,
        learning_rate=1e-2,
        batch_size=4,
        target_modules=ALL_LINEAR,
    )
    train(config, progress=False)
    return out


def test_a_zero_adapter_matches_the_base_and_a_trained_one_lowers_the_nll(
    base_dir: Path, heldout_dir: Path, zero_adapter: Path, trained_adapter: Path
) -> None:
    states = load_heldout(heldout_dir)
    scores = score_likelihood(states, base_dir, [zero_adapter, trained_adapter], max_length=512, decode_sample=4, max_new_tokens=24)
    base, zero, trained = report(scores)
    assert [s["model"] for s in (base, zero, trained)] == [BASE, "zero-adapter", "trained-adapter"]
    assert base["states"] == zero["states"] == trained["states"] == 12
    assert "paired_diff" not in base and math.isfinite(base["mean_nll"]) and base["mean_nll"] > 0
    assert abs(zero["paired_diff"]) < 1e-5 and zero["improved_share"] == 0.0, "a zero adapter is the base"
    assert trained["paired_diff"] < -0.3 and trained["improved_share"] > 0.9, trained
    assert trained["paired_se"] > 0 and trained["paired_diff"] + 3 * trained["paired_se"] < 0
    assert all(0 <= row[k] <= 1 for row in (base, trained) for k in ("parse_rate", "name_match", "exact_match"))
    assert trained["decoded"] == 4 and trained["exact_match"] >= base["exact_match"]


def test_nll_is_over_the_completion_tokens_the_trainer_trains_on(base_dir: Path, heldout_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    [state, *_] = load_heldout(heldout_dir)
    [score] = score_likelihood([state], base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    pair = tokenize_pair(tokenizer, state.prompt, state.completion, state.tools, probe_template(tokenizer), 1024)
    labels = torch.tensor([[-100] * len(pair.prompt_ids) + pair.completion_ids])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([pair.ids]), labels=labels).loss  # transformers' own causal-LM loss
    assert score.nll[0] == pytest.approx(float(loss), rel=1e-4)


def test_the_cli_prints_a_table_and_json(base_dir: Path, heldout_dir: Path, zero_adapter: Path) -> None:
    runner = CliRunner()
    args = ["eval", "likelihood", "--data", str(heldout_dir), "--base", str(base_dir), "--adapter", str(zero_adapter), "--limit", "3"]
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows: list[dict[str, Any]] = json.loads(as_json.stdout)
    assert [r["model"] for r in rows] == [BASE, "zero-adapter"] and rows[1]["states"] == 3
    table = runner.invoke(app, [*args, "--no-progress"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "held-out states" in table.stdout and "zero-adapter" in table.stdout


@pytest.fixture(scope="module")
def nudged_adapter(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with small random B matrices: it moves the NLL by a few 1e-4, a difference 3 decimals hide."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("nudged") / "nudged-adapter"
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(0.003)
    model.save_pretrained(folder)
    return folder


def test_the_cli_json_has_no_nan_and_the_table_shows_the_measured_difference(
    base_dir: Path, heldout_dir: Path, nudged_adapter: Path
) -> None:
    """Before: with one held-out state --json printed "paired_se": NaN (not JSON), and the table printed
    -0.000 ± 0.000 for a difference the JSON measured as a few 1e-4."""
    runner = CliRunner()
    args = ["eval", "likelihood", "--data", str(heldout_dir), "--base", str(base_dir), "--adapter", str(nudged_adapter)]
    one = runner.invoke(app, [*args, "--limit", "1", "--json"])
    assert one.exit_code == 0, one.output

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    rows = json.loads(one.stdout, parse_constant=refuse)
    assert rows[1]["states"] == 1 and rows[1]["paired_se"] is None and rows[1]["paired_diff"] != 0
    table = runner.invoke(app, [*args, "--limit", "1", "--no-progress"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "± n/a (one state)" in table.stdout, table.output

    three = runner.invoke(app, [*args, "--limit", "3", "--json"])
    [measured] = [r for r in json.loads(three.stdout) if r["model"] == "nudged-adapter"]
    assert 0 < abs(measured["paired_diff"]) < 5e-4, "the adapter moves the NLL by less than 3 decimals show"
    table = runner.invoke(app, [*args, "--limit", "3", "--no-progress"], env={"COLUMNS": "200"})
    [row] = [line for line in table.stdout.splitlines() if "nudged-adapter" in line]
    diff, se = re.search(r"([+-]\d+\.(\d+)) ± (\d+\.\d+)", row).group(1, 3)
    decimals = len(diff.split(".")[1])
    assert float(diff) != 0 and float(se) != 0, row
    assert (
        abs(float(diff) - measured["paired_diff"]) <= 0.5 * 10**-decimals and abs(float(se) - measured["paired_se"]) <= 0.5 * 10**-decimals
    )


def test_missing_heldout_data_and_adapters_are_named(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"No held-out IL dataset in .*--heldout-share"):
        load_heldout(tmp_path)
    result = CliRunner().invoke(app, ["eval", "likelihood", "--data", str(tmp_path), "--base", str(base_dir)])
    assert result.exit_code == 1 and "No held-out IL dataset" in result.stderr


def test_adapter_folders_with_dots_in_their_names(base_dir: Path, heldout_dir: Path, zero_adapter: Path, tmp_path: Path) -> None:
    dotted = tmp_path / "bfcl.multi_turn_base-v1-3f2a9c1e"
    dotted.symlink_to(zero_adapter, target_is_directory=True)
    [base, adapter] = report(score_likelihood(load_heldout(heldout_dir)[:2], base_dir, [dotted]))
    assert base["model"] == BASE
    assert adapter["model"] == dotted.name and abs(adapter["paired_diff"]) < 1e-5


def test_a_max_length_beyond_the_bases_context_is_refused_before_the_model_loads(heldout_dir: Path, tmp_path: Path) -> None:
    """A base with 48 positions scored at --max-length 1024: the states were fitted to 1024 tokens and scored past the
    model's context without a word (a GGUF base was dequantized first, tens of seconds). Now refused from its files."""
    states = load_heldout(heldout_dir)[:1]
    short = save_tiny_llama(tmp_path / "short", build_tokenizer(TOOL_CHAT_TEMPLATE), max_positions=48)
    with pytest.raises(
        ConfigError, match=r"--max-length 1024 is longer than the base model's context \(48 tokens: max_position_embeddings in"
    ):
        score_likelihood(states, short, max_length=1024)
    save_metadata_gguf(tmp_path / "m.gguf", context_length=48)  # loading it would fail: the check comes first
    with pytest.raises(ConfigError, match=r"\(48 tokens: llama.context_length in .*m.gguf\)\. Set --max-length to 48 or less"):
        score_likelihood(states, tmp_path / "m.gguf", max_length=1024)


def test_an_adapter_trained_on_another_base_is_refused_naming_both(
    base_dir: Path, heldout_dir: Path, zero_adapter: Path, tmp_path: Path
) -> None:
    """Another base of the same shapes (other weights): the adapter loaded and was scored as a model nobody trained, with
    no word (ee adapters promote refuses the same pairing). A copy of the base is the same model, and scores as before."""
    import shutil

    other = save_tiny_llama(tmp_path / "other", build_tokenizer(TOOL_CHAT_TEMPLATE), seed=1)
    args = ["eval", "likelihood", "--data", str(heldout_dir), "--base", str(other), "--adapter", str(zero_adapter), "--limit", "2"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code != 0, result.output
    said = " ".join(result.output.split())
    assert f"trained on base model {base_dir}, not on {other}" in said and f"Run it on {base_dir} or a copy of it" in said, said
    copy = shutil.copytree(base_dir, tmp_path / "copy")
    _, zero = report(score_likelihood(load_heldout(heldout_dir)[:2], copy, [zero_adapter], max_length=256))
    assert abs(zero["paired_diff"]) < 1e-5
    # a local:BASE@ADAPTER model spec (ee eval run, ee experience eval --trained, ee improve's local evaluation) too
    from ee_middleware.errors import ModelLoadError
    from ee_middleware.models.local import LocalGenerator

    with pytest.raises(ModelLoadError, match=f"trained on base model {base_dir}, not on {other}"):
        LocalGenerator(other, adapter=zero_adapter)
    LocalGenerator(copy, adapter=zero_adapter)  # the same model: built (loaded lazily)
