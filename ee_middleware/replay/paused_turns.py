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
    * ``held_later``: a step of the turn holding such a call (or after it) whose call the run that resumed it holds
      with its observation, with the same ``tool_call_id``, tool name and arguments, at a step not ``after`` itself:
      that copy teaches the call once, in the turn as the reviewer decided it. A later run's call that only shares the
      id (providers number calls per reply) holds nothing. The run that resumed it is the next trajectory of the same
      thread among ``trajectories`` nested in none (a run of a run's trace that started within it, as a sub-agent or
      graph invoked in one of its tools and recorded on its thread, is nested in it; without ``trace_id`` and
      ``ended_at``, the next trajectory of the thread); for a paused run nested in one (a sub-agent paused in a tool
      of a paused outer run), the run nested in that one's resumed run that holds its first call awaiting review
      (see :func:`_resumed_by`).

    A step of that turn before its first call without an observation that the next run does not hold (a run never
    resumed, or cancelled, or whose resumed run is not among ``trajectories``: not approved) is not returned: it is the
    only copy of a call that ran in production, taught from the paused run.

    ``trajectories`` needs ``id`` and ``status``, and for ``held_later`` ``thread_id`` and ``started_at`` (and
    ``ended_at`` and ``trace_id``, to tell the runs nested in another; without them, the next run of the thread);
    ``steps``
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
    held = _held_later(trajectories, steps, observed, marked, first)
    marked = marked.join(held, on=["trajectory_id", "step_index"], how="left").with_columns(pl.col("held_later").fill_null(False))
    return marked.filter(pl.col("after") | pl.col("held_later")).select(list(PAUSED_STEPS_SCHEMA))


def call_key() -> pl.Expr:
    """A step's call, by tool name and arguments (``tool_name``, ``arguments_json``): a paused run's call and its resumed
    run's copy of it have the same one (:func:`paused_turn_steps`)."""
    return pl.concat_str([pl.col("tool_name").fill_null(""), pl.col("arguments_json").fill_null("")], separator="\x00").hash(seed=0)


