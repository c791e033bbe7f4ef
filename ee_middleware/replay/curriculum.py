"""The curriculum (DreamGym's task generator): variants of the tasks whose outcome varies most.

Given a group of outcomes per task (an eval run's ``results.jsonl`` / ``results.parquet``: one row
per task and trial with ``success``), each task is scored by the variance of its outcome,
``p(1 - p)`` for success rate ``p``: highest for tasks the policy solves about half the time, zero
for tasks it always or never solves, which teach it nothing new. A trial the model server gave no
answer to (``no_answer``: down, timing out; ``server_refused``: its chat template failed on the
request) says nothing of the task and is left out of ``p`` (:func:`unanswered`), counted in
:attr:`TaskScore.unanswered`. The ``n`` variants asked for are allotted to the tasks in proportion to
their ``p(1 - p)`` (:func:`allot`): the highest-variance tasks get the most, a task whose share rounds
to nothing gets none. A model writes each variant: a new instruction for the same tools, the same
environment reference, the same app and the same system prompt. A variant is kept only when it
parses, differs from its parent (up to case and spacing) and every tool it names is one of the
parent's tool schemas; the others are counted by reason.

Tasks are matched to stored trajectories (their tool schemas and environment reference) by the
trajectory id equal to the task id (a ``traces:`` suite's task is the stored trajectory it was made
from), else by the environment's ``entry_id`` equal to the task id, else by the task text equal to
the first user message of the task's conversation; a task without a match cannot be validated and
is listed as unmatched.

Lineage: a variant names its parent (``parent``: the eval task and the stored trajectory it was matched to), and a
trajectory rolled out on it (``ee curriculum run``, ``source = curriculum``) keeps that in its environment reference
under :data:`PARENT_KEY` (:func:`with_parent`), so that a dataset build's held-out split keeps the variants of a
held-out task out of training (:mod:`ee_middleware.trainers.datasets.split`). A sandbox is reset with the environment
without it (:func:`world_environment`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.errors import ConfigError, ModelError
from ee_middleware.models.protocol import CUT_WHILE_REASONING, Sampling
from ee_middleware.records import ToolSchema, Trajectory, offered_tools, tool_schema_name

CURRICULUM_SOURCE = "curriculum"
"""``Trajectory.source`` of the trajectories rolled out on tasks a model wrote (``ee curriculum run``)."""

DEFAULT_APP = "curriculum"
"""The app a curriculum trajectory is stored under when its task names none (a tasks file written by hand, or by a
version before variants carried their parent's ``app``) and ``ee curriculum run --app`` gives none either."""

PARENT_KEY = "curriculum_parent"
"""The key of a curriculum trajectory's environment reference naming the task it is a variant of: ``{"trajectory_id": the
stored trajectory the variant was written from, "task_id": ..., "suite": ...}`` (the eval task's)."""


def with_parent(environment: dict[str, Any] | None, parent: dict[str, Any] | None) -> dict[str, Any] | None:
    """``environment`` (a variant's world reference) with its lineage: ``parent``'s ``trajectory_id``, ``task_id`` and
    ``suite`` under :data:`PARENT_KEY` (an earlier lineage replaced); ``environment`` unchanged without a parent."""
    lineage = {key: parent[key] for key in ("trajectory_id", "task_id", "suite") if isinstance(parent, dict) and parent.get(key)}
    if not lineage:
        return environment
    return {**(environment or {}), PARENT_KEY: lineage}


def world_environment(environment: dict[str, Any] | None) -> dict[str, Any] | None:
    """``environment`` without a curriculum trajectory's lineage: what a sandbox rebuilds the world from."""
    if not isinstance(environment, dict) or PARENT_KEY not in environment:
        return environment
    return {key: value for key, value in environment.items() if key != PARENT_KEY}


def parent_trajectory_id(environment: dict[str, Any] | None) -> str | None:
    """The stored trajectory a curriculum trajectory's task is a variant of (:data:`PARENT_KEY`), or ``None``."""
    lineage = environment.get(PARENT_KEY) if isinstance(environment, dict) else None
    parent = lineage.get("trajectory_id") if isinstance(lineage, dict) else None
    return parent if isinstance(parent, str) and parent else None


SYSTEM_PROMPT = (
    "You write training tasks for a tool-using agent. Given a task and the tools it may use, write ONE new task for the same "
    "tools and the same environment: a different goal or different details, solvable with those tools only. Answer with one "
    'JSON object and nothing else: {"instruction": "<the new task>", "tools": ["<tool names it needs>"]}'
)


def system_messages(trajectory: Trajectory) -> list[dict[str, Any]]:
    """The system (or developer) messages a trajectory's conversation starts with, as ``{"role", "content"}``: what its
    app prompted the model with (its first decision's history, else its messages), which a variant keeps so that the
    policy is rolled out, and trained, on the prompt production gives it."""
    first = min(trajectory.steps, key=lambda s: s.index).state if trajectory.steps else []
    out = []
    for message in first or trajectory.messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        out.append({"role": message["role"], "content": message.get("content") or ""})
    return out


@dataclass(frozen=True)
class TaskScore:
    """A task's outcome group: ``n`` answered trials, success rate ``p`` over them and its variance ``p(1 - p)``;
    ``unanswered``: its trials the model server gave no answer to (:func:`unanswered`), left out of ``n`` and ``p``."""

    suite: str
    task_id: str
    n: int
    p: float
    instruction: str
    unanswered: int = 0

    @property
    def variance(self) -> float:
        return self.p * (1 - self.p)


def allotment_key(suite: str, task_id: str, shared: Collection[str]) -> str:
    """How :attr:`Proposal.allotted` names a task: its id, or ``suite/id`` where tasks of several suites share the id
    (``shared``: :func:`ids_in_several_suites`)."""
    return f"{suite}/{task_id}" if task_id in shared else task_id


def ids_in_several_suites(tasks: Iterable[tuple[str, str]]) -> set[str]:
    """The task ids of ``tasks`` (``(suite, task id)`` pairs) that tasks of more than one suite have."""
    suites: dict[str, set[str]] = defaultdict(set)
    for suite, task_id in tasks:
        suites[task_id].add(suite)
    return {task_id for task_id, names in suites.items() if len(names) > 1}


def unanswered(row: dict[str, Any]) -> bool:
    """Whether an eval results row is a trial the model server gave no answer to: ``no_answer`` (it was down, timed out,
    failed after its client's retries, or refused every request for its setup) or ``server_refused`` (its chat template
    failed on the request). Its ``success`` is false, but it says nothing of the task: ``ee eval run`` runs such a trial
    again when the same command is run again."""
    return any(_flag(row.get(key)) for key in ("no_answer", "server_refused"))


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True or (isinstance(value, (int, float)) and value == 1)


def score_tasks(rows: Iterable[dict[str, Any]]) -> list[TaskScore]:
    """Every task's outcome group, highest ``p(1 - p)`` first (ties: more trials, then the task id). Trials the model
    server gave no answer to (:func:`unanswered`) are left out of ``p`` and counted apart; a task with only those has
    ``n = 0`` and ``p = 0`` (never picked)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ConfigError(f"Results row {number} is {type(row).__name__} {row!r:.80}, not an object with 'task_id' and 'success'.")
        if "task_id" not in row or "success" not in row:
            raise ConfigError(f"A results row needs 'task_id' and 'success', got the fields {sorted(row)}.")
        skipped = unanswered(row)
        success = False if skipped else _success(row["success"], number)
        groups[(str(row.get("suite", "")), str(row["task_id"]))].append({**row, "success": success, "_unanswered": skipped})
    scores = []
    for (suite, task_id), group in groups.items():
        answered = [r for r in group if not r["_unanswered"]]
        p = sum(r["success"] for r in answered) / len(answered) if answered else 0.0
        scores.append(TaskScore(suite, task_id, len(answered), p, _instruction(group), len(group) - len(answered)))
    return sorted(scores, key=lambda s: (-s.variance, -s.n, s.suite, s.task_id))


def _success(value: Any, number: int) -> bool:
    """A row's ``success`` as a bool: true/false, 1/0 or the strings "true"/"false" (a string such as "false" is
    not truthy here, as ``bool`` would have it)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"Results row {number}: 'success' must be true or false, got {value!r}.")


