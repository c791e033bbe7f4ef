"""The improve job's learning stages: select, replay, datasets, train.

Each stage is a function of a :class:`StageContext` that returns a :class:`StageResult` (inputs with
hashes, outputs, decisions, budget cuts) and is idempotent: run again after a crash, it redoes its
own work from the start or continues it (replay skips finished trajectories, training reuses a
completed adapter folder). The heavy layers are imported inside the functions.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ee_middleware._files import atomic_write_text
from ee_middleware.jobs.errors import BudgetExhausted, JobError
from ee_middleware.jobs.runs import Run, RunsDir, file_entry, ids_digest, same_place

if TYPE_CHECKING:
    import polars as pl

    from ee_middleware.jobs.config import ImproveConfig

SELECTION_FILE = "selection.json"
DATA_DIR = "data"
ADAPTER_DIR = "adapter"


class Progress(Protocol):
    """What a job tells the person watching: stage starts and ends, lines of text, and bars."""

    def stage(self, name: str, index: int, total: int) -> None: ...

    def stage_done(self, name: str, seconds: float, summary: str, *, skipped: bool = False) -> None: ...

    def info(self, text: str) -> None: ...

    def bar(self, name: str, done: int, total: int | None) -> None: ...


class QuietProgress:
    """Reports nothing (library use, tests)."""

    def stage(self, name: str, index: int, total: int) -> None:
        pass

    def stage_done(self, name: str, seconds: float, summary: str, *, skipped: bool = False) -> None:
        pass

    def info(self, text: str) -> None:
        pass

    def bar(self, name: str, done: int, total: int | None) -> None:
        pass


@dataclass
class StageContext:
    config: ImproveConfig
    run: Run
    runs: RunsDir
    progress: Progress
    deadline: float | None = None
    """``time.monotonic()`` past which the ``max_minutes`` budget is spent."""

    def check_deadline(self, before: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExhausted(
                f"max_minutes = {self.config.budgets.max_minutes:g} was spent before {before}; the run stops here and the next "
                "`ee improve` with the same config continues it."
            )

    def path(self, *parts: str) -> Path:
        return self.run.folder.joinpath(*parts)


@dataclass
class StageResult:
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)
    budget_cuts: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""
    """One line for the progress display."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# --- select ------------------------------------------------------------------------------------------------


def select(ctx: StageContext) -> StageResult:
    """Trajectories approved since the last successful run's watermark, and the replay work for this run within budgets."""
    import polars as pl

    from ee_middleware.replay.job import select_trajectories
    from ee_middleware.store.registry import open_store, recorded_apps, trajectory_columns

    config = ctx.config
    store = open_store(config.store, create=False)
    try:
        previous = ctx.runs.last_successful(config.scope())
        watermark = (previous.data.get("watermark") or {}).get("after") if previous else None
        approved = trajectory_columns(store, ["id", "app", "approval_at", "approval_by", "started_at"], status="approved", app=config.app)
        approved = approved.select("id", "app", "approval_at", "approval_by", "started_at")
        new = approved if watermark is None else approved.filter(pl.col("approval_at") > datetime.fromisoformat(watermark))
        new = new.sort("approval_at", "id")
        replay_config = config.replay_config()
        pending, already = select_trajectories(store, replay_config)
        states = _tool_states(store, pending)
        todo, cuts = _apply_replay_budgets(pending, states, replay_config.k, config)
        tools = Counter(store.steps(new["id"].to_list()).filter(pl.col("action_kind") == "tool_call")["tool_name"].to_list())
        pending_review = trajectory_columns(store, ["id"], status="pending", app=config.app).height
        other_apps: list[str] = []
        if not approved.height and not pending_review:  # does it record this app at all? (a misnamed app learns nothing)
            apps = recorded_apps(store)
            other_apps = apps if config.app not in apps else []
    finally:
        store.close()
    new_ids = new["id"].to_list()
    selection = {"new": new_ids, "replay": todo, "pending_replay": len(pending)}
    atomic_write_text(ctx.path(SELECTION_FILE), json.dumps(selection, indent=1))
    snapshot = approved["approval_at"].max()
    result = StageResult(
        inputs={
            "store": str(config.store),
            "app": config.app,
            "watermark": watermark,
            "watermark_from_run": previous.id if previous else None,
            "approved": approved.height,
            "approved_ids_sha256": ids_digest(approved["id"].to_list()),
            "replay_id": replay_config.replay_id,
        },
        outputs={
            "selection_file": str(ctx.path(SELECTION_FILE)),
            "new": len(new_ids),
            "new_ids_sha256": ids_digest(new_ids),
            "new_ids_sample": new_ids[:20],
            "watermark_after": _iso(snapshot) if isinstance(snapshot, datetime) else watermark,
            "replay_id": replay_config.replay_id,
            "k": replay_config.k,
            "to_replay": len(todo),
            "to_replay_states": sum(states.get(i, 0) for i in todo),
            "already_replayed": already,
            "pending_replay": len(pending),
            "by_app": _counts(new, "app"),
            "by_approval_source": _counts(new, "approval_by"),
            "by_tool": dict(tools.most_common()),
            "nothing_new": not new_ids and not todo,
            "pending_review": pending_review,
            "app_unrecorded_apps": other_apps,
        },
        budget_cuts=cuts,
    )
    result.decisions.append(
        f"{len(new_ids)} trajectories approved since {watermark or 'the beginning'} (of {approved.height} approved for {config.app}); "
        f"{len(todo)} to replay now ({len(pending)} not yet replayed under replay id {replay_config.replay_id})"
    )
    result.summary = f"{len(new_ids)} new approved trajectories, {len(todo)} to replay"
    if pending_review:
        result.summary += f"; {awaiting_review(pending_review, config)}"
    if other_apps:
        result.summary += f"; {app_unrecorded(other_apps, config)}"
    return result


def app_unrecorded(apps: list[str], config: ImproveConfig) -> str:
    """What to say when the store records other apps and none of ``config.app``: a new app, or a misnamed one."""
    shown = ", ".join(repr(a) for a in apps[:10]) + (f" and {len(apps) - 10} more" if len(apps) > 10 else "")
    return (
        f"the store holds no trajectory of app {config.app!r} (it records {shown}): unless {config.app!r} is an app that has "
        "yet to record a run, set [improve] app (or --app) to the name the agent records with (record_experience(..., app=...))"
    )


def awaiting_review(count: int, config: ImproveConfig) -> str:
    """``N trajectories of APP await review (the command that lists them)``: only approved ones are learned from."""
    many = "trajectories" if count != 1 else "trajectory"
    return (
        f"{count} {many} of {config.app} {'await' if count != 1 else 'awaits'} review "
        f"(`ee traces list --store {config.store} --status pending --app {config.app}`)"
    )


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in Counter(frame[column].to_list()).most_common()}


