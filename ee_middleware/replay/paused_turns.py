"""Which steps of a paused or cancelled run datasets never teach from that run: one rule for every builder (IWM, the
experience model's ``em`` rows, its replay buffer and ``ee experience eval``), kept in the light core so that replay's
retrieval and the dataset builders read the same function (see :func:`paused_turn_steps`)."""

from __future__ import annotations

import polars as pl


def turn_key() -> pl.Expr:
    """The turn a step is part of, within its trajectory: the tool calls of one model response (steps sharing a
    ``decision_index``) are one turn, every other step is its own."""
    is_call = pl.col("action_kind") == "tool_call"
    return (
        pl.when(is_call & pl.col("decision_index").is_not_null())
        .then(pl.format("call:{}", pl.col("decision_index")))
        .otherwise(pl.format("step:{}", pl.col("index")))
    )


PAUSED_STEPS_SCHEMA = {"trajectory_id": pl.String(), "step_index": pl.Int64(), "after": pl.Boolean(), "held_later": pl.Boolean()}

RUNS_SCHEMA = {
    "id": pl.String(),
    "status": pl.String(),
    "thread_id": pl.String(),
    "started_at": pl.Datetime("us", "UTC"),
    "ended_at": pl.Datetime("us", "UTC"),
    "trace_id": pl.String(),
}
"""The ``trajectories`` frame of :func:`paused_turn_steps`, for a caller that makes one: every column it reads
(``thread_id``, ``started_at``, ``ended_at`` and ``trace_id`` for ``held_later``), with its type."""


def steps_schema(observed: str) -> dict[str, pl.DataType]:
    """The ``steps`` frame of :func:`paused_turn_steps`, for a caller that makes one: every column it reads (the call's
    id, tool name and arguments for ``held_later``), with its type, and the boolean column named ``observed`` that the
    caller's ``observed`` expression reads (true for a step with an observation)."""
    return {
        "trajectory_id": pl.String(),
        "index": pl.Int64(),
        "action_kind": pl.String(),
        "decision_index": pl.Int64(),
        "tool_call_id": pl.String(),
        "tool_name": pl.String(),
        "arguments_json": pl.String(),
        observed: pl.Boolean(),
    }


def paused_turn_steps(trajectories: pl.DataFrame, steps: pl.DataFrame, observed: pl.Expr) -> pl.DataFrame:
    """``trajectory_id``, ``step_index``, ``after`` and ``held_later`` of the tool-call steps of a paused or cancelled run
    (an ``interrupted`` trajectory ending on calls without an observation: awaiting review, or cut off; see
    :func:`~ee_middleware.trainers.datasets.source.taught_steps`) that datasets never teach from that run. Every
    builder that reads expert steps or rollouts (IWM, the experience model's ``em`` rows, its replay buffer and
    ``ee experience eval``) leaves them out by this one rule:

    * ``after``: a step after the trajectory's first call without an observation. Its state is none production had (the
      call may be rejected, or ran partway, and a prompt would show it with a result nobody saw): no rollout at it, no
      expert row of it.
    * ``held_later``: a step of the turn holding such a call (or after it) whose call the run that resumed it (the next
      trajectory of the same thread among ``trajectories`` not nested in it: a run of its trace that started
      within it, as a sub-agent or graph invoked in one of its tools and recorded on its thread, is not its
      continuation; without ``trace_id`` and ``ended_at``, the next trajectory of the thread) holds with its observation, with the same ``tool_call_id``,
      tool name and arguments, at a step not ``after`` itself: that copy teaches the call once, in the turn as the
      reviewer decided it. A later run's call that only shares the id (providers number calls per reply) holds nothing.

    A step of that turn before its first call without an observation that the next run does not hold (a run never
    resumed, or cancelled, or whose resumed run is not among ``trajectories``: not approved) is not returned: it is the
    only copy of a call that ran in production, taught from the paused run.

    ``trajectories`` needs ``id`` and ``status``, and for ``held_later`` ``thread_id`` and ``started_at`` (and
    ``ended_at`` and ``trace_id``, to pass over the runs nested in a paused run; without them, the next run of the
    thread); ``steps``
    needs ``trajectory_id``, ``index``, ``action_kind`` and ``decision_index``, and for ``held_later`` ``tool_call_id``
    (the resumed run's copy of a call keeps the call's id) and ``tool_name`` and ``arguments_json`` (or their
    :func:`call_key`, ``call_key``). ``observed`` is true for a step with an observation
    (``pl.col("observation").is_not_null()`` of a source, ``has_observation`` of an index)."""
    if "status" not in trajectories.columns:
        return pl.DataFrame(schema=PAUSED_STEPS_SCHEMA)
    paused = trajectories.filter(pl.col("status") == "interrupted")["id"]
    if paused.is_empty():
        return pl.DataFrame(schema=PAUSED_STEPS_SCHEMA)
    is_call = pl.col("action_kind") == "tool_call"
    calls = steps.filter(is_call & pl.col("trajectory_id").is_in(paused.implode())).select(
        "trajectory_id", pl.col("index").cast(pl.Int64).alias("step_index"), turn_key().alias("_turn"), (~observed).alias("_unanswered")
    )
    unanswered = calls.filter(pl.col("_unanswered"))
    if unanswered.is_empty():
        return pl.DataFrame(schema=PAUSED_STEPS_SCHEMA)
    first = unanswered.group_by("trajectory_id").agg(pl.col("step_index").min().alias("_first"))
    turns = unanswered.select("trajectory_id", "_turn").unique().with_columns(pl.lit(True).alias("_paused_turn"))
    marked = calls.join(first, on="trajectory_id", how="inner").join(turns, on=["trajectory_id", "_turn"], how="left")
    after = pl.col("step_index") > pl.col("_first")
    marked = marked.filter(after | pl.col("_paused_turn").fill_null(False)).select("trajectory_id", "step_index", after.alias("after"))
    held = _held_later(trajectories, steps, observed, marked)
    marked = marked.join(held, on=["trajectory_id", "step_index"], how="left").with_columns(pl.col("held_later").fill_null(False))
    return marked.filter(pl.col("after") | pl.col("held_later")).select(list(PAUSED_STEPS_SCHEMA))