def _instruction(group: list[dict[str, Any]]) -> str:
    for row in group:
        conversation = row.get("conversation") or "[]"
        try:
            messages = json.loads(conversation) if isinstance(conversation, (str, bytes)) else conversation
        except ValueError:
            continue
        if not isinstance(messages, list):
            continue
        first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        if first and isinstance(first.get("content"), str):
            return first["content"]
    return ""


def match_trajectories(scores: Sequence[TaskScore], trajectories: Iterable[Trajectory]) -> dict[str, Trajectory]:
    """Task id -> the stored trajectory that gives its tools and environment (see the module docstring)."""
    by_entry: dict[str, Trajectory] = {}
    by_task: dict[str, Trajectory] = {}
    # The expert's own completed run first: a curriculum variant copies its parent's entry id (its rollout is the
    # policy's), and an interrupted or failed run is a partial one.
    ranked = sorted(trajectories, key=lambda t: (t.source == CURRICULUM_SOURCE, t.status != "completed"))
    # A traces: suite's task id is the stored trajectory's id: that trajectory, whatever other run asked the same question
    # (another app, another world) or shares its entry id.
    by_id = {t.id: t for t in ranked}
    for t in ranked:
        entry = (t.environment or {}).get("entry_id")
        if entry is not None:
            by_entry.setdefault(str(entry), t)
        if t.task:
            by_task.setdefault(t.task, t)
    out = {}
    for score in scores:
        match = by_id.get(score.task_id) or by_entry.get(score.task_id) or by_task.get(score.instruction)
        if match is not None:
            out[score.task_id] = match
    return out