def _tool_states(store: Any, ids: list[str]) -> dict[str, int]:
    """Recorded tool-call states per trajectory (where replay proposes alternatives)."""
    if not ids:
        return {}
    import polars as pl

    steps = store.steps(ids).filter(pl.col("action_kind") == "tool_call")
    return dict(Counter(steps["trajectory_id"].to_list()))


def _apply_replay_budgets(
    pending: list[str], states: dict[str, int], k: int, config: ImproveConfig
) -> tuple[list[str], list[dict[str, Any]]]:
    budgets = config.budgets
    cuts: list[dict[str, Any]] = []
    todo = list(pending)
    if budgets.max_trajectories is not None and len(todo) > budgets.max_trajectories:
        cuts.append(
            {
                "budget": "max_trajectories",
                "limit": budgets.max_trajectories,
                "stage": "replay",
                "cut": f"{len(todo) - budgets.max_trajectories} of {len(todo)} trajectories to replay wait for the next run",
            }
        )
        todo = todo[: budgets.max_trajectories]
    if budgets.max_branches is not None:
        kept, branches = [], 0
        for trajectory_id in todo:
            cost = states.get(trajectory_id, 0) * k
            if kept and branches + cost > budgets.max_branches:
                break
            kept.append(trajectory_id)
            branches += cost
        if len(kept) < len(todo):
            cuts.append(
                {
                    "budget": "max_branches",
                    "limit": budgets.max_branches,
                    "stage": "replay",
                    "cut": f"{len(todo) - len(kept)} of {len(todo)} trajectories to replay wait for the next run "
                    f"({branches} branches now, k = {k})",
                }
            )
            todo = kept
    return todo, cuts


# --- replay ------------------------------------------------------------------------------------------------


def replay(ctx: StageContext) -> StageResult:
    """Replay the selected trajectories (a resumed stage continues where the replay job stopped)."""
    import polars as pl

    from ee_middleware.replay.job import run_replay
    from ee_middleware.store.registry import open_store

    selection = json.loads(ctx.path(SELECTION_FILE).read_text())
    wanted: list[str] = selection["replay"]
    replay_id = ctx.config.replay_config().replay_id
    result = StageResult(
        inputs={"selection_file": file_entry(ctx.path(SELECTION_FILE)), "replay_id": replay_id, "trajectories": len(wanted)}
    )
    remaining = _unfinished(ctx, wanted, replay_id)
    if remaining:
        ctx.progress.info(f"replaying {len(remaining)} trajectories ({len(wanted) - len(remaining)} finished earlier)")

        def on_outcome(_outcome: Any, done: int, total: int) -> None:
            ctx.progress.bar("replay", done, total)
            if done < total:
                ctx.check_deadline("the next trajectory's replay")

        # exactly the selection's trajectories: one approved meanwhile (or before a resumed replay) waits for the next run
        summary = run_replay(ctx.config.replay_config(trajectory_ids=remaining), on_outcome=on_outcome)
        result.outputs["this_attempt"] = {
            k: v for k, v in summary.to_dict().items() if k not in ("fidelity_examples", "skipped", "failed", "refused_hints")
        }
        hints: dict[str, str] | None = summary.refused_hints
    else:
        hints = None  # asked of the sandbox below, only if a tool was refused
        result.decisions.append("nothing to replay" if not wanted else "every selected trajectory was replayed by an earlier attempt")
    store = open_store(ctx.config.store, create=False)
    try:
        if remaining:
            _compact(ctx, store, result)
        records = store.replays(replay_id=replay_id).filter(pl.col("trajectory_id").is_in(wanted))
        rollouts = store.rollouts(wanted, replay_id=replay_id) if wanted else None
    finally:
        store.close()
    statuses = _counts(records, "status")
    result.outputs.update(
        replay_id=replay_id,
        trajectories=len(wanted),
        statuses=statuses,
        states=int(records["states"].sum() or 0),
        branches=int(records["branches"].sum() or 0),
        errors=int(records["errors"].sum() or 0),
        rejected=int(records["rejected"].sum() or 0),
        fidelity_mismatches=int(records["fidelity_mismatches"].sum() or 0),
        rollouts=rollouts.height if rollouts is not None else 0,
        rollout_ids_sha256=ids_digest(rollouts["id"].to_list()) if rollouts is not None else ids_digest([]),
        by_tool=_counts(rollouts, "tool_name") if rollouts is not None and rollouts.height else {},
        not_finished=_unfinished(ctx, wanted, replay_id),
        **fidelity_mismatches(records),
    )
    latest = _latest_records(records)
    skip_reasons, failure_reasons = _reasons(latest, "skipped"), _reasons(latest, "failed")
    skipped, failed = sum(skip_reasons.values()), sum(failure_reasons.values())
    result.outputs.update(skipped=skipped, failed=failed, skip_reasons=skip_reasons, failure_reasons=failure_reasons)
    if failed:
        result.decisions.append(
            f"{failed} trajectories failed to replay ({_reasons_text(failure_reasons)}; see `ee replay list`); they are retried "
            "by the next run"
        )
    if skipped:
        result.decisions.append(
            f"{skipped} of {len(wanted)} selected trajectories were skipped, nothing replayed from them: {_reasons_text(skip_reasons)}"
        )
    not_in_sandbox = _tools_not_in_sandbox(ctx, latest, hints, result)
    note = _check_skipped(ctx, wanted, latest, skip_reasons, result)
    if note:
        result.decisions.append(note)
    _check_predictions(ctx, records)
    result.summary = (
        f"{result.outputs['branches']} branches over {result.outputs['states']} states, {result.outputs['errors']} error observations"
    )
    if skipped or failed:
        result.summary += ", " + " and ".join(
            f"{count} trajectories {what}" for count, what in ((skipped, "skipped"), (failed, "failed")) if count
        )
    if not_in_sandbox:
        result.summary += f"; {not_in_sandbox}"
    if sandbox_skips := result.outputs.get("sandbox_skips"):
        lacks = f" (it lacks {', '.join(sandbox_skips['tools'])})" if sandbox_skips["tools"] else ""
        result.summary += f"; WARNING: {sandbox_skips['count']} skipped because of the sandbox{lacks}, not replayed by later runs: " + (
            f"once it is fixed, replay them with `{sandbox_skips['again']}` (it replays every approved trajectory of the app again)"
            if sandbox_skips["again"]
            else f"set [replay] sandbox to the sandbox of your tools, then start a new run with `{sandbox_skips['command']}`"
        )
    return result


