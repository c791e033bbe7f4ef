"""``ee datasets show --tokenizer``: the token lengths it shows are what the trainer's rendering of each row needs.

Real parts: dataset files written as the builders write them, a saved tiny Llama folder whose tokenizer's chat
template lists the tool schemas, and the trainer's own tokenization (``tokenize_rows``) to compare with.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from ee_middleware.cli.app import app


def _trainer_lengths(data_dir: Path, kind: str, tokenizer_dir: Path) -> list[int]:
    """The tokens each row is, as the trainer tokenizes it with no length limit (nothing fitted or cut)."""
    from transformers import AutoTokenizer

    from ee_middleware.models.chat_template import probe_template
    from ee_middleware.trainers.training.data import rows_from_frame
    from ee_middleware.trainers.training.render import tokenize_rows

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    path = data_dir / f"{kind}.parquet"
    examples, stats = tokenize_rows(tokenizer, rows_from_frame(pl.read_parquet(path), path, kind), 10**9, probe_template(tokenizer))
    assert stats.truncated == stats.dropped_too_long == 0
    return sorted(len(e.input_ids) for e in examples)


def test_show_measures_rows_as_the_trainer_renders_them(tiny_model_dir: Path, data_dir: Path) -> None:
    """Before: the histogram tokenized the raw JSON of prompt + completion, without the tool schemas the template lists,
    so its lengths were not what training needs: rows it put under max_length were over budget in the same command's
    report. Now min, median and max are the trainer's own, and the rows over max_length are those the budget counts."""
    needs = {kind: _trainer_lengths(data_dir, kind, tiny_model_dir) for kind in ("il", "iwm", "sr")}
    max_length = needs["il"][len(needs["il"]) // 2] - 1  # about half the IL rows over it
    result = CliRunner().invoke(
        app, ["datasets", "show", str(data_dir), "--tokenizer", str(tiny_model_dir), "--max-length", str(max_length), "--json"]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    for kind, lengths in needs.items():
        described = shown[kind]
        assert (described["min"], described["median"], described["max"]) == (lengths[0], lengths[len(lengths) // 2], lengths[-1]), kind
        assert described["unit"] == "tokens" and "trainer's rendering" in described["rendering"]
        over = sum(n > max_length for n in lengths)
        assert described["budget"]["over_budget"] == over, kind
    assert 0 < shown["il"]["budget"]["over_budget"] < shown["il"]["rows"]

    text = CliRunner().invoke(app, ["datasets", "show", str(data_dir), "--tokenizer", str(tiny_model_dir), "-n", "0"])
    assert text.exit_code == 0, text.output
    assert f"median {needs['il'][len(needs['il']) // 2]}," in text.stdout
    assert "lengths: the trainer's rendering" in " ".join(text.stdout.split())
    estimated = json.loads(CliRunner().invoke(app, ["datasets", "show", str(data_dir), "-n", "0", "--json"]).stdout)
    assert estimated["il"]["rendering"].startswith("estimated:") and set(estimated["il"]) == set(shown["il"]) - {"budget"}


def test_the_examples_shown_are_the_text_the_trainer_trains_on(plain_template_model_dir: Path, data_dir: Path) -> None:
    """Before: the examples were the tokenizer's own apply_chat_template over prompt + completion, while the lengths beside
    them were the trainer's rendering: with SmolLM2's template (it ignores tools and tool calls) an IL example showed no
    tool schemas and no call (its target looked empty), though ee train trains on the schemas in the system message and
    the calls as ``<tool_call>`` text. Now each example is the trainer's prompt then completion."""
    from transformers import AutoTokenizer

    from ee_middleware.models.chat_template import probe_template, render_pair

    tokenizer = AutoTokenizer.from_pretrained(str(plain_template_model_dir), local_files_only=True)
    row = pl.read_parquet(data_dir / "il.parquet").row(0, named=True)
    prompt, completion, _ = render_pair(
        tokenizer, json.loads(row["prompt"]), json.loads(row["completion"]), json.loads(row["tools"]), probe_template(tokenizer)
    )
    assert completion.startswith('<tool_call>{"name": "cd"') and '"name": "cat"' in prompt, (prompt, completion)
    result = CliRunner().invoke(
        app,
        ["datasets", "show", str(data_dir / "il.parquet"), "--tokenizer", str(plain_template_model_dir), "-n", "1"],
        env={"COLUMNS": "2000"},
    )
    assert result.exit_code == 0, result.output
    assert prompt + completion in result.stdout, result.stdout[-3000:]


def test_a_tokenizer_without_a_chat_template_is_named(tmp_path: Path, data_dir: Path) -> None:
    """Before: the template error blamed 'a limit of the model's own template (e.g. strict user/assistant alternation)'."""
    from ee_middleware.testing.tiny_models import build_test_tokenizer

    tokenizer = build_test_tokenizer(["You manage files."] * 3)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "no-template")
    result = CliRunner().invoke(app, ["datasets", "show", str(data_dir), "--tokenizer", str(tmp_path / "no-template")])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert f"The tokenizer in {tmp_path / 'no-template'} has no chat template" in message and "strict user/assistant" not in message