def _held_later(
    trajectories: pl.DataFrame, steps: pl.DataFrame, observed: pl.Expr, marked: pl.DataFrame, first: pl.DataFrame
) -> pl.DataFrame:
    """``trajectory_id``, ``step_index`` and ``held_later`` (true) of the ``marked`` steps whose call the run that resumed
    theirs (:func:`_resumed_by`) holds with its observation, at a step not ``after`` itself (see
    :func:`paused_turn_steps`; ``first``: ``trajectory_id`` and ``_first``, the step of each paused run's first call
    without an observation).

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
    key = pl.col("call_key") if "call_key" in steps.columns else call_key()
    calls = steps.filter((pl.col("action_kind") == "tool_call") & pl.col("tool_call_id").is_not_null()).select(
        "trajectory_id", pl.col("index").cast(pl.Int64).alias("step_index"), "tool_call_id", key.alias("_call"), observed.alias("_observed")
    )
    # each paused run's first call awaiting review: a paused sub-agent's resumed run holds it
    awaiting = calls.join(first, left_on=["trajectory_id", "step_index"], right_on=["trajectory_id", "_first"], how="inner")
    awaiting = awaiting.select("trajectory_id", "tool_call_id", "_call")
    runs = _resumed_by(trajectories, awaiting, calls.select("trajectory_id", "tool_call_id", "_call"))
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


def _resumed_by(trajectories: pl.DataFrame, awaiting: pl.DataFrame, calls: pl.DataFrame) -> pl.DataFrame:
    """``trajectory_id`` and ``_resumed_by`` of each run on a thread: the run that resumed it.

    A run is nested in another (a sub-agent or graph invoked in one of its tools, recorded on its thread) when it is of
    its trace (``trace_id``) and started after it started and before it ended (``ended_at``): see :func:`_roots`. Not
    the times alone: a run's ``ended_at`` is its last span's end, which can come after the resumed run started, or
    after the end of the run it is nested in.

    * A run nested in none is resumed by the next run of its thread (by ``started_at``, then id) nested in none: the
      runs nested in it, which start before its resumed run, are passed over. Where a ``trace_id`` or time is missing
      (older rows, a frame without those columns) nothing is taken as nested: the next run of the thread, as before.
    * A paused run nested in one (a sub-agent paused in a tool of the paused outer run, resumed with it: LangGraph runs
      the tool again and resumes the sub-agent from its checkpoint) is resumed by a run nested in the resumed run of
      the run nested in none it is nested in (the outer run's): the one holding its first call awaiting review
      (``awaiting``: ``trajectory_id``, ``tool_call_id`` and ``_call``, the call's :func:`call_key`), whose copy keeps
      the call's id. Several such paused runs awaiting the same call (providers that number calls per reply) take the
      runs holding it in start order. Not the run each is nested in, nor the order alone: sub-agents run by parallel
      tools of one turn share the outer run's thread and trace and overlap (one reads as nested in the other), they
      need not start in the same order when resumed, and the tools that ran are not run again. None holds it (the tool
      ran the sub-agent afresh, or the outer run's resumed run is not among ``trajectories``): not resumed.

    ``calls``: ``trajectory_id``, ``tool_call_id`` and ``_call`` of the steps that hold a call."""
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
    runs = runs.join(_roots(runs), on="_pos", how="left")
    # a run nested in none: the next of its thread nested in none
    same_thread = pl.col("thread_id").shift(-1) == pl.col("thread_id")
    cont = runs.filter(pl.col("_root").is_null()).select("_pos", pl.when(same_thread).then(pl.col("_pos").shift(-1)).alias("_cont"))
    nested = runs.filter(pl.col("_root").is_not_null()).select("trajectory_id", "_pos", "_root")
    paused = nested.join(awaiting, on="trajectory_id", how="inner")
    if "status" in kept.columns and not paused.is_empty():
        # Only a paused (interrupted) run holds a paused run: a completed run whose last span ended late (thread-mode
        # recordings before 5759824, ingested traces) only seems to hold the next turn's run, which is top-level.
        interrupted = runs.join(
            kept.filter(pl.col("status") == "interrupted").select(pl.col("id").alias("trajectory_id")), on="trajectory_id", how="semi"
        )
        alone = paused.join(interrupted.select(pl.col("_pos").alias("_root")), on="_root", how="anti")
        if not alone.is_empty():
            paused = paused.join(alone.select("_pos").unique(), on="_pos", how="anti")
            cont = pl.concat([cont, _next_not_nested(runs, alone["_pos"].unique().to_list())])
    if not paused.is_empty():
        # the k-th paused run nested in a run, awaiting a call, is resumed by the k-th run nested in that run's resumed
        # run holding the call (start order)
        rank = pl.col("_pos").cum_count().over("_in", "tool_call_id", "_call").alias("_rank")
        paused = paused.join(cont.rename({"_pos": "_root", "_cont": "_in"}), on="_root", how="inner").filter(pl.col("_in").is_not_null())
        holders = (
            calls.join(paused.select("tool_call_id", "_call").unique(), on=["tool_call_id", "_call"], how="semi")
            .join(nested.filter(pl.col("_root").is_in(paused["_in"].unique().implode())), on="trajectory_id", how="inner")
            .select(pl.col("_root").alias("_in"), "tool_call_id", "_call", "_pos")
            .unique()
            .sort("_pos")
            .with_columns(rank)
        )
        matched = (
            paused.sort("_pos").with_columns(rank).join(holders.rename({"_pos": "_cont"}), on=["_in", "tool_call_id", "_call", "_rank"])
        )
        cont = pl.concat([cont, matched.select("_pos", "_cont")])
    targets = runs.select(pl.col("_pos").alias("_cont"), pl.col("trajectory_id").alias("_resumed_by"))
    resumed = runs.join(cont, on="_pos", how="left").join(targets, on="_cont", how="left")
    return resumed.select("trajectory_id", "_resumed_by")


def _next_not_nested(runs: pl.DataFrame, positions: list[int]) -> pl.DataFrame:
    """``_pos`` and ``_cont`` for the runs at ``positions`` of a :func:`_resumed_by` frame: the next run of the thread
    (in start order) not nested in it (of its trace, started after it started and before it ended); null at the
    thread's end."""
    thread, trace = runs["thread_id"].to_list(), runs["_trace"].to_list()
    start, end = runs["started_at"].to_physical().to_list(), runs["_ended_at"].to_physical().to_list()
    conts: list[int | None] = []
    for pos in positions:
        cont = None
        for later in range(pos + 1, runs.height):
            if thread[later] != thread[pos]:
                break
            inside = trace[pos] is not None and trace[later] == trace[pos] and end[pos] is not None and start[pos] < start[later] < end[pos]
            if not inside:
                cont = later
                break
        conts.append(cont)
    return pl.DataFrame({"_pos": positions, "_cont": conts}, schema={"_pos": pl.Int64(), "_cont": pl.Int64()})


def _roots(runs: pl.DataFrame) -> pl.DataFrame:
    """``_pos`` and ``_root`` of the ``runs`` of a :func:`_resumed_by` frame (``_pos``, ``thread_id``, ``_trace``,
    ``started_at``, ``_ended_at``): the run nested in none that it is nested in (null for a run nested in none). A run
    is nested in one when it is of its thread and trace and started after it started (strictly) and before it ended;
    what started within a nested run is nested in the same one. A nested run's last span can end after the run it is
    nested in: a run of the trace started once that one ended is nested in none.

    One pass over each thread and trace's runs in start order (a user's span around many runs of a thread gives them
    all one trace), so the cost is linear after the sort."""
    traced = runs.filter(pl.col("_trace").is_not_null() & (pl.len().over("thread_id", "_trace") > 1)).sort(
        "thread_id", "_trace", "started_at", "_pos"
    )
    if traced.is_empty():
        return pl.DataFrame(schema={"_pos": pl.Int64(), "_root": pl.Int64()})
    same = (pl.col("thread_id") == pl.col("thread_id").shift(1)) & (pl.col("_trace") == pl.col("_trace").shift(1))
    frame = traced.select(
        "_pos",
        pl.col("started_at").to_physical().alias("_start"),
        pl.col("_ended_at").to_physical().alias("_end"),
        same.fill_null(False).alias("_same"),
    )
    positions, starts, ends, same_group = (frame[c].to_list() for c in ("_pos", "_start", "_end", "_same"))
    roots: list[int | None] = []
    root: int | None = None
    root_start = root_end = 0
    for pos, start, end, in_group in zip(positions, starts, ends, same_group, strict=True):
        if not in_group:
            root = None
        if root is not None and root_start < start < root_end:
            roots.append(root)
            continue
        roots.append(None)
        # a run started with the root (so not nested in it) takes its place where it ends later
        if end is not None and end > start and (root is None or start >= root_end or end > root_end):
            root, root_start, root_end = pos, start, end
    return pl.DataFrame({"_pos": positions, "_root": roots}, schema={"_pos": pl.Int64(), "_root": pl.Int64()})