def _tools_not_in_sandbox(ctx: StageContext, latest: pl.DataFrame, hints: dict[str, str] | None, result: StageResult) -> str:
    """Record the proposals replay refused (``refused_tools``) and the expert's calls it did not execute
    (``final_calls_not_replayed``), per tool, of the selection's replays, with the hint ``ee replay run`` gives for each
    refused tool (``refused_hints``); one decision per tool, and one progress line each. Returns the summary's words
    for them ("" when none). Read from the stored records, so a continued run whose replay finished earlier says it too."""
    from ee_middleware.replay.job import FINAL_CALLS_NOT_REPLAYED, refused_tool_text

    refused: Counter[str] = Counter()
    final: Counter[str] = Counter()
    for details in latest["details_json"].to_list() if "details_json" in latest.columns else []:
        data = json.loads(details) if details else {}
        refused.update(data.get("refused_tools") or {})
        final.update(str(call.get("tool")) for call in data.get("final_calls_not_replayed") or [])
    if not refused and not final:
        return ""
    sandbox = ctx.config.replay_config().sandbox
    if refused and hints is None:
        hints = _refusal_hints(ctx, list(refused))
    texts = {tool: refused_tool_text(tool, sandbox, hints or {}) for tool in sorted(refused)}
    result.outputs.update(
        refused_tools=dict(refused.most_common()), final_calls_not_replayed=dict(final.most_common()), refused_hints=texts
    )
    for tool, count in refused.most_common():
        line = f"refused {count} proposal(s) of {tool}: {texts[tool]}"
        result.decisions.append(line)
        ctx.progress.info(line)
    if final:
        calls = ", ".join(f"{tool} ({count})" for tool, count in final.most_common())
        line = f"expert calls not replayed at a trajectory's last tool call: {calls}: {FINAL_CALLS_NOT_REPLAYED}"
        result.decisions.append(line)
        ctx.progress.info(line)
    parts = [f"{count} proposals of {tool} refused (not in the sandbox)" for tool, count in refused.most_common()]
    if final:
        parts.append(f"{sum(final.values())} expert calls not replayed ({', '.join(tool for tool, _ in final.most_common())})")
    return ", ".join(parts)


def _refusal_hints(ctx: StageContext, tools: list[str]) -> dict[str, str]:
    """The sandbox's own hints for ``tools`` (a continued run whose replay finished in an earlier attempt has no replay
    summary to take them from); none when the sandbox cannot be built now: the general wording is given instead."""
    from ee_middleware.errors import EEError
    from ee_middleware.replay.sandboxes.registry import refusal_hints, sandbox_options

    replay = ctx.config.replay_config()
    try:
        options = {**sandbox_options(allow_network=replay.allow_network), **replay.sandbox_factory_options()}
        return refusal_hints(replay.sandbox, tools, **options)
    except EEError:
        return {}


NO_TOOL_CALLS = "the trajectory has no tool calls"
"""How the replay runner's skip reason for a trajectory with no state to branch from begins (an agent that answered
without a tool: nothing to replay, nothing wrong with the sandbox; its trajectory is still learned from by imitation)."""

REASONS_SHOWN = 10
"""Distinct skip (or failure) reasons kept in the replay stage's outputs, the most frequent first."""


def _latest_records(records: pl.DataFrame) -> pl.DataFrame:
    """Each trajectory's newest replay record (a failed trajectory retried by a later attempt has two)."""
    if not records.height:
        return records
    order = "finished_at" if "finished_at" in records.columns else "trajectory_id"
    return records.sort(order, nulls_last=False).unique(subset="trajectory_id", keep="last", maintain_order=True)


def _reasons(records: pl.DataFrame, status: str) -> dict[str, int]:
    """How many of ``records`` have ``status``, by reason (on one line), the most frequent first (the first
    :data:`REASONS_SHOWN`, the rest counted under one entry)."""
    import polars as pl

    from ee_middleware.messages import one_line

    if not records.height:
        return {}
    reasons = [one_line(r or "(no reason recorded)", 400) for r in records.filter(pl.col("status") == status)["reason"].to_list()]
    counted = Counter(reasons).most_common()
    shown = dict(counted[:REASONS_SHOWN])
    rest = sum(count for _, count in counted[REASONS_SHOWN:])
    if rest:
        shown[f"({len(counted) - REASONS_SHOWN} other reasons)"] = rest
    return shown


def _reasons_text(reasons: dict[str, int], most: int = 3) -> str:
    shown = "; ".join(f"{reason} ({count})" for reason, count in list(reasons.items())[:most])
    return shown + (f"; and {len(reasons) - most} other reason(s)" if len(reasons) > most else "")


def _again_command(ctx: StageContext) -> str:
    """The ``ee replay run --again`` command that replays this run's selection again under its [replay] table."""
    config = ctx.config
    command = ["ee", "replay", "run", "--again", *(["--config", str(config.config_path)] if config.config_path else [])]
    command += ["--store", str(config.store), "--app", config.app]
    return shlex.join(command)


BRANCH_KINDS = ("iwm", "sr")
"""The dataset kinds built from replayed branches (rollouts); ``il`` needs none."""

NO_TOOL_SCHEMAS = "the trajectory records no tool schemas"
"""How the replay runner's skip reason for a trajectory recorded without its tool schemas begins (the recording's gap:
no sandbox can replay it)."""

ENVIRONMENT_NOT_REBUILT = "environment cannot be rebuilt"
"""How the replay runner's skip reason for a world the sandbox could not build from the environment reference begins:
the recording's gap when it names no environment, the sandbox's when it names one."""

SKIPPED_SHOWN = 5
"""Skipped trajectory ids named in the replay stage's note (its error names every one a command acts on)."""


SANDBOX_FAULT_SHARE = 0.5
"""The share of a night's selected trajectories with a tool call that the sandbox may skip (a tool it lacks, a world it
cannot build from the recorded environment) with the run going on, warned: past it the sandbox fails more than it
replays, and the replay stage fails."""

MISSING_TOOLS = "the expert calls "
"""How the replay runner's skip reason for tools the sandbox lacks begins (``the expert calls A, B, which sandbox ...``)."""


def _missing_tools(reasons: Iterable[str]) -> list[str]:
    """The tools the sandbox lacks that ``reasons`` (skip reasons) name, sorted."""
    tools: set[str] = set()
    for reason in reasons:
        if reason.startswith(MISSING_TOOLS) and ", which sandbox " in reason:
            named = reason.removeprefix(MISSING_TOOLS).split(", which sandbox ", 1)[0]
            tools.update(name.strip() for name in named.split(",") if name.strip())
    return sorted(tools)


def _skip_cause(reason: str, environment_json: str | None) -> str:
    """Where a skip's cause lies: ``nothing`` (no tool call: nothing to replay; imitation still learns from it),
    ``recording`` (recorded without its tool schemas, or without an environment reference the sandbox could build a world
    from: no sandbox can replay it) or ``sandbox`` (a tool it lacks, a world it fails to build from the recorded
    environment, anything else: replayable once the sandbox is fixed)."""
    from ee_middleware.replay.curriculum import world_environment

    if reason.startswith(NO_TOOL_CALLS):
        return "nothing"
    if reason.startswith(NO_TOOL_SCHEMAS):
        return "recording"
    if reason.startswith(ENVIRONMENT_NOT_REBUILT):
        try:
            environment = world_environment(json.loads(environment_json)) if environment_json else None
        except ValueError:
            environment = None
        if not environment:
            return "recording"
    return "sandbox"


