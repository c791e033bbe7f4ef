"""Looking at datasets: counts, token-length histograms and rendered examples."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.trainers.datasets.rows import KINDS, SYNTHETIC

CHARS_PER_TOKEN = 4.0

TRAINER_RENDERING = (
    "the trainer's rendering: the tokenizer's chat template over the prompt, the row's tool schemas and the completion "
    "(ee_middleware.models.chat_template.render_pair), whole, before any fitting to a max_length"
)
ESTIMATED_RENDERING = "estimated: characters of the prompt and completion JSON / 4, tool schemas and chat template not counted"


def describe_dataset(
    frame: pl.DataFrame, tokenizer: Any = None, path: Path | None = None, *, on_row: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Row counts by proposer/error/kind, of rows built from experience-model predictions (``synthetic``), and
    prompt+completion lengths: with a tokenizer, the tokens the trainer's
    rendering of each row needs (:func:`rendered_lengths`); else estimated from the JSON text. ``rendering`` says which;
    ``path``: the file, named in errors about a row. Either way the rows are read as ``ee train`` reads them: a row
    that is not a chat prompt/completion pair raises the trainer's
    :class:`~ee_middleware.trainers.training.errors.TrainDataError`, naming the file, the row, what is wrong and the
    command that writes the file again. ``on_row(done)``: with a tokenizer, called after each row is counted."""
    path = path if path is not None else Path("dataset.parquet")
    if tokenizer is not None:
        lengths = rendered_lengths(frame, path, tokenizer, on_row=on_row)
        unit = "tokens"
        rendering = TRAINER_RENDERING
    else:
        from ee_middleware.trainers.training.data import check_rows

        check_rows(frame, path, dataset_kind(frame, path))  # checked, not kept: the lengths below come from the text
        chars = frame.select((pl.col("prompt").str.len_chars() + pl.col("completion").str.len_chars()).alias("n"))["n"].to_list()
        lengths = [int(c / CHARS_PER_TOKEN) for c in chars]
        unit = "tokens (estimated: chars/4; pass --tokenizer for real counts)"
        rendering = ESTIMATED_RENDERING
    counts: dict[str, Any] = {}
    if "proposer" in frame.columns:
        counts.update({f"proposer:{k}": v for k, v in Counter(frame["proposer"].to_list()).items()})
    if SYNTHETIC in frame.columns:  # rows built from experience-model predictions (files built before the column: none)
        counts[SYNTHETIC] = int(frame[SYNTHETIC].fill_null(False).sum())
    if "is_error" in frame.columns and frame["is_error"].null_count() < frame.height:
        counts["error_observations"] = int(frame["is_error"].fill_null(False).sum())
    if "observation_truncated_chars" in frame.columns:
        counts["truncated"] = int((frame["observation_truncated_chars"].fill_null(0) > 0).sum())
    if "tools" in frame.columns:
        calls = pl.col("prompt").str.contains('"tool_calls"', literal=True) | pl.col("completion").str.contains(
            '"tool_calls"', literal=True
        )
        unoffered = frame.select((calls & pl.col("tools").fill_null("[]").str.strip_chars().is_in(["", "[]"])).sum()).item()
        if unoffered:
            counts["calls_without_tool_schemas"] = int(unoffered)  # rows showing calls to tools their prompt offers none of
    if "quality_flags" in frame.columns:
        flags: Counter[str] = Counter()
        for text in frame["quality_flags"].drop_nulls().to_list():
            flags.update(json.loads(text))
        counts.update({f"flag:{k}": v for k, v in flags.items()})
    ordered = sorted(lengths)
    return {
        "rows": frame.height,
        "counts": counts,
        "unit": unit,
        "min": ordered[0] if ordered else 0,
        "median": ordered[len(ordered) // 2] if ordered else 0,
        "max": ordered[-1] if ordered else 0,
        "rendering": rendering,
        "lengths": lengths,
    }


def rendered_lengths(frame: pl.DataFrame, path: Path, tokenizer: Any, *, on_row: Callable[[int], None] | None = None) -> list[int]:
    """Per row, the tokens of its prompt and completion as the trainer renders them (its rows, :func:`render_texts` and
    token count: the system message, the tool schemas the template lists, the generation prompt and the end-of-turn
    markers included), before any fitting to a ``max_length``: what ``budget_report`` compares with ``max_length``.
    ``on_row(done)``: called after each row, ``done`` the rows counted so far."""
    from ee_middleware.models.chat_template import probe_template
    from ee_middleware.models.truncation import count_tokens
    from ee_middleware.trainers.training.data import rows_from_frame
    from ee_middleware.trainers.training.render import render_texts

    support = probe_template(tokenizer)
    lengths = []
    for row in rows_from_frame(frame, path, dataset_kind(frame, path)):
        prompt_text, completion_text, _ = render_texts(tokenizer, row, support)
        lengths.append(count_tokens(tokenizer, prompt_text) + count_tokens(tokenizer, completion_text))
        if on_row is not None:
            on_row(len(lengths))
    return lengths


def budget_report(
    frame: pl.DataFrame, path: Path, tokenizer: Any, max_length: int, *, on_row: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """What training at ``max_length`` with ``tokenizer`` would do to each row: kept whole, older turns
    dropped, tools listed compactly, an oversized message shortened, cut from the left (losing system message, tools or
    task), an IWM target cut to its head, or dropped (the completion alone is too long). Uses the trainer's own rendering and truncation.
    ``on_row(done)``: called after each row is fitted."""
    from ee_middleware.models.chat_template import probe_template
    from ee_middleware.trainers.training.data import rows_from_frame
    from ee_middleware.trainers.training.render import tokenize_rows

    rows = rows_from_frame(frame, path, dataset_kind(frame, path))
    _, stats = tokenize_rows(tokenizer, rows, max_length, probe_template(tokenizer), on_row=on_row)
    needed = sorted(cut["original_tokens"] for cut in stats.cuts)
    over = stats.truncated + stats.dropped_too_long
    return {
        "max_length": max_length,
        "rows": stats.rows,
        "over_budget": over,
        "over_budget_share": round(over / stats.rows, 4) if stats.rows else 0.0,
        "kept_whole": stats.examples - stats.truncated,
        "older_turns_dropped": stats.middle_dropped,
        "older_turns_dropped_only": stats.older_turns_only,
        "compact_tools": stats.compact_tools,
        "cut_from_left": stats.left_cut,
        "messages_shortened": stats.shortened,
        "completion_cut": stats.completion_cut,
        "lost_more_than_older_turns": stats.lost_more_than_older_turns,
        "lost_more_than_older_turns_share": round(stats.lost_essentials_share, 4),
        "dropped_completion_too_long": stats.dropped_too_long,
        "dropped_control_tokens": stats.dropped_control_tokens,
        "prompt_tokens_before_fitting": {"median": needed[len(needed) // 2], "max": needed[-1]} if needed else None,
    }


def dataset_kind(frame: pl.DataFrame, path: Path) -> str:
    """The dataset kind of ``frame``'s rows, as ``ee train`` takes it: the file's name (``il.parquet``: il); for a file
    named otherwise, its ``kind`` column."""
    if path.stem in (*KINDS, "em") or "kind" not in frame.columns or not frame.height:
        return path.stem
    return str(frame["kind"][0])


def histogram_lines(lengths: list[int], bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram of ``lengths``."""
    if not lengths:
        return ["(empty)"]
    low, high = min(lengths), max(lengths)
    step = max(1, (high - low + bins) // bins)
    counts = Counter((n - low) // step for n in lengths)
    peak = max(counts.values())
    lines = []
    for b in range(bins):
        if b * step + low > high:
            break
        count = counts.get(b, 0)
        lines.append(f"{low + b * step:>7}-{low + (b + 1) * step - 1:<7} {'█' * max(0, round(width * count / peak)):<{width}} {count}")
    return lines


def write_histogram_png(described: dict[str, dict[str, Any]], path: str | Path) -> None:
    """Token-length histograms of several datasets, one panel each, as a PNG written whole or not at all (an existing
    one kept as it was on a failure); missing folders above it are made."""
    from ee_middleware._files import atomic_path, folders_made
    from ee_middleware._optional import import_optional
    from ee_middleware._plots import quiet_matplotlib_config

    quiet_matplotlib_config()  # a home it cannot write: no warnings in every log
    matplotlib = import_optional("matplotlib", extra="train", purpose="draw the histograms (--plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(described), figsize=(4.5 * len(described), 3.2), squeeze=False)
    for ax, (name, d) in zip(axes[0], described.items(), strict=True):
        ax.hist(d["lengths"], bins=30, color="#4c72b0")
        ax.set_title(f"{name} ({d['rows']} rows)")
        ax.set_xlabel("tokens" if d["unit"] == "tokens" else "tokens (estimated)")
        ax.set_ylabel("examples")
    fig.tight_layout()
    try:
        with folders_made(Path(path).parent), atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def render_example(row: dict[str, Any], tokenizer: Any = None, support: Any = None) -> str:
    """One example as the model sees it. With a tokenizer: the text ``ee train`` trains on, the prompt then the completion,
    in the trainer's rendering (:func:`~ee_middleware.trainers.training.render.render_texts`: the chat template, the
    row's tool schemas and calls as the trainer gives them to a template that would drop them), the same rendering
    the lengths are measured in (``support``: the tokenizer's :func:`~ee_middleware.models.chat_template.probe_template`,
    probed here when not given). Else role-prefixed lines."""
    prompt = json.loads(row["prompt"])
    completion = json.loads(row["completion"])
    tools = json.loads(row.get("tools") or "[]")
    if tokenizer is not None:
        from ee_middleware.models.chat_template import probe_template
        from ee_middleware.trainers.training.data import ChatRow
        from ee_middleware.trainers.training.render import render_texts

        chat_row = ChatRow(id=str(row.get("id")), kind=str(row.get("kind") or ""), prompt=prompt, completion=completion, tools=tools)
        prompt_text, completion_text, _ = render_texts(tokenizer, chat_row, support if support is not None else probe_template(tokenizer))
        return prompt_text + completion_text
    names = [_name(t.get("function", t)) for t in tools if isinstance(t, dict)]
    lines = [f"tools offered: {', '.join(names) if names else 'none'}"]
    lines += [_line(message) for message in prompt]
    lines += ["=> " + _line(message) for message in completion]
    return "\n".join(lines)


def _name(function: Any) -> str:
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else "?"


def _line(message: Any) -> str:
    """A message whole, after its role (a long example is cut by :func:`example_excerpt`, saying how much, unless ``--full``);
    a malformed one (``ee train`` refuses it, naming what is wrong) shown as it is rather than failing the listing."""
    if not isinstance(message, dict):
        return f"?: {message!r}"
    text = str(message.get("content") or "")
    calls = message.get("tool_calls")
    if calls:
        shown = []
        for call in calls if isinstance(calls, list) else [calls]:
            function = call.get("function") if isinstance(call, dict) else None
            shown.append(
                f"{_name(function)}({function.get('arguments', '')})" if isinstance(function, dict) else f"malformed call {call!r}"
            )
        text = (text + " " if text else "") + f"[calls {'; '.join(shown)}]"
    return f"{message.get('role', '?')}: {text}"
