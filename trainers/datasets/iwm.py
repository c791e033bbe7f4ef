"""IWM: implicit world modeling, the state and an action -> the observation the environment returned.

One row per rollout (the alternatives' real outcomes) and one per expert tool-call step, in the
same format: the prompt is the state, the assistant message making the call, and an instruction to
predict its result; the completion is the observation text. Long observations are cut to a budget
(the cut is recorded per row) and the share of error observations is capped (too many error
outcomes hurt, as the paper notes).

A build uses every replay configuration's rollouts by default, and two configurations (the mutation policy with two
seeds, say) often propose the same call at the same state and get the same observation: that example would be
trained on once per configuration. A rollout that repeats another replay's at the same state (same call, arguments
compared as values, and the same observation) is left out (:func:`repeated_rollouts`; the first in the order
trajectory, step, branch, replay id stays), before the error cap counts the rows; ``datasets.json`` counts them
(``repeats_left_out``). One replay never proposes a call twice at a state (its proposer drops duplicates).

A rollout whose observation an experience model predicted (``synthetic``: only with ``include_synthetic``) gives a row
marked ``synthetic`` (:data:`~ee_middleware.trainers.datasets.rows.SYNTHETIC`); ``datasets.json`` counts them
(``synthetic_rows``).

A run paused for a review, or cancelled, ends on calls without an observation (:func:`~ee_middleware.replay.
paused_turns.paused_turn_steps`). A state after such a call within the run is none production had (the call may be rejected,
or ran partway): its rollouts (of a replay made before replay stopped there) are left out and counted
(``rollouts_after_call_awaiting_review_left_out``), so no prompt shows the call with a result nobody saw; so are the
expert rows of calls after it in the run (``expert_steps_after_unanswered_call_left_out``). A call of its turn that did
run (a parallel call beside a tool that called ``interrupt()``) is held by the resumed run's trajectory too, where that
run is in the source, which teaches the turn as the reviewer decided it, as IL and SR do: the paused run's copy gives no
expert row and is counted (``paused_turn_repeats_left_out``). The resumed run is the next run of the thread not nested
in the paused run (a sub-agent or graph run in one of its tools, stored on its thread: of its trace, started while it
ran), and it holds the call where it has one with the same id, tool name and arguments. Where it does not (never resumed,
cancelled, the resumed run not approved) the paused run's copy, before the call without an observation, is the only one
and is taught. All are left out before the error cap counts.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from ee_middleware.replay.paused_turns import paused_turn_steps
from ee_middleware.trainers.datasets.caps import share_cap
from ee_middleware.trainers.datasets.rows import (
    IWM_INSTRUCTION,
    OFFERED_TOOLS,
    SYNTHETIC,
    action_message,
    answer_message,
    append_to_json_list,
    calls_message,
    conform,
    example_id,
    json_list,
    offered_tools,
    tool_call_item,
    tool_result_message,
    user_message,
)
from ee_middleware.trainers.datasets.source import DatasetSource, SourceIndex, SourceReader
from ee_middleware.trainers.datasets.sr import _call_key as call_key


@dataclass(frozen=True)
class IWMOptions:
    """How IWM rows are shaped."""

    max_observation_tokens: int = 512
    """Observations longer than this budget are cut (the cut is recorded in ``observation_truncated_chars``)."""
    chars_per_token: float = 4.0
    """Characters per token of a word's letters after its first: :func:`estimated_tokens` prices the other kinds of
    ASCII character apart (digits, capitals, punctuation, whitespace runs and letters next to digits cost more), to
    estimate an observation's tokens when building (the trainer re-checks lengths and cuts an IWM target that still
    does not fit)."""
    non_ascii_bytes_per_token: float = 1.5
    """UTF-8 bytes per token of any other character (Chinese, Japanese, Korean, emoji, accented letters): the
    byte-level BPE tokenizers of English-centric models (SmolLM2: two tokens per Chinese character, about three per
    emoji) give far fewer characters per token than English, and counting them at ``chars_per_token`` kept several
    times the budget (rows the trainer then drops, their completion alone longer than ``max_length``)."""
    max_error_share: float = 0.5
    """At most this share of rows may have an error observation (errors beyond it are dropped, seeded)."""
    include_expert_steps: bool = True
    seed: int = 0


def build_iwm(source: DatasetSource, options: IWMOptions | None = None) -> pl.DataFrame:
    """IWM rows for every rollout (but those that repeat another replay's: :func:`repeated_rollouts`) and expert step
    (vectorised), with the error share capped."""
    options = options or IWMOptions()
    source = without_repeats(source, repeated_rollouts(source.rollouts))
    rows = iwm_rows(source, options, rollouts=True, expert=options.include_expert_steps)
    return iwm_frame(_cap_errors(rows, options.max_error_share, options.seed), source.source_hash)


REPEAT_COLUMNS = (
    "id",
    "trajectory_id",
    "step_index",
    "branch_index",
    "replay_id",
    "tool_name",
    "arguments_json",
    "observation",
    "is_error",
    "synthetic",
)
"""The rollout columns :func:`repeated_rollouts` reads."""
REPEATS_SCHEMA = {"id": pl.String(), "is_error": pl.Boolean()}


def repeated_rollouts(rollouts: pl.DataFrame) -> pl.DataFrame:
    """``id`` and ``is_error`` of the rollouts that repeat another replay configuration's at the same state: the same
    trajectory and step, the same call (tool name and arguments, compared as values: key order and spacing aside) and
    the same observation. Of each set of repeats the first in the order trajectory, step, real before synthetic (an
    experience model's prediction: a real tool's answer is kept over its copy), branch index, replay id stays (an order
    the store's layout does not change); the others are returned. Only states replayed by more than one
    configuration are compared (one replay never proposes a call twice at a state)."""
    if rollouts.is_empty():
        return pl.DataFrame(schema=REPEATS_SCHEMA)
    cells = ["trajectory_id", "step_index"]
    several = rollouts.group_by(cells).agg(pl.col("replay_id").n_unique().alias("_replays")).filter(pl.col("_replays") > 1)
    shared = rollouts.join(several.select(cells), on=cells, how="semi")
    if shared.is_empty():
        return pl.DataFrame(schema=REPEATS_SCHEMA)
    calls = [call_key(name, arguments) for name, arguments in shared.select("tool_name", "arguments_json").iter_rows()]
    synthetic = pl.col("synthetic").fill_null(False) if "synthetic" in shared.columns else pl.lit(False)
    ordered = shared.with_columns(pl.Series("_call", calls, dtype=pl.String), synthetic.alias("_synthetic")).sort(
        *cells, "_synthetic", "branch_index", "replay_id", "id"
    )
    first = pl.struct(*cells, "_call", pl.col("observation").fill_null("")).is_first_distinct()
    return ordered.filter(~first).select("id", pl.col("is_error").fill_null(False))


def find_repeated_rollouts(reader: SourceReader, index: SourceIndex, budget_bytes: int) -> pl.DataFrame:
    """:func:`repeated_rollouts` of the rollouts of ``index``'s trajectories a build uses, read a group of about
    ``budget_bytes`` at a time and only for the trajectories with a state that more than one replay configuration
    replayed (none read when no trajectory has rollouts of several)."""
    if not index.trajectories_with_several_replays or index.rollouts.is_empty():
        return pl.DataFrame(schema=REPEATS_SCHEMA)
    keys = reader.rollout_columns(index.trajectories["id"].to_list(), ("id", "trajectory_id", "step_index", "branch_index", "replay_id"))
    several = keys.group_by("trajectory_id", "step_index").agg(pl.col("replay_id").n_unique().alias("_replays"))
    shared = sorted(several.filter(pl.col("_replays") > 1)["trajectory_id"].unique().to_list())
    found = [repeated_rollouts(reader.rollout_columns(ids, REPEAT_COLUMNS)) for ids in index.groups(shared, budget_bytes)]
    return pl.concat(found, how="vertical") if found else pl.DataFrame(schema=REPEATS_SCHEMA)


def without_repeats(source: DatasetSource, repeats: pl.DataFrame) -> DatasetSource:
    """``source`` without the rollouts listed in ``repeats`` (``id``: :func:`repeated_rollouts`); its rows still record
    the hash of the whole source."""
    if repeats.is_empty() or source.rollouts.is_empty():
        return source
    rollouts = source.rollouts.join(repeats.select("id"), on="id", how="anti", maintain_order="left")
    return replace(source, rollouts=rollouts, content_hash=source.source_hash)


MEDIA_SIZE = r"\[(?P<kind>image|audio|video|document|file)(?P<rest>: [^\[\]\n]*?)?(?:, |: )\d+(?:\.\d)? (?:bytes|KB|MB|GB)\]"
"""The size of inline data in a media placeholder (:func:`ee_middleware.messages.media_placeholder`: ``[image: image/png,
117.2 KB]``): left out of IWM targets (``[image: image/png]``). Which image a tool returns is the world's to say; how
many bytes its encoding took is noise no model can predict from the call."""
MEDIA_SIZE_REMOVED = "_media_size_removed"
"""The column of :func:`iwm_rows` saying that a row's target had a media placeholder's size left out."""


def iwm_rows(
    source: DatasetSource, options: IWMOptions, *, rollouts: bool, expert: bool, paused: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The rows before the error cap: the rollouts' (``rollouts``), then the expert steps' (``expert``),
    observations cut to the budget, with the sizes of media placeholders left out (:data:`MEDIA_SIZE`); none of a
    state after a paused run's call awaiting review, nor of its turn's calls a resumed run holds too (see the module
    docstring; ``paused``: :func:`~ee_middleware.replay.paused_turns.paused_turn_steps` of the whole source, given
    by a build that reads it a group at a time; else of ``source``). A chunked build makes the two apart (their orders
    differ)."""
    tools = source.trajectories.select(pl.col("id").alias("trajectory_id"), pl.col("tools_json").alias("tools"))
    states = world_states(source.steps)
    if paused is None:
        paused = paused_turn_steps(source.trajectories, source.steps, pl.col("observation").is_not_null())
    parts = []
    if rollouts:
        taught = source.rollouts.join(paused.filter(pl.col("after")), on=["trajectory_id", "step_index"], how="anti", maintain_order="left")
        parts.append(
            taught.join(states, on=["trajectory_id", "step_index"], how="inner", maintain_order="left").select(
                "trajectory_id",
                "step_index",
                "branch_index",
                "replay_id",
                pl.col("proposer_policy").alias("proposer"),
                "state_json",
                action_message(pl.col("tool_call_id"), pl.col("tool_name"), pl.col("arguments_json")).alias("action"),
                "observation",
                "is_error",
                pl.col("observation_truncated_chars").fill_null(0).alias("stored_cut"),
                # an experience model's prediction (a rollout of an experience-model replay, --include-synthetic)
                (pl.col(SYNTHETIC).fill_null(False) if SYNTHETIC in taught.columns else pl.lit(False)).alias(SYNTHETIC),
            )
        )
    if expert:
        expert_steps = source.steps.filter((pl.col("action_kind") == "tool_call") & pl.col("observation").is_not_null())
        expert_steps = expert_steps.rename({"index": "step_index"}).drop("state_json")
        expert_steps = expert_steps.join(paused, on=["trajectory_id", "step_index"], how="anti", maintain_order="left")
        parts.append(
            expert_steps.join(states, on=["trajectory_id", "step_index"], how="inner", maintain_order="left").select(
                "trajectory_id",
                "step_index",
                pl.lit(None, dtype=pl.Int64).alias("branch_index"),
                pl.lit(None, dtype=pl.String).alias("replay_id"),
                pl.lit("expert").alias("proposer"),
                "state_json",
                action_message(pl.col("tool_call_id"), pl.col("tool_name"), pl.col("arguments_json")).alias("action"),
                "observation",
                pl.col("observation_is_error").fill_null(False).alias("is_error"),
                pl.col("observation_truncated_chars").fill_null(0).alias("stored_cut"),
                pl.lit(False).alias(SYNTHETIC),
            )
        )
    rows = pl.concat(parts, how="vertical").join(tools, on="trajectory_id", how="inner", maintain_order="left")
    if OFFERED_TOOLS in source.steps.columns and source.steps[OFFERED_TOOLS].null_count() < source.steps.height:
        # the tools offered at the row's step (Step.tools), where they were not all of the trajectory's
        offered = source.steps.select("trajectory_id", pl.col("index").alias("step_index"), OFFERED_TOOLS)
        rows = rows.join(offered, on=["trajectory_id", "step_index"], how="left", maintain_order="left")
        rows = offered_tools(rows, "tools").drop(OFFERED_TOOLS)
    rows = rows.with_columns(
        pl.col("observation").str.replace_all(MEDIA_SIZE, "[${kind}${rest}]"),
        pl.col("observation").str.contains(MEDIA_SIZE).fill_null(False).alias(MEDIA_SIZE_REMOVED),
    )
    length = pl.col("observation").str.len_chars().cast(pl.Int64)  # u32 would wrap below zero
    kept = pl.Series("_kept", kept_chars(rows["observation"], options), dtype=pl.Int64)
    return rows.with_columns(
        pl.col("observation").str.slice(0, kept).alias("observation"),
        (pl.col("stored_cut") + (length - kept).clip(lower_bound=0)).alias("observation_truncated_chars"),
    )


def world_states(steps: pl.DataFrame) -> pl.DataFrame:
    """``trajectory_id``, ``step_index`` and ``state_json`` of each step: its state as the world stood when replay
    ran it. The calls of one model response (parallel tool calls: steps sharing a ``decision_index`` and their state)
    run one after another, so at the turn's k-th call the world has run the first k-1: their state is the recorded one
    followed by the assistant message making those calls and a tool message with each one's recorded result. An
    alternative there acts on that world, and the expert's own call returned what it recorded in it."""
    states = steps.select("trajectory_id", pl.col("index").alias("step_index"), "decision_index", "state_json")
    # the text the model wrote beside its calls, and its reasoning: kept with the turn's first call (capture's Action)
    text = pl.col("content") if "content" in steps.columns else pl.lit(None, dtype=pl.String)
    thought = pl.col("reasoning") if "reasoning" in steps.columns else pl.lit(None, dtype=pl.String)
    calls = steps.filter((pl.col("action_kind") == "tool_call") & pl.col("decision_index").is_not_null()).select(
        "trajectory_id",
        "decision_index",
        pl.col("index").alias("prior_index"),
        tool_call_item(pl.col("tool_call_id"), pl.col("tool_name"), pl.col("arguments_json")).alias("_call"),
        tool_result_message(pl.col("tool_call_id"), pl.col("observation")).alias("_result"),
        text.alias("_text"),
        thought.alias("_thought"),
    )
    prior = (
        states.join(calls, on=["trajectory_id", "decision_index"], how="inner")
        .filter(pl.col("prior_index") < pl.col("step_index"))
        .sort("trajectory_id", "step_index", "prior_index")
        .group_by("trajectory_id", "step_index", maintain_order=True)
        .agg("_call", "_result", pl.col("_text").drop_nulls().first(), pl.col("_thought").drop_nulls().first())
        .select(
            "trajectory_id",
            "step_index",
            pl.concat_str(
                [calls_message(pl.col("_call"), pl.col("_text"), pl.col("_thought")), pl.col("_result").list.join(",")], separator=","
            ).alias("_prior"),
        )
    )
    if prior.is_empty():
        return states.drop("decision_index")
    states = states.join(prior, on=["trajectory_id", "step_index"], how="left", maintain_order="left")
    with_prior = append_to_json_list(pl.col("state_json"), pl.col("_prior"))
    return states.select(
        "trajectory_id",
        "step_index",
        pl.when(pl.col("_prior").is_null()).then(pl.col("state_json")).otherwise(with_prior).alias("state_json"),
    )


ASCII_COSTS = {
    "digit": 1.0,
    "letter_after_digit": 1.0,
    "capital": 0.7,
    "word_start": 0.5,
    "symbol": 0.75,
    "control": 1.0,
    "newline": 1.0,
    "space_after_space": 0.25,
}
"""Tokens :func:`estimated_tokens` counts per ASCII character of each kind (a word's later letters cost ``1 /
chars_per_token``). Tool output is mostly not prose: JSON with ids, timestamps and prices, ``ls -l`` listings, hex
digests, CSV and logs come to 1.0-1.6 characters per token in the byte-level BPE tokenizers of small models (SmolLM2,
Llama, Qwen and Mistral write each digit as a token), and counting every ASCII character at 4 per token kept 2.6-3.4
times the budget (rows ``ee train`` then dropped, their completion alone longer than ``max_length``). Measured with
SmolLM2's tokenizer on 3,000 characters of each, these costs estimate 0.8-1.05 times the real tokens of such output
(base64: 0.8) and 1.2-1.4 times those of English prose or code (a prose target keeps about three quarters of the
budget, as before)."""
_SPACE = r"\t\x0b\x0c\r "
"""ASCII whitespace but the newline (priced on its own)."""


def estimated_tokens(text: pl.Expr, options: IWMOptions) -> pl.Expr:
    """The tokens of each text as the IWM budget estimates them: a word's letters after its first cost ``1 /
    options.chars_per_token``; the other ASCII characters what :data:`ASCII_COSTS` gives their kind (a space right after
    a letter, digit or symbol costs nothing: the next word's token takes it); any other character its UTF-8 bytes over
    ``options.non_ascii_bytes_per_token``. A text's estimate never falls as it grows."""

    def count(pattern: str) -> pl.Expr:
        return text.str.count_matches(pattern).cast(pl.Float64)

    costs = ASCII_COSTS
    after_digit, capitals_after_digit = count(r"[0-9][A-Za-z]"), count(r"[0-9][A-Z]")
    word_starts = count(r"(?:^|[^A-Za-z0-9])[a-z]")
    return (
        count(r"[0-9]") * costs["digit"]
        + count(r"[\x00-\x08\x0e-\x1f\x7f]") * costs["control"]
        + count(r"\n") * costs["newline"]
        + after_digit * costs["letter_after_digit"]
        + (count(r"[A-Z]") - capitals_after_digit) * costs["capital"]
        + word_starts * costs["word_start"]
        + (count(r"[a-z]") - word_starts - (after_digit - capitals_after_digit)) / options.chars_per_token
        + count(r"[!-/:-@\[-`{-~]") * costs["symbol"]
        + (count(f"[{_SPACE}]") - count(f"[^{_SPACE}\\n][{_SPACE}]")) * costs["space_after_space"]
        + (text.str.len_bytes().cast(pl.Float64) - count(r"[\x00-\x7f]")) / options.non_ascii_bytes_per_token
    )


def kept_chars(observations: pl.Series, options: IWMOptions) -> list[int | None]:
    """How many leading characters of each observation fit ``options.max_observation_tokens`` by
    :func:`estimated_tokens`: the longest head that fits. No text costs less than ``1 / chars_per_token`` a character on
    average, so none is kept past ``max_observation_tokens * chars_per_token`` characters, and a head of few enough
    UTF-8 bytes fits without being priced. The others are searched all at once between a head known to fit and a
    longer one known not to (at first none, and nothing is priced): each step prices the head where the cost would
    reach the budget if it grew evenly between them (as dense as what is known: first a head of dense tool output,
    ``_FIRST_CHARS_PER_TOKEN``; when the last step did not halve the gap, the head halfway), just the characters it
    adds to the one known to fit (a character's cost depends on it and the one before it only), then walks up to
    ``_WALKED`` characters on from the side it fell on, a character at a time (:class:`_Walker`, which charges what
    :func:`estimated_tokens` does). That ends the search of most observations after one or two steps, where a binary
    search took eleven (each a pass of every regular expression of the estimate)."""
    limit = max(1, int(options.max_observation_tokens * options.chars_per_token))
    budget = options.max_observation_tokens + 1e-9  # the estimates are sums of fractions
    head, length = pl.col("head"), pl.col("_length")
    frame = observations.str.slice(0, limit).to_frame("head").with_columns(head.str.len_chars().cast(pl.Int64).alias("_length"))
    kept: list[int | None] = frame["_length"].to_list()
    # no character costs more than `most_per_byte` tokens a UTF-8 byte, so a head of few enough bytes fits without being
    # priced (most tool results: the regular expressions run only on the long ones)
    most_per_byte = max(*ASCII_COSTS.values(), 1 / options.chars_per_token, 1 / options.non_ascii_bytes_per_token)
    pending = (
        frame.with_row_index("_row")
        .filter(head.str.len_bytes() * most_per_byte > options.max_observation_tokens)
        .select(
            "_row",
            "head",
            pl.lit(0, pl.Int64).alias("_low"),
            pl.lit(0.0).alias("_cost"),
            (length + 1).alias("_over"),
            pl.lit(None, pl.Float64).alias("_over_cost"),
            pl.lit(False).alias("_halve"),
        )
    )  # a head of "_low" characters fits (it costs "_cost"); that of "_over" does not (it costs "_over_cost", null while
    # not priced: at first, the whole head's length plus one)
    low, cost, over, over_cost, middle = pl.col("_low"), pl.col("_cost"), pl.col("_over"), pl.col("_over_cost"), pl.col("_middle")
    walker = _Walker(options)
    while pending.height:
        gap = over - low  # at least 2: the walks end the search of a narrower gap
        even = (
            pl.when(over_cost.is_not_null())
            .then(low + ((budget - cost) * gap.cast(pl.Float64) / (over_cost - cost)).cast(pl.Int64))
            .when(low == 0)
            .then(int(options.max_observation_tokens * _FIRST_CHARS_PER_TOKEN))
            .otherwise(low + ((budget - cost) * low.cast(pl.Float64) / cost.clip(lower_bound=1e-9)).cast(pl.Int64))
        )
        pending = pending.with_columns(
            pl.when(pl.col("_halve")).then(low + gap // 2).otherwise(even).clip(low + 1, over - 1).alias("_middle")
        )
        start = (low - 1).clip(lower_bound=0)  # the character before the new ones, priced in both terms (so not at all)
        added = estimated_tokens(head.str.slice(start, middle - start), options) - estimated_tokens(
            head.str.slice(start, low - start), options
        )
        bounds: tuple[list[Any], ...] = ([], [], [], [], [])  # low, cost, over, over_cost, halve of those still searched
        searched = []
        for row, text, fit, fit_cost, unfit, unfit_cost, tried, tried_cost in pending.select(
            "_row", "head", "_low", "_cost", "_over", "_over_cost", "_middle", (cost + added).alias("_middle_cost")
        ).iter_rows():
            gap_before = unfit - fit
            if tried_cost <= budget:
                found, fit, fit_cost = walker.forward(text, tried, tried_cost, unfit)
            else:
                found, unfit, unfit_cost = walker.back(text, tried, tried_cost, fit)
            searched.append(found is None)
            if found is not None:
                kept[row] = found
                continue
            for column, value in zip(bounds, (fit, fit_cost, unfit, unfit_cost, 2 * (unfit - fit) > gap_before), strict=True):
                column.append(value)
        pending = pending.filter(pl.Series(searched, dtype=pl.Boolean)).with_columns(
            pl.Series("_low", bounds[0], dtype=pl.Int64),
            pl.Series("_cost", bounds[1], dtype=pl.Float64),
            pl.Series("_over", bounds[2], dtype=pl.Int64),
            pl.Series("_over_cost", bounds[3], dtype=pl.Float64),
            pl.Series("_halve", bounds[4], dtype=pl.Boolean),
        )
    lengths = observations.str.len_chars().to_list()
    cut = [row for row, (keep, length) in enumerate(zip(kept, lengths, strict=True)) if keep is not None and keep < length]
    for row, text in zip(cut, observations.gather(cut).to_list(), strict=True):  # (only the texts cut: most are whole)
        kept[row] = _grapheme_start(text, kept[row])
    return kept


_JOINED = frozenset("\u200c\u200d\ufe0e\ufe0f") | {chr(c) for c in range(0x1F3FB, 0x1F400)} | {chr(c) for c in range(0xE0020, 0xE0080)}
"""Characters that belong to the one before them: the zero-width joiner and non-joiner, variation selectors, skin-tone
modifiers and tag characters (a flag's)."""


def _grapheme_start(text: str, at: int) -> int:
    """``at``, moved back to the start of the character a reader sees there (a cut at ``at`` would otherwise keep an
    emoji's first part and its joiner, ``👩`` + U+200D, or a letter without its accent): before combining marks and the
    characters of :data:`_JOINED` at ``at``, and before a character a joiner ends on."""
    while at > 0 and (text[at] in _JOINED or unicodedata.category(text[at]).startswith("M") or text[at - 1] == "\u200d"):
        at -= 1
    return at


class _Walker:
    """What :func:`estimated_tokens` charges for each character of a text (for its kind and the kind of the one before
    it), added one at a time from a head known to fit (:meth:`forward`) or taken off one at a time from one known not
    to (:meth:`back`), at most ``_WALKED`` characters."""

    def __init__(self, options: IWMOptions) -> None:
        self.budget = options.max_observation_tokens + 1e-9
        costs, word_letter = ASCII_COSTS, 1 / options.chars_per_token
        self.non_ascii = 1 / options.non_ascii_bytes_per_token
        # an ASCII character's kind: d(igit), u(pper), l(ower), s(pace but the newline), e (the newline) or o(ther); "x"
        # is any other character and "" the text's start
        self.kinds: dict[str, str] = {}
        self.price: dict[tuple[str, str], float] = {}  # an ASCII character's cost after a character of each kind
        for code in range(128):
            char = chr(code)
            if "0" <= char <= "9":
                kind, cost = "d", costs["digit"]
            elif "A" <= char <= "Z":
                kind, cost = "u", costs["capital"]
            elif "a" <= char <= "z":
                kind, cost = "l", costs["word_start"]
            elif char == "\n":
                kind, cost = "e", costs["newline"]
            elif char in "\t\x0b\x0c\r ":
                kind, cost = "s", costs["space_after_space"]
            elif "!" <= char <= "~":
                kind, cost = "o", costs["symbol"]
            else:
                kind, cost = "o", costs["control"]
            self.kinds[char] = kind
            for before in ("", "d", "u", "l", "s", "e", "o", "x"):
                if kind in "ul" and before == "d":
                    self.price[before, char] = costs["letter_after_digit"]
                elif kind == "l" and before in ("u", "l"):
                    self.price[before, char] = word_letter
                elif kind == "s" and before not in ("", "s", "e"):
                    self.price[before, char] = 0.0  # the next word's token takes it
                else:
                    self.price[before, char] = cost

    def _charge(self, text: str, index: int) -> float:
        """What the character at ``index`` of ``text`` adds to the head before it."""
        char = text[index]
        if char not in self.kinds:
            return len(char.encode()) * self.non_ascii
        return self.price[self.kinds.get(text[index - 1], "x") if index else "", char]

    def forward(self, text: str, low: int, cost: float, over: int) -> tuple[int | None, int, float]:
        """``(the longest head that fits, or None, the longest head known to fit, its cost)`` from the head of ``low``
        characters, which fits and costs ``cost``, up to ``_WALKED`` more; that of ``over`` does not fit."""
        end = min(low + _WALKED, over - 1)
        while low < end:
            added = cost + self._charge(text, low)
            if added > self.budget:
                return low, low, cost
            low, cost = low + 1, added
        return (low if low == over - 1 else None), low, cost

    def back(self, text: str, over: int, cost: float, low: int) -> tuple[int | None, int, float]:
        """``(the longest head that fits, or None, the shortest head known not to fit, its cost)`` from the head of
        ``over`` characters, which does not fit and costs ``cost``, down to ``_WALKED`` fewer; that of ``low`` fits."""
        end = max(over - _WALKED, low + 1)
        while over > end:
            less = cost - self._charge(text, over - 1)
            if less <= self.budget:
                return over - 1, over, cost
            over, cost = over - 1, less
        return (low if over == low + 1 else None), over, cost


_WALKED = 32
"""How many characters :func:`kept_chars` walks a character at a time from each head it prices."""
_FIRST_CHARS_PER_TOKEN = 1.5
"""Characters a token of dense tool output (JSON with ids and prices, listings; see :data:`ASCII_COSTS`): the head that
:func:`kept_chars` prices first, before it knows how dense a text is (then it guesses the rest as dense as what it
priced)."""


def iwm_frame(rows: pl.DataFrame, source_hash: str) -> pl.DataFrame:
    """Dataset rows (the schema of :mod:`~ee_middleware.trainers.datasets.rows`) from :func:`iwm_rows`."""
    frame = rows.select(
        example_id(pl.lit("iwm"), pl.col("trajectory_id"), pl.col("step_index"), pl.col("branch_index"), pl.col("replay_id")).alias("id"),
        pl.lit("iwm").alias("kind"),
        append_to_json_list(pl.col("state_json"), pl.col("action"), user_message(IWM_INSTRUCTION)).alias("prompt"),
        json_list(answer_message(pl.col("observation"))).alias("completion"),
        pl.col("tools").fill_null("[]"),
        "trajectory_id",
        "step_index",
        "branch_index",
        "replay_id",
        "proposer",
        SYNTHETIC,
        "is_error",
        "observation_truncated_chars",
        pl.lit(source_hash).alias("source_hash"),
    )
    return conform(frame)


def kept_errors(fine: int, errors: int, max_share: float, seed: int) -> list[int] | None:
    """Which error rows (by their order among the error rows) the cap keeps, given the counts of rows
    with and without an error; ``None`` when the cap leaves every row (and the row order) as it is.
    A chunked build decides from the keys' counts; :func:`_cap_errors` applies it to a whole frame."""
    allowed = share_cap(fine, max_share)
    if allowed is None or errors <= allowed:
        return None
    if not allowed:
        return []
    return pl.DataFrame({"i": pl.int_range(errors, eager=True)}).sample(n=allowed, seed=seed, shuffle=False)["i"].to_list()


def _cap_errors(rows: pl.DataFrame, max_share: float, seed: int) -> pl.DataFrame:
    """``rows`` without the error rows the cap drops: the rows without an error, then the kept error rows."""
    is_error = rows["is_error"]
    keep = kept_errors(int((~is_error).sum()), int(is_error.sum()), max_share, seed)
    if keep is None:
        return rows
    errors = rows.filter(pl.col("is_error")).with_row_index("_n")
    kept = errors.filter(pl.col("_n").is_in(pl.Series(keep, dtype=pl.UInt32).implode())).drop("_n")
    return pl.concat([rows.filter(~pl.col("is_error")), kept], how="vertical")