def _usable_branches(ctx: StageContext, store: Any, replay_id: str) -> int:
    """The branches of the app under ``replay_id`` the datasets stage would train on: the rollouts its source reader
    selects by the run's [datasets] settings (no replay with fidelity mismatches, sandbox failure or synthetic rollout
    unless included; each trajectory's newest finished attempt) of the approved trajectories its held-out rule leaves
    on the training side."""
    from ee_middleware.trainers.datasets.source import TRAJECTORY_COLUMNS, SourceReader
    from ee_middleware.trainers.datasets.split import recorded_units, resolve_listed_ids, split_trajectories

    config = ctx.config.dataset_config(ctx.path(DATA_DIR), replay_id)
    reader = SourceReader(
        store,
        app=config.app,
        replay_id=replay_id,
        include_synthetic=config.include_synthetic,
        include_sandbox_failures=config.include_sandbox_failures,
        include_fidelity_mismatches=config.include_fidelity_mismatches,
    )
    source = _trajectory_rows(store, list(TRAJECTORY_COLUMNS), config.app)
    train = source["id"].to_list()
    rule = config.split_rule()
    if rule.active:
        recorded = recorded_units(store)
        rule = resolve_listed_ids(rule, store, recorded, config.heldout_ids)
        train = split_trajectories(source.select("id", "app", "started_at"), rule, recorded, store).train
    columns = ["id", "trajectory_id", "step_index", "branch_index"]
    return reader.rollout_columns(sorted(train), columns).height if train else 0


def _trajectory_rows(store: Any, columns: list[str], app: str) -> Any:
    """``columns`` of the app's approved trajectories, read without steps or rollouts where the store can."""
    from ee_middleware.store.registry import trajectory_columns

    return trajectory_columns(store, columns, status="approved", app=app)


def _check_skipped(
    ctx: StageContext, wanted: list[str], latest: pl.DataFrame, skip_reasons: dict[str, int], result: StageResult
) -> str | None:
    """Judge the selection's skipped trajectories by their cause. A skipped trajectory counts as done under the replay id,
    so one the sandbox is at fault for (a tool it lacks, a world it cannot build from the recorded environment, such as
    the default ``bfcl`` sandbox for another app's trajectories) is never replayed by a later night, even once the
    sandbox is fixed, unless ``ee replay run --again`` replays the configuration's next attempt (the built-in ``bfcl``
    sandbox is not fixed but replaced: [replay] sandbox set to the app's own, which a new run takes, ``ee improve
    --new-run``, replays them under that sandbox's replay id). When every selected trajectory was skipped and the
    sandbox is at fault for any, or it is at fault for more than half of those with a tool call
    (:data:`SANDBOX_FAULT_SHARE`: the sandbox fails more than it replays), the stage fails, naming the tools or reasons
    and that command. When the sandbox is at fault for fewer, the run goes on with a warning (on stderr, in the stage's
    summary, outputs ``sandbox_skips`` and decisions) naming them and the same command: ``sandbox_skips`` holds
    ``count``, ``tools``, ``trajectories``, ``command`` (the command that replays them), ``fix`` (the warning's words
    for it) and ``again`` (the ``ee replay run --again`` command; ``None`` for the built-in sandbox, which it would use
    again). When the cause lies in the
    recordings only (recorded without an environment reference or tool schemas; no tool call), the skips are a note,
    returned, unless every selected trajectory was skipped, the schedule trains on branches (iwm, sr) and the datasets
    would find none of the app's under this replay id: then the stage fails, naming the trajectories to reject.
    Trajectories rejected since no longer count. Read from the stored records, so a continued run whose replay finished
    earlier is judged alike; the store is read by columns only (no steps, no whole-store read)."""
    import polars as pl

    from ee_middleware.jobs.config import SCHEDULE_KINDS
    from ee_middleware.messages import one_line
    from ee_middleware.store.registry import open_store

    if not wanted or not skip_reasons or all(reason.startswith(NO_TOOL_CALLS) for reason in skip_reasons):
        return None
    skips = latest.filter(pl.col("status") == "skipped")
    reason_of = {row["trajectory_id"]: row["reason"] or "" for row in skips.select("trajectory_id", "reason").iter_rows(named=True)}
    every = set(wanted) <= set(reason_of)
    if not every and all(reason.startswith((NO_TOOL_CALLS, NO_TOOL_SCHEMAS)) for reason in reason_of.values()):
        return None  # the recordings' own gaps in a partly skipped batch: the caller's note says it, no store read
    config = ctx.config
    replay = config.replay_config()
    needs = [kind for kind in SCHEDULE_KINDS[config.schedule] if kind in BRANCH_KINDS]
    store = open_store(config.store, create=False)
    try:
        rows = _trajectory_rows(store, ["id", "environment_json"], config.app)
        environments = dict(zip(rows["id"].to_list(), rows["environment_json"].to_list(), strict=True))
        ids = [i for i in wanted if i in environments]  # one rejected since (a way out named below) is not learned from
        causes = {i: _skip_cause(reason_of[i], environments[i]) for i in ids if i in reason_of}
        by_cause = {cause: [i for i in ids if causes.get(i) == cause] for cause in ("sandbox", "recording", "nothing")}
        if not by_cause["sandbox"] and (not by_cause["recording"] or not every):
            return None  # a partly skipped batch whose recordings alone are at fault: the caller's note says it
        branches = _usable_branches(ctx, store, replay.replay_id) if needs and every and not by_cause["sandbox"] else 0
    finally:
        store.close()
    unreplayable = by_cause["recording"]
    reject = shlex.join(["ee", "traces", "reject", *unreplayable, "--store", str(config.store), "--by", "NAME", "--force"])

    def reasons(of: list[str]) -> str:
        return _reasons_text(dict(Counter(one_line(reason_of[i], 400) for i in of).most_common()))

    def named(of: list[str]) -> str:
        return ", ".join(of[:SKIPPED_SHOWN]) + (f" and {len(of) - SKIPPED_SHOWN} more" if len(of) > SKIPPED_SHOWN else "")

    written = "sandbox" in config.tables()["replay"]
    said = (
        f"[replay] sandbox = {replay.sandbox!r}" if written else f"[replay] sandbox is not set, so the default {replay.sandbox!r} was used"
    )
    new_run = _improve_command(ctx, "--new-run")
    if by_cause["sandbox"]:
        at_fault = by_cause["sandbox"]
        with_calls = len(ids) - len(by_cause["nothing"])
        tools = _missing_tools(reason_of[i] for i in at_fault)
        lacks = f"; it lacks {', '.join(tools)}" if tools else ""
        again = _again_command(ctx)
        builtin = not written or replay.sandbox.strip() == "bfcl"
        if builtin:
            fix = (
                "The built-in 'bfcl' sandbox rebuilds only BFCL worlds (ee bfcl record-experts). Set [replay] sandbox to the sandbox "
                'of your tools (sandbox = "package.module:factory", a factory returning it; see docs/sandboxes.md), then start a '
                f"new run with `{new_run}` (this run's [replay] table is fixed: its select stage has finished)."
            )
        else:
            fix = (
                f"Fix the sandbox as the reason says, then replay them again with `{again}` and run ee improve again: "
                "the run continues with that attempt; or set [replay] sandbox to another sandbox and start a new run with "
                f"`{new_run}`."
            )
        others = (
            f" {len(unreplayable)} others cannot be replayed from their recording ({reasons(unreplayable)}): reject them with `{reject}`."
            if unreplayable
            else ""
        )
        if not every and len(at_fault) <= SANDBOX_FAULT_SHARE * with_calls:
            # the built-in sandbox is replaced, not fixed: `ee replay run --again` would replay them with it again
            warned = (
                fix
                if builtin
                else f"fix the sandbox as the reason says, then replay them again with `{again}` (a new replay attempt: it "
                f"replays every approved trajectory of {config.app} again, not only these; every later ee improve trains on "
                "that attempt)."
            )
            warning = (
                f"{len(at_fault)} of the {len(ids)} selected trajectories of {config.app} were skipped because of the sandbox "
                f"({said}{lacks}): {reasons(at_fault)}. They count as done under replay id {replay.replay_id}, so no later run "
                f"replays them on its own{'. ' if builtin else ': '}{warned} The run goes on with the others: the stage fails when the sandbox is at "
                f"fault for more than {SANDBOX_FAULT_SHARE:.0%} of the selected trajectories with a tool call.{others}"
            )
            result.outputs["sandbox_skips"] = {
                "count": len(at_fault),
                "tools": tools,
                "again": None if builtin else again,
                "trajectories": at_fault,
                "command": new_run if builtin else again,
                "fix": warned,
            }
            ctx.progress.info(f"warning: {warning}")
            warnings.warn(f"ee improve's replay stage: {warning}", UserWarning, stacklevel=2)
            return warning
        share = (
            f"every one of the {len(ids)} selected trajectories of {config.app} ({said}), {len(at_fault)} of them because of the "
            f"sandbox{f' ({lacks[2:]})' if lacks else ''}"
            if every
            else (
                f"{len(at_fault)} of the {len(ids)} selected trajectories of {config.app} because of the sandbox ({said}{lacks}), more than "
                f"{SANDBOX_FAULT_SHARE:.0%} of the {with_calls} with a tool call"
            )
        )
        raise JobError(
            f"The replay skipped {share}: {reasons(at_fault)}. The run stops so that they are replayed once it is fixed "
            f"(a skipped trajectory counts as done under this replay id: going on would leave them out for good). {fix}{others}"
        )
    nothing = by_cause["nothing"]
    without = f", and {len(nothing)} have no tool call (nothing to replay)" if nothing else ""
    if not needs or branches:
        uses = (
            f"schedule {config.schedule!r} trains on no branch (imitation only)"
            if not needs
            else f"the datasets would train on {branches} branches of {config.app}'s other trajectories under replay id {replay.replay_id}"
        )
        return (
            f"every one of the {len(ids)} selected trajectories was skipped: {len(unreplayable)} cannot be replayed from their "
            f"recording ({named(unreplayable)}: {reasons(unreplayable)}){without}; the run goes on: {uses}, and imitation learns "
            "from every approved trajectory. They count as done under this replay id and are not selected again."
        )
    il = _improve_command(ctx, "--schedule", "il", "--new-run")
    raise JobError(
        f"The replay skipped every one of the {len(ids)} selected trajectories of {config.app} ({said}): {len(unreplayable)} "
        f"cannot be replayed from their recording: {reasons(unreplayable)}{without}. The datasets would find no replayed branch "
        f"of {config.app} under replay id {replay.replay_id} to train on (those they leave out, such as replays with fidelity "
        f"mismatches, not counted), and schedule {config.schedule!r} trains on branches ({', '.join(needs)}). Either reject "
        f"them (`{reject}`) and run ee improve again: the run continues without them; or train on imitation alone in a new "
        f"run: `{il}` ([improve] schedule is fixed for a run: each later ee improve that continues that run needs "
        '--schedule il too; or set schedule = "il" in [improve] and start a new run with '
        f"`{new_run}`)."
    )


