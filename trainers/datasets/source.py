"""What the builders read from an experience store: approved trajectories, their steps, rollouts.

Two ways in. :func:`load_source` reads everything at once (a :class:`DatasetSource` of frames; for
small stores, tests and the builders' own API). A build reads in bounded memory instead:
:class:`SourceReader` first reads only the keys of the whole source (a :class:`SourceIndex`: ids,
step and rollout keys, state sizes; no state, no observation), then loads one group of trajectories
at a time (:meth:`SourceReader.load`) from the store's Parquet parts, lazily (filters pushed into
the Parquet reader; see :meth:`~ee_middleware.store.local.LocalExperienceStore.scan`).

Which rollouts: every replay's (each replay configuration, ``replay_id``, that replayed a trajectory), or one
configuration's with ``replay_id`` (the id of any of its attempts); of a configuration replayed again
(``ee replay run --again``), a trajectory's newest finished attempt (:func:`superseded_replays`). A trajectory's replay whose record reports fidelity mismatches (the sandbox's
answer to the expert's own recorded call differed from production's: ``ReplayRecord.fidelity_mismatches``, the
newest record of that configuration and trajectory) is left out whole unless ``include_fidelity_mismatches``
(:func:`untrusted_replays`): its sandbox answers some tool differently from production, at every state that tool is
called, and from the mismatching step on its world is no longer production's.

A decision two trajectories of one trace both hold (a graph wrapped with ``record_experience`` and used as a node of
another recorded graph: the same state and the same action, its tool call's id included, stored by both recorders) is
taught once, from the trajectory that started first; the other's copy of the step and its rollouts are left out
(:mod:`~ee_middleware.replay.repeated_decisions`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import polars as pl

from ee_middleware.replay.attempts import (
    UNTRUSTED_SCHEMA,
    configuration_replays,
    mark_untrusted,
    not_superseded,
    superseded_replays,
    untrusted_replays,
)
from ee_middleware.replay.paused_turns import call_key, turn_key
from ee_middleware.replay.repeated_decisions import REPEATS_SCHEMA, decision_key, repeated_decisions, shared_trace_trajectories
from ee_middleware.replay.retrieval import ROLLOUT_PREFIX, STEP_PREFIX

_T = TypeVar("_T")

TRAJECTORY_COLUMNS = ("id", "tools_json", "app", "started_at", "ended_at", "source", "status", "thread_id", "trace_id")
"""Columns of the trajectories table a build keeps for every trajectory (never the messages)."""


@dataclass(frozen=True)
class DatasetSource:
    """Frames of the store content a dataset is built from (approved trajectories only): ``trajectories`` holds their
    ``id``, ``tools_json`` and ``status`` (and, read by :func:`load_source`, ``thread_id``, ``started_at``,
    ``ended_at`` and ``trace_id``)."""

    trajectories: pl.DataFrame
    steps: pl.DataFrame
    rollouts: pl.DataFrame
    unrestored_rollouts: int = 0
    """Rollouts left out because the sandbox answered a redaction placeholder, not the value (``Rollout.unrestored``)."""
    sandbox_failures: dict[str, int] = field(default_factory=dict)
    """Rollouts left out because their observation is the sandbox's own failure, by kind (``Observation.sandbox_failure``)."""
    fidelity_mismatch_rollouts: int = 0
    """Rollouts left out because their replay reported fidelity mismatches (:func:`untrusted_replays`)."""
    repeated_decisions: int = 0
    """Steps left out (with their rollouts) because an earlier trajectory of their trace holds the same decision
    (:func:`repeated_decisions`)."""
    content_hash: str | None = None
    """The hash of the whole source this is a group of trajectories of (see :attr:`source_hash`)."""

    @property
    def source_hash(self) -> str:
        """Identifies the content: approved trajectory ids, their step count and rollout ids (of the
        whole source when this is one group of it)."""
        if self.content_hash is not None:
            return self.content_hash
        return content_hash(self.trajectories["id"], self.rollouts["id"], self.steps.height)


