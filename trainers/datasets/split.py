"""Held-out splits that cannot leak into training: by units of trajectories, never by row.

What leaks. A held-out trajectory's rows are its states and its expert targets (the calls and answers it made, the
observations they returned). Two other kinds of trajectory would carry those into training:

- a **later run of its thread** (conversation): the thread's state holds every earlier run's messages, so each prompt
  of a later run contains the held-out run's targets verbatim (as does a run resumed after a human review, or a
  retried attempt on the same thread);
- a run of the **same task** (the user's request, whitespace and case aside) on another thread: its rows are the
  held-out examples again, up to call ids;
- a **variant** of its task: a rollout on a task a model wrote from it (``source = curriculum``, ``ee curriculum run``;
  its environment reference names the parent trajectory, :data:`~ee_middleware.replay.curriculum.PARENT_KEY`): the same
  world and tools, the request reworded, the very task the held-out run is evaluated on.

An earlier run of a held-out run's thread leaks nothing: the held-out run's prompts contain its messages (the model
is evaluated on continuing a conversation it may have been trained on, as in production), but none of the held-out
targets are in it.

So the split works on **units**: trajectories linked by a shared thread id, a shared normalised task or a variant's
parent, transitively, drawn over every trajectory the store holds, whatever its review status and app (a trajectory awaiting review links
its thread and task as it will when approved: approving or rejecting one never moves another across the split).

- The **seeded share** picks units: a unit is held out when its earliest trajectory (by ``started_at``, then id) falls
  in the share (:func:`in_share` of that trajectory's id, with the seed), and all of it goes to one side. A night's new
  trajectories start after the unit's earliest one, so they join its side and move nothing; a unit of one trajectory
  has the side its id always had. Only two things can move a unit: a trajectory recorded later that started before
  all of it (a backfilled import of older traces), and a trajectory that links two units (a run on one unit's thread
  asking the other's task): the merged unit takes the side of the earlier of the two.
- **ids, app and time rules** hold out the trajectories they name and every trajectory that would carry their targets
  into training: the runs of the same task (each way), the later runs of the thread (from the run held out on,
  runs that started at the same time included, and a run that started earlier by its clock but whose messages hold
  the held-out run's question and answer, each a whole message: recorded on another worker whose clock read behind) and the variants of its
  task, transitively. The earlier runs of the
  thread stay in training: ``--heldout-after`` still holds out the future of a conversation, not its past; and so does a
  variant's parent when the variant alone is named (the variant's rollout is not in it). What was added, and why, is
  :attr:`Split.added`.

Held-out dataset files carry ``ee.split = heldout`` in their Parquet metadata, and the trainer refuses them wherever
they are copied.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.errors import ConfigError, TrajectoryNotFoundError
from ee_middleware.replay.curriculum import CURRICULUM_SOURCE, parent_trajectory_id

SPLIT_METADATA_KEY = "ee.split"
HELDOUT = "heldout"
HELDOUT_DIR = "heldout"

UNIT_COLUMNS = ("id", "app", "thread_id", "task", "started_at", "ended_at", "trace_id", "final_answer")
"""The columns of the trajectories table the units are drawn from (:func:`recorded_units`), with ``parent``: the
trajectory a curriculum trajectory's task is a variant of (:func:`curriculum_parents`), and ``nested_in``: the run whose
tool invoked it (:func:`nested_runs`; both null for the others)."""

SAME_TASK = "same_task"
"""Why a trajectory was added to the held-out side: it asks a held-out trajectory's task (its rows repeat held-out examples)."""
LATER_IN_THREAD = "later_in_thread"
"""Why a trajectory was added to the held-out side: a later run of a held-out trajectory's thread (its prompts hold that run's
messages)."""
NESTED_RUN = "nested_run"
"""Why a trajectory was added to the held-out side: a run invoked inside a held-out run's tool, or the run whose tool
invoked a held-out one (an agent as a tool, each stored as a run of its own: :func:`nested_runs`): the outer run's tool
result is the inner run's answer, and the inner run's task the outer run's call."""
VARIANT_OF_TASK = "variant_of_task"
"""Why a trajectory was added to the held-out side: a rollout on a variant of a held-out trajectory's task (a curriculum
trajectory whose parent it is: the same world and tools, the request reworded)."""

LARGE_UNIT_SHARE = 0.25
LARGE_UNIT_MIN = 10
"""A unit holding more than this share of the source's trajectories (and more than ``LARGE_UNIT_MIN``) is warned of."""