def _improve_command(ctx: StageContext, *flags: str) -> str:
    """``ee improve`` with this run's config file (if any) and ``flags``."""
    path = ctx.config.config_path
    return shlex.join(["ee", "improve", *(["--config", str(path)] if path else []), *flags])


def _check_predictions(ctx: StageContext, records: pl.DataFrame) -> None:
    """Fail the stage when an experience-model sandbox gave no usable observation for any alternative of the selection
    (every prediction prose, cut off or not JSON): the datasets would hold no synthetic branch, and nothing would say
    why. Read from the stored records, so a continued run whose replay finished earlier fails alike until the
    trajectories are replayed again as the configuration's next attempt, which the job then continues."""
    from ee_middleware.replay.job import no_usable_prediction_text

    unusable: Counter[str] = Counter()
    synthetic = 0
    for details in records["details_json"].to_list() if "details_json" in records.columns else []:
        data = json.loads(details) if details else {}
        unusable.update(data.get("synthetic_failures", {}))
        synthetic += data.get("synthetic_branches", 0)
    if not unusable or synthetic:
        return
    again = f"replay them again with `{_again_command(ctx)}`, then run ee improve again: the run continues with that attempt"
    # more tokens change [replay], which a run fixes once its select stage has finished: a new run takes them
    more_tokens = "start a new run with `ee improve --config FILE --new-run`"
    text = no_usable_prediction_text(dict(unusable), again=again, more_tokens=more_tokens)
    raise JobError(text[0].upper() + text[1:])


FIDELITY_EXAMPLES = 3
"""Mismatches shown with their diff in a run's outputs and report."""


def fidelity_mismatches(records: pl.DataFrame) -> dict[str, Any]:
    """Which tools the expert steps that replayed differently from their recording called (``fidelity_by_tool``: the
    mismatches the replay records describe, up to the runner's ``MAX_MISMATCH_DETAILS`` per trajectory) and the first
    :data:`FIDELITY_EXAMPLES` of them (trajectory, step, tool, where the texts part, the diff); empty when none. A count
    alone does not say which tool's sandbox disagrees with production."""
    import polars as pl

    if not records.height or not int(records["fidelity_mismatches"].sum() or 0):
        return {}
    by_tool: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for trajectory_id, details in records.filter(pl.col("fidelity_mismatches") > 0).select("trajectory_id", "details_json").iter_rows():
        for mismatch in json.loads(details or "{}").get("fidelity_mismatches", []):
            by_tool[str(mismatch.get("tool"))] += 1
            if len(examples) < FIDELITY_EXAMPLES:
                keep = ("step", "tool", "line", "column", "diff", "sandbox_failure")
                examples.append({"trajectory_id": trajectory_id, **{k: mismatch[k] for k in keep if k in mismatch}})
    return {"fidelity_by_tool": dict(by_tool.most_common()), "fidelity_examples": examples}