def taught_steps(source: DatasetSource) -> tuple[pl.DataFrame, int]:
    """``source.steps`` without the turns awaiting a review, and how many calls that left out.

    A run that paused for a human review (``HumanInTheLoopMiddleware``, a breakpoint, ``interrupt()`` in a tool) is an
    ``interrupted`` trajectory ending on the model's calls without an observation: the reviewer may still reject them,
    or change them. Its turn with such a call (all its calls: the turn was not made as recorded) teaches nothing; the
    run that resumed the thread holds the turn as the reviewer decided it (the call that ran, a reviewer's edit
    included; no rejected call), and teaches it from there. Datasets use these steps as targets (IL, SR)."""
    steps = source.steps
    if "status" not in source.trajectories.columns:
        return steps, 0
    paused = source.trajectories.filter(pl.col("status") == "interrupted")["id"]
    if paused.is_empty():
        return steps, 0
    awaiting = (pl.col("action_kind") == "tool_call") & pl.col("observation").is_null() & pl.col("trajectory_id").is_in(paused.implode())
    keyed = steps.with_columns(turn_key().alias("_turn"))
    left_out = keyed.filter(awaiting).select("trajectory_id", "_turn").unique()
    if left_out.is_empty():
        return steps, 0
    kept = keyed.join(left_out, on=["trajectory_id", "_turn"], how="anti", maintain_order="left").drop("_turn")
    return kept, int(keyed.filter(pl.col("action_kind") == "tool_call").height - kept.filter(pl.col("action_kind") == "tool_call").height)


def paused_expert_counts(paused: pl.DataFrame, expert: pl.DataFrame) -> dict[str, int]:
    """How many of the ``expert`` steps (``trajectory_id``, ``step_index``: those with an observation a builder would
    teach) ``paused`` (:func:`~ee_middleware.replay.paused_turns.paused_turn_steps`) leaves out, by why, only those not zero:
    ``paused_turn_repeats_left_out`` (a later run of the thread holds the call: ``held_later``) and
    ``expert_steps_after_unanswered_call_left_out`` (after the run's call awaiting review or cut off, and held nowhere
    else: its state shows that call without a result)."""
    left_out = expert.select("trajectory_id", "step_index").join(paused, on=["trajectory_id", "step_index"], how="inner")
    repeats = int(left_out["held_later"].sum())
    counts = {"paused_turn_repeats_left_out": repeats, "expert_steps_after_unanswered_call_left_out": left_out.height - repeats}
    return {key: n for key, n in counts.items() if n}


def content_hash(trajectory_ids: pl.Series, rollout_ids: pl.Series, steps: int) -> str:
    """The source hash every dataset row records: sorted trajectory ids, sorted rollout ids, step count."""
    digest = hashlib.sha256()
    for ids in (trajectory_ids, rollout_ids):  # "\n".join(sorted(ids)), without a Python string per id
        digest.update((ids.sort().str.join("\n").item() or "").encode())
        digest.update(b"\x00")
    digest.update(str(steps).encode())
    return digest.hexdigest()[:16]


