"""The deploy gate: is a candidate run better than the baseline run on the same tasks?

Per suite, tasks are paired by id (a task's outcome is pass^k: every trial succeeded; with one
trial, its success). The delta of success rates gets a 95% confidence interval by Newcombe's
hybrid score method for paired proportions (method 10, 1998: Wilson intervals of each rate
combined with the pairs' correlation; it stays inside [-1, 1] and behaves at 0 or 100%), and the
paired test is **McNemar's exact test**: only discordant tasks (one run passes, the other fails)
carry information, and under "no difference" each is equally likely to go either way, so the count
is Binomial(b + c, 1/2). Exact, because suites are small and discordant counts often single
digits (the chi-square approximation is poor there); and deterministic, unlike a bootstrap, so the
same two runs always give the same gate decision.

The policy (``[gate]`` in a TOML file) decides: each suite needs ``min_tasks`` paired tasks; no
suite may lose more than ``max_regression`` (or, with ``block_significant_regression``, lose
significantly at ``alpha``); the pooled delta over all suites must be at least ``min_improvement``;
``require_significant`` also asks for a significant pooled improvement. Runs that measure no model are refused
whatever the policy: tasks the model server gave no answer to (down, timed out) or whose worker process died (the
same command runs them again once), a suite in which the model never answered (every task trial failed on its first
request: a wrong served-model name, an adapter that cannot load, every worker killed). A task whose worker process
died again on that rerun counts as failed, and a note says so.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ee_middleware._toml import build_config, layered_values
from ee_middleware.errors import ConfigError

if TYPE_CHECKING:
    from ee_middleware.adapters.records import AdapterRecord

Z95 = 1.959963984540054


class GatePolicy(BaseModel):
    """What the candidate must show (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # nan: "a finite number", not "<= 1 (got nan)"

    min_improvement: float = Field(0.0, ge=-1, le=1)
    max_regression: float = Field(0.02, ge=0, le=1)
    min_tasks: int = Field(20, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    require_significant: bool = False
    block_significant_regression: bool = True

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, nightly: bool = False, **overrides: Any) -> GatePolicy:
        """Defaults <- TOML ``[gate]`` table <- ``overrides``. ``nightly``: ``path`` is ee improve's file, read for its
        gate, so it may leave ``[gate]`` out."""
        return build_config(cls, layered_values(path, "gate", overrides, job="gate", nightly=nightly), "gate policy")


@dataclass(frozen=True)
class SuiteComparison:
    suite: str
    tasks: int
    candidate_rate: float
    baseline_rate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    both: int
    candidate_only: int
    baseline_only: int
    neither: int
    only_in_candidate: int
    only_in_baseline: int
    regressed: list[dict[str, Any]] = field(default_factory=list)
    """Tasks the baseline passed and the candidate failed: ``task_id`` and the candidate's ``reason``."""
    improved: list[str] = field(default_factory=list)
    """Tasks the candidate passed and the baseline failed."""
    missing: list[str] = field(default_factory=list)
    """Tasks the baseline ran and the candidate did not."""
    extra: list[str] = field(default_factory=list)
    """Tasks the candidate ran and the baseline did not."""
    candidate_cut_answers: int = 0
    """The candidate's answers (in this suite) cut off at ``max_tokens`` (finish reason ``length``)."""
    baseline_cut_answers: int = 0
    """The baseline's answers (in this suite) cut off at ``max_tokens``."""


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]
    suites: list[SuiteComparison]
    overall: SuiteComparison | None
    policy: dict[str, Any] = field(default_factory=dict)
    test: str = "McNemar exact (two-sided), paired by task; 95% CI: Newcombe hybrid score for paired proportions"
    notes: list[str] = field(default_factory=list)
    """How sure the decision is, where the policy did not ask: a tie, an improvement within the noise."""
    served_models: dict[str, dict[str, int]] = field(default_factory=dict)
    """``candidate`` and ``baseline``: each model the run's server said answered -> its task trials (empty for a run whose
    client did not say, or from before it was recorded)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "notes": self.notes,
            "test": self.test,
            "policy": self.policy,
            "suites": [asdict(s) for s in self.suites],
            "overall": asdict(self.overall) if self.overall else None,
            "served_models": self.served_models,
        }


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """95% CI for p1 - p2 with p1 = (a+b)/n (candidate) and p2 = (a+c)/n (baseline), paired (Newcombe method 10, with
    its continuity-corrected correlation: ad - bc less n/2 where it exceeds n/2, 0 where it lies from 0 to n/2; as
    Newcombe 1998 and biostatUZH's ``confIntPairedProportion`` compute it)."""
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n)
    l2, u2 = wilson(a + c, n)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    corrected = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    phi = corrected / math.sqrt(denominator) if denominator else 0.0
    delta = p1 - p2
    low = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = delta + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


RESULT_COLUMNS = (
    "suite",
    "task_id",
    "success",
    "trial",
    "reason",
    "no_answer",
    "cut_answers",
    "error_type",
    "steps",
    "request_refused",
    "server_refused",
    "served_model",
    "task_digest",
)
"""The columns of a run's results.parquet the gate reads (all but ``suite``, ``task_id`` and ``success`` where the run
has them)."""
REASON_CHARS = 300
"""How much of a failure's reason a gate reason quotes."""
UNDER_TEST = ("model",)
"""The run setting the gate compares: the model spec (its adapter included). Every other setting that changes the
answers (:meth:`~ee_middleware.evals.job.EvalJob.run_settings`) must be the same in both runs."""
CHECKED_PER_SUITE = ("trials",)
"""Run settings the gate checks per suite from the results instead (a reason of their own)."""