def _compact(ctx: StageContext, store: Any, result: StageResult) -> None:
    """Fold the spool segments this replay wrote (and the finished ones capture wrote) into Parquet parts.

    Every later read of the store (this run's datasets and evaluation, the next run's selection) then reads them
    decoded once instead of parsing each JSON line again; left alone, a store replayed night after night reads more
    slowly every night until someone runs ``ee store compact``. Safe while the agent keeps recording (a live
    segment is left). A store that cannot be compacted (a full disk) is said in the run's decisions, not a failure:
    nothing is lost, reads are only slower.
    """
    from ee_middleware.errors import EEError

    started = time.perf_counter()
    try:
        folded = store.compact()
    except EEError as exc:
        result.decisions.append(f"the store was not compacted after replay ({exc}); reads stay slower until `ee store compact` runs")
        return
    result.outputs["compacted_segments"] = folded
    if folded:
        ctx.progress.info(f"compacted the store: {folded} spool segments folded into Parquet in {time.perf_counter() - started:.1f} s")


def _unfinished(ctx: StageContext, ids: list[str], replay_id: str) -> list[str]:
    if not ids:
        return []
    import polars as pl

    from ee_middleware.store.registry import open_store

    store = open_store(ctx.config.store, create=False)
    try:
        finished = store.replays(replay_id=replay_id).filter(pl.col("status").is_in(["done", "skipped"]))["trajectory_id"].to_list()
    finally:
        store.close()
    done = set(finished)
    return [i for i in ids if i not in done]


# --- datasets ----------------------------------------------------------------------------------------------


def datasets(ctx: StageContext) -> StageResult:
    """IL / IWM / SR datasets from every approved trajectory of the app, with a held-out split by trajectory."""
    from ee_middleware.trainers.datasets.build import build_datasets

    out = ctx.path(DATA_DIR)
    replay_id = ctx.run.outputs("replay").get("replay_id")
    config = ctx.config.dataset_config(out, replay_id)
    summary = build_datasets(
        config, on_stage=lambda kind: ctx.progress.info(f"building {kind}"), on_sr_progress=lambda n, t: ctx.progress.bar("sr", n, t)
    )
    split = summary.get("split", {})
    files = {kind: file_entry(info["path"]) for kind, info in summary["datasets"].items()}
    heldout = {kind: file_entry(info["path"]) for kind, info in split.get("datasets", {}).items()}
    if not heldout.get("il"):
        raise JobError(
            f"The held-out rule ({_rule_settings(split.get('rule') or {})}) held out no trajectory with an expert action, so "
            "nothing can be evaluated. " + _heldout_fix(split.get("rule") or {}, ctx.config.app)
        )
    result = StageResult(
        inputs={"store": str(ctx.config.store), "source_hash": summary["source_hash"], "replay_id": replay_id},
        outputs={
            "data_dir": str(out),
            "datasets_json": file_entry(out / "datasets.json"),
            "trajectories": summary["trajectories"],
            "steps": summary["steps"],
            "rollouts": summary["rollouts"],
            "rows": {kind: info["rows"] for kind, info in summary["datasets"].items()},
            "heldout_rows": {kind: info["rows"] for kind, info in split.get("datasets", {}).items()},
            "train_trajectories": len(split.get("train_trajectories", [])),
            "heldout_trajectories": len(split.get("heldout_trajectories", [])),
            "heldout_ids_sample": split.get("heldout_trajectories", [])[:20],
            "split_rule": split.get("rule"),
            "files": files,
            "heldout_files": heldout,
            "details": {kind: {k: v for k, v in info.items() if k != "path"} for kind, info in summary["datasets"].items()},
        },
    )
    rows = ", ".join(f"{kind} {n}" for kind, n in result.outputs["rows"].items())
    result.summary = f"{rows} rows; {result.outputs['heldout_trajectories']} trajectories held out"
    left_out = left_out_rows(summary)
    tools = _tools_without_examples(ctx, summary, files)
    result.outputs.update(left_out=left_out, il_by_tool=tools["by_tool"], tools_without_examples=tools["lost"])
    if left_out:
        said = left_out_text(left_out)
        result.decisions.append(f"left out of the datasets: {said}")
        result.summary += f"; left out: {said}"
    for tool in tools["lost"]:
        line = lost_tool_text(tool)
        result.decisions.append(line)
        result.summary += f"; WARNING: {line}"
    after = _approved_after_select(ctx, split)
    if after:
        result.outputs["approved_after_select"] = after
        result.decisions.append(approved_after_select_text(after))
    return result


LEFT_OUT: dict[str, tuple[str, str]] = {
    "dropped_placeholder_not_in_prompt": (
        "its target writes a redacted value (a [REDACTED:kind:tag] placeholder, such as an e-mail address) that its prompt "
        "and tools never show, so the model could not learn where it comes from",
        "where such values are no secret for this app, record with that kind off (record_experience(..., "
        "redaction_kinds={'email': False})), or let the agent see the value (the user's message, a tool result) before it "
        "writes it; a vault does not help here: datasets never hold restored values",
    ),
    "malformed_calls_left_out": (
        "the model wrote the call malformed (its arguments were no JSON object): imitating it would teach the malformed call",
        "none needed",
    ),
    "unoffered_calls_left_out": (
        "the model called a tool it was never offered and the graph answered that it is no valid tool: imitating it would "
        "teach a made-up name",
        "none needed",
    ),
    "turns_without_input_left_out": (
        "the model was called with no message at all (the agent was invoked with an empty conversation and no system "
        "prompt): a row without a prompt teaches nothing, and training refuses it",
        "start the agent with the user's message",
    ),
    "calls_awaiting_review_left_out": (
        "a turn of a paused run that awaits a human review: the resumed run's trajectory teaches it as decided",
        "none needed",
    ),
    "errors_left_out": (
        "error observations over [datasets] iwm_max_error_share",
        "raise iwm_max_error_share in [datasets] to keep more of them",
    ),
    "repeats_left_out": ("rollouts that repeat another replay's call in the same state", "none needed"),
    "rollouts_after_call_awaiting_review_left_out": ("rollouts after a paused run's call that awaits a human review", "none needed"),
    "paused_turn_repeats_left_out": ("copies of a paused turn's calls that a resumed run holds", "none needed"),
    "expert_steps_after_unanswered_call_left_out": ("expert steps after a paused run's call that was never answered", "none needed"),
    "same_outcome_left_out": ("rollouts whose outcome is the expert call's own, shown as no alternative", "none needed"),
    "no_input": (
        "states where the model was called with no message at all (an empty conversation): a row without a prompt",
        "start the agent with the user's message",
    ),
    "same_outcome_only": (
        "states whose every alternative had the expert call's own outcome: no contrast to reflect on",
        "a higher [replay] k or another policy proposes more varied alternatives",
    ),
    "label_leak": ("the teacher's rationale named labels ('expert', 'Action 2')", "none needed (another teacher may leak less)"),
    "recommends_alternative": ("the teacher's rationale argued for an alternative's tool", "none needed (check the teacher)"),
    "empty": ("the teacher's rationale was empty", "check the [datasets] teacher"),
}
"""Per key that datasets.json records of a kind's rows left out (see ``trainers/datasets/build.py``): why, and the fix."""

