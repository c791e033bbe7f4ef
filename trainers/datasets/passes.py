"""The passes of a grouped build: each group of trajectories is read once and feeds every kind that uses it.

A build writes each kind's rows as Parquet parts (:class:`~ee_middleware.trainers.datasets.build.PartWriter`),
in the order one pass over the whole source gives. Two orders of trajectories are read:

* **sorted ids**: IWM's rollout rows (rollouts are read sorted by trajectory);
* **storage order**: IL's rows, SR's rows and IWM's expert-step rows. One pass feeds all three: the
  group is read once (with its rollouts only when SR is built) and each kind builds and writes its
  part from it before the next group is read, so memory holds one group and one kind's rows at a time.

IWM's rollout pass runs first, since its rows come before the expert steps' in ``iwm.parquet``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import polars as pl

from ee_middleware.replay.paused_turns import paused_turn_steps
from ee_middleware.trainers.datasets.il import build_il, malformed_calls, unoffered_calls, unprompted_turns
from ee_middleware.trainers.datasets.iwm import (
    MEDIA_SIZE_REMOVED,
    REPEATS_SCHEMA,
    IWMOptions,
    iwm_frame,
    iwm_rows,
    kept_errors,
    without_repeats,
)
from ee_middleware.trainers.datasets.source import (
    GROUNDED_ON_HELD_OUT,
    DatasetSource,
    SourceIndex,
    SourceReader,
    paused_expert_counts,
    taught_steps,
)
from ee_middleware.trainers.datasets.sr import SRBuilder, SROptions
from ee_middleware.trainers.datasets.teachers import Teacher

if TYPE_CHECKING:
    from ee_middleware.trainers.datasets.build import PartWriter


class KindWriter:
    """One kind's rows, fed a group of trajectories at a time in storage order (:meth:`add`)."""

    reads_storage_order = True
    """Whether the storage-order pass feeds it."""
    needs_rollouts = False
    """Whether :meth:`add` reads the groups' rollouts."""

    def __init__(self, parts: PartWriter) -> None:
        self.parts = parts

    def add(self, source: DatasetSource) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """Write what is left; what ``datasets.json`` records of this kind besides the common fields."""
        return {}


class ILWriter(KindWriter):
    def __init__(self, parts: PartWriter) -> None:
        super().__init__(parts)
        self.malformed_calls = 0
        self.unoffered_calls = 0
        self.unprompted_turns = 0
        self.awaiting_review = 0

    def add(self, source: DatasetSource) -> None:
        self.malformed_calls += malformed_calls(source)
        self.unoffered_calls += unoffered_calls(source)
        self.unprompted_turns += unprompted_turns(source)
        self.awaiting_review += taught_steps(source)[1]
        self.parts.write(build_il(source))

    def finish(self) -> dict[str, Any]:
        return {
            "malformed_calls_left_out": self.malformed_calls,
            "unoffered_calls_left_out": self.unoffered_calls,
            "turns_without_input_left_out": self.unprompted_turns,
            "calls_awaiting_review_left_out": self.awaiting_review,
        }


class SRWriter(KindWriter):
    needs_rollouts = True

    def __init__(
        self, parts: PartWriter, teacher: Teacher, options: SROptions, index: SourceIndex, on_progress: Callable[[int, int], None] | None
    ) -> None:
        super().__init__(parts)
        self.teacher = teacher
        self.total = index.steps.filter(pl.col("action_kind") == "tool_call").height
        self.done = 0
        self.on_progress = on_progress
        self.builder = SRBuilder(teacher, options, on_batch=self._tick)
        self.no_rollouts = no_rollouts_reason(index) if index.rollouts.is_empty() else None

    def _tick(self, n: int) -> None:
        self.done += n
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def add(self, source: DatasetSource) -> None:
        self.builder.add(source)
        self.parts.write(self.builder.take())

    def finish(self) -> dict[str, Any]:
        self.parts.write(self.builder.finish())
        report = self.builder.report
        extra = {"teacher": self.teacher.name, "states": report.states, "dropped": dict(report.dropped), "flagged": dict(report.flagged)}
        extra["same_outcome_left_out"] = report.same_outcome_left_out  # rollouts shown as no alternative: the call's own outcome
        if self.no_rollouts is not None:
            extra["warning"] = f"{self.no_rollouts}; SR needs replayed alternatives, so it has no rows"
        return extra


