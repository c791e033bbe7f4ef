"""Why a ``--max-steps`` run still prepares every row: which rows are kept is known only after each row is fitted.

The rows a run trains on, and their order, are permutations of the *kept* rows: ``schedule.mixed`` shuffles them with
the seed, then the trainer's sampler (trl) or ``_batches`` (peft-loop) draws a permutation of their number. A row is
dropped when its completion, as rendered beside its *fitted* prompt, is empty or reaches ``max_length``
(``tokenize_pair`` renders the completion again after fitting). So one row's fit decides the order of all the others:
preparing only the rows the first steps consume, or deciding which rows are kept from the rendering before the fit,
would train on other rows than preparing everything. These tests pin that down with a template whose last turn renders
longer once older turns are dropped (a stand-in for any template whose rendering of a turn depends on the turns before
it): a shortcut of that kind fails them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.models.chat_template import probe_template, render_pair
from ee_middleware.models.truncation import tokenize_pair
from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, save_tiny_llama
from ee_middleware.trainers.training import TrainConfig, schedule, train
from ee_middleware.trainers.training.data import ChatRow
from ee_middleware.trainers.training.render import tokenize_rows

from .conftest import FILE_TOOLS, FOLDERS, _row, build_tokenizer, il_row, write_dataset

safetensors_torch = pytest.importorskip("safetensors.torch")

MAX_LENGTH = 256
# An assistant turn carries a marker for each message short of 24 before it: fitting (dropping older turns) makes the
# completion of a long state longer.
MARKED_TEMPLATE = TOOL_CHAT_TEMPLATE.replace(
    "{% if m.content %}{{ m.content }}{% endif %}",
    "{% if m.role == 'assistant' %}{{ ' ~' * (24 - loop.index0 if loop.index0 < 24 else 0) }}{% endif %}"
    "{% if m.content %}{{ m.content }}{% endif %}",
)


def long_state() -> list[dict[str, Any]]:
    prompt = [{"role": "system", "content": "You manage files."}]
    for turn in range(11):
        prompt += [
            {"role": "user", "content": f"Go into docs and show notes.txt {turn} " * 4},
            {"role": "assistant", "content": f"done {turn}"},
        ]
    return [*prompt, {"role": "user", "content": "Go into temp"}]


LONG_COMPLETION = [{"role": "assistant", "content": "notes " * 220}]


@pytest.fixture(scope="module")
def marked_tokenizer() -> Any:
    return build_tokenizer(MARKED_TEMPLATE)


def test_a_row_is_dropped_only_after_its_prompt_is_fitted_and_that_reorders_the_rows_trained(marked_tokenizer: Any) -> None:
    support = probe_template(marked_tokenizer)
    _, completion_text, _ = render_pair(marked_tokenizer, long_state(), LONG_COMPLETION, FILE_TOOLS, support)
    before_fit = marked_tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    pair = tokenize_pair(marked_tokenizer, long_state(), LONG_COMPLETION, FILE_TOOLS, support, MAX_LENGTH)
    assert pair.fit is not None and pair.fit.dropped_messages > 0
    assert len(before_fit) < MAX_LENGTH <= len(pair.completion_ids)  # kept before its fit, dropped after it

    reply = [{"role": "assistant", "content": "ok"}]
    short = [ChatRow(f"il-{i}", "il", [{"role": "user", "content": f"Go into {FOLDERS[i % 8]}"}], reply, FILE_TOOLS) for i in range(12)]
    rows = [*short[:5], ChatRow("il-long", "il", long_state(), LONG_COMPLETION, FILE_TOOLS), *short[5:]]
    examples, stats = tokenize_rows(marked_tokenizer, rows, MAX_LENGTH, support)
    assert stats.dropped_ids == ["il-long"]
    trained = [example.id for example in schedule.mixed([examples], 0)]
    as_if_kept = [row.id for row in schedule.mixed([rows], 0) if row.id != "il-long"]
    assert trained[:8] != as_if_kept[:8]  # the first two steps of 4 rows would train on other rows


@pytest.mark.parametrize("backend", ["peft-loop", "trl"])
def test_a_max_steps_run_trains_as_if_the_row_dropped_after_its_fit_were_never_there(
    backend: str, marked_tokenizer: Any, tmp_path: Path
) -> None:
    base = save_tiny_llama(tmp_path / "base", marked_tokenizer)
    short = [il_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(12)]
    long_row = _row("il-long", "il", long_state(), LONG_COMPLETION, step=0, branch=None)
    fitting_row = _row("il-long", "il", long_state(), [{"role": "assistant", "content": "notes"}], step=0, branch=None)

    def adapter(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        data = tmp_path / name / "data"
        write_dataset(data, "il", rows)
        config = TrainConfig(
            base_model=str(base),
            data=data,
            output_dir=tmp_path / name / "adapter",
            schedule="il",
            max_steps=2,
            batch_size=4,
            max_length=MAX_LENGTH,
            learning_rate=1e-2,
            seed=0,
            backend=backend,
        )
        result = train(config, progress=False)
        return safetensors_torch.load_file(str(result.adapter_dir / "adapter_model.safetensors"))

    with_dropped = adapter("with-dropped", [*short[:5], long_row, *short[5:]])
    without = adapter("without", short)
    assert with_dropped.keys() == without.keys()
    assert all(with_dropped[key].equal(without[key]) for key in without)
    # and the comparison can tell: a 13th row kept changes the order, so the weights
    kept = adapter("kept", [*short[:5], fitting_row, *short[5:]])
    assert not all(kept[key].equal(without[key]) for key in without)
