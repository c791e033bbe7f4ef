"""`ee train` on datasets built from a replayed store, with base models whose chat templates are those of other families
(Gemma 2: no system role, strict alternation, no tool role; Phi-3: tool messages skipped; Llama 3.2: one call per
message, text beside a call dropped): every row renders, the labels are exactly the completion's tokens, the adapter
reloads with peft, and the manifest says which rendering fallbacks were used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ee_middleware.models.chat_template import probe_template, render_pair
from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_model
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.training import ContextBudgetWarning, TrainConfig, train
from ee_middleware.trainers.training.data import load_dataset
from ee_middleware.trainers.training.render import tokenize_rows
from tests.models.family_templates import FAMILIES

# family -> (architecture of the tiny model, the fallbacks its template needs)
CASES = {
    "gemma-2": ("mistral", {"tools", "tool_calls", "tool_results", "system"}),
    "phi-3": ("qwen2", {"tools", "tool_calls", "tool_results"}),
    "llama-3-2": ("llama", {"tools", "tool_calls"}),
}


@pytest.fixture(scope="module")
def built(replayed_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("families") / "data"
    build_datasets(DatasetConfig.load(store=replayed_store_template, out=out))
    return out


def _tokenizer(family: str, data: Path) -> Any:
    corpus = pl.read_parquet(data / "il.parquet")["prompt"].to_list()[:12]
    return build_test_tokenizer([*corpus, FAMILIES[family]], chat_template=FAMILIES[family], vocab_size=700)


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("kind", ["iwm", "sr"])
def test_labels_are_exactly_the_completion_tokens(built: Path, family: str, kind: str) -> None:
    tokenizer = _tokenizer(family, built)
    support = probe_template(tokenizer)
    rows = load_dataset(built, kind).rows[:40]  # every step shape of the replayed BFCL entries, fitted or not
    examples, stats = tokenize_rows(tokenizer, rows, 4096, support)
    assert stats.examples == len(rows) and not stats.dropped_ids
    fitted = {cut["id"] for cut in stats.cuts}  # long BFCL states lose older turns; their completion is never cut
    for row, example in zip(rows, examples, strict=True):
        prompt_text, completion_text, _ = render_pair(tokenizer, row.prompt, row.completion, row.tools, support)
        start = next(i for i, label in enumerate(example.labels) if label != -100)
        assert all(label != -100 for label in example.labels[start:]), "the loss covers one contiguous target"
        assert example.labels[start:] == example.input_ids[start:]
        if row.id not in fitted:
            assert tokenizer.decode(example.input_ids[:start]) == prompt_text
        assert tokenizer.decode(example.labels[start:]) == completion_text
        target = row.completion[0]
        for text in [target.get("content") or "", *(c["function"]["name"] for c in target.get("tool_calls") or [])]:
            assert text in completion_text, f"{family} {kind}: {text!r} is not in the labels"


@pytest.mark.parametrize(
    "family", [pytest.param(family, marks=[pytest.mark.heavy] if family == "gemma-2" else [pytest.mark.slow]) for family in sorted(CASES)]
)
def test_train_iwm_and_reload_the_adapter(built: Path, tmp_path: Path, family: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    architecture, fallbacks = CASES[family]
    base = save_tiny_model(tmp_path / "base", _tokenizer(family, built), architecture, max_positions=2048)
    config = TrainConfig.load(
        base_model=str(base),
        data=str(built),
        schedule="iwm",
        output_dir=str(tmp_path / "adapter"),
        max_steps=2,
        batch_size=2,
        max_length=2048,
    )
    with pytest.warns(ContextBudgetWarning):  # BFCL states are thousands of tokens with this tokenizer
        result = train(config, progress=False)
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert {key for key, how in manifest["rendering"].items() if how != "chat template"} == fallbacks
    assert manifest["metrics"]["steps"] == 2 and set(manifest["datasets"]) == {"iwm", "il"}
    assert all(entry["render"]["examples"] == entry["rows"] for entry in manifest["datasets"].values())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), result.adapter_dir)
    assert any("lora_A" in name for name, _ in model.named_parameters())