def no_rollouts_reason(index: SourceIndex) -> str:
    """Why a build has no rollouts to use: its trajectories call no tool, the settings left out the store's, or none
    were replayed."""
    if index.steps.filter(pl.col("action_kind") == "tool_call").is_empty():
        # replay skips such trajectories: telling the user to run it would send them to a job that does nothing
        return "no rollouts: no trajectory of this build calls a tool, so replay has no state to branch from (IL rows only)"
    synthetic, others = index.filtered_out.get("synthetic", 0), index.filtered_out.get("other_replays", 0)
    reasons = []
    if synthetic:
        reasons.append(f"{synthetic} synthetic (experience-model) rollout(s) left out: --include-synthetic uses them")
    if others:
        reasons.append(f"{others} rollout(s) of other replays left out by --replay-id: `ee replay list` shows the replay ids")
    grounded = index.filtered_out.get(GROUNDED_ON_HELD_OUT, 0)
    if grounded:
        reasons.append(
            f"{grounded} synthetic (experience-model) rollout(s) left out: their experience model was shown real transitions "
            "of held-out trajectories"
        )
    mismatched = int(index.fidelity_left_out["rollouts"].sum())
    if mismatched:
        reasons.append(
            f"{mismatched} rollout(s) of replays that found fidelity mismatches left out: fix the sandbox and replay again, "
            "or --include-fidelity-mismatches uses them"
        )
    return "no rollouts: " + ("; ".join(reasons) if reasons else "run `ee replay run` first")