ROLLOUTS_LEFT_OUT: dict[str, tuple[str, str]] = {
    "sandbox_failures": (
        "the sandbox failed on them (timeout, crash, memory)",
        "see `ee replay list` for the failures; fix the sandbox, then `ee replay run --again`",
    ),
    "unrestored": (
        "their redacted arguments could not be restored for the sandbox",
        "record with record_experience(..., vault=True) so that replay can restore them",
    ),
    "fidelity_mismatches": (
        "the sandbox answered the expert's own recorded call otherwise than production",
        "see the replay's fidelity mismatches; keep the tool's answers in the sandbox's world (docs/sandboxes.md)",
    ),
    "synthetic_grounded_on_held_out": (
        "synthetic rollouts whose experience model was shown held-out trajectories",
        "none needed",
    ),
}
"""The rollouts a build leaves out before any kind is built (datasets.json's top level): why, and the fix."""


def left_out_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """What a build's ``datasets.json`` (``summary``) records of the rows it left out, one entry per kind, split and reason
    with a count above 0: ``{"kind", "split" (train or held-out), "reason" (its key), "count", "why", "fix"}``; the
    rollouts left out before any kind was built are of kind ``rollouts``."""
    entries: list[dict[str, Any]] = []
    sides = [("train", summary.get("datasets") or {}), ("held-out", (summary.get("split") or {}).get("datasets") or {})]
    for split, kinds in sides:
        for kind, info in kinds.items():
            counts = {key: info.get(key) for key in LEFT_OUT}
            counts.update({key: n for key, n in (info.get("placeholders") or {}).items() if key in LEFT_OUT})
            counts.update({key: n for key, n in (info.get("dropped") or {}).items()})  # SR: rationales dropped, by guard
            for key, count in counts.items():
                if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                    why, fix = LEFT_OUT.get(key, (f"dropped: {key}", "see datasets.json"))
                    entries.append({"kind": kind, "split": split, "reason": key, "count": count, "why": why, "fix": fix})
    rollouts = {
        "sandbox_failures": (summary.get("sandbox_failures_left_out") or {}).get("total"),
        "unrestored": (summary.get("redaction") or {}).get("unrestored_rollouts_left_out"),
        "fidelity_mismatches": (summary.get("fidelity_mismatches_left_out") or {}).get("rollouts"),
        "synthetic_grounded_on_held_out": (summary.get("rollouts_left_out") or {}).get("synthetic_grounded_on_held_out"),
    }
    for key, count in rollouts.items():
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            why, fix = ROLLOUTS_LEFT_OUT[key]
            entries.append({"kind": "rollouts", "split": "all", "reason": key, "count": count, "why": why, "fix": fix})
    return entries


def left_out_text(left_out: list[dict[str, Any]]) -> str:
    """``il 12 (placeholder_not_in_prompt 10, held-out 2), ...``: the counts of :func:`left_out_rows`, per kind."""
    kinds: dict[str, list[str]] = {}
    for entry in left_out:
        side = " held-out" if entry["split"] == "held-out" else ""
        kinds.setdefault(entry["kind"], []).append(f"{entry['count']}{side} {entry['reason']}")
    return "; ".join(f"{kind} {', '.join(parts)}" for kind, parts in kinds.items())


def lost_tool_text(tool: dict[str, Any]) -> str:
    """The warning for a tool whose every expert call was left out of the IL training rows."""
    kinds = f" (its calls write redacted values: {', '.join(tool['redacted_kinds'])})" if tool.get("redacted_kinds") else ""
    return (
        f"tool {tool['tool']}: all {tool['expert_calls']} expert call(s) in the training trajectories were left out of IL{kinds}, "
        "so the candidate is never taught to call it"
    )