def call_key() -> pl.Expr:
    """A step's call, by tool name and arguments (``tool_name``, ``arguments_json``): a paused run's call and its resumed
    run's copy of it have the same one (:func:`paused_turn_steps`)."""
    return pl.concat_str([pl.col("tool_name").fill_null(""), pl.col("arguments_json").fill_null("")], separator="\x00").hash(seed=0)


def _held_later(trajectories: pl.DataFrame, steps: pl.DataFrame, observed: pl.Expr, marked: pl.DataFrame) -> pl.DataFrame:
    """``trajectory_id``, ``step_index`` and ``held_later`` (true) of the ``marked`` steps whose call the run that resumed
    theirs (:func:`_resumed_by`) holds with its observation, at a step not ``after`` itself (see
    :func:`paused_turn_steps`).

    A call is matched by its ``tool_call_id`` and its tool name and arguments (:func:`call_key`) in that one run only:
    many providers number calls per reply (``call_0``, ``"0"``), so a later, unrelated call of the thread often has the
    same id. Each paused run is compared with one run, so the cost is linear in the steps."""
    empty = pl.DataFrame(schema={"trajectory_id": pl.String(), "step_index": pl.Int64(), "held_later": pl.Boolean()})
    if not {"thread_id", "started_at"} <= set(trajectories.columns) or "tool_call_id" not in steps.columns:
        return empty
    if "call_key" not in steps.columns and not {"tool_name", "arguments_json"} <= set(steps.columns):
        raise ValueError(
            "paused_turn_steps: steps has tool_call_id but neither tool_name and arguments_json nor call_key; select them "
            "too (a resumed run's copy of a call is matched by its id, tool name and arguments)"
        )
    runs = _resumed_by(trajectories)
    key = pl.col("call_key") if "call_key" in steps.columns else call_key()
    calls = steps.filter((pl.col("action_kind") == "tool_call") & pl.col("tool_call_id").is_not_null()).select(
        "trajectory_id", pl.col("index").cast(pl.Int64).alias("step_index"), "tool_call_id", key.alias("_call"), observed.alias("_observed")
    )
    mine = calls.join(marked, on=["trajectory_id", "step_index"], how="inner").join(runs, on="trajectory_id", how="inner")
    mine = mine.filter(pl.col("_resumed_by").is_not_null())
    if mine.is_empty():
        return empty
    holders = (
        calls.filter(pl.col("_observed") & pl.col("trajectory_id").is_in(mine["_resumed_by"].unique().implode()))
        .join(marked.filter(pl.col("after")), on=["trajectory_id", "step_index"], how="anti")
        .select(pl.col("trajectory_id").alias("_resumed_by"), "tool_call_id", "_call")
        .unique()
    )
    held = mine.join(holders, on=["_resumed_by", "tool_call_id", "_call"], how="semi").select("trajectory_id", "step_index").unique()
    return held.with_columns(pl.lit(True).alias("held_later"))


