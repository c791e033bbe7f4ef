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
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from ee_middleware.trainers.datasets.caps import share_cap
from ee_middleware.trainers.datasets.rows import (
    IWM_INSTRUCTION,
    OFFERED_TOOLS,
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
)
"""The rollout columns :func:`repeated_rollouts` reads."""
REPEATS_SCHEMA = {"id": pl.String(), "is_error": pl.Boolean()}


def repeated_rollouts(rollouts: pl.DataFrame) -> pl.DataFrame:
    """``id`` and ``is_error`` of the rollouts that repeat another replay configuration's at the same state: the same
    trajectory and step, the same call (tool name and arguments, compared as values: key order and spacing aside) and
    the same observation. Of each set of repeats the first in the order trajectory, step, branch index, replay id
    stays (an order the store's layout does not change); the others are returned. Only states replayed by more than one
    configuration are compared (one replay never proposes a call twice at a state)."""
    if rollouts.is_empty():
        return pl.DataFrame(schema=REPEATS_SCHEMA)
    cells = ["trajectory_id", "step_index"]
    several = rollouts.group_by(cells).agg(pl.col("replay_id").n_unique().alias("_replays")).filter(pl.col("_replays") > 1)
    shared = rollouts.join(several.select(cells), on=cells, how="semi")
    if shared.is_empty():
        return pl.DataFrame(schema=REPEATS_SCHEMA)
    calls = [call_key(name, arguments) for name, arguments in shared.select("tool_name", "arguments_json").iter_rows()]
    ordered = shared.with_columns(pl.Series("_call", calls, dtype=pl.String)).sort(*cells, "branch_index", "replay_id", "id")
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


def iwm_rows(source: DatasetSource, options: IWMOptions, *, rollouts: bool, expert: bool) -> pl.DataFrame:
    """The rows before the error cap: the rollouts' (``rollouts``), then the expert steps' (``expert``),
    observations cut to the budget, with the sizes of media placeholders left out (:data:`MEDIA_SIZE`). A chunked build
    makes the two apart (their orders differ)."""
    tools = source.trajectories.rename({"id": "trajectory_id", "tools_json": "tools"})
    states = world_states(source.steps)
    parts = []
    if rollouts:
        parts.append(
            source.rollouts.join(states, on=["trajectory_id", "step_index"], how="inner", maintain_order="left").select(
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
            )
        )
    if expert:
        expert_steps = source.steps.filter((pl.col("action_kind") == "tool_call") & pl.col("observation").is_not_null())
        expert_steps = expert_steps.rename({"index": "step_index"}).drop("state_json")
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
    calls = steps.filter((pl.col("action_kind") == "tool_call") & pl.col("decision_index").is_not_null()).select(
        "trajectory_id",
        "decision_index",
        pl.col("index").alias("prior_index"),
        tool_call_item(pl.col("tool_call_id"), pl.col("tool_name"), pl.col("arguments_json")).alias("_call"),
        tool_result_message(pl.col("tool_call_id"), pl.col("observation")).alias("_result"),
    )
    prior = (
        states.join(calls, on=["trajectory_id", "decision_index"], how="inner")
        .filter(pl.col("prior_index") < pl.col("step_index"))
        .sort("trajectory_id", "step_index", "prior_index")
        .group_by("trajectory_id", "step_index", maintain_order=True)
        .agg("_call", "_result")
        .select(
            "trajectory_id",
            "step_index",
            pl.concat_str([calls_message(pl.col("_call")), pl.col("_result").list.join(",")], separator=",").alias("_prior"),
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
    :func:`estimated_tokens`: the longest head that fits, found by one binary search over the observations that do not
    fit whole, all at once. A character's cost depends on it and the one before it only, so each step prices just the
    characters between the longest head known to fit and the one it tries (and the one before them). No text costs
    less than ``1 / chars_per_token`` a character on average, so none is kept past ``max_observation_tokens *
    chars_per_token`` characters."""
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
        .filter(estimated_tokens(head, options) > budget)
        .with_columns(pl.lit(0, pl.Int64).alias("_low"), (length - 1).alias("_high"), pl.lit(0.0).alias("_cost"))
    )  # a head of "_low" characters fits (it costs "_cost"); none longer than "_high" does
    low, high, cost = pl.col("_low"), pl.col("_high"), pl.col("_cost")
    while pending.height:
        middle = (low + high + 1) // 2
        start = (low - 1).clip(lower_bound=0)  # the character before the new ones, priced in both terms (so not at all)
        added = estimated_tokens(head.str.slice(start, middle - start), options) - estimated_tokens(
            head.str.slice(start, low - start), options
        )
        fits = cost + added <= budget
        pending = pending.with_columns(
            pl.when(fits).then(middle).otherwise(low).alias("_low"),
            pl.when(fits).then(high).otherwise(middle - 1).alias("_high"),
            pl.when(fits).then(cost + added).otherwise(cost).alias("_cost"),
        )
        for row, found in pending.filter(low >= high).select("_row", "_low").iter_rows():
            kept[row] = found
        pending = pending.filter(low < high)
    return kept


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