def without_repeats(steps: pl.DataFrame, rollouts: pl.DataFrame, repeats: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``steps`` and ``rollouts`` without the ``repeats`` (:func:`repeated_decisions`) and the rollouts branched from them."""
    if repeats.is_empty():
        return steps, rollouts
    at = repeats.select("trajectory_id", pl.col("index").cast(steps.schema["index"]))
    return steps.join(at, on=["trajectory_id", "index"], how="anti", maintain_order="left"), rollouts_without_repeats(rollouts, repeats)


def rollouts_without_repeats(rollouts: pl.DataFrame, repeats: pl.DataFrame) -> pl.DataFrame:
    """``rollouts`` without those branched from the ``repeats`` (:func:`repeated_decisions`)."""
    if repeats.is_empty() or rollouts.is_empty():
        return rollouts
    at = repeats.select("trajectory_id", pl.col("index").cast(rollouts.schema["step_index"]).alias("step_index"))
    return rollouts.join(at, on=["trajectory_id", "step_index"], how="anti", maintain_order="left")


def load_source(
    store: Any,
    *,
    app: str | None = None,
    replay_id: str | None = None,
    include_synthetic: bool = False,
    include_sandbox_failures: bool = False,
    include_fidelity_mismatches: bool = False,
) -> DatasetSource:
    """Approved trajectories of ``store`` (optionally one app), their steps and rollouts.

    Rollouts flagged ``synthetic`` (experience-model output) are left out unless ``include_synthetic``:
    IWM learns from real observations only by default. So are, unless ``include_fidelity_mismatches``, the
    rollouts of a replay whose record reports fidelity mismatches (:func:`untrusted_replays`); and
    rollouts whose arguments held redaction placeholders replay could not restore: their
    observation answers the placeholder (``user not found``), not the value; and, unless
    ``include_sandbox_failures``, rollouts whose observation is the sandbox's own failure (a time-out, a
    crash, the memory limit: ``Observation.sandbox_failure``), which no production tool returns.
    """
    trajectories = store.trajectories(status="approved", app=app)
    # thread, times and trace: which later run on the thread holds a paused turn's call too (paused_turn_steps)
    trajectories = trajectories.select(
        "id", "tools_json", "status", *(c for c in ("thread_id", "started_at", "ended_at", "trace_id") if c in trajectories.columns)
    )
    ids = trajectories["id"].to_list()
    steps = store.steps(ids)
    rollouts = store.rollouts(ids)
    if not include_synthetic:
        rollouts = rollouts.filter(~pl.col("synthetic"))
    records = store.replays().filter(pl.col("trajectory_id").is_in(ids))
    if replay_id is not None:  # that configuration's replays, each of its attempts (ee replay run --again)
        attempts = configuration_replays(records, replay_id)
        rollouts, records = rollouts.filter(pl.col("replay_id").is_in(attempts)), records.filter(pl.col("replay_id").is_in(attempts))
    # a trajectory's newest finished attempt of each configuration
    current = not_superseded(superseded_replays(records))
    rollouts, records = rollouts.filter(current), records.filter(current)
    mismatched = 0
    if not include_fidelity_mismatches:
        trusted = rollouts.filter(~mark_untrusted(untrusted_replays(records)))
        mismatched, rollouts = rollouts.height - trusted.height, trusted
    unrestored = 0
    if "unrestored_json" in rollouts.columns:
        restored = rollouts.filter(pl.col("unrestored_json").is_null())
        unrestored, rollouts = rollouts.height - restored.height, restored
    failures: dict[str, int] = {}
    if not include_sandbox_failures and "sandbox_failure" in rollouts.columns:
        failures = failure_counts(rollouts["sandbox_failure"])
        rollouts = rollouts.filter(pl.col("sandbox_failure").is_null())
    shared = shared_trace_trajectories(trajectories)
    repeats = repeated_decisions(trajectories, steps.filter(pl.col("trajectory_id").is_in(shared.implode())).with_columns(decision_key()))
    steps, rollouts = without_repeats(steps, rollouts, repeats)
    return DatasetSource(
        trajectories=trajectories,
        steps=steps,
        rollouts=rollouts,
        unrestored_rollouts=unrestored,
        sandbox_failures=failures,
        fidelity_mismatch_rollouts=mismatched,
        repeated_decisions=repeats.height,
    )


def failure_counts(kinds: pl.Series) -> dict[str, int]:
    """How many of ``kinds`` (a rollouts' ``sandbox_failure`` column) are each kind of sandbox failure (nulls: none)."""
    counted = kinds.drop_nulls().value_counts(sort=True)
    return {str(kind): int(n) for kind, n in counted.iter_rows()}


REPLAY_COLUMNS = (
    "replay_id",
    "trajectory_id",
    "status",
    "policy",
    "sandbox",
    "k",
    "seed",
    "fidelity_mismatches",
    "details_json",
    "finished_at",
)
"""Columns of the replay records a build reads (one record per replay configuration and trajectory, the newest)."""

LEFT_OUT_SCHEMA: dict[str, pl.DataType] = {
    "replay_id": pl.String(),
    "trajectory_id": pl.String(),
    "tool_name": pl.String(),
    "rollouts": pl.UInt32(),
}


@dataclass(frozen=True)
class SourceIndex:
    """The keys of a source, without its text: what a build plans its groups of trajectories with.

    ``trajectories``: :data:`TRAJECTORY_COLUMNS` of the approved trajectories (store order);
    ``steps``: ``trajectory_id``, ``index``, ``action_kind``, ``decision_index``, ``tool_call_id``, ``call_key``
    (:func:`call_key`), ``has_observation``,
    ``observation_is_error``, ``state_bytes`` (storage order); ``rollouts``: ``id``,
    ``trajectory_id``, ``step_index``, ``is_error`` (the rollouts a build uses, sorted as
    :meth:`~ee_middleware.store.local.LocalExperienceStore.rollouts` sorts them)."""

    trajectories: pl.DataFrame
    steps: pl.DataFrame
    rollouts: pl.DataFrame
    unrestored_rollouts: int = 0
    sandbox_failures: dict[str, int] = field(default_factory=dict)
    """Rollouts left out because their observation is the sandbox's own failure, by kind (of the whole source)."""
    filtered_out: dict[str, int] = field(default_factory=dict)
    """Rollouts of these trajectories the build's settings leave out (of the whole source): ``synthetic`` ones
    (without ``include_synthetic``), those of ``other_replays`` (with a ``replay_id``) and, with a held-out rule, the
    synthetic ones grounded on a held-out trajectory (:data:`GROUNDED_ON_HELD_OUT`, when any:
    :meth:`SourceReader.leave_out_grounded_on_held_out`)."""
    fidelity_left_out: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LEFT_OUT_SCHEMA))
    """Rollouts left out for fidelity mismatches (of the whole source), counted by ``replay_id``, ``trajectory_id`` and
    ``tool_name`` (``rollouts``); why is :attr:`untrusted`."""
    untrusted: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=UNTRUSTED_SCHEMA))
    """The replays that found fidelity mismatches (:func:`untrusted_replays`), of the source's trajectories."""
    replays: pl.DataFrame = field(default_factory=pl.DataFrame)
    """The replay configurations whose rollouts the build uses (of the whole source), one row each: ``replay_id``,
    ``policy``, ``sandbox``, ``k``, ``seed``, ``trajectories``, ``rollouts`` and ``newest_finished_at``; and how many
    trajectories have rollouts of more than one is :attr:`trajectories_with_several_replays`."""
    trajectories_with_several_replays: int = 0
    repeats: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=REPEATS_SCHEMA))
    """The steps left out of ``steps`` (and their rollouts of ``rollouts``) because an earlier trajectory of their trace
    holds the same decision (:func:`repeated_decisions`, of the whole source): ``trajectory_id``, ``index`` and, where
    any were, ``rollouts`` (how many of the step's rollouts that left out)."""

    def repeats_left_out(self) -> dict[str, int]:
        """How many steps of this index's trajectories, and rollouts branched from them, :attr:`repeats` left out (the
        summary's ``repeated_decisions_left_out``; empty when none)."""
        mine = self.repeats.filter(pl.col("trajectory_id").is_in(self.trajectories["id"].implode()))
        if mine.is_empty():
            return {}
        rollouts = int(mine["rollouts"].sum()) if "rollouts" in mine.columns else 0
        return {"steps": mine.height, "trajectories": mine["trajectory_id"].n_unique(), "rollouts": rollouts}

    @cached_property
    def source_hash(self) -> str:
        return content_hash(self.trajectories["id"], self.rollouts["id"], self.steps.height)

    def subset(self, ids: Iterable[str]) -> SourceIndex:
        """The index of only these trajectories (the counts of rollouts left out are the whole source's)."""
        keep = pl.Series(sorted(set(ids)), dtype=pl.String).implode()
        return SourceIndex(
            self.trajectories.filter(pl.col("id").is_in(keep)),
            self.steps.filter(pl.col("trajectory_id").is_in(keep)),
            self.rollouts.filter(pl.col("trajectory_id").is_in(keep)),
            self.unrestored_rollouts,
            self.sandbox_failures,
            self.filtered_out,
            self.fidelity_left_out,
            self.untrusted,
            self.replays,
            self.trajectories_with_several_replays,
            self.repeats,
        )

    def storage_order(self) -> list[str]:
        """Trajectory ids in the order their steps are stored (the row order of IL, SR and IWM's expert
        rows), then those without steps."""
        stored = self.steps["trajectory_id"].unique(maintain_order=True).to_list()
        seen = set(stored)
        return stored + [i for i in self.trajectories["id"].to_list() if i not in seen]

    def sorted_order(self) -> list[str]:
        """Trajectory ids sorted (the row order of IWM's rollout rows: rollouts are read sorted)."""
        return sorted(self.trajectories["id"].to_list())

    @cached_property
    def weights(self) -> dict[str, int]:
        """Bytes of prompt text each trajectory's rows hold, about: every state is copied into its IL
        and SR rows and into one IWM row per rollout and for the expert step."""
        per_step = self.rollouts.group_by("trajectory_id", "step_index").len("rollouts")
        weighted = self.steps.join(
            per_step, left_on=["trajectory_id", "index"], right_on=["trajectory_id", "step_index"], how="left"
        ).select("trajectory_id", (pl.col("state_bytes") * (pl.col("rollouts").fill_null(0) + 2)).alias("w"))
        totals = weighted.group_by("trajectory_id").agg(pl.col("w").sum())
        return dict(totals.iter_rows())

    def groups(self, order: Sequence[str], budget_bytes: int) -> Iterator[list[str]]:
        """``order`` cut into consecutive groups of about ``budget_bytes`` of prompt text (at least one
        trajectory each)."""
        weights = self.weights
        group: list[str] = []
        size = 0
        for trajectory_id in order:
            weight = weights.get(trajectory_id, 0)
            if group and size + weight > budget_bytes:
                yield group
                group, size = [], 0
            group.append(trajectory_id)
            size += weight
        if group:
            yield group