def task_outcomes(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, bool]]:
    """suite -> task id -> pass^k (every trial succeeded), from a run folder's results.parquet."""
    return _outcomes(_finished_results(run_dir))[0]


def failure_reasons(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """suite -> task id -> why it failed (its first failed trial's reason, and how many of its trials failed)."""
    return _failure_reasons(_results(Path(run_dir) / "results.parquet"))


def unanswered(run_dir: str | os.PathLike[str]) -> dict[str, int]:
    """suite -> how many task trials the model server gave no answer to (down, timed out) or whose worker process died
    (to run again), from results.parquet."""
    path = Path(run_dir) / "results.parquet"
    return _unanswered(_results(path)) if path.exists() else {}


def _results(path: Path) -> Any:
    """The :data:`RESULT_COLUMNS` a results.parquet has, read once (a polars DataFrame)."""
    import polars as pl

    try:
        scan = pl.scan_parquet(path)
        names = set(scan.collect_schema().names())
        return scan.select([c for c in RESULT_COLUMNS if c in names]).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:  # (was "unexpected ComputeError ... a bug in ee-middleware")
        raise ConfigError(
            f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): it is damaged. "
            f"Write it again from the run's results.jsonl: run the same `ee eval run ... --out {path.parent}` command again."
        ) from exc


def _finished_results(run_dir: str | os.PathLike[str]) -> Any:
    """:func:`_results` of a finished run's folder; a :class:`ConfigError` saying what to do for any other folder."""
    from ee_middleware.evals.runner import unfinished

    if not Path(run_dir).is_dir():
        raise ConfigError(f"The run folder {run_dir} does not exist: point at a folder written by `ee eval run --out`.")
    why = unfinished(run_dir)
    if why is not None:
        raise ConfigError(
            f"The run in {run_dir} is unfinished: {why}. Run the same `ee eval run ... --out {run_dir}` command again to finish it "
            "(it resumes where it stopped), then gate."
        )
    path = Path(run_dir) / "results.parquet"
    if not path.exists():
        raise ConfigError(f"No results.parquet in {run_dir}: point at a folder written by `ee eval run --out` (a finished run).")
    return _results(path)


def _outcomes(frame: Any) -> tuple[dict[str, dict[str, bool]], dict[str, int]]:
    """:func:`task_outcomes` and suite -> trials per task (the most any task ran), from :func:`_results`."""
    import polars as pl

    grouped = frame.group_by("suite", "task_id").agg(pl.col("success").all().alias("ok"), pl.len().alias("trials"))
    out: dict[str, dict[str, bool]] = defaultdict(dict)
    trials: dict[str, int] = defaultdict(int)
    for row in grouped.iter_rows(named=True):
        out[row["suite"]][row["task_id"]] = bool(row["ok"])
        trials[row["suite"]] = max(trials[row["suite"]], int(row["trials"]))
    return dict(out), dict(trials)


def _failure_reasons(frame: Any) -> dict[str, dict[str, str]]:
    """:func:`failure_reasons` from :func:`_results`."""
    import polars as pl

    if "reason" not in frame.columns:
        return {}
    order = ["suite", "task_id", *(["trial"] if "trial" in frame.columns else [])]
    grouped = (
        frame.select(*order, "success", "reason")
        .sort(order)
        .group_by("suite", "task_id", maintain_order=True)
        .agg(pl.col("reason").filter(~pl.col("success")).first(), (~pl.col("success")).sum().alias("failed"), pl.len().alias("trials"))
    )
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for row in grouped.filter(pl.col("failed") > 0).iter_rows(named=True):
        reason = row["reason"] or "no reason recorded"
        trials = f"failed {row['failed']} of {row['trials']} trials: " if row["trials"] > 1 else ""
        out[row["suite"]][row["task_id"]] = trials + reason
    return dict(out)


def _cut_answers(frame: Any) -> dict[str, int]:
    """suite -> the answers cut off at ``max_tokens``, from :func:`_results` (nothing for a run from before they were counted)."""
    import polars as pl

    if "cut_answers" not in frame.columns:
        return {}
    grouped = frame.group_by("suite").agg(pl.col("cut_answers").fill_null(0).sum())
    return {str(suite): int(n) for suite, n in grouped.iter_rows() if n}


UNRECORDED = "the settings of the runs could not be compared"
"""How the note starts that a gate gives where a run folder holds no readable ``run.json`` (a folder copied without it)."""


def setting_differences(candidate_dir: str | os.PathLike[str], baseline_dir: str | os.PathLike[str]) -> list[str]:
    """``[eval] SETTING: BASELINE -> CANDIDATE`` for each setting that changes the answers which the two runs' ``run.json``
    record differently, but the model under test (:data:`UNDER_TEST`) and :data:`CHECKED_PER_SUITE`; none where a run
    folder holds no job record (a folder not written by ``ee eval run``).

    An older run record's relative split text that names nothing from the current folder is the other run's split when
    it names that split's folder (:func:`~ee_middleware.evals.job.same_split`, ``tasks_paired``): :func:`gate` pairs
    the runs' tasks by id (a ``traces:`` task is a held-out trajectory) and refuses two different sets of them."""
    from ee_middleware.evals.job import EvalJob, settings_changes

    baseline, candidate = _recorded_run(baseline_dir), _recorded_run(candidate_dir)
    if baseline is None or candidate is None:
        return []
    before, after = (EvalJob.recorded_settings(record["job"], record.get("settings")) for record in (baseline, candidate))
    return settings_changes(before, after, ignore=UNDER_TEST + CHECKED_PER_SUITE, tasks_paired=True)