def _tools_without_examples(ctx: StageContext, summary: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """Per tool, the expert calls of the training trajectories and the calls the IL training rows teach (``by_tool``: tool ->
    ``{"expert_calls", "taught"}``, for tools with calls left out), and the tools none of whose calls is taught (``lost``,
    with the redaction kinds their calls write)."""
    import polars as pl

    from ee_middleware.capture.redaction import PLACEHOLDER
    from ee_middleware.store.registry import open_store

    ids = (summary.get("split") or {}).get("train_trajectories")
    if "il" not in files or not ids:
        return {"by_tool": {}, "lost": []}
    store = open_store(ctx.config.store, create=False)
    try:
        steps = store.steps(ids).filter(pl.col("action_kind") == "tool_call").select("tool_name", "arguments_json")
    finally:
        store.close()
    expert = Counter(steps["tool_name"].to_list())
    taught: Counter[str] = Counter()
    for completion in pl.read_parquet(files["il"]["path"], columns=["completion"])["completion"].to_list():
        for message in json.loads(completion or "[]"):
            for call in message.get("tool_calls") or [] if isinstance(message, dict) else []:
                taught[str((call.get("function") or {}).get("name"))] += 1
    by_tool = {tool: {"expert_calls": n, "taught": taught.get(tool, 0)} for tool, n in expert.most_common() if taught.get(tool, 0) < n}
    lost = []
    for tool, counts in by_tool.items():
        if counts["taught"] == 0:
            arguments = steps.filter(pl.col("tool_name") == tool)["arguments_json"].drop_nulls().to_list()
            kinds = sorted({m.group(0)[len("[REDACTED:") : -1].split(":")[0] for text in arguments for m in PLACEHOLDER.finditer(text)})
            lost.append({"tool": tool, "expert_calls": counts["expert_calls"], "redacted_kinds": kinds})
    return {"by_tool": by_tool, "lost": lost}


def _approved_after_select(ctx: StageContext, split: dict[str, Any]) -> dict[str, Any] | None:
    """The trajectories in the datasets that were approved after the run's select stage (the datasets are built from every
    approved trajectory of the app when they are built): this run neither selected nor replayed them; the next run does."""
    import polars as pl

    from ee_middleware.store.registry import open_store, trajectory_columns

    select = ctx.run.stage("select") or {}
    snapshot = (select.get("outputs") or {}).get("watermark_after")
    used = set(split.get("train_trajectories", [])) | set(split.get("heldout_trajectories", []))
    store = open_store(ctx.config.store, create=False)
    try:
        approved = trajectory_columns(store, ["id", "approval_at"], status="approved", app=ctx.config.app).select("id", "approval_at")
    finally:
        store.close()
    if snapshot is not None:
        approved = approved.filter(pl.col("approval_at") > datetime.fromisoformat(snapshot))
    ids = sorted(set(approved["id"].to_list()) & used)
    if not ids:
        return None
    return {"count": len(ids), "ids_sample": ids[:20], "select_finished_at": select.get("finished_at")}


def approved_after_select_text(after: dict[str, Any]) -> str:
    return (
        f"{after['count']} trajectories in the datasets were approved after this run's select stage "
        f"({after.get('select_finished_at') or '?'}): this run did not select or replay them (their rows are the expert's "
        "only); the next run selects and replays them"
    )


def _rule_settings(rule: dict[str, Any]) -> str:
    """A held-out rule (``split.rule`` of ``datasets.json``) as the [datasets] settings that gave it."""
    settings = [f"heldout_share = {rule['share']}, seed = {rule.get('seed', 0)}"] if rule.get("share") else []
    settings += [f"heldout_ids: {rule['ids']} ids"] if rule.get("ids") else []
    settings += [f"heldout_app = {rule['app']!r}"] if rule.get("app") else []
    settings += [f"heldout_started_{end} = {rule[f'started_{end}']}" for end in ("after", "before") if rule.get(f"started_{end}")]
    return "; ".join(settings) or "none"


def _heldout_fix(rule: dict[str, Any], app: str) -> str:
    """What to change in [datasets] when its held-out rule held out nothing."""
    if rule.get("ids"):
        return (
            f"None of the {rule['ids']} trajectory id(s) in heldout_ids is an approved trajectory of {app} with a tool call or answer: "
            "check the file against `ee traces list --status approved`."
        )
    if rule.get("app"):
        return f"heldout_app = {rule['app']!r} matched no approved trajectory learned from (app {app}): check the app name."
    if rule.get("started_after") or rule.get("started_before"):
        return "No approved trajectory started in the heldout_started_after/before window: move it, or use heldout_share."
    return "Raise heldout_share in [datasets] or approve more trajectories."


# --- train -------------------------------------------------------------------------------------------------


def train(ctx: StageContext) -> StageResult:
    """A LoRA candidate from the live adapter's base on this run's datasets (a completed adapter folder is reused)."""
    from ee_middleware.trainers.training import schedule as schedules
    from ee_middleware.trainers.training.api import ADAPTER_FILES
    from ee_middleware.trainers.training.api import train as run_training

    data = ctx.path(DATA_DIR)
    output = ctx.path(ADAPTER_DIR)
    live = _live_base(ctx)
    result = StageResult()
    base = ctx.config.base_model
    if live is not None and Path(live["base_model"]).is_dir():
        base = live["base_model"]
        result.decisions.append(f"trained from the base of the live adapter {live['name']}: {base}")
        if not same_place(base, ctx.config.base_model):  # a base_model given to move to another base: said, not silently dropped
            said = (
                f"warning: base_model {ctx.config.base_model} is not trained on: {ctx.config.app}'s live adapter {live['name']} "
                f"runs on {base}, and a candidate must run where it would replace it (base_model is used when no adapter is "
                "live). To move to another base, train for another app served from that base"
            )
            ctx.progress.info(said)
            result.decisions.append(said.removeprefix("warning: "))
    budget = ctx.config.budgets.max_train_steps
    preview = ctx.config.train_config(data, output, max_steps=None, base_model=base)
    rows = ctx.run.outputs("datasets").get("rows", {})
    per_update = preview.batch_size * preview.gradient_accumulation
    counts = {kind: rows.get(kind, 0) for kind in ("il", "iwm", "sr")}
    planned = sum(
        s.steps for s in schedules.plan(preview.schedule, counts, per_update=per_update, epochs=preview.epochs, max_steps=preview.max_steps)
    )
    max_steps = preview.max_steps
    if budget is not None and planned > budget:
        max_steps = budget
        result.budget_cuts.append(
            {
                "budget": "max_train_steps",
                "limit": budget,
                "stage": "train",
                "cut": f"training capped at {budget} of {planned} planned steps",
            }
        )
    config = ctx.config.train_config(data, output, max_steps=max_steps, base_model=base)
    complete = all((output / name).is_file() for name in ADAPTER_FILES) and (output / "manifest.json").is_file()
    if complete:
        result.decisions.append("the adapter folder was completed by an earlier attempt: reused")
        manifest = json.loads((output / "manifest.json").read_text())
    else:
        for partial in output.parent.glob(f"{output.name}.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)
        if output.exists():
            shutil.rmtree(output)
        ctx.progress.info(f"training schedule {config.schedule} for {max_steps or planned} steps on {config.base_model}")
        # The trainer's bars and summary table only where someone watches (with --json or --no-progress stdout stays clean).
        from ee_middleware.trainers.training.errors import MissingDatasetError

        try:
            manifest = run_training(config, progress=not isinstance(ctx.progress, QuietProgress)).manifest
        except MissingDatasetError as exc:  # (it named --data, which ee improve sets itself: this run's datasets stage)
            raise JobError(
                f"No {exc.kind.upper()} dataset at {exc.path}, where run {ctx.run.id}'s datasets stage built its datasets "
                f"(removed since?). Remove that stage's manifest ({ctx.run.stage_path('datasets')}) so that the next call "
                "builds them again, or start a new run: ee improve --new-run."
            ) from exc
    metrics = manifest["metrics"]
    result.inputs = {
        "base_model": config.base_model,
        "live_adapter": live,
        "datasets": {kind: info.get("sha256") for kind, info in manifest.get("datasets", {}).items()},
        "config": config.model_dump(mode="json"),
    }
    result.outputs = {
        "adapter_dir": str(output),
        "weights": file_entry(output / "adapter_model.safetensors"),
        "loss_png": str(output / "loss.png"),
        "base_folder": manifest["base_model"]["path"],
        "steps": metrics["steps"],
        "planned_steps": planned,
        "first_loss": metrics["first_loss"],
        "final_loss": metrics["final_loss"],
        "tokens": metrics["tokens"],
        "train_seconds": metrics["train_seconds"],
        "device": metrics["device"],
        "backend": metrics["backend"],
        "stages": metrics["stages"],
        "losses": manifest.get("losses", []),
    }
    from ee_middleware.trainers.training.report import loss_text

    result.summary = f"{metrics['steps']} steps, {loss_text(metrics)}"
    return result


def _live_base(ctx: StageContext) -> dict[str, Any] | None:
    """The app's live adapter and its base (None when none is live); the candidate must share the base."""
    from ee_middleware.adapters.registry import open_registry

    registry = open_registry(ctx.config.registry, create=True)
    name = registry.resolve(ctx.config.alias_name)
    if name is None:
        return None
    record = registry.get(name)
    return {"name": record.name, "base_model": record.base_model}


STAGE_FUNCTIONS: dict[str, Callable[[StageContext], StageResult]] = {
    "select": select,
    "replay": replay,
    "datasets": datasets,
    "train": train,
}