class IWMWriter(KindWriter):
    """IWM rows: the rollouts' (:meth:`add_rollouts`, trajectories sorted), then the expert steps'
    (:meth:`add`, storage order); with the error cap active, the rows without an error, then the error
    rows it keeps (chosen from counts taken on the keys, before any row is built). ``repeats``: the rollouts that
    repeat another replay's (:func:`~ee_middleware.trainers.datasets.iwm.find_repeated_rollouts`), left out before
    the cap counts, as are the states after a paused run's call awaiting review and the copies of its turn's calls a
    resumed run holds (see :mod:`~ee_middleware.trainers.datasets.iwm`)."""

    def __init__(self, parts: PartWriter, index: SourceIndex, options: IWMOptions, repeats: pl.DataFrame | None = None) -> None:
        super().__init__(parts)
        self.options = options
        self.reads_storage_order = options.include_expert_steps
        self.extra: dict[str, Any] = {}
        if index.rollouts.is_empty():
            self.extra["warning"] = f"{no_rollouts_reason(index)}; IWM has expert steps only"
        self.repeats = repeats if repeats is not None else pl.DataFrame(schema=REPEATS_SCHEMA)
        steps = index.steps.select(
            "trajectory_id", pl.col("index").alias("step_index"), "action_kind", "has_observation", "observation_is_error"
        )
        rollouts = index.rollouts.join(self.repeats.select("id"), on="id", how="anti", maintain_order="left")
        # as iwm_rows leaves them out: the rows the cap counts are the rows written. Of the whole source, as a paused
        # run's copy of a call is left out only where a later trajectory of its thread holds it, in any group.
        self.paused = paused_turn_steps(index.trajectories, index.steps, pl.col("has_observation"))
        taught = rollouts.join(self.paused.filter(pl.col("after")), on=["trajectory_id", "step_index"], how="anti")
        self.after_review = rollouts.height - taught.height
        flags = [taught.join(steps, on=["trajectory_id", "step_index"], how="semi")["is_error"]]
        self.expert_left_out: dict[str, int] = {}
        if options.include_expert_steps:
            expert = steps.filter((pl.col("action_kind") == "tool_call") & pl.col("has_observation"))
            kept = expert.join(self.paused, on=["trajectory_id", "step_index"], how="anti")
            self.expert_left_out = paused_expert_counts(self.paused, expert)
            flags.append(kept["observation_is_error"].fill_null(False))
        is_error = pl.concat(flags)
        self.keep = kept_errors(int((~is_error).sum()), int(is_error.sum()), options.max_error_share, options.seed)
        self.keep_series = pl.Series(self.keep or [], dtype=pl.Int64).implode()
        self.errors_seen = self.errors = self.non_null = self.truncated = self.media_sizes = 0

    def add_rollouts(self, source: DatasetSource) -> None:
        source = without_repeats(source, self.repeats)
        self._write(iwm_rows(source, self.options, rollouts=True, expert=False, paused=self.paused), source.source_hash)

    def add(self, source: DatasetSource) -> None:
        self._write(iwm_rows(source, self.options, rollouts=False, expert=True, paused=self.paused), source.source_hash)

    def _write(self, rows: pl.DataFrame, source_hash: str) -> None:
        if self.keep is None:
            chosen = [rows]
            written = [iwm_frame(rows, source_hash)]
            self.parts.write(written[0])
        else:
            error_rows = rows.filter(pl.col("is_error")).with_row_index("_n", offset=self.errors_seen)
            self.errors_seen += error_rows.height
            chosen = [rows.filter(~pl.col("is_error")), error_rows.filter(pl.col("_n").is_in(self.keep_series)).drop("_n")]
            written = [iwm_frame(chosen[0], source_hash), iwm_frame(chosen[1], source_hash)]
            self.parts.write(written[0])
            self.parts.write(written[1], tail=True)
        self.media_sizes += sum(int(frame[MEDIA_SIZE_REMOVED].sum()) for frame in chosen)
        for frame in written:
            self.errors += int(frame["is_error"].sum())
            self.non_null += frame.height - frame["is_error"].null_count()
            self.truncated += int((frame["observation_truncated_chars"] > 0).sum())

    def finish(self) -> dict[str, Any]:
        share = round(self.errors / self.non_null, 3) if self.non_null else 0.0
        left_out = self.errors_seen - len(self.keep) if self.keep is not None else 0
        media = {"media_sizes_left_out": self.media_sizes} if self.media_sizes else {}
        # only where the source holds a paused run: other builds' summaries are as they were
        paused = {"rollouts_after_call_awaiting_review_left_out": self.after_review} if self.after_review else {}
        paused |= self.expert_left_out
        return {
            **self.extra,
            "error_share": share,
            "errors_left_out": left_out,
            "repeats_left_out": self.repeats.height,
            **paused,
            "truncated_rows": self.truncated,
            **media,
        }


def run_pass(
    reader: SourceReader,
    index: SourceIndex,
    order: list[str],
    budget_bytes: int,
    feeds: Mapping[str, Callable[[DatasetSource], None]],
    seconds: dict[str, float],
    *,
    rollouts: bool,
) -> None:
    """Read ``order`` a group of about ``budget_bytes`` of prompt text at a time (with the rollouts when
    ``rollouts``) and give each group to every feed; each kind's ``seconds`` gain its feed's time and an
    equal share of the reading."""
    if not feeds:
        return
    for ids in index.groups(order, budget_bytes):
        started = time.perf_counter()
        source = reader.load(ids, index.source_hash, rollouts=rollouts)
        read = (time.perf_counter() - started) / len(feeds)
        for kind, feed in feeds.items():
            started = time.perf_counter()
            feed(source)
            seconds[kind] += read + time.perf_counter() - started