MAX_LISTED_ADDED = 20
"""Added trajectories ``datasets.json`` lists one by one, with why (the rest are counted)."""


@dataclass(frozen=True)
class UnitLinks:
    """What links the trajectories of one unit, counted over the source trajectories in it (over all its trajectories
    when no two source ones share a link): the thread id most of them ran on, the task most of them ask, and the
    curriculum trajectories in it rolled out on a variant of another's task."""

    thread: tuple[str, int, str] | None = None
    """The thread id shared by the most of them (two or more), how many, and the earliest of them."""
    threads_shared: int = 0
    """Thread ids shared by two or more of them."""
    task: tuple[int, str] | None = None
    """How many ask the task asked most often in the unit (two or more, whitespace and case aside), and the earliest."""
    tasks_shared: int = 0
    """Tasks asked by two or more of them."""
    variants: int = 0
    """Curriculum trajectories linked to the trajectory whose task theirs is a variant of."""

    def describe(self) -> dict[str, Any]:
        """``datasets.json``'s ``split.units.largest.linked_by``."""
        thread = self.thread
        return {
            "thread": {"thread_id": thread[0], "trajectories": thread[1], "example": thread[2], "threads_shared": self.threads_shared}
            if thread
            else None,
            "task": {"trajectories": self.task[0], "example": self.task[1], "tasks_shared": self.tasks_shared} if self.task else None,
            "variants": self.variants,
        }

    def explain(self) -> str:
        """Sentences naming what links the unit, the most frequent link first, each with an example and the fix."""
        parts: list[tuple[int, str]] = []
        if self.thread is not None:
            thread_id, count, example = self.thread
            shown = thread_id if len(thread_id) <= 60 else thread_id[:57] + "..."
            others = f" ({self.threads_shared - 1} other thread ids are shared too)" if self.threads_shared > 1 else ""
            parts.append(
                (
                    count,
                    f"{count} of them ran on one thread id, {shown!r} (e.g. {example}; `ee traces show ID`){others}: a thread's "
                    "later runs carry its earlier runs' messages, so one thread id reused for separate conversations (as a "
                    "fixed thread_id such as '1' in a LangGraph config does) links them all. Give each conversation its own "
                    "thread id when recording (config={'configurable': {'thread_id': str(uuid.uuid4())}} per conversation)",
                )
            )
        if self.task is not None:
            count, example = self.task
            others = f" ({self.tasks_shared - 1} other tasks are asked more than once too)" if self.tasks_shared > 1 else ""
            parts.append(
                (
                    count,
                    f"the task asked most often in it is asked by {count} trajectories (e.g. {example}; `ee traces show ID`)"
                    f"{others}: runs of one task hold the same examples, so they stay together; a request many conversations "
                    "open with (a greeting) links them all",
                )
            )
        if self.variants:
            parts.append(
                (
                    self.variants,
                    f"{self.variants} of them are curriculum rollouts, each linked to the trajectory whose task theirs is a variant of",
                )
            )
        parts.sort(key=lambda part: -part[0])
        return "; ".join(text for _, text in parts) or "no thread id or task is shared by two of them"


@dataclass(frozen=True)
class SplitRule:
    """Which trajectories are held out: any trajectory matched by any of the set rules, with its unit (see the module
    docstring)."""

    share: float = 0.0
    seed: int = 0
    ids: tuple[str, ...] = ()
    app: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.share < 1:
            raise ConfigError(f"heldout_share must be in [0, 1), got {self.share}")

    @property
    def active(self) -> bool:
        return bool(self.share or self.ids or self.app or self.started_after or self.started_before)

    def describe(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "seed": self.seed,
            "ids": len(self.ids),
            "app": self.app,
            "started_after": self.started_after.isoformat() if self.started_after else None,
            "started_before": self.started_before.isoformat() if self.started_before else None,
            "unit": "thread_or_task",
        }

    def matches(self, app: str | None, started: datetime | None) -> bool:
        """Whether the app or time rules name a trajectory of ``app`` started at ``started`` (the ids rule names ids, the
        share units)."""
        return (
            (self.app is not None and app == self.app)
            or (self.started_after is not None and started is not None and _aware(started) >= _aware(self.started_after))
            or (self.started_before is not None and started is not None and _aware(started) < _aware(self.started_before))
        )