class SourceReader:
    """Reads a store's source a group of trajectories at a time (see the module docstring)."""

    def __init__(
        self,
        store: Any,
        *,
        app: str | None = None,
        replay_id: str | None = None,
        include_synthetic: bool = False,
        include_sandbox_failures: bool = False,
        include_fidelity_mismatches: bool = False,
    ) -> None:
        self.replay_id = replay_id
        self.include_synthetic = include_synthetic
        self.include_sandbox_failures = include_sandbox_failures
        self.include_fidelity_mismatches = include_fidelity_mismatches
        self._lazy_store: Any = None
        self._indexed_rollouts: pl.Series | None = None
        self._rescanned = False
        self._records: pl.DataFrame | None = None
        self._superseded = superseded_replays(pl.DataFrame())
        self._attempts: list[str] = [] if replay_id is None else [replay_id]
        self._untrusted: pl.DataFrame | None = None
        self._left_out: pl.Series | None = None  # rollouts no read returns (leave_out_grounded_on_held_out)
        self._grounded = 0
        self._repeats = pl.DataFrame(schema=REPEATS_SCHEMA)  # (repeated_decisions)
        if hasattr(store, "scan") and hasattr(store, "trajectory_index"):
            from ee_middleware.store.local import drop_repeats

            self._trajectories = store.trajectory_index(list(TRAJECTORY_COLUMNS), status="approved", app=app)
            self._lazy_store, self._drop = store, drop_repeats
            self._scan()
        else:  # a store without lazy reads: its frames, grouped in memory
            self._trajectories = store.trajectories(status="approved", app=app)
            ids = self._trajectories["id"].to_list()
            self._steps, self._rollouts = store.steps(ids).lazy(), store.rollouts(ids).lazy()
            self._replays = store.replays().lazy()
            self._drop = _no_repeats
        self._trajectories = self._trajectories.select(
            [pl.col(c) if c in self._trajectories.columns else pl.lit(None, dtype=pl.String).alias(c) for c in TRAJECTORY_COLUMNS]
        )

    @property
    def trajectories(self) -> pl.DataFrame:
        """:data:`TRAJECTORY_COLUMNS` of the approved trajectories the source holds (store order): those :meth:`index`
        keys."""
        return self._trajectories

    def leave_out_grounded_on_held_out(self, train: Collection[str], held_out: Collection[str]) -> int:
        """Leave out of every later read (:meth:`index`, :meth:`load`) the synthetic rollouts of the ``train``
        trajectories a build uses whose experience model was shown a real transition of a ``held_out`` trajectory as an
        example (its recorded retrieval: :func:`grounding_trajectories`); how many. Such a prediction may copy what the
        held-out trajectory's tool returned into a training target, so a build with a held-out rule trains on none."""
        held = set(held_out)
        if not held or not train or not self.include_synthetic:
            return 0
        keep = pl.Series(sorted(set(train)), dtype=pl.String)
        names = self._rollouts.collect_schema().names()
        lineage = [c for c in ("synthetic_source_json", "proposer_json") if c in names]
        if not lineage:  # a store that keeps no experience model's lineage: nothing says what a prediction was shown
            return 0
        columns = ("id", "trajectory_id", "step_index", "branch_index", *lineage)
        rows = self._read(lambda: self._rollout_rows(keep, columns, where=pl.col("synthetic").fill_null(False)).rows)
        if rows.is_empty():
            return 0
        shown = [retrieved_ids(*(row.get(c) for c in ("synthetic_source_json", "proposer_json"))) for row in rows.iter_rows(named=True)]
        rollout_ids = sorted({i[len(ROLLOUT_PREFIX) :] for ids in shown for i in ids if i.startswith(ROLLOUT_PREFIX)})
        owners: dict[str, str] = {}
        if rollout_ids:  # a real rollout shown as an example: of the trajectory it branched from
            wanted = pl.Series(rollout_ids, dtype=pl.String).implode()
            found = self._read(lambda: self._rollouts.filter(pl.col("id").is_in(wanted)).select("id", "trajectory_id").collect())
            owners = dict(found.iter_rows())
        grounded = [i for i, ids in zip(rows["id"], shown, strict=True) if grounding_trajectories(ids, owners) & held]
        if grounded:
            self._left_out = pl.Series(grounded, dtype=pl.String)
        self._grounded = len(set(grounded))
        return self._grounded

    def _scan(self) -> None:
        """Lazy frames of the steps and rollouts over the parts the store lists now (and its spool, read now)."""
        self._steps, self._rollouts = self._lazy_store.scan("steps"), self._lazy_store.scan("rollouts")
        self._replays = self._lazy_store.scan("replays")

    def _read(self, read: Callable[[], _T]) -> _T:
        """``read()``; when a part it reads is gone, the store's parts are listed again and it reads again. A
        compaction may merge the parts a build listed at its start and a later one deletes them once their grace
        period is over (``RETIRED_PART_GRACE_S``), which a long build outlives: the rows are in the merged part.
        Rollouts stored since the build read its keys are not used then (see :meth:`_rollout_rows`)."""
        from ee_middleware.store.local import READ_ATTEMPTS

        for attempt in range(READ_ATTEMPTS):
            try:
                return read()
            except FileNotFoundError:
                if self._lazy_store is None or attempt == READ_ATTEMPTS - 1:
                    raise
                self._scan()
                self._rescanned = True
            except pl.exceptions.ComputeError:
                # a part damaged past its footer fails only as it is decoded, naming no file: find it (the store warns,
                # naming it: an error unless --allow-partial) and read again without it
                check = getattr(self._lazy_store, "check_parts", None)
                if check is None or attempt == READ_ATTEMPTS - 1 or not check(("steps", "rollouts", "replays")):
                    raise
                self._scan()
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _replay_records(self) -> pl.DataFrame:
        """The newest replay record of each configuration (of ``replay_id`` only, when given) and source trajectory
        (:data:`REPLAY_COLUMNS`); read once."""
        if self._records is None:
            wanted = self._trajectories["id"].implode()
            records = self._read(lambda: self._drop("replays", self._replays.filter(pl.col("trajectory_id").is_in(wanted)).collect()))
            records = records.select(REPLAY_COLUMNS)
            if self.replay_id is not None:  # that configuration's replays, each of its attempts (ee replay run --again)
                self._attempts = configuration_replays(records, self.replay_id)
                records = records.filter(pl.col("replay_id").is_in(self._attempts))
            # a trajectory's newest finished attempt of each configuration (superseded ones are not used)
            self._superseded = superseded_replays(records)
            self._records = records.filter(not_superseded(self._superseded))
        return self._records

    def _of_replay(self) -> pl.Expr:
        """True for a row of the configuration ``replay_id`` names (any of its attempts)."""
        self._replay_records()
        return pl.col("replay_id").is_in(self._attempts)

    def _untrusted_replays(self) -> pl.DataFrame:
        """:func:`untrusted_replays` of the source (none with ``include_fidelity_mismatches``)."""
        if self._untrusted is None:
            records = self._replay_records() if not self.include_fidelity_mismatches else pl.DataFrame()
            self._untrusted = untrusted_replays(records)
        return self._untrusted

    def _rollout_rows(self, ids: pl.Series, columns: Sequence[str] | None = None, *, where: pl.Expr | None = None) -> _Selected:
        """The rollouts of these trajectories a build uses (of ``replay_id``; synthetic ones only with
        ``include_synthetic``, and none :meth:`leave_out_grounded_on_held_out` left out; those of a replay that found
        fidelity mismatches only with ``include_fidelity_mismatches``; sandbox failures only with
        ``include_sandbox_failures``; repeats dropped; sorted as the store sorts them), with ``columns`` (default: all),
        and what was left out (see :class:`_Selected`); ``where``: only those it holds for."""
        rows = self._rollouts.filter(pl.col("trajectory_id").is_in(ids.implode()))
        if where is not None:
            rows = rows.filter(where)
        if self._left_out is not None:
            rows = rows.filter(~pl.col("id").is_in(self._left_out.implode()))
        if self._rescanned and self._indexed_rollouts is not None:  # the source is what index() found: no rollout stored since
            rows = rows.filter(pl.col("id").is_in(self._indexed_rollouts.implode()))
        if self.replay_id is not None:
            rows = rows.filter(self._of_replay())
        if not self.include_synthetic:
            rows = rows.filter(~pl.col("synthetic"))
        self._replay_records()  # which replays are superseded
        if not self._superseded.is_empty():
            rows = rows.filter(not_superseded(self._superseded))
        untrusted = self._untrusted_replays()
        marks = [
            pl.col("unrestored_json").is_null().alias("_restored"),
            pl.col("sandbox_failure").alias("_failure"),
            pl.col("replay_id").alias("_replay"),
            pl.col("tool_name").alias("_tool"),
            mark_untrusted(untrusted).alias("_untrusted"),
        ]
        rows = rows.select(*columns, *marks) if columns is not None else rows.with_columns(marks)
        frame = self._drop("rollouts", rows.collect(engine="streaming"))
        frame = frame.sort(["trajectory_id", "step_index", "branch_index"], maintain_order=True)
        mismatched = frame.filter(pl.col("_untrusted")).group_by("_replay", "trajectory_id", "_tool").len("rollouts")
        trusted = frame.filter(~pl.col("_untrusted"))
        restored = trusted.filter(pl.col("_restored"))
        failures: dict[str, int] = {}
        if not self.include_sandbox_failures:
            failures = failure_counts(restored["_failure"])
            restored = restored.filter(pl.col("_failure").is_null())
        return _Selected(
            restored.drop("_restored", "_failure", "_untrusted", "_tool"),
            trusted.height - restored.height - sum(failures.values()),
            failures,
            mismatched.rename({"_replay": "replay_id", "_tool": "tool_name"}),
        )

    def index(self) -> SourceIndex:
        """The keys of the whole source (no state or observation text is kept)."""
        return self._read(self._index)

    def _index(self) -> SourceIndex:
        ids = self._trajectories["id"]
        steps = self._steps.filter(pl.col("trajectory_id").is_in(ids.implode())).select(
            "trajectory_id",
            "index",
            "action_kind",
            "decision_index",
            "tool_call_id",
            call_key().alias("call_key"),
            pl.col("observation").is_not_null().alias("has_observation"),
            "observation_is_error",
            pl.col("state_json").str.len_bytes().cast(pl.Int64).alias("state_bytes"),
        )
        steps = self._drop("steps", steps.collect(engine="streaming"))
        self._repeats = self._repeated_decisions()
        selected = self._rollout_rows(ids, ("id", "trajectory_id", "step_index", "branch_index", "is_error"))
        steps, rollouts = without_repeats(steps, selected.rows, self._repeats)
        if not self._repeats.is_empty():  # with how many rollouts each repeat leaves out (the summary counts them)
            branched = selected.rows.group_by("trajectory_id", pl.col("step_index").cast(pl.Int64).alias("index")).len("rollouts")
            self._repeats = self._repeats.join(branched, on=["trajectory_id", "index"], how="left").with_columns(
                pl.col("rollouts").fill_null(0).cast(pl.Int64)
            )
        replays = self._replays_used(rollouts)
        several = rollouts.group_by("trajectory_id").agg(pl.col("_replay").n_unique().alias("n")).filter(pl.col("n") > 1).height
        index = SourceIndex(
            self._trajectories,
            steps,
            rollouts.drop("branch_index", "_replay"),
            selected.unrestored,
            selected.failures,
            self._filtered_out(ids),
            selected.mismatched.sort("replay_id", "trajectory_id", "tool_name"),
            self._untrusted_replays(),
            replays,
            several,
            self._repeats,
        )
        self._indexed_rollouts = rollouts["id"]
        return index

    def _repeated_decisions(self) -> pl.DataFrame:
        """:func:`repeated_decisions` of the source: only the steps of trajectories sharing a trace are read (hashed), so
        a store without such trajectories (no recorded graph used as a node of another) costs nothing more."""
        shared = shared_trace_trajectories(self._trajectories)
        if shared.is_empty():
            return self._repeats.clear()
        steps = self._steps.filter(pl.col("trajectory_id").is_in(shared.implode())).select("trajectory_id", "index", decision_key())
        return repeated_decisions(self._trajectories, steps.collect(engine="streaming").unique(["trajectory_id", "index"]))

    def _replays_used(self, rollouts: pl.DataFrame) -> pl.DataFrame:
        """One row per replay configuration among ``rollouts`` (those a build uses, with their ``_replay``): see
        :attr:`SourceIndex.replays`. Policy, sandbox, K and seed come from its records (null when none is stored)."""
        used = rollouts.group_by("_replay").agg(
            pl.col("trajectory_id").n_unique().alias("trajectories"), pl.len().cast(pl.Int64).alias("rollouts")
        )
        records = (
            self._replay_records()
            .group_by("replay_id")
            .agg(
                pl.col("policy").first(),
                pl.col("sandbox").first(),
                pl.col("k").first(),
                pl.col("seed").first(),
                pl.col("finished_at").max().alias("newest_finished_at"),
            )
        )
        joined = used.rename({"_replay": "replay_id"}).join(records, on="replay_id", how="left")
        return joined.select("replay_id", "policy", "sandbox", "k", "seed", "trajectories", "rollouts", "newest_finished_at").sort(
            "rollouts", "replay_id", descending=[True, False]
        )

    def _filtered_out(self, ids: pl.Series) -> dict[str, int]:
        """How many rollouts of these trajectories ``include_synthetic`` and ``replay_id`` leave out (distinct ids), and
        (``synthetic_grounded_on_held_out``, when any) :meth:`leave_out_grounded_on_held_out`."""
        grounded = {GROUNDED_ON_HELD_OUT: self._grounded} if self._grounded else {}
        if self.include_synthetic and self.replay_id is None:
            return grounded
        rows = self._rollouts.filter(pl.col("trajectory_id").is_in(ids.implode()))
        counts = []
        if not self.include_synthetic:
            mine = rows if self.replay_id is None else rows.filter(self._of_replay())
            counts.append(mine.filter(pl.col("synthetic")).select(pl.col("id").n_unique().alias("synthetic")))
        if self.replay_id is not None:
            others = rows.filter(~self._of_replay())
            others = others if self.include_synthetic else others.filter(~pl.col("synthetic"))
            counts.append(others.select(pl.col("id").n_unique().alias("other_replays")))
        return {k: int(v) for frame in pl.collect_all(counts) for k, v in frame.row(0, named=True).items()} | grounded

    def rollout_columns(self, ids: Sequence[str], columns: Sequence[str]) -> pl.DataFrame:
        """``columns`` of the rollouts of these trajectories a build uses (those :meth:`load` reads, in its order), and no
        other: a pass that needs a few columns of many rollouts (``columns`` must hold ``id``, ``trajectory_id``,
        ``step_index`` and ``branch_index``, which the selection reads)."""
        keep = pl.Series(list(ids), dtype=pl.String)
        rows = self._read(lambda: self._rollout_rows(keep, columns).rows.drop("_replay"))
        return rollouts_without_repeats(rows, self._repeats)

    def load(self, ids: Sequence[str], content_hash: str, *, rollouts: bool = True) -> DatasetSource:
        """The frames of these trajectories (as :func:`load_source` reads them, restricted to ``ids``);
        with ``rollouts=False`` the rollouts are not read (an empty frame), for builders that use none."""
        keep = pl.Series(list(ids), dtype=pl.String)
        trajectories = self._trajectories.filter(pl.col("id").is_in(keep.implode())).select("id", "tools_json", "status")

        def read() -> tuple[pl.DataFrame, pl.DataFrame]:
            steps = self._drop("steps", self._steps.filter(pl.col("trajectory_id").is_in(keep.implode())).collect(engine="streaming"))
            if not rollouts:
                return steps, pl.DataFrame(schema=self._rollouts.collect_schema())
            return steps, self._rollout_rows(keep).rows.drop("_replay")

        steps, rows = self._read(read)
        steps, rows = without_repeats(steps, rows, self._repeats)
        return DatasetSource(trajectories=trajectories, steps=steps, rollouts=rows, content_hash=content_hash)