def _recorded_run(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run folder's ``run.json`` record, when it holds a job, or None."""
    from ee_middleware.evals.runner import RUN_FILE

    try:
        record = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("job"), dict) else None


def _recorded_job(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The job a run folder's ``run.json`` records, or None."""
    record = _recorded_run(run_dir)
    return record["job"] if record is not None else None


def _unanswered(frame: Any) -> dict[str, int]:
    """:func:`unanswered` from :func:`_results` (nothing for a run from before no_answer was recorded)."""
    import polars as pl

    if "no_answer" not in frame.columns:
        return {}
    answered_none = frame.filter(pl.col("no_answer"))
    return {str(suite): int(n) for suite, n in answered_none.group_by("suite").len().iter_rows()}


def unscored_suites(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    """suite -> why, for the suites a run's ``summary.json`` lists with no task scored (every task excluded, or none)."""
    try:
        data = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    for suite in data.get("suites", []) if isinstance(data, dict) else []:
        if isinstance(suite, dict) and suite.get("suite") and not suite.get("tasks"):
            excluded = suite.get("excluded_reasons") or {}
            out[str(suite["suite"])] = (
                "; ".join(f"{count} task(s) excluded: {why}" for why, count in excluded.items()) or "the suite has no task"
            )
    return out


def compare(suite: str, candidate: dict[str, bool], baseline: dict[str, bool], why: dict[str, str] | None = None) -> SuiteComparison:
    """The paired comparison; with ``why`` (task id -> the candidate's failure reason) it also names the tasks that moved."""
    shared = sorted(set(candidate) & set(baseline))
    a = sum(candidate[t] and baseline[t] for t in shared)
    b = sum(candidate[t] and not baseline[t] for t in shared)
    c = sum(baseline[t] and not candidate[t] for t in shared)
    d = len(shared) - a - b - c
    n = len(shared)
    low, high = newcombe_paired(a, b, c, d)
    return SuiteComparison(
        suite=suite,
        tasks=n,
        candidate_rate=(a + b) / n if n else 0.0,
        baseline_rate=(a + c) / n if n else 0.0,
        delta=(b - c) / n if n else 0.0,
        ci_low=low,
        ci_high=high,
        p_value=mcnemar_exact(b, c),
        both=a,
        candidate_only=b,
        baseline_only=c,
        neither=d,
        only_in_candidate=len(set(candidate) - set(baseline)),
        only_in_baseline=len(set(baseline) - set(candidate)),
        regressed=[{"task_id": t, "reason": why.get(t)} for t in shared if baseline[t] and not candidate[t]] if why is not None else [],
        improved=[t for t in shared if candidate[t] and not baseline[t]] if why is not None else [],
        missing=sorted(set(baseline) - set(candidate)) if why is not None else [],
        extra=sorted(set(candidate) - set(baseline)) if why is not None else [],
    )


def gate(
    candidate_dir: str | os.PathLike[str],
    baseline_dir: str | os.PathLike[str],
    policy: GatePolicy = GatePolicy(),
    *,
    allow_mixed_models: bool = False,
) -> GateResult:
    """Compare two runs suite by suite and apply ``policy``; reasons name every rule that failed.

    A run whose answers came from more than one served model (a run through a router's alias resumed after a promote)
    is refused, unless ``allow_mixed_models`` (then a note names them)."""
    results = {"candidate": _finished_results(candidate_dir), "baseline": _finished_results(baseline_dir)}  # each file read once
    digests = {
        "candidate": _task_digests(results["candidate"], candidate_dir),
        "baseline": _task_digests(results["baseline"], baseline_dir),
    }
    (candidate, candidate_trials), (baseline, baseline_trials) = _outcomes(results["candidate"]), _outcomes(results["baseline"])
    why = _failure_reasons(results["candidate"])
    cut = {role: _cut_answers(frame) for role, frame in results.items()}
    served = {role: _served_models(frame) for role, frame in results.items()}
    reasons: list[str] = []
    mixed_notes: list[str] = []
    for role, run_dir in (("candidate", candidate_dir), ("baseline", baseline_dir)):
        if len(served[role]) > 1:
            listed = ", ".join(f"{name} ({n} task trial(s))" for name, n in served[role].items())
            what = f"the {role} run's answers come from {len(served[role])} served models ({listed})"
            if allow_mixed_models:
                mixed_notes.append(f"{what}; its score mixes them (allowed by --allow-mixed-models)")
            else:
                reasons.append(
                    f"{what}: the model behind the name it asked for changed while it ran or before its resume (a promote "
                    f"behind a router's alias), so its score is no measure of one model; evaluate one model in a new --out "
                    f"folder (by its own served name), or pass --allow-mixed-models to gate it anyway ({run_dir})"
                )
    unrecorded = [
        f"{role} ({run_dir})"
        for role, run_dir in (("candidate", candidate_dir), ("baseline", baseline_dir))
        if _recorded_run(run_dir) is None
    ]
    if unrecorded:  # a folder copied without its run.json: nothing says the settings were the same
        mixed_notes.append(
            f"{UNRECORDED}: no readable run.json with the job in {' and '.join(unrecorded)} "
            "(a folder copied without it?); other max_tokens, temperature or seeds would make the delta measure the settings"
        )
    changed = setting_differences(candidate_dir, baseline_dir)
    if changed:  # another max_tokens (answers cut), temperature or seed: the delta would measure the settings
        split = any(change.startswith("[eval] split:") for change in changed)
        reasons.append(
            f"the runs were made with other settings ({'; '.join(changed)}: the baseline's -> the candidate's), so their scores "
            "would measure the settings, not the model; run both with the same settings (all but the model)"
            + (
                ": for the split, run `ee eval run` of one of them again with the other's --split (the same datasets.json, "
                "or a copy with the same ids) into its --out: it resumes, re-scoring only the trajectories the two splits "
                "hold out differently"
                if split
                else ""
            )
        )
    comparisons = []
    for role, run_dir in (("candidate", candidate_dir), ("baseline", baseline_dir)):
        deaths = _died_once(results[role])
        for suite, n in sorted(_unanswered(results[role]).items()):
            if n > deaths.get(suite, 0):
                reasons.append(
                    f"{suite}: the model server gave no answer on {n - deaths.get(suite, 0)} task trial(s) of the {role} run "
                    f"(down or timed out), so they say nothing of the model; run the same `ee eval run ... --out {run_dir}` "
                    "again once it is up (it retries them)"
                )
        silent = _never_answered(results[role])
        for suite, n in sorted(deaths.items()):
            if suite not in silent:  # a suite every task of which died is named below
                reasons.append(
                    f"{suite}: the worker process running {n} task trial(s) of the {role} run died (killed out of memory, or "
                    "a crash in the model's library), which says nothing of the model; run the same `ee eval run ... --out "
                    f"{run_dir}` again, with fewer --workers if memory ran short (it runs them again, once)"
                )
        reasons += _never_answered_reasons(silent, role, run_dir)
        reasons += _server_refused_reasons(results[role], role, run_dir)
    unscored = {suite: (cause, run_dir) for run_dir in (baseline_dir, candidate_dir) for suite, cause in unscored_suites(run_dir).items()}
    for suite, (cause, run_dir) in sorted(unscored.items()):
        if suite not in candidate and suite not in baseline:
            way_out = (
                f": the run records it from a command that stopped before running any of its tasks (as an older version "
                f"kept such a suite); run the same `ee eval run ... --out {run_dir}` command again, which leaves it out"
                if _phantom(run_dir, suite)
                else ""
            )
            reasons.append(f"{suite}: no task was scored ({cause}){way_out}")
    for suite in sorted(set(candidate) | set(baseline)):
        if suite not in candidate or suite not in baseline:
            reasons.append(f"{suite}: only the {'candidate' if suite in candidate else 'baseline'} ran it; run both on the same suites")
            continue
        result = compare(suite, candidate[suite], baseline[suite], why.get(suite, {}))
        result = replace(result, candidate_cut_answers=cut["candidate"].get(suite, 0), baseline_cut_answers=cut["baseline"].get(suite, 0))
        comparisons.append(result)
        edited = _other_tasks_of_one_id(digests["candidate"].get(suite, {}), digests["baseline"].get(suite, {}))
        if edited:  # a task file, its data or a checkout changed between the runs: the delta would measure that change
            reasons.append(
                f"{suite}: {len(edited)} task(s) of the same id are other tasks in the two runs ({_some(edited)}): their inputs, "
                "expected outputs or world differ (the suite's task file, data or checkout changed between the runs, or the "
                "ee-middleware versions that ran them build its tasks otherwise), so the "
                "delta would measure that change, not the model; run both on the same tasks (the baseline again, into a new "
                "--out, on the tasks as they are now)"
            )
        if candidate_trials[suite] != baseline_trials[suite]:  # pass^3 is harder than pass^1: the delta would measure k, not the model
            reasons.append(
                f"{suite}: the candidate ran {candidate_trials[suite]} trial(s) per task and the baseline {baseline_trials[suite]}, "
                "so their pass^k are not comparable; run both with the same --trials"
            )
        reasons += _suite_reasons(result, policy)
    pooled_c = {f"{s}/{t}": v for s in candidate for t, v in candidate[s].items() if s in baseline}
    pooled_b = {f"{s}/{t}": v for s in baseline for t, v in baseline[s].items() if s in candidate}
    overall = compare("overall", pooled_c, pooled_b) if comparisons else None
    if overall is not None:
        overall = replace(
            overall,
            candidate_cut_answers=sum(s.candidate_cut_answers for s in comparisons),
            baseline_cut_answers=sum(s.baseline_cut_answers for s in comparisons),
        )
    if overall is None:
        if not unscored:
            reasons.append("no suite was run by both runs")
    else:
        if overall.delta < policy.min_improvement:
            reasons.append(f"overall: delta {overall.delta:+.3f} is below the required improvement {policy.min_improvement:+.3f}")
        if policy.require_significant and not (overall.delta > 0 and overall.p_value < policy.alpha):
            reasons.append(_not_significant(overall, policy))
    compared = {s.suite for s in comparisons}
    died = {role: {k: v for k, v in _died_twice(frame).items() if k in compared} for role, frame in results.items()}
    return GateResult(
        passed=not reasons,
        reasons=reasons,
        suites=comparisons,
        overall=overall,
        policy=policy.model_dump(),
        notes=_notes(overall, policy) + _cut_notes(comparisons) + _died_notes(died) + mixed_notes,
        served_models=served,
    )


def _task_digests(frame: Any, run_dir: str | os.PathLike[str]) -> dict[str, dict[str, set[str]]]:
    """suite -> task id -> the digests of what the task was (:func:`~ee_middleware.evals.runner.task_digest`) its trials
    recorded: from results.parquet, or for a run written before it held them, from its journal (results.jsonl); a trial
    that recorded none (an older version's) tells nothing."""
    import polars as pl

    from ee_middleware.evals.runner import JOURNAL, read_journal

    if "task_digest" in frame.columns:
        rows = frame.filter(pl.col("task_digest").is_not_null()).select("suite", "task_id", "task_digest").iter_rows()
    else:  # the journal also keeps rows of tasks the run's results left out (a smaller :N, another split): not those
        scored = {(str(suite), str(task)) for suite, task in frame.select("suite", "task_id").iter_rows()}
        journal = read_journal(Path(run_dir) / JOURNAL)
        rows = (
            (r.get("suite"), r.get("task_id"), r.get("task_digest"))
            for r in journal
            if (str(r.get("suite")), str(r.get("task_id"))) in scored
        )
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for suite, task_id, digest in rows:
        if isinstance(digest, str) and digest:
            out[str(suite)][str(task_id)].add(digest)
    return out


def _other_tasks_of_one_id(candidate: Mapping[str, set[str]], baseline: Mapping[str, set[str]]) -> list[str]:
    """The ids both runs hold whose recorded task digests have none in common: not the same task under one id."""
    return sorted(t for t in set(candidate) & set(baseline) if not candidate[t] & baseline[t])


def _some(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f", ... and {len(ids) - shown} more" if len(ids) > shown else "")


def _served_models(frame: Any) -> dict[str, int]:
    """Each model a run's :func:`_results` say answered -> its task trials (nothing for a run from before it was recorded)."""
    from ee_middleware.evals.report import served_models

    if "served_model" not in frame.columns:
        return {}
    return served_models(frame.select("served_model").to_dicts())


def check_runs_of_adapter(
    candidate_dir: str | os.PathLike[str],
    baseline_dir: str | os.PathLike[str],
    name: str,
    paths: tuple[str, ...] = (),
    *,
    registered: AdapterRecord | None = None,
    versions: Mapping[str, str] | None = None,
) -> None:
    """Refuse (:class:`ConfigError`) to record a gate on the adapter ``name`` from runs that did not gate it: the same run
    folder as candidate and baseline, a candidate run whose model is not ``name``, or a baseline run whose model is
    ``name`` (a copy of the candidate's run, ``--model NAME`` by mistake, the app's alias once ``name`` went live): a run
    of ``name`` against a run of ``name`` ties whatever it does. A run's model is read from its answers (the served
    model the server said answered: behind a router's alias, the live adapter's own name), else from its ``run.json``
    (``openai:URL#NAME``, or ``local:BASE@DIR`` with the adapter's folder: one of ``paths``, or a folder named
    ``name``).

    ``registered``: ``name``'s registry record (its ``path`` and ``source_path`` are then among ``paths``). A
    ``local:BASE@DIR`` run is then a run of ``name`` by what it evaluated, not by its folder: the adapter content hash its
    ``run.json`` records must be ``registered.content_hash`` (a folder retrained since the run holds other weights than
    it evaluated). A run that records none (made by an older version) counts as a run of ``name`` only when ``DIR`` is
    the registry's own copy, which the registry never changes, with that content now; a candidate run that cannot say
    which weights it evaluated is refused. ``versions``: the registered content hashes -> their names, to name the
    version a run evaluated instead."""
    candidate, baseline = Path(candidate_dir), Path(baseline_dir)
    if registered is not None:
        paths = tuple(dict.fromkeys((*paths, registered.path, registered.source_path)))
    if candidate.resolve() == baseline.resolve():
        raise ConfigError(same_run_folder(candidate, name))
    is_run, why = _run_of_adapter(candidate, name, paths, registered, versions or {})
    if is_run is not True:  # a run that cannot tell which weights it evaluated is no run of them
        local = f"local:{_base_of(candidate) or 'BASE'}@{registered.path if registered is not None else 'ADAPTER_DIR'}"
        folder = "" if registered is not None else " with its registered folder"
        other = _evaluated_version(candidate, versions or {})
        raise ConfigError(
            f"The candidate run {candidate.resolve()} did not evaluate {name}: {why}. A gate recorded on {name} decides "
            f"whether `ee adapters promote {name}` goes through, so its candidate must be a run of {name}: evaluate it by "
            f"its served name (ee eval run --endpoint URL --model {name} ...) or as {local}{folder}{_into_new_out(candidate)}, "
            "then gate that run"
            + (f"; or, to record this gate on the version the run evaluated, pass --adapter {other}." if other and other != name else ".")
        )
    is_run, why = _run_of_adapter(baseline, name, paths, registered, versions or {})
    if is_run is None:  # it ran from one of the adapter's folders and cannot tell with which weights
        raise ConfigError(
            f"The baseline run {baseline.resolve()} cannot tell which weights it evaluated ({why}), so it may be {name} "
            f"itself, and a tie recorded on {name} would let `ee adapters promote {name}` through. Evaluate the live model "
            f"again from where its weights cannot change (by its served name, or as local:{_base_of(baseline) or 'BASE'}@ the "
            "registered copy of the live version: `ee adapters list` names it, `ee adapters show VERSION` prints its folder)"
            f"{_into_new_out(baseline)}, on the same suites, then gate again."
        )
    if is_run is not False:  # nor the live model's, when it ran from one of the adapter's folders
        raise ConfigError(
            f"The baseline run {baseline.resolve()} evaluated {name} itself ({why}), so the gate would compare {name} with "
            f"itself: the runs tie whatever it does, and a tie recorded on {name} would let `ee adapters promote {name}` "
            "through. Give --baseline a run of the live model (by its served name, or the app's alias before the "
            f"promote), on the same suites, then gate again."
        )


def _base_of(run: Path) -> str | None:
    """The base model folder of the ``local:BASE[@ADAPTER]`` run in ``run``, as its ``run.json`` has it; else None."""
    from ee_middleware.models.spec import parse_model_spec

    job = _recorded_job(run)
    try:
        parsed = parse_model_spec(job["model"]) if job else None
    except Exception:  # noqa: BLE001 - a spec this version cannot read: the advice names BASE
        return None
    return parsed.path if parsed is not None and parsed.kind == "local" else None


def _evaluated_version(run: Path, versions: Mapping[str, str]) -> str | None:
    """The registered adapter (of ``versions``: content hash -> name) whose weights the run in ``run`` recorded
    evaluating, if any."""
    record = _recorded_run(run)
    adapter = record.get("adapter") if record else None
    evaluated = adapter.get("content_hash") if isinstance(adapter, dict) else None
    return versions.get(evaluated) if isinstance(evaluated, str) else None


def _into_new_out(run: Path) -> str:
    """The advice to evaluate into a new ``--out`` when ``run`` holds a run already (resuming it with other weights is
    refused: its results would be of two adapters)."""
    return f" into a new --out (not {run}: it holds that run's results)" if (run / "run.json").is_file() else ""


def same_run_folder(run: Path, candidate: str) -> str:
    """Why a gate of the run folder ``run`` against itself is refused (``candidate``: what the candidate run is of)."""
    return (
        f"--candidate and --baseline are the same run folder ({run.resolve()}): a run gated against itself ties whatever "
        f"the model, so it says nothing of {candidate}. Give --candidate the run of {candidate} and --baseline the run of "
        "the live model, on the same suites."
    )


def _run_of_adapter(
    run: Path, name: str, paths: tuple[str, ...], registered: AdapterRecord | None = None, versions: Mapping[str, str] | None = None
) -> tuple[bool | None, str]:
    """Whether the run in ``run`` evaluated the adapter ``name`` (see :func:`check_runs_of_adapter`; None: it ran from
    one of its folders, but cannot tell with which weights), and what says so or what its model was instead."""
    served = _served_models(_finished_results(run))
    if served:
        answered = ", ".join(served)
        return name in served, f"its answers came from {answered}"
    record = _recorded_run(run)
    spec = record["job"].get("model") if record else None
    if not isinstance(spec, str):
        return False, "its run.json records no model"
    from ee_middleware.errors import hide_credentials

    named = _spec_names_adapter(spec, name, paths)
    shown = f"its model is {hide_credentials(spec)}"
    if registered is None or not _local_adapter(spec):
        return named, shown
    return _evaluated_content(record or {}, spec, named, shown, registered, versions or {})


def _evaluated_content(
    record: dict[str, Any], spec: str, named: bool, shown: str, registered: AdapterRecord, versions: Mapping[str, str]
) -> tuple[bool | None, str]:
    """Whether the ``local:BASE@DIR`` run whose ``run.json`` is ``record`` evaluated the registered adapter's weights
    (see :func:`check_runs_of_adapter`; ``named``: whether ``DIR`` is one of its folders; None: it cannot tell), and
    why."""
    from ee_middleware.evals.job import adapter_identity

    mine = registered.content_hash
    if "adapter" not in record:  # an older version's run: only the registry's copy is known not to have changed since
        folder = _adapter_folder(spec)
        if folder is not None and folder == Path(registered.path).expanduser().resolve():
            now = (adapter_identity(spec) or {}).get("content_hash")
            if now == mine:
                return True, f"{shown}, {registered.name}'s registered copy, whose files the registry never changes"
            return False, (
                f"{shown}, {registered.name}'s registered copy, but its files are no longer what was registered (content "
                f"hash {str(now)[:12]}, registered {mine[:12]}): check it with `ee adapters show {registered.name}`"
            )
        if not named:
            return False, shown
        return None, (
            f"{shown}, and it was made by an older version of ee, which did not record the content of the adapter it "
            f"evaluated; its folder {folder} is not {registered.name}'s registered copy ({registered.path}, which the "
            "registry never changes), so its files may have changed since the run (retrained into the same folder) and "
            "nothing tells which weights it evaluated"
        )
    adapter = record.get("adapter")
    evaluated = adapter.get("content_hash") if isinstance(adapter, dict) else None
    if not evaluated:
        unknown = adapter.get("unknown") if isinstance(adapter, dict) else None
        why = f"{shown}, and the run cannot tell which weights it evaluated ({unknown or 'no adapter content recorded'})"
        return (None if named else False), why
    if evaluated == mine:  # from a copy of its folder too
        return True, shown if named else f"{shown}, whose adapter content (hash {mine[:12]}) is {registered.name}'s"
    other = versions.get(evaluated)
    return False, (
        f"{shown}, and the adapter it evaluated there had content hash {evaluated[:12]}"
        + (f" ({other} in the registry)" if other else " (no registered version)")
        + f", while {registered.name} is content {mine[:12]}"
        + (
            ": the folder's files changed after the run (retrained or copied into the same folder?), so the run is of other weights"
            if named
            else ""
        )
    )


def _local_adapter(spec: str) -> bool:
    """Whether ``spec`` is ``local:BASE@ADAPTER``."""
    return _adapter_folder(spec) is not None


def _adapter_folder(spec: str) -> Path | None:
    """The adapter folder of a ``local:BASE@ADAPTER`` spec, resolved; None for any other model."""
    from ee_middleware.models.spec import parse_model_spec

    try:
        parsed = parse_model_spec(spec)
    except Exception:  # noqa: BLE001 - a spec this version cannot read names no adapter
        return None
    if parsed.kind != "local" or not parsed.adapter:
        return None
    return Path(parsed.adapter).expanduser().resolve()


def _spec_names_adapter(spec: str, name: str, paths: tuple[str, ...]) -> bool:
    """Whether the model spec ``spec`` is the adapter ``name``: served under that name, or loaded from its folder."""
    from ee_middleware.models.spec import parse_model_spec

    try:
        parsed = parse_model_spec(spec)
    except Exception:  # noqa: BLE001 - a spec this version cannot read names no adapter
        return False
    if parsed.kind == "openai":
        return parsed.model == name
    if parsed.kind == "local" and parsed.adapter:
        folder = Path(parsed.adapter).expanduser()
        known = {Path(p).expanduser().resolve() for p in paths if p}
        return folder.name == name or folder.resolve() in known
    return False


def _never_answered(frame: Any) -> dict[str, tuple[int, str]]:
    """:func:`~ee_middleware.evals.runner.never_answered` of a run's :func:`_results` (nothing for a run from before
    error types were recorded)."""
    from ee_middleware.evals.runner import never_answered

    return never_answered(frame.to_dicts()) if "error_type" in frame.columns else {}


def _never_answered_reasons(silent: dict[str, tuple[int, str]], role: str, run_dir: str | os.PathLike[str]) -> list[str]:
    """Why a run's suites in which its model never answered (``silent``, :func:`_never_answered`: every task trial
    failed on its first request, a wrong served-model name, an adapter that cannot load, or its worker process died) are
    no measure of the model."""
    reasons = []
    for suite, (trials, reason) in sorted(silent.items()):
        quoted = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + "..."
        reasons.append(
            f"{suite}: the {role} run has no answer from its model: all {trials} task trial(s) failed before its first answer "
            f"({quoted}), so it measures the model's setup, not the model; fix that (the served model's name, the adapter's "
            f"files, the model client; for worker processes that died, the memory each needs: fewer --workers) and run "
            f"`ee eval run ... --out {run_dir}` again (those trials run again)"
        )
    return reasons


def _server_refused_reasons(frame: Any, role: str, run_dir: str | os.PathLike[str]) -> list[str]:
    """Why a run holding task trials whose request the model server refused to render (``server_refused``: its chat
    template failed on the conversation) is no measure of the model on them (nothing for a run from before it was
    recorded)."""
    import polars as pl

    if "server_refused" not in frame.columns:
        return []
    reasons = []
    refused = frame.filter(pl.col("server_refused")).sort("suite", "task_id", "trial")
    for (suite,), rows in refused.group_by("suite", maintain_order=True):
        reason = str(rows["reason"][0] if "reason" in rows.columns and rows["reason"][0] else "no reason recorded")
        quoted = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + "..."
        reasons.append(
            f"{suite}: the model server refused to render the request of {rows.height} task trial(s) of the {role} run before "
            f"its model answered it ({quoted}): most often its chat template failing on the conversation, else its check of "
            f"the request (a tool name or schema it does not take), so those failures measure the server, not the model; fix "
            f"what it names (the template: --chat-template, or the model's own) and run `ee eval run ... --out {run_dir}` "
            "again (those trials run again)"
        )
    return reasons


def _died(frame: Any, *, again: bool) -> Any:
    """The rows of :func:`_results` whose worker process died: once (``no_answer``: they run again), or, with ``again``,
    on the rerun too (they count as failed)."""
    import polars as pl

    if "error_type" not in frame.columns or "no_answer" not in frame.columns:
        return frame.clear()
    return frame.filter((pl.col("error_type") == "worker_died") & (pl.col("no_answer") != again))


def _died_once(frame: Any) -> dict[str, int]:
    """suite -> how many task trials of :func:`_results` lost their worker process once (the same command runs them again)."""
    return {str(suite): int(n) for suite, n in _died(frame, again=False).group_by("suite").len().iter_rows()}


def _died_twice(frame: Any) -> dict[str, list[str]]:
    """suite -> the ids of the tasks of :func:`_results` whose worker process died on them on two commands (failed)."""
    out: dict[str, list[str]] = defaultdict(list)
    for suite, task_id in _died(frame, again=True).select("suite", "task_id").sort("suite", "task_id").iter_rows():
        out[str(suite)].append(str(task_id))
    return dict(out)


def _died_notes(died: dict[str, dict[str, list[str]]]) -> list[str]:
    """Per run, the compared tasks whose worker process died on the command that ran them again too: they count as
    failures, though a death (out of memory, a crash in a model library) is no answer of the model."""
    notes = []
    for role in ("baseline", "candidate"):
        if died.get(role):
            where = "; ".join(
                f"{suite}: {', '.join(ids[:5])}" + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
                for suite, ids in sorted(died[role].items())
            )
            notes.append(
                f"the {role} run counts {sum(len(ids) for ids in died[role].values())} task trial(s) as failed because the "
                f"worker process running them died, on the command that ran them again too ({where}): killed out of memory "
                "or a crash in the model's library, not an answer of the model, so the score may show that rather than the "
                "model (run both with fewer --workers to measure those tasks)"
            )
    return notes


def _phantom(run_dir: str | os.PathLike[str], suite: str) -> bool:
    """Whether ``run_dir``'s ``run.json`` records ``suite`` that no command of it ran (not in ``excluded``, written for
    every suite a command ran): left by an older version's command that stopped before running its tasks. The same
    command run again leaves it out."""
    from ee_middleware.evals.runner import RUN_FILE

    try:
        record = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or not isinstance(record.get("excluded"), dict):
        return False  # a record from before ``excluded``: every suite it names was kept
    return suite in (record.get("suite_names") or []) and suite not in record["excluded"]


def _cut_notes(comparisons: list[SuiteComparison]) -> list[str]:
    """Per run, its answers cut off at ``max_tokens`` in the compared suites: they score as failures, whatever the model."""
    notes = []
    for role in ("baseline", "candidate"):
        counts = [(s.suite, getattr(s, f"{role}_cut_answers")) for s in comparisons if getattr(s, f"{role}_cut_answers")]
        if counts:
            where = ", ".join(f"{suite}: {n}" for suite, n in counts)
            notes.append(
                f"the {role} run has {sum(n for _, n in counts)} answer(s) cut off at max_tokens (finish_reason 'length'; "
                f"{where}): a cut answer usually scores as a failure, so that run's score may show its token limit rather "
                "than the model"
            )
    return notes


def _not_significant(overall: SuiteComparison, policy: GatePolicy) -> str:
    """The reason ``require_significant`` fails: what the pooled comparison showed instead of a significant gain."""
    test = f"McNemar p = {overall.p_value:.3g}"
    moved = f"{overall.candidate_only} task(s) gained, {overall.baseline_only} lost, {overall.tasks} paired"
    asks = "require_significant asks for a significant improvement"
    if overall.delta > 0:
        return f"overall: the improvement is not significant ({test}, alpha {policy.alpha})"
    if overall.delta < 0 and overall.p_value < policy.alpha:
        return f"overall: a significant regression, delta {overall.delta:+.3f} ({moved}; {test} < alpha {policy.alpha}), where {asks}"
    if overall.delta < 0:
        return f"overall: a regression, delta {overall.delta:+.3f} ({moved}; {test}), where {asks}"
    return f"overall: no improvement, delta {overall.delta:+.3f} ({moved}), where {asks}"


def _notes(overall: SuiteComparison | None, policy: GatePolicy) -> list[str]:
    """What the numbers cannot tell apart, said where the policy let it pass: a tie, a gain within the noise."""
    if overall is None or not overall.tasks:
        return []
    interval = f"95% CI [{100 * overall.ci_low:+.1f}, {100 * overall.ci_high:+.1f}] points"
    if policy.require_significant:
        tie = "a tie fails: require_significant asks for a significant improvement"
    elif policy.min_improvement > 0:
        tie = f"a tie fails while min_improvement is {policy.min_improvement:g}"
    else:
        tie = f"a tie passes while min_improvement is {policy.min_improvement:g}"
    if overall.candidate_only == overall.baseline_only == 0:
        return [
            f"no task changed outcome: both pass {overall.both} of {overall.tasks} paired task(s), so the runs cannot tell the "
            f"models apart ({interval}); {tie}"
        ]
    if overall.candidate_only == overall.baseline_only:  # a tie by offsetting changes: the same score, other tasks
        return [
            f"a tie: the candidate gained {overall.candidate_only} task(s) and lost as many ({overall.tasks} paired; McNemar "
            f"p = {overall.p_value:.3g}), so the runs cannot tell the models apart ({interval}), though they differ on those "
            f"tasks (see each suite's regressed and improved); {tie}"
        ]
    if overall.delta > 0 and overall.p_value >= policy.alpha and not policy.require_significant:
        return [
            f"the gain of {100 * overall.delta:+.1f} points ({overall.candidate_only} task(s) gained, {overall.baseline_only} lost, "
            f"{overall.tasks} paired) is not significant (McNemar p = {overall.p_value:.3g} >= alpha {policy.alpha:g}; {interval}): "
            "it may be chance; set require_significant = true to require a significant gain"
        ]
    return []


def _suite_reasons(result: SuiteComparison, policy: GatePolicy) -> list[str]:
    reasons = []
    for role, other, count, ids in (
        ("candidate", "baseline", result.only_in_baseline, result.missing),
        ("baseline", "candidate", result.only_in_candidate, result.extra),
    ):
        if count:  # on different task sets (another N, split or data), their scores are not the same measure
            named = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            reasons.append(
                f"{result.suite}: the {role} lacks {count} task(s) the {other} ran"
                + (f" ({named})" if named else "")
                + "; run both on the same tasks (the same suite specs, task counts included)"
            )
    if result.tasks < policy.min_tasks:
        reasons.append(f"{result.suite}: {result.tasks} paired task(s), fewer than min_tasks = {policy.min_tasks}")
    if result.delta < -policy.max_regression:
        reasons.append(f"{result.suite}: regression {result.delta:+.3f} exceeds max_regression {policy.max_regression:.3f}")
    elif policy.block_significant_regression and result.delta < 0 and result.p_value < policy.alpha:
        reasons.append(f"{result.suite}: significant regression {result.delta:+.3f} (McNemar p = {result.p_value:.3g})")
    return reasons