def _resumed_by(trajectories: pl.DataFrame) -> pl.DataFrame:
    """``trajectory_id`` and ``_resumed_by`` of each run on a thread: the run that resumed it is the next run of the
    thread (by ``started_at``, then id) that is not nested in it. A run nested in it (a sub-agent or graph invoked in one
    of its tools, recorded on its thread) is of its trace (``trace_id``) and started after it started and before it
    ended (``ended_at``). Not the times alone: a run's ``ended_at`` is its last span's end, which can come after the
    resumed run started, or after the end of the run it is nested in. Where a ``trace_id`` or time is missing (older
    rows, a frame without those columns) nothing is taken as nested: the next run of the thread, as before."""
    kept = trajectories.filter(pl.col("thread_id").is_not_null() & pl.col("started_at").is_not_null())
    time = kept.schema["started_at"]
    present = {c: c in kept.columns for c in ("ended_at", "trace_id")}
    runs = (
        kept.select(
            pl.col("id").alias("trajectory_id"),
            "thread_id",
            "started_at",
            (pl.col("ended_at").cast(time, strict=False) if present["ended_at"] else pl.lit(None, dtype=time)).alias("_ended_at"),
            (pl.col("trace_id").cast(pl.String) if present["trace_id"] else pl.lit(None, dtype=pl.String)).alias("_trace"),
        )
        .sort("thread_id", "started_at", "trajectory_id")
        .with_row_index("_pos")
        .with_columns(pl.col("_pos").cast(pl.Int64))
    )
    # from each paused run, pass over the runs right after it (in start order) nested in it, one position a round: the
    # rounds are the most runs nested in one paused run, each linear in the paused runs still passing over some
    nested = (pl.col("_trace") == pl.col("_of_trace")) & (pl.col("started_at") > pl.col("_of_start"))
    nested &= pl.col("started_at") < pl.col("_of_end")
    following = runs.select("_pos", "thread_id", "_trace", "started_at", "_ended_at")
    open_ = runs.filter(pl.col("_trace").is_not_null() & pl.col("_ended_at").is_not_null())
    if "status" in kept.columns:
        open_ = open_.join(
            kept.filter(pl.col("status") == "interrupted").select(pl.col("id").alias("trajectory_id")), on="trajectory_id", how="semi"
        )
    open_ = open_.select(
        pl.col("_pos").alias("_of"),
        "thread_id",
        pl.col("_trace").alias("_of_trace"),
        pl.col("started_at").alias("_of_start"),
        pl.col("_ended_at").alias("_of_end"),
        (pl.col("_pos") + 1).alias("_next"),
    )
    done: list[pl.DataFrame] = []
    while not open_.is_empty():
        # only the threads of paused runs still passing over some: later rounds read those threads, not every run
        following = following.join(open_.select("thread_id").unique(), on="thread_id", how="semi")
        met = open_.join(following, left_on=["_next", "thread_id"], right_on=["_pos", "thread_id"], how="left")
        passed = met.filter(nested.fill_null(False))
        done.append(met.join(passed, on="_of", how="anti").select("_of", "_next"))
        open_ = passed.select(list(open_.columns)).with_columns(pl.col("_next") + 1)
    skips = pl.concat(done) if done else pl.DataFrame(schema={"_of": pl.Int64(), "_next": pl.Int64()})
    runs = runs.join(skips.rename({"_of": "_pos"}), on="_pos", how="left").with_columns(pl.col("_next").fill_null(pl.col("_pos") + 1))
    targets = runs.select(
        pl.col("_pos").alias("_next"), pl.col("thread_id").alias("_next_thread"), pl.col("trajectory_id").alias("_resumed_by")
    )
    resumed = runs.join(targets, on="_next", how="left").with_columns(
        pl.when(pl.col("_next_thread") == pl.col("thread_id")).then(pl.col("_resumed_by")).alias("_resumed_by")
    )
    return resumed.select("trajectory_id", "_resumed_by")