def named_tools(trajectory: Trajectory) -> list[ToolSchema]:
    """The tool schemas a trajectory offered that have a name (a variant's ``tools``): a stored trajectory may hold one
    without (capture keeps an OpenAI schema whose function has no name), which no call can name and which
    ``ee curriculum run`` refuses in a tasks file."""
    return [t for t in offered_tools(trajectory.tools, None) if tool_schema_name(t) is not None]


def tool_names(trajectory: Trajectory) -> list[str]:
    """The names of the tool schemas a trajectory offered (those without a name left out)."""
    return [name for t in offered_tools(trajectory.tools, None) if (name := tool_schema_name(t)) is not None]


CUT_AT_MAX_TOKENS = "the answer was cut off at max_tokens (finish_reason 'length')"
"""The start of the reason a variant is rejected when the writer's answer stopped at ``max_tokens`` before a usable
variant (``<this>: <what was wrong>``); one cut off while still reasoning says
:data:`~ee_middleware.models.protocol.CUT_WHILE_REASONING` instead."""

DUPLICATE = "duplicate of an earlier variant"
"""The reason a variant is rejected when it repeats one already kept (for any parent: the same instruction up to case
and spacing): it would be rolled out and judged again for nothing."""


@dataclass
class Proposal:
    """The curriculum's output: the variants kept (all distinct), the rejections by reason, the tasks it could not
    match and the requests it made (``attempts``); ``failed``: the writer's error where a request failed after its
    client's retries (the proposal stopped there, keeping the variants written before)."""

    variants: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    attempts: int = 0
    allotted: dict[str, int] = field(default_factory=dict)
    """The variants each task got in the end (:func:`allotment_key` -> count; its share by :func:`allot`, less what the
    writer could not vary, plus what other tasks left it; they sum to ``len(variants)``), the tasks that got none left
    out: keyed by task id, or ``suite/task id`` for an id that tasks of several suites have."""
    failed: ModelError | None = None

    @property
    def cut(self) -> int:
        """Rejections of an answer cut off at ``max_tokens`` (while reasoning or not): more tokens is the fix."""
        return sum(n for reason, n in self.rejected.items() if reason.startswith((CUT_AT_MAX_TOKENS, CUT_WHILE_REASONING)))


EXISTING_TASK = "an existing task"
"""The reason a variant is rejected when it is one of the tasks already there (an evaluated task, or a matched parent's
task, up to case and spacing): rolled out, it teaches nothing the task itself does not."""


