"""Rendering rows with the base model's chat template: loss on completion tokens only, truncation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.models.chat_template import probe_template
from ee_middleware.trainers.training.data import ChatRow
from ee_middleware.trainers.training.render import render_texts, tokenize_rows

from .conftest import FILE_TOOLS, PLAIN_CHAT_TEMPLATE, build_tokenizer, il_row, iwm_row, sr_row


def chat_row(raw: dict[str, Any]) -> ChatRow:
    return ChatRow(raw["id"], raw["kind"], json.loads(raw["prompt"]), json.loads(raw["completion"]), json.loads(raw["tools"]))


def test_labels_cover_exactly_the_rendered_completion(tool_tokenizer: Any) -> None:
    support = probe_template(tool_tokenizer)
    assert support.tools and support.tool_calls
    row = chat_row(il_row(0, "temp"))
    examples, stats = tokenize_rows(tool_tokenizer, [row], 1024, support)
    (example,) = examples
    prompt_len = example.labels.count(-100)
    assert example.labels[:prompt_len] == [-100] * prompt_len and -100 not in example.labels[prompt_len:]
    assert example.labels[prompt_len:] == example.input_ids[prompt_len:]
    completion = tool_tokenizer.decode(example.input_ids[prompt_len:])
    # arguments were a JSON string in the row: the template got a dict, so they render as an object
    assert completion == '<tool_call>{"name": "cd", "arguments": {"folder": "temp"}}</tool_call><|im_end|>\n'
    prompt = tool_tokenizer.decode(example.input_ids[:prompt_len])
    assert prompt.endswith("<|im_start|>assistant\n") and '"name": "cat"' in prompt
    assert stats.examples == 1 and stats.loss_tokens == len(example.input_ids) - prompt_len


def test_iwm_completion_is_the_observation(tool_tokenizer: Any) -> None:
    row = chat_row(iwm_row(0, "docs"))
    prompt, completion, fallback = render_texts(tool_tokenizer, row, probe_template(tool_tokenizer))
    assert not fallback
    assert completion == '{"error": "cd: docsx: No such folder"}<|im_end|>\n'
    assert '<tool_call>{"name": "cd", "arguments": {"folder": "docsx"}}</tool_call>' in prompt


def test_template_without_tool_support_gets_tools_in_system_and_calls_as_text() -> None:
    tokenizer = build_tokenizer(PLAIN_CHAT_TEMPLATE)
    support = probe_template(tokenizer)
    assert not support.tools and not support.tool_calls
    prompt, completion, _ = render_texts(tokenizer, chat_row(il_row(0, "temp")), support)
    assert prompt.startswith("<|im_start|>system\nYou manage files.\n\nYou may call these tools:\n")
    assert json.dumps(FILE_TOOLS[0]) in prompt
    assert completion == '<tool_call>{"name": "cd", "arguments": {"folder": "temp"}}</tool_call><|im_end|>\n'


def test_long_prompts_are_cut_from_the_left_and_counted(tool_tokenizer: Any) -> None:
    """A prompt whose system message alone is too long is cut from the left (the last resort), and counted."""
    support = probe_template(tool_tokenizer)
    long_row = il_row(1, "temp")
    long_row["prompt"] = json.dumps([{"role": "system", "content": "notes " * 400}, {"role": "user", "content": "Go into temp."}])
    rows = [chat_row(il_row(0, "temp")), chat_row(long_row)]
    full, _ = tokenize_rows(tool_tokenizer, rows, 4096, support)
    limit = len(full[0].input_ids)
    assert len(full[1].input_ids) > limit
    cut, stats = tokenize_rows(tool_tokenizer, rows, limit, support)
    assert stats.truncated == 1 and stats.left_cut == 1 and stats.dropped_too_long == 0 and len(cut) == 2
    assert cut[0] == full[0] and len(cut[1].input_ids) == limit
    trained = [label for label in cut[1].labels if label != -100]
    assert trained == [label for label in full[1].labels if label != -100] and cut[1].input_ids[-len(trained) :] == trained
    assert stats.cuts[0]["left_cut_tokens"] > 0 and stats.cuts[0]["shortened_messages"] == 0
    # the prompt's tokens as trained, after the cut (a sweep: it said the fitted prompt's, 41,774 of a 512-token row)
    assert stats.cuts[0]["tokens"] == len(cut[1].input_ids) - len(trained)
    assert stats.cuts[0]["tokens"] + stats.cuts[0]["left_cut_tokens"] <= stats.cuts[0]["original_tokens"]
    tiny, stats = tokenize_rows(tool_tokenizer, rows, 10, support)
    assert tiny == [] and stats.dropped_too_long == 2 and stats.dropped_ids == ["il-0", "il-1"]


def test_a_long_request_is_shortened_in_its_middle_rather_than_cut_from_the_left(tool_tokenizer: Any) -> None:
    """A user message too long for the row keeps its head and tail with a marker; the system message stays."""
    from ee_middleware.models.truncation import SHORTENED_MARKER

    support = probe_template(tool_tokenizer)
    long_row = il_row(1, "temp")
    long_row["prompt"] = json.dumps([{"role": "system", "content": "You manage files."}, {"role": "user", "content": "notes " * 400}])
    rows = [chat_row(il_row(0, "temp")), chat_row(long_row)]
    limit = len(tokenize_rows(tool_tokenizer, rows, 4096, support)[0][0].input_ids)
    cut, stats = tokenize_rows(tool_tokenizer, rows, limit, support)
    assert stats.truncated == 1 and stats.shortened == 1 and stats.left_cut == 0 and len(cut) == 2
    assert len(cut[1].input_ids) <= limit
    [record] = stats.cuts
    assert record["shortened_messages"] == 1 and record["omitted_chars"] > 0 and record["left_cut_tokens"] == 0
    text = tool_tokenizer.decode(cut[1].input_ids)
    assert text.startswith("<|im_start|>system\nYou manage files.") and SHORTENED_MARKER.format(n=record["omitted_chars"]) in text


@pytest.mark.parametrize("arguments", ["", "{}"])
def test_empty_arguments_render(tool_tokenizer: Any, arguments: str) -> None:
    raw = il_row(0, "temp")
    completion = json.loads(raw["completion"])
    completion[0]["tool_calls"][0]["function"] = {"name": "ls", "arguments": arguments}
    raw["completion"] = json.dumps(completion)
    _, text, _ = render_texts(tool_tokenizer, chat_row(raw), probe_template(tool_tokenizer))
    assert text.startswith('<tool_call>{"name": "ls", "arguments": {}}')


def test_a_base_whose_generation_prompt_opens_think_trains_its_tool_calls(tool_tokenizer: Any) -> None:
    """QwQ-32B's template (tests/models/family_templates.py) ends its generation prompt with '<think>\\n' but renders a
    turn without reasoning as '<|im_start|>assistant\\n...'. Was: every IL target trained '<|im_end|>' alone (the calls
    left out of a text-plus-end-of-sequence fallback) and nothing said so but `fallback_completion`. Now the labels
    are the template's turn with its calls, the rows are counted as rendered from the conversation, and the note
    the trainer warns with says so."""
    from tests.models.family_templates import QWQ_32B

    tokenizer = build_tokenizer(QWQ_32B)
    support = probe_template(tokenizer)
    assert support.tools and support.tool_calls
    rows = [chat_row(il_row(0, "temp")), chat_row(sr_row(1, "docs")), chat_row(iwm_row(2, "music"))]
    examples, stats = tokenize_rows(tokenizer, rows, 4096, support)
    labels = [tokenizer.decode([label for label in example.labels if label != -100]) for example in examples]
    assert labels == [
        '<tool_call>\n{"name": "cd", "arguments": {"folder": "temp"}}\n</tool_call><|im_end|>\n',
        'Going into docs first works; the alternative folder does not exist.\n<tool_call>\n{"name": "cd", "arguments": '
        '{"folder": "docs"}}\n</tool_call><|im_end|>\n',
        '{"error": "cd: musicx: No such folder"}<|im_end|>\n',
    ]
    assert (stats.conversation_completion, stats.fallback_completion, stats.calls_as_text) == (3, 0, 0)
    note = stats.fallback_note("il")
    assert note is not None and note.startswith("Of the 3 IL rows, 3 are rendered as the whole conversation")
    _, plain = tokenize_rows(tool_tokenizer, rows, 4096, probe_template(tool_tokenizer))
    assert plain.fallback_note("il") is None, "a template that continues its generation prompt needs no note"


def _learned_text(tokenizer: Any, example: Any) -> str:
    return tokenizer.decode([label for label in example.labels if label != -100])


def test_an_observation_cut_before_training_teaches_no_end_of_turn(tool_tokenizer: Any) -> None:
    """An IWM target the build (or capture) cut to its budget is the head of a longer text: the end of turn after it is
    not where the observation ends, so its tokens, and the cut's last text token, carry no loss. A whole observation's
    end of turn is learned. (The trainer taught every cut observation to end where the budget cut it.)"""
    import polars as pl

    from ee_middleware.trainers.training.data import rows_from_frame

    support = probe_template(tool_tokenizer)
    whole, cut = iwm_row(0, "docs"), iwm_row(1, "temp")
    frame = pl.DataFrame([whole | {"observation_truncated_chars": 0}, cut | {"observation_truncated_chars": 1200}])
    rows = rows_from_frame(frame, Path("iwm.parquet"), "iwm")
    assert [row.completion_is_head for row in rows] == [False, True]
    (whole_example, cut_example), stats = tokenize_rows(tool_tokenizer, rows, 1024, support)
    assert _learned_text(tool_tokenizer, whole_example) == '{"error": "cd: docsx: No such folder"}<|im_end|>\n'
    learned = _learned_text(tool_tokenizer, cut_example)
    assert "<|im_end|>" not in learned and '{"error": "cd: tempx: No such folder"}'.startswith(learned) and learned
    assert cut_example.input_ids == tokenize_rows(tool_tokenizer, [chat_row(cut)], 1024, support)[0][0].input_ids
    assert stats.loss_tokens == whole_example.loss_tokens + cut_example.loss_tokens < stats.tokens

    # the same row's column in another kind's dataset changes nothing (an EM target's observation is inside its JSON)
    (sr,) = rows_from_frame(pl.DataFrame([sr_row(0, "docs") | {"observation_truncated_chars": 7}]), Path("sr.parquet"), "sr")
    assert not sr.completion_is_head


def test_an_observation_the_trainer_cuts_to_fit_teaches_no_end_of_turn(tool_tokenizer: Any) -> None:
    """An IWM target too long for max_length keeps its head (``cut_completion``): that head's end of turn is not learned
    either; a target cut to no learnable token is dropped as empty rather than trained with no loss."""
    support = probe_template(tool_tokenizer)
    long_row = iwm_row(0, "docs")
    long_row["completion"] = json.dumps([{"role": "assistant", "content": "notes.txt report.pdf archive " * 120}])
    row = chat_row(long_row)
    (whole,), _ = tokenize_rows(tool_tokenizer, [row], 8192, support)
    assert _learned_text(tool_tokenizer, whole).endswith("archive <|im_end|>\n")
    max_length = len(whole.input_ids) // 2
    (fitted,), stats = tokenize_rows(tool_tokenizer, [row], max_length, support)
    assert stats.completion_cut == 1 and len(fitted.input_ids) <= max_length
    learned = _learned_text(tool_tokenizer, fitted)
    assert learned and "<|im_end|>" not in learned and ("notes.txt report.pdf archive " * 120).startswith(learned)
    assert tool_tokenizer.decode(fitted.input_ids).endswith("<|im_end|>\n")  # the input still ends its turn

    # a max_length that leaves the target no text at all: the row was trained on its end of turn alone
    squeezed, stats = tokenize_rows(tool_tokenizer, [row], 16, support)
    assert squeezed == [] and stats.dropped_empty == 1 and stats.dropped_too_long == 0 and stats.dropped_ids == [row.id]
