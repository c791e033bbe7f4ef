"""Numbers out of an option's range are usage errors naming the option (exit 2), as ``--limit 0`` always was: they no
longer reach a library (polars, the socket, torch, vLLM) and come back as "unexpected ... a bug in ee-middleware"; a
``--max-lora-rank`` below 1 (also from ``EE_MAX_LORA_RANK``) no longer advises "Train with lora_r <= -1"."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()

BIG = "99999999999999999999999"

USAGE_ERRORS: dict[str, tuple[list[str], str, dict[str, str]]] = {
    # name: (arguments, the option the error names, environment); {base} is an empty folder, {store} a store
    "replay list --limit huge": (["replay", "list", "--store", "{store}", "--limit", BIG], "--limit", {}),
    "serve local --port 70000": (["serve", "local", "--base", "{base}", "--port", "70000"], "--port", {}),
    "serve local --port -1": (["serve", "local", "--base", "{base}", "--port", "-1"], "--port", {}),
    "serve router --port 70000": (
        ["serve", "router", "-r", "{base}", "--server", "http://127.0.0.1:1/v1", "--port", "70000"],
        "--port",
        {},
    ),
    "serve vllm --port 0": (["serve", "vllm", "--base", "{base}", "--port", "0", "--print-command"], "--port", {}),
    "serve local --num-threads 0": (["serve", "local", "--base", "{base}", "--num-threads", "0"], "--num-threads", {}),
    "serve local --num-threads huge": (["serve", "local", "--base", "{base}", "--num-threads", BIG], "--num-threads", {}),
    "serve local --max-lora-rank 0": (["serve", "local", "--base", "{base}", "--max-lora-rank", "0"], "--max-lora-rank", {}),
    "serve local EE_MAX_LORA_RANK=-1": (["serve", "local", "--base", "{base}"], "EE_MAX_LORA_RANK", {"EE_MAX_LORA_RANK": "-1"}),
    "serve vllm --max-lora-rank 3": (["serve", "vllm", "--base", "{base}", "--max-lora-rank", "3", "--print-command"], "pick 8", {}),
    "serve vllm --max-lora-rank -1": (
        ["serve", "vllm", "--base", "{base}", "--max-lora-rank", "-1", "--print-command"],
        "--max-lora-rank",
        {},
    ),
    "serve vllm --max-loras 0": (["serve", "vllm", "--base", "{base}", "--max-loras", "0", "--print-command"], "--max-loras", {}),
    "serve vllm --max-model-len -1": (
        ["serve", "vllm", "--base", "{base}", "--max-model-len", "-1", "--print-command"],
        "--max-model-len",
        {},
    ),
    "serve vllm --max-num-seqs 0": (["serve", "vllm", "--base", "{base}", "--max-num-seqs", "0", "--print-command"], "--max-num-seqs", {}),
    "serve vllm --cpu-kv-cache-gb -1": (
        ["serve", "vllm", "--base", "{base}", "--cpu-kv-cache-gb", "-1", "--print-command"],
        "--cpu-kv-cache-gb",
        {},
    ),
    "serve vllm --timeout nan": (["serve", "vllm", "--base", "{base}", "--timeout", "nan", "--print-command"], "--timeout", {}),
    "serve vllm --timeout inf": (["serve", "vllm", "--base", "{base}", "--timeout", "inf", "--print-command"], "--timeout", {}),
    "adapters register --max-lora-rank 0": (
        ["adapters", "register", "{base}", "-a", "shop", "-r", "{base}/registry", "--max-lora-rank", "0"],
        "--max-lora-rank",
        {},
    ),
    "adapters register EE_MAX_LORA_RANK=-1": (
        ["adapters", "register", "{base}", "-a", "shop", "-r", "{base}/registry"],
        "EE_MAX_LORA_RANK",
        {"EE_MAX_LORA_RANK": "-1"},
    ),
    "datasets show --examples huge": (["datasets", "show", "{base}", "--examples", BIG], "--examples", {}),
    "datasets build --max-observation-tokens huge": (
        ["datasets", "build", "--store", "{store}", "--out", "{base}/data", "--max-observation-tokens", BIG],
        "--max-observation-tokens",
        {},
    ),
    "datasets build --chunk-mb inf": (
        ["datasets", "build", "--store", "{store}", "--out", "{base}/data", "--chunk-mb", "inf"],
        "--chunk-mb",
        {},
    ),
    "eval run --trials huge": (
        [
            "eval",
            "run",
            "--suite",
            "bfcl:multi_turn_base:1",
            "--endpoint",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--out",
            "{base}/e",
            "--trials",
            BIG,
        ],
        "--trials",
        {},
    ),
    "eval run --temperature inf": (
        [
            "eval",
            "run",
            "--suite",
            "bfcl:multi_turn_base:1",
            "--endpoint",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--out",
            "{base}/e",
            "--temperature",
            "inf",
        ],
        "--temperature",
        {},
    ),
    "eval likelihood --threads huge": (["eval", "likelihood", "--data", "{base}", "--base", "{base}", "--threads", BIG], "--threads", {}),
}


@pytest.mark.parametrize("name", list(USAGE_ERRORS))
def test_an_out_of_range_number_is_a_usage_error_naming_the_option(name: str, tmp_path: Path, bfcl_store_path: Path) -> None:
    args, named, env = USAGE_ERRORS[name]
    filled = [a.format(base=tmp_path, store=bfcl_store_path) for a in args]
    result = runner.invoke(app, filled, env=env)
    assert "unexpected" not in result.output and "Traceback" not in result.output, result.output
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.stderr and named in result.stderr, result.stderr
    assert "lora_r <= -1" not in result.output and "lora_r <= 0" not in result.output


def test_in_range_numbers_still_pass(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["serve", "vllm", "--base", str(tmp_path), "--port", "65535", "--max-lora-rank", "512", "--max-loras", "1", "--print-command"],
    )
    assert result.exit_code == 0, result.output
    assert "--port 65535" in result.stdout and "--max-lora-rank 512" in result.stdout


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_training_seed_numpy_refuses_is_refused_before_the_model_loads(seed: str, tmp_path: Path) -> None:
    # transformers seeds numpy with it: out of 0..2**32-1 it failed the run after the base model had loaded
    result = runner.invoke(
        app, ["train", "--base-model", str(tmp_path), "--data", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--seed", seed]
    )
    assert result.exit_code == 1, result.output
    assert "Invalid train configuration: --seed" in result.stderr and "unexpected" not in result.stderr, result.stderr