@dataclass(frozen=True)
class Split:
    """Which of the source's trajectories are held out, and why (:func:`split_trajectories`)."""

    heldout: frozenset[str]
    train: frozenset[str]
    matched: frozenset[str]
    """Held out by the rule itself: named by the ids, app or time rules, or in a unit the share picked."""
    added: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Held out only to keep a held-out trajectory's targets out of training: id -> (:data:`SAME_TASK`,
    :data:`LATER_IN_THREAD` or :data:`VARIANT_OF_TASK`, the held-out trajectory it shares the task or thread with, or
    whose task it is a variant of)."""
    units: int = 0
    """Units (trajectories linked by a thread, a task or a variant's parent) with a trajectory in the source."""
    heldout_units: int = 0
    """Units whose source trajectories are all held out."""
    partly_heldout_units: int = 0
    """Units with trajectories on both sides: by an ids, app or time rule, a thread's earlier runs in training and its
    later runs held out (never a task on both sides)."""
    largest_unit: tuple[int, str | None] = (0, None)
    """The most source trajectories one unit holds, and that unit's earliest trajectory."""
    most_asked_task: tuple[int, str | None] = (0, None)
    """The most source trajectories asking one task, and the earliest of them."""
    largest_unit_links: UnitLinks = field(default_factory=UnitLinks)
    """What links the largest unit's trajectories (:class:`UnitLinks`)."""

    def describe(self) -> dict[str, Any]:
        """What ``datasets.json``'s ``split`` says of the units and of the trajectories added (beside the id lists)."""
        reasons = Counter(reason for reason, _ in self.added.values())
        listed = sorted(self.added.items())[:MAX_LISTED_ADDED]
        size, earliest = self.largest_unit
        units: dict[str, Any] = {
            "total": self.units,
            "heldout": self.heldout_units,
            "partly_heldout": self.partly_heldout_units,
            "largest": {"trajectories": size, "earliest": earliest, "linked_by": self.largest_unit_links.describe()},
            "rule": (
                "trajectories sharing a thread id or a task (whitespace and case aside), and curriculum trajectories with "
                "the trajectory whose task theirs is a variant of, transitively, over every trajectory the store holds; "
                "the share holds out a unit when its earliest trajectory's id falls in it"
            ),
        }
        trajectories = len(self.heldout) + len(self.train)
        if size > max(LARGE_UNIT_MIN, LARGE_UNIT_SHARE * trajectories):
            units["warning"] = (
                f"one unit holds {size} of the {trajectories} trajectories (its earliest: {earliest}): linked by threads "
                "and tasks, they go to one side together, and a held-out share holds out all of them or none. What links "
                f"them: {self.largest_unit_links.explain()}"
            )
        return {
            "matched_by_rule": len(self.matched),
            "added": {
                "trajectories": len(self.added),
                SAME_TASK: reasons.get(SAME_TASK, 0),
                LATER_IN_THREAD: reasons.get(LATER_IN_THREAD, 0),
                NESTED_RUN: reasons.get(NESTED_RUN, 0),
                VARIANT_OF_TASK: reasons.get(VARIANT_OF_TASK, 0),
                "listed": [{"id": i, "reason": reason, "via": via} for i, (reason, via) in listed],
                "not_listed": max(0, len(self.added) - MAX_LISTED_ADDED),
                "why": (
                    "held out with a held-out trajectory (via) so that no training row holds its targets: same_task asks "
                    "the same task (whitespace and case aside), so its rows would repeat held-out examples; later_in_thread "
                    "is a later run of its thread, whose prompts hold the held-out run's messages; nested_run is a run "
                    "within it or holding it (an agent invoked inside a tool: the outer run's tool result is the inner "
                    "run's answer, the inner run's task the outer run's call); variant_of_task is a "
                    "curriculum rollout on a task a model wrote from the held-out one's (same world and tools). An earlier "
                    "run of a held-out run's thread, and the parent of a held-out variant, stay in training (they hold none "
                    "of the held-out targets)"
                ),
            },
            "units": units,
        }


def in_share(trajectory_id: str, share: float, seed: int) -> bool:
    """Whether ``trajectory_id`` falls in the seeded ``share``: stable as the store grows. The share holds out a unit
    when its earliest trajectory's id falls in it."""
    digest = hashlib.sha256(f"ee-heldout:{seed}:{trajectory_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def heldout_ids(trajectories: pl.DataFrame, rule: SplitRule, recorded: pl.DataFrame | None = None) -> set[str]:
    """Ids of ``trajectories`` (columns ``id``, ``app``, ``started_at``; ``thread_id`` and ``task`` where known) that
    ``rule`` holds out, with their units (drawn over ``recorded``, default ``trajectories``; see
    :func:`split_trajectories`)."""
    return set(split_trajectories(trajectories, rule, recorded).heldout)


def split_trajectories(source: pl.DataFrame, rule: SplitRule, recorded: pl.DataFrame | None = None, store: Any = None) -> Split:
    """Split ``source`` (the trajectories datasets are built from: ``id``, ``app``, ``started_at``, and ``thread_id`` and
    ``task`` where known) by ``rule``, keeping every unit's held-out targets out of training (see the module docstring).
    ``recorded``: every trajectory the store holds (:data:`UNIT_COLUMNS`, any review status: :func:`recorded_units`),
    which the units are drawn over; default ``source``. ``store``: where the messages of a held-out run's thread are
    read, to find its later runs whose clocks read earlier (see the module docstring); without it, by time alone."""
    graph = _Units(_with_source(recorded, source) if recorded is not None else _unit_columns(source))
    source_ids = source["id"].unique(maintain_order=True).to_list()
    nodes = [graph.index[i] for i in source_ids]
    seeds: set[int] = set()
    if rule.share:
        picked = {root for root, first in graph.earliest.items() if in_share(graph.ids[first], rule.share, rule.seed)}
        seeds.update(n for n in range(len(graph.ids)) if graph.find(n) in picked)
    listed = set(rule.ids)
    for trajectory_id, app, started in source.select("id", "app", "started_at").iter_rows():
        if trajectory_id in listed or rule.matches(app, started):
            seeds.add(graph.index[trajectory_id])
    in_source = set(nodes)
    matched = {graph.ids[n] for n in seeds & in_source}
    reached = graph.close(seeds, (lambda ids: dict(_messages_of(store, ids))) if store is not None else None)
    heldout = {graph.ids[n] for n in nodes if n in reached}
    added: dict[str, tuple[str, str]] = {}
    for n in nodes:
        why = reached.get(n)
        if why is not None and n not in seeds:
            reason, via = why
            added[graph.ids[n]] = (reason, graph.ids[via])
    sides: dict[int, set[bool]] = {}
    for n in nodes:
        sides.setdefault(graph.find(n), set()).add(n in reached)
    sizes = Counter(graph.find(n) for n in nodes)
    largest = max(sizes.items(), key=lambda item: (item[1], -item[0]), default=None)
    return Split(
        heldout=frozenset(heldout),
        train=frozenset(source_ids) - frozenset(heldout),
        matched=frozenset(matched),
        added=added,
        units=len(sides),
        heldout_units=sum(1 for s in sides.values() if s == {True}),
        partly_heldout_units=sum(1 for s in sides.values() if len(s) == 2),
        largest_unit=(largest[1], graph.ids[graph.earliest[largest[0]]]) if largest is not None else (0, None),
        most_asked_task=graph.most_asked(in_source),
        largest_unit_links=graph.links(largest[0], in_source) if largest is not None else UnitLinks(),
    )


def recorded_units(store: Any) -> pl.DataFrame:
    """:data:`UNIT_COLUMNS`, ``parent`` and ``nested_in`` of every trajectory ``store`` holds (any review status, any
    app): what the units are drawn over. Read without steps or rollouts where the store can (``trajectory_index``), and
    messages only of the runs that may have invoked another (:func:`nested_runs`)."""
    from ee_middleware.store.registry import trajectory_columns

    frame = trajectory_columns(store, list(UNIT_COLUMNS))
    units = _unit_columns(frame).drop("parent", "nested_in")
    units = units.join(curriculum_parents(store), on="id", how="left", maintain_order="left")
    return units.join(nested_runs(store, units), on="id", how="left", maintain_order="left")


NESTED_SLACK_US = 1_000_000
"""How far (microseconds) a nested run's start or end may fall outside its outer run's: clocks read apart, rounding."""


def nested_runs(store: Any, units: pl.DataFrame) -> pl.DataFrame:
    """``id`` and ``nested_in`` of the runs invoked inside another run's tool (an agent as a tool, stored as a run of its
    own, often on a thread of its own): of one trace, within the other's time (give or take :data:`NESTED_SLACK_US`),
    and whose answer the outer run's messages hold (the tool's result). Concurrent runs of one trace (a batch under one
    span) are not nested: their answers are not each other's messages. Only the candidates' messages are read."""
    frame = units.filter(pl.col("trace_id").is_not_null() & (pl.col("trace_id") != "") & pl.col("ended_at").is_not_null())
    frame = frame.with_columns(_micros(frame["started_at"]).alias("start"), _micros(frame["ended_at"]).alias("end"))
    candidates: list[tuple[str, str, str]] = []  # (inner, outer, inner's answer)
    for ids, starts, ends, answers in (
        frame.sort("start", "id")
        .group_by("trace_id", maintain_order=True)
        .agg("id", "start", "end", "final_answer")
        .select("id", "start", "end", "final_answer")
        .iter_rows()
    ):
        if len(ids) < 2:
            continue
        running: list[int] = []  # by start: the runs still running when the next one starts
        for i in range(len(ids)):
            running = [j for j in running if ends[j] + NESTED_SLACK_US >= starts[i]]
            for j in running:  # i within j; or, started at about the same time, j within i
                if ends[i] <= ends[j] + NESTED_SLACK_US and (answer := (answers[i] or "").strip()):
                    candidates.append((ids[i], ids[j], answer))
                if (
                    starts[i] - starts[j] <= NESTED_SLACK_US
                    and ends[j] <= ends[i] + NESTED_SLACK_US
                    and (answer := (answers[j] or "").strip())
                ):
                    candidates.append((ids[j], ids[i], answer))
            running.append(i)
    empty = pl.DataFrame(schema={"id": pl.String, "nested_in": pl.String})
    if not candidates:
        return empty
    outers = sorted({outer for _, outer, _ in candidates})
    texts = dict(_messages_of(store, outers))
    found: dict[str, str] = {}
    for inner, outer, answer in candidates:
        text = texts.get(outer) or ""
        if inner not in found and (answer in text or json.dumps(answer, ensure_ascii=False)[1:-1] in text):
            found[inner] = outer
    return pl.DataFrame({"id": list(found), "nested_in": list(found.values())}, schema=empty.schema) if found else empty


def _messages_of(store: Any, ids: list[str]) -> list[tuple[str, str]]:
    """(id, messages as JSON text) of trajectories ``ids``, read without steps where the store can (``scan``)."""
    if hasattr(store, "scan"):
        wanted = pl.Series(ids, dtype=pl.String).implode()
        rows = store.scan("trajectories").filter(pl.col("id").is_in(wanted)).select("id", "messages_json").collect()
        return [(i, text or "") for i, text in rows.iter_rows()]
    frame = store.trajectories()
    if "messages_json" in frame.columns:
        return [(i, text or "") for i, text in frame.filter(pl.col("id").is_in(ids)).select("id", "messages_json").iter_rows()]
    return [(t.id, json.dumps(t.messages, ensure_ascii=False)) for t in store.iter_trajectories() if t.id in set(ids)]


def curriculum_parents(store: Any) -> pl.DataFrame:
    """``id`` and ``parent`` of the curriculum trajectories ``store`` holds whose environment reference names the trajectory
    their task is a variant of (:func:`~ee_middleware.replay.curriculum.parent_trajectory_id`). Only their environments are
    read where the store can (``scan``)."""
    pairs: dict[str, str] = {}
    if hasattr(store, "scan"):
        rows = store.scan("trajectories").filter(pl.col("source") == CURRICULUM_SOURCE).select("id", "environment_json").collect()
    else:
        frame = store.trajectories()
        has_columns = {"source", "environment_json"} <= set(frame.columns)
        rows = frame.filter(pl.col("source") == CURRICULUM_SOURCE).select("id", "environment_json") if has_columns else None
    for trajectory_id, environment in rows.iter_rows() if rows is not None else ():
        try:
            parent = parent_trajectory_id(json.loads(environment)) if environment else None
        except ValueError:
            parent = None
        if parent is not None and parent != trajectory_id:
            pairs[trajectory_id] = parent
    return pl.DataFrame({"id": list(pairs), "parent": list(pairs.values())}, schema={"id": pl.String, "parent": pl.String})


def read_id_list(path: Path) -> tuple[str, ...]:
    """Trajectory ids (or unique prefixes of them, as ``ee traces list`` prints them) from a UTF-8 file, one per line
    (a byte-order mark, blank lines and ``#`` comments ignored, a comment after an id too: ``3f2a9c  # the long one``).
    :func:`resolve_listed_ids` makes them full ids. A file with no id is a :class:`ConfigError`: holding out nothing
    would train on every trajectory, the ones meant to be held out too."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"Cannot read the held-out id list {path}: {exc}. Give a UTF-8 text file with one trajectory id per line."
        ) from exc
    ids = tuple(listed for line in lines if (listed := _INLINE_COMMENT.split(line, maxsplit=1)[0].strip()) and not listed.startswith("#"))
    if not ids:
        raise ConfigError(
            f"The held-out id list {path} holds no trajectory id (only blank lines or # comments): holding out nothing would "
            "train on every trajectory, those meant to be held out too. Put one id a line (`ee traces list` prints them), "
            "or build without --heldout-ids (heldout_ids in [datasets])."
        )
    return ids


_INLINE_COMMENT = re.compile(r"\s+#")
"""Where a comment after an id starts (blanks, then ``#``): an id holds no blank, so none is cut."""


def resolve_listed_ids(rule: SplitRule, store: Any, recorded: pl.DataFrame, source: Path | None = None) -> SplitRule:
    """``rule`` with its listed ids made full trajectory ids: an id the store holds as it is, or the one id it is the start
    of (as ``ee traces approve`` takes them: the store's ``resolve_id``). ``recorded``: every trajectory the store holds
    (:func:`recorded_units`). A listed id that matches no trajectory, or is the start of several, is a
    :class:`~ee_middleware.errors.ConfigError` naming each such id (and ``source``, the file it was read from): holding out
    nothing for it would train on the very trajectory meant to be held out."""
    if not rule.ids:
        return rule
    known = set(recorded["id"].to_list())
    resolved: list[str] = []
    problems: list[str] = []
    for listed in rule.ids:
        if listed in known:
            resolved.append(listed)
            continue
        try:
            resolved.append(store.resolve_id(listed))
        except TrajectoryNotFoundError:
            starting = sum(1 for i in known if i.startswith(listed))
            problems.append(
                f"{listed!r} is the start of {starting} trajectory ids" if starting > 1 else f"{listed!r} matches no trajectory"
            )
    if problems:
        where = f"The held-out id list {source}" if source is not None else "The held-out ids"
        shown = "; ".join(problems[:MAX_LISTED_ADDED]) + (
            f"; and {len(problems) - MAX_LISTED_ADDED} more" if len(problems) > MAX_LISTED_ADDED else ""
        )
        raise ConfigError(
            f"{where} (--heldout-ids, heldout_ids) names {len(problems)} id(s) that hold out no trajectory of the store: {shown}. "
            "Give each trajectory's full id or a prefix of it that no other id starts with (ee traces list --json prints "
            "the full ids), or remove the line; nothing was built."
        )
    return replace(rule, ids=tuple(dict.fromkeys(resolved)))


def is_heldout_file(metadata: dict[str, Any] | None) -> bool:
    """Whether Parquet key-value metadata marks a held-out dataset file."""
    return bool(metadata) and metadata.get(SPLIT_METADATA_KEY) == HELDOUT


def normalised_task(task: pl.Expr) -> pl.Expr:
    """A task as units compare it: lower case, runs of whitespace as one space, no space at either end (empty: none)."""
    text = task.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text)


LAST = 2**62
"""The start, in microseconds, of a trajectory without one: after every other run of its thread."""


class _Units:
    """The trajectories as a graph: linked by a thread id, a normalised task or a variant's parent; components are the
    units."""

    def __init__(self, frame: pl.DataFrame) -> None:
        frame = frame.with_columns(
            pl.when(pl.col("thread_id") == "").then(None).otherwise(pl.col("thread_id")).alias("thread_id"),
            pl.col("task").alias("raw_task"),
            normalised_task(pl.col("task")).alias("task"),
            _micros(frame["started_at"]).fill_null(LAST).alias("start"),
        ).with_row_index("n")
        self.ids: list[str] = frame["id"].to_list()
        self.index = {trajectory_id: n for n, trajectory_id in enumerate(self.ids)}
        self.said: list[tuple[str, ...]] = [  # what a later run of its thread holds of each run: its question and answer
            tuple(text.strip() for text in (task, answer) if text and len(text.strip()) >= MIN_SAID_CHARS)
            for task, answer in zip(frame["raw_task"].to_list(), frame["final_answer"].to_list(), strict=True)
        ]
        self.start: list[int] = frame["start"].to_list()
        self.parent = list(range(len(self.ids)))
        ordered = frame.sort("start", "id")
        threads = ordered.filter(pl.col("thread_id").is_not_null()).group_by("thread_id", maintain_order=True).agg("n", "start")
        tasks = ordered.filter(pl.col("task").is_not_null()).group_by("task", maintain_order=True).agg("n")
        self.thread_of: dict[int, int] = {}
        self.threads: list[tuple[list[int], list[int]]] = []  # members by start, and their starts
        self.thread_ids: list[str] = []
        for thread_id, members, starts in threads.select("thread_id", "n", "start").iter_rows():
            for n in members:
                self.thread_of[n] = len(self.threads)
            self.threads.append((members, starts))
            self.thread_ids.append(thread_id)
        self.task_of: dict[int, int] = {}
        self.tasks: list[list[int]] = []
        for (members,) in tasks.select("n").iter_rows():
            for n in members:
                self.task_of[n] = len(self.tasks)
            self.tasks.append(members)
        for members in [m for m, _ in self.threads] + self.tasks:
            for n in members[1:]:
                self._union(members[0], n)
        self.nested: dict[int, list[int]] = {}  # a run -> the runs invoked in its tools, and the run that invoked it
        for n, outer in frame.select("n", "nested_in").filter(pl.col("nested_in").is_not_null()).iter_rows():
            o = self.index.get(outer)
            if o is not None and o != n:
                self.nested.setdefault(o, []).append(n)
                self.nested.setdefault(n, []).append(o)
                self._union(o, n)
        self.variants: dict[int, list[int]] = {}  # a trajectory -> the curriculum trajectories rolled out on variants of its task
        for n, parent in frame.select("n", "parent").filter(pl.col("parent").is_not_null()).iter_rows():
            p = self.index.get(parent)
            if p is not None and p != n:
                self.variants.setdefault(p, []).append(n)
                self._union(p, n)
        self.earliest: dict[int, int] = {}
        for n in ordered["n"].to_list():  # by start, then id: the first member seen is the earliest
            self.earliest.setdefault(self.find(n), n)

    def most_asked(self, among: set[int]) -> tuple[int, str | None]:
        """The most of ``among`` that ask one task, and the earliest of them."""
        best: tuple[int, str | None] = (0, None)
        for members in self.tasks:
            asking = [n for n in members if n in among]  # members are by start
            if len(asking) > best[0]:
                best = (len(asking), self.ids[asking[0]])
        return best

    def links(self, root: int, among: set[int]) -> UnitLinks:
        """What links the unit ``root`` (:class:`UnitLinks`), counted over its members in ``among`` (over all its
        members when no two of those share a thread, a task or a variant link)."""
        members = [n for n in range(len(self.ids)) if self.find(n) == root]
        in_variant = {n for children in self.variants.values() for n in children}
        for scope in ([n for n in members if n in among], members):
            chosen = set(scope)
            threads = Counter(self.thread_of[n] for n in scope if n in self.thread_of)
            tasks = Counter(self.task_of[n] for n in scope if n in self.task_of)
            shared_threads = [t for t, count in threads.items() if count > 1]
            shared_tasks = [t for t, count in tasks.items() if count > 1]
            variants = sum(1 for n in scope if n in in_variant)
            if not (shared_threads or shared_tasks or variants):
                continue
            thread = task = None
            if shared_threads:  # the most shared; of equals, the one whose first run is earliest (threads are by start)
                t = max(shared_threads, key=lambda t: (threads[t], -t))
                first = next(n for n in self.threads[t][0] if n in chosen)  # members are by start
                thread = (self.thread_ids[t], threads[t], self.ids[first])
            if shared_tasks:
                t = max(shared_tasks, key=lambda t: (tasks[t], -t))
                task = (tasks[t], self.ids[next(n for n in self.tasks[t] if n in chosen)])
            return UnitLinks(thread, len(shared_threads), task, len(shared_tasks), variants)
        return UnitLinks()

    def find(self, n: int) -> int:
        parent = self.parent
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def close(self, seeds: set[int], messages_of: Callable[[list[str]], dict[str, str]] | None = None) -> dict[int, tuple[str, int] | None]:
        """``seeds`` and every trajectory that would carry their targets into training: the runs of the same task, the
        runs of the thread from each one on, the variants of its task (transitively); each with why it was reached
        (``None`` for a seed). ``messages_of`` (ids -> their messages as JSON text): a run of the thread that started
        before one reached but whose messages hold its question and its answer is a later run too (:meth:`_holding`)."""
        reached: dict[int, tuple[str, int] | None] = dict.fromkeys(seeds)
        if messages_of is not None:  # each run's messages read once, however many held-out runs its thread has
            read, texts = messages_of, {}

            def messages_of(ids: list[str]) -> dict[str, str]:
                missing = [i for i in ids if i not in texts]
                if missing:
                    texts.update(dict.fromkeys(missing, ""))
                    texts.update(read(missing))
                return {i: texts[i] for i in ids}

        queue = sorted(seeds)
        if messages_of is not None:  # the seeds' threads' earlier runs read in one go (those reached later, as they come)
            messages_of(
                list(dict.fromkeys(self.ids[m] for n in seeds if self.said[n] for m in self._earlier_in_thread(n) if m not in seeds))
            )
        tasks_done: set[int] = set()
        thread_from: dict[int, int] = {}  # a thread's first position whose later runs are all reached
        while queue:
            n = queue.pop()
            task = self.task_of.get(n)
            if task is not None and task not in tasks_done:
                tasks_done.add(task)
                for other in self.tasks[task]:
                    if other not in reached:
                        reached[other] = (SAME_TASK, n)
                        queue.append(other)
            thread = self.thread_of.get(n)
            if thread is not None:
                members, starts = self.threads[thread]
                first = bisect_left(starts, self.start[n]) if self.start[n] != LAST else 0
                done = thread_from.get(thread, len(members))
                if first < done:
                    thread_from[thread] = first
                    for other in members[first:done]:
                        if other not in reached:
                            reached[other] = (LATER_IN_THREAD, n)
                            queue.append(other)
                earlier = [other for other in members[: thread_from.get(thread, len(members))] if other not in reached]
                for other in self._holding(n, earlier, messages_of) if messages_of is not None else ():
                    reached[other] = (LATER_IN_THREAD, n)
                    queue.append(other)
            for other in self.nested.get(n, ()):
                if other not in reached:
                    reached[other] = (NESTED_RUN, n)
                    queue.append(other)
            for other in self.variants.get(n, ()):
                if other not in reached:
                    reached[other] = (VARIANT_OF_TASK, n)
                    queue.append(other)
        return reached

    def _earlier_in_thread(self, n: int) -> list[int]:
        """The runs of ``n``'s thread that started before it (by their clocks)."""
        thread = self.thread_of.get(n)
        if thread is None or self.start[n] == LAST:
            return []
        members, starts = self.threads[thread]
        return members[: bisect_left(starts, self.start[n])]

    def _holding(self, n: int, candidates: list[int], messages_of: Callable[[list[str]], dict[str, str]]) -> list[int]:
        """Those of ``candidates`` (runs of ``n``'s thread that started before it, by their clocks) whose messages hold
        ``n``'s question and its answer, each a message of its own (a whole JSON string): runs after it whose clock read
        earlier (two workers' clocks apart, a backfilled import), whose prompts hold ``n``'s targets. A run that only
        repeats the answer (a stock "Done, your order is placed.") or asks a longer question holding ``n``'s is no
        match: both, whole, are what a later run's history holds. Messages are read only for the held-out runs' threads."""
        said = self.said[n]
        if not said or not candidates:
            return []
        texts = messages_of([self.ids[c] for c in candidates])
        wholes = [{json.dumps(text, ensure_ascii=False), json.dumps(text)} for text in said]
        return [c for c in candidates if all(any(form in (texts.get(self.ids[c]) or "") for form in forms) for forms in wholes)]


MIN_SAID_CHARS = 8
"""The shortest question or answer looked for in an earlier-clocked run's messages (:meth:`_Units._holding`): a shorter
one ("ok", "yes") turns up in runs it was never said in."""


def _unit_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame``'s :data:`UNIT_COLUMNS`, ``parent`` and ``nested_in`` (a missing one as nulls), one row per id."""
    columns = [
        pl.col(c).cast(pl.String) if c in frame.columns else pl.lit(None, dtype=pl.String).alias(c)
        for c in (*UNIT_COLUMNS, "parent", "nested_in")
        if c not in ("started_at", "ended_at")
    ]
    times = {
        name: _as_utc(frame[name] if name in frame.columns else pl.Series(name, [None] * frame.height)).alias(name)
        for name in ("started_at", "ended_at")
    }
    return frame.select(columns).with_columns(*times.values()).unique("id", keep="first", maintain_order=True)


def _with_source(recorded: pl.DataFrame, source: pl.DataFrame) -> pl.DataFrame:
    """``recorded``'s unit columns, and the source trajectories it does not hold (a trajectory stored since it was read)."""
    recorded = _unit_columns(recorded)
    missing = _unit_columns(source).filter(~pl.col("id").is_in(recorded["id"].implode()))
    return pl.concat([recorded, missing]) if missing.height else recorded


def _as_utc(started: pl.Series) -> pl.Series:
    if isinstance(started.dtype, pl.Datetime):
        return started.dt.replace_time_zone("UTC") if started.dtype.time_zone is None else started.dt.convert_time_zone("UTC")
    return started.cast(pl.Datetime("us", "UTC"))


def _micros(started: pl.Series) -> pl.Series:
    return _as_utc(started).dt.epoch("us")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