GROUNDED_ON_HELD_OUT = "synthetic_grounded_on_held_out"
"""Why :meth:`SourceReader.leave_out_grounded_on_held_out` left a rollout out (``datasets.json``'s ``rollouts_left_out``)."""


def retrieved_ids(source_json: str | None, proposer_json: str | None = None) -> list[str]:
    """The ids of the real transitions an experience model was shown for a synthetic rollout, as its lineage records
    them (``Rollout.synthetic_source.retrieved``: ``synthetic_source_json``, or in parts older than schema 1.2 under
    ``settings.experience`` of ``proposer_json``); none when neither records any."""
    source: Any = json.loads(source_json) if source_json else None
    if source is None and proposer_json:
        source = (json.loads(proposer_json).get("settings") or {}).get("experience")
    retrieved = source.get("retrieved") if isinstance(source, dict) else None
    return [str(i) for i in retrieved] if isinstance(retrieved, list) else []


def grounding_trajectories(retrieved: Iterable[str], rollout_owners: Mapping[str, str]) -> set[str]:
    """The trajectories whose real transitions ``retrieved`` (:func:`retrieved_ids`) names: an expert step's trajectory,
    or the one a real rollout branched from (``rollout_owners``: rollout id -> trajectory id; a rollout not in it, or an
    id of another form, names none)."""
    trajectories = set()
    for shown in retrieved:
        if shown.startswith(STEP_PREFIX):
            trajectory, _, index = shown[len(STEP_PREFIX) :].rpartition(":")
            if trajectory and index.isdigit():
                trajectories.add(trajectory)
        elif shown.startswith(ROLLOUT_PREFIX) and shown[len(ROLLOUT_PREFIX) :] in rollout_owners:
            trajectories.add(rollout_owners[shown[len(ROLLOUT_PREFIX) :]])
    return trajectories


@dataclass(frozen=True)
class _Selected:
    """Rollouts a build uses (with ``_replay``, their replay id) and what the selection left out."""

    rows: pl.DataFrame
    unrestored: int
    """Left out as unrestored (``Rollout.unrestored``)."""
    failures: dict[str, int]
    """Left out as sandbox failures, by kind (``Observation.sandbox_failure``)."""
    mismatched: pl.DataFrame
    """Left out for fidelity mismatches (:func:`mark_untrusted`): ``replay_id``, ``trajectory_id``, ``tool_name``,
    ``rollouts``."""


def _no_repeats(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    return frame