def _same_instruction(text: str) -> str:
    """``text`` compared as an instruction: case and runs of spacing do not make a variant new."""
    return " ".join(text.split()).casefold()


TOO_LONG = "instruction too long for a variant of its parent"
"""Why a variant is rejected whose instruction is longer than :func:`max_instruction_chars` allows: a writer behind a
server (or a proxy) that ignored ``max_tokens`` wrote 700 KB, which every rollout of the task would send the policy."""


def max_instruction_chars(parent_instruction: str) -> int:
    """The longest instruction a variant of ``parent_instruction`` may have: four times its parent's, at least 2,000
    characters (a variant asks for other details, not a document)."""
    return max(2000, 4 * len(parent_instruction))


def validate_variant(text: str, parent_instruction: str, known_tools: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
    """``({"instruction", "tools"}, None)`` for a usable variant, else ``(None, reason)``."""
    decoder = json.JSONDecoder()
    data = None
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            candidate, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(candidate, dict) and "instruction" in candidate:
            data = candidate
            break
    if data is None:
        return None, "no JSON object with an 'instruction' field"
    instruction = data.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        return None, "empty instruction"
    if _same_instruction(instruction) == _same_instruction(parent_instruction):
        return None, "same instruction as its parent"
    if len(instruction.strip()) > max_instruction_chars(parent_instruction):
        return None, TOO_LONG
    tools = data.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        return None, "'tools' is not a list of names"
    unknown = sorted(set(tools) - set(known_tools))
    if unknown:
        return None, "unknown tools"
    return {"instruction": instruction.strip(), "tools": tools}, None


def allot(scores: Sequence[TaskScore], n: int) -> list[int]:
    """How many of ``n`` variants each of ``scores`` gets: in proportion to its ``p(1 - p)`` (the largest-remainder
    method: each task its whole share, the variants left over to the largest fractions, ties to the task ranked first).
    A task solved half the time (0.25) gets about five times the variants of one solved 1 time in 20 (0.0475); a task
    whose share is below one variant gets one only while variants are left after the larger shares, so with ``n``
    smaller than the number of tasks the highest-variance ones get them; ``p(1 - p) = 0`` gets none."""
    total = sum(s.variance for s in scores)
    if n <= 0 or total <= 0:
        return [0] * len(scores)
    exact = [n * s.variance / total for s in scores]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(scores)), key=lambda i: (-(exact[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def propose(
    client: Any, scores: Sequence[TaskScore], trajectories: Iterable[Trajectory], *, n: int, max_tokens: int = 200, seed: int = 0
) -> Proposal:
    """Up to ``n`` validated, distinct variants of the highest-variance tasks (tasks with ``p(1 - p) = 0`` are never
    picked), allotted to the tasks by :func:`allot`, in at most ``3 *`` a task's allotment requests of ``max_tokens``
    tokens each (``3 * n`` in all); what a task the writer could not vary leaves is allotted again to the tasks that got
    their share (:attr:`Proposal.allotted` counts what each got in the end).

    A variant repeating one already kept (for any parent) is rejected as :data:`DUPLICATE` (the writer is shown the ones
    kept for its parent, and asked again within the budget), one that is a task already there (an evaluated task's
    instruction, a matched parent's task) as :data:`EXISTING_TASK`; an answer cut off at ``max_tokens`` is rejected as such
    (:data:`CUT_AT_MAX_TOKENS`, or the reasoning cut of :meth:`~ee_middleware.models.Choice.cut_while_reasoning`). A
    request that fails after the client's retries (:class:`~ee_middleware.errors.ModelError`) ends the proposal: the
    variants written before it are kept, and the error is :attr:`Proposal.failed`."""
    result = Proposal()
    candidates = [s for s in scores if s.variance > 0]
    matched = match_trajectories(candidates, trajectories)
    result.unmatched = [s.task_id for s in candidates if s.task_id not in matched]
    usable = [s for s in candidates if s.task_id in matched]
    quota = {(s.suite, s.task_id): count for s, count in zip(usable, allot(usable, n), strict=True)}
    rejected: dict[str, int] = defaultdict(int)
    kept: dict[tuple[str, str], list[str]] = defaultdict(list)  # the instructions kept, by parent task
    written: set[str] = set()  # every instruction kept, whatever its parent: `variants` counts distinct ones
    existing = {_same_instruction(text) for text in [*(s.instruction for s in scores), *(t.task for t in matched.values())] if text}
    tried: Counter[tuple[str, str]] = Counter()  # the requests made, by parent task
    attempt = 0
    while len(result.variants) < n:
        # the task furthest from its allotment that has requests left (3 per variant allotted), the higher-ranked on ties
        open_tasks = [
            s
            for s in usable
            if len(kept[s.suite, s.task_id]) < quota[s.suite, s.task_id] and tried[s.suite, s.task_id] < 3 * quota[s.suite, s.task_id]
        ]
        if not open_tasks:
            # tasks the writer could not vary (repeats, cut answers, unknown tools) leave their share to those that got
            # theirs, allotted alike, within the 3 * n requests in all
            takers = [s for s in usable if len(kept[s.suite, s.task_id]) >= quota[s.suite, s.task_id]]
            extra = allot(takers, n - len(result.variants)) if takers and attempt < 3 * n else []
            if not any(extra):
                break
            for taker, count in zip(takers, extra, strict=True):
                quota[taker.suite, taker.task_id] += count
            continue
        if attempt >= 3 * n:
            break
        score = max(open_tasks, key=lambda s: quota[s.suite, s.task_id] - len(kept[s.suite, s.task_id]))
        key = (score.suite, score.task_id)
        parent = matched[score.task_id]
        known = tool_names(parent)
        instruction = score.instruction or parent.task or ""
        user = f"Task: {instruction}\nTools: {json.dumps(known)}\nWrite variant number {tried[key] + 1}."
        if kept[key]:
            user += f"\nVariants already written (write a different one): {json.dumps(kept[key], ensure_ascii=False)}"
        tried[key] += 1
        attempt += 1
        try:
            choices = client.complete(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
                n=1,
                sampling=Sampling(temperature=1.0, max_tokens=max_tokens, seed=seed + attempt - 1),
            )
        except ModelError as exc:  # after the client's retries: what was written so far is kept, and the caller says so
            result.failed = exc
            break
        choice = choices[0] if choices else None
        cut = choice.cut_while_reasoning(max_tokens) if choice is not None else None
        if cut is not None:  # not "no JSON object": its max_tokens went to reasoning
            rejected[cut] += 1
            continue
        text = choice.text if choice is not None and choice.problem is None else ""
        variant, reason = validate_variant(text, instruction, known)
        if variant is None:
            if choice is not None and choice.problem is None and choice.finish_reason == "length":
                reason = f"{CUT_AT_MAX_TOKENS}: {reason}"
            rejected[reason or "unknown"] += 1
            continue
        same = _same_instruction(variant["instruction"])
        if same in written or same in existing:
            rejected[DUPLICATE if same in written else EXISTING_TASK] += 1
            continue
        written.add(same)
        kept[key].append(variant["instruction"])
        digest = hashlib.blake2b(f"{score.suite}:{score.task_id}:{variant['instruction']}".encode(), digest_size=8).hexdigest()
        result.variants.append(
            {
                "id": f"curriculum-{digest}",
                "source": CURRICULUM_SOURCE,
                "parent": {
                    "suite": score.suite,
                    "task_id": score.task_id,
                    "trajectory_id": parent.id,
                    "p": score.p,
                    "variance": score.variance,
                },
                "app": parent.app,  # stored under its parent's app: that app's datasets and `ee improve` train on it
                "instruction": variant["instruction"],
                "system": system_messages(parent),  # rolled out (and trained) on the prompt production gives
                "tools": named_tools(parent),
                "needs": variant["tools"],
                "environment": world_environment(parent.environment),  # a variant of a variant: its own lineage only
            }
        )
    shared = ids_in_several_suites(quota)
    # what each task got in the end: its share, less what the writer could not vary, plus what others left it
    result.allotted = {allotment_key(suite, task_id, shared): len(kept[suite, task_id]) for suite, task_id in quota if kept[suite, task_id]}
    result.rejected = dict(rejected)
    result.attempts = attempt
    return result
