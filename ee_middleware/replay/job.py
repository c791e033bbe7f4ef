"""The replay job: replay every approved trajectory not yet replayed under this configuration.

Resumable and idempotent. Each trajectory's rollouts and its replay record are written together as
soon as that trajectory finishes; a re-run skips trajectories whose record says ``done`` or
``skipped`` for the same :attr:`~ee_middleware.replay.config.ReplayConfig.replay_id`, so a killed
run continues where it stopped, and a finished one does nothing new. ``failed`` ones are retried.
``again`` (``ee replay run --again``) replays them all once more as the configuration's next attempt (a sandbox fixed
since: see :attr:`~ee_middleware.replay.config.ReplayConfig.again`); a plain run continues the newest attempt.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from ee_middleware._locks import holder_lock
from ee_middleware.errors import EEError, ModelError, PolicyError
from ee_middleware.messages import unusable_reasons
from ee_middleware.models.urls import shown_spec
from ee_middleware.replay.config import LOCAL_WORKERS_PER_CORE, ReplayConfig, max_workers
from ee_middleware.replay.executors import (
    Executor,
    InlineExecutor,
    JobForkServer,
    ProcessExecutor,
    RayExecutor,
    WorkerSpec,
    start_job_fork_server,
    store_marker,
    write_outcome,
)
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.replay.runner import ReplayOutcome, ReplaySettings
from ee_middleware.replay.sandboxes.experience import CUT_BEFORE_JSON
from ee_middleware.replay.sandboxes.registry import build_sandbox, refusal_hints, sandbox_factory, sandbox_options
from ee_middleware.store.metadata import meta_folder
from ee_middleware.store.protocol import ExperienceStore
from ee_middleware.store.registry import trajectory_columns

ProgressCallback = Callable[[ReplayOutcome, int, int], None]


@dataclass
class ReplaySummary:
    """What one ``ee replay run`` did."""

    replay_id: str
    sandbox: str
    policy: str
    k: int
    executor: str
    workers: int
    attempt: int = 1
    """Which replay of this configuration (2 and on: ``--again``'s, see :attr:`ReplayConfig.again`)."""
    selected: int = 0
    """Trajectories this run set out to replay."""
    already_done: int = 0
    """Approved trajectories skipped because an earlier run finished them."""
    done: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    states: int = 0
    branches: int = 0
    errors: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    refused_tools: dict[str, int] = field(default_factory=dict)
    refused_hints: dict[str, str] = field(default_factory=dict)
    """Why the sandbox refused a tool and how to allow it, where the sandbox says (``refusal_hint``)."""
    fidelity_mismatches: int = 0
    fidelity_examples: list[dict[str, Any]] = field(default_factory=list)
    policy_error_examples: list[dict[str, Any]] = field(default_factory=list)
    """The first few errors the policy raised while proposing (``trajectory_id``, ``step``, ``error``): counted in
    ``rejected_by_reason['policy_error']``; a trajectory at every state of which it raised failed."""
    unrestorable: int = 0
    """Expert steps whose redacted arguments could not be restored (no vault, or a value missing): not checked."""
    unrestored_branches: int = 0
    """Rollouts whose proposed arguments held placeholders the sandbox could not be given the values of."""
    unrestorable_examples: list[dict[str, Any]] = field(default_factory=list)
    final_calls_not_replayed: dict[str, int] = field(default_factory=dict)
    """Expert calls at a trajectory's last tool-call step that the sandbox does not provide, by tool: left unexecuted (no
    later state depends on them: only the final answer, if any, follows; a structured answer given as a tool call is
    itself the answer), while the alternatives at their state ran."""
    uncovered_calls_not_executed: dict[str, int] = field(default_factory=dict)
    """Expert calls before a trajectory's last tool-call step that the sandbox does not provide, by tool: left unexecuted,
    their recorded results standing for them (the sandbox declares the tool to act only outside the world), while
    every state was branched from; one that changes the world shows as fidelity mismatches on the expert's later calls."""
    final_call_sandbox_failures: dict[str, int] = field(default_factory=dict)
    """Expert calls at a trajectory's last tool-call step that the sandbox got no answer for (time-out, crash, memory), by
    tool: no later state depends on them, so the trajectory is done with its rollouts (an earlier step's fails it)."""
    unanswered_calls_not_executed: dict[str, int] = field(default_factory=dict)
    """Expert calls a paused or cancelled run ended on (awaiting review, or cut off), by tool: never executed (the reviewer
    may reject the call); the alternatives at their state ran, and no later state was branched from."""
    states_short_of_k: int = 0
    """States where fewer than K alternatives were stored: the tools' schemas allow fewer distinct calls than K there
    (mutate with a large K), the sandbox refused some and the refill found no others, or an experience model's
    predictions failed (:attr:`synthetic_failures`)."""
    alternatives_short_of_k: int = 0
    """The alternatives those states lacked to have K."""
    states_not_reached: int = 0
    """Tool-call states after such a call: not branched from (the world there is no state production had), nor counted in
    :attr:`states`."""
    sandbox_failures: dict[str, int] = field(default_factory=dict)
    """Rollouts whose observation is the sandbox's own failure, by kind (``timeout``, ``crash``, ``memory``): stored
    marked (``Observation.sandbox_failure``), left out of datasets."""
    refilled_branches: int = 0
    """Stored rollouts the refill (schema mutations) proposed in place of the policy: at states where the policy gave
    fewer than K usable alternatives (prose, unknown tools, duplicates, a policy error). Marked in their proposer
    (``settings.refill_for``); a policy whose proposals are mostly refilled is said so (see :attr:`mostly_refilled`)."""
    synthetic_branches: int = 0
    """Stored rollouts whose observation an experience model predicted (``synthetic``)."""
    synthetic_failures: dict[str, int] = field(default_factory=dict)
    """Alternatives an experience model gave no usable observation for, by reason (nothing stored for them)."""
    unusable_proposals: dict[str, int] = field(default_factory=dict)
    """Of the trajectories that failed because the policy's model gave no usable proposal at any of their states (a server
    that answers with no choices, with prose only, with arguments that are not JSON): its proposals, by reason."""
    short_answers: int = 0
    """Proposals the policy's model answered with fewer than K alternatives, even after its client asked again: the
    refill (schema mutations) supplied the rest. Summed over every worker, as the four below are (from the records'
    ``details["fewer_answers"]``, see :meth:`~ee_middleware.records.ReplayRecord.fewer_answers`)."""
    missing_answers: int = 0
    """The alternatives those proposals lacked."""
    server_short_answers: int = 0
    """Requests a served policy's server answered with fewer choices than ``n=K`` (it ignores ``n``, as Ollama and
    llama-cpp-python do, or refuses it, as llama-server does): its client asked again for the rest."""
    extra_requests: int = 0
    """The further requests sent for those choices."""
    failed_extra_requests: int = 0
    """Those of them that failed (their proposals kept the answers received, and the refill supplied the rest)."""
    vault: str | None = None
    """The redaction vault replay restored arguments from (``None``: none)."""
    duration_s: float = 0.0

    @property
    def mostly_refilled(self) -> bool:
        """Whether more than half of the stored alternatives came from the refill rather than the policy (another policy
        than the refill's own, ``mutate``): the replay then says so, as the rollouts are mostly not the policy's."""
        return self.policy != "mutate" and self.branches > 0 and self.refilled_branches * 2 > self.branches

    @property
    def no_usable_prediction(self) -> bool:
        """Whether an experience model was asked for observations and gave no usable one: every prediction failed."""
        return bool(self.synthetic_failures) and not self.synthetic_branches

    def no_usable_prediction_error(self, *, again: str = "replay them with --again") -> str:
        """Why a run whose experience model gave no usable observation at all fails, and what to do (``again``: how this
        caller replays the same trajectories once the model is fixed)."""
        return no_usable_prediction_text(self.synthetic_failures, again=again)

    @property
    def no_usable_proposal(self) -> bool:
        """Whether the policy's model gave no usable proposal at any state of any trajectory this run replayed (every
        one failed for it, none is done)."""
        return bool(self.unusable_proposals) and not self.done

    def no_usable_proposal_error(self) -> str:
        """Why a run whose policy gave no usable proposal at all fails, and what to do (what to fix follows from the policy:
        :func:`~ee_middleware.replay.policies.registry.unusable_proposals_fix`)."""
        from ee_middleware.replay.policies.registry import is_model_spec, unusable_proposals_fix

        who = "the policy's model" if is_model_spec(self.policy) else f"the policy {self.policy!r}"
        return (
            f"{who} gave no usable proposal at any state of the {len(self.failed)} trajectory(ies) it was asked "
            f"about ({unusable_reasons(self.unusable_proposals)}), so nothing it proposed was stored, and these trajectories "
            f"are not done for this configuration: {unusable_proposals_fix(self.policy)}, then run the same command again."
        )

    @property
    def branches_per_s(self) -> float:
        return self.branches / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "branches_per_s": round(self.branches_per_s, 2)}

    def add(self, outcome: ReplayOutcome) -> None:
        r = outcome.record
        if r.status == "done":
            self.done += 1
        elif r.status == "skipped":
            self.skipped[r.trajectory_id] = r.reason or ""
        else:
            self.failed[r.trajectory_id] = r.reason or ""
        self.states += r.states
        self.branches += r.branches
        self.errors += r.errors
        self.rejected += r.rejected
        self.fidelity_mismatches += r.fidelity_mismatches
        self.unrestorable += r.unrestorable
        self.unrestored_branches += r.details.get("unrestored_branches", 0)  # counted by the runner, wherever the rollouts went
        for example in r.details.get("unrestorable_steps", []):
            if len(self.unrestorable_examples) < 5:
                self.unrestorable_examples.append({"trajectory_id": r.trajectory_id, **example})
        by_reason = Counter(self.rejected_by_reason)
        by_reason.update(r.details.get("rejected_by_reason", {}))
        self.rejected_by_reason = dict(by_reason)
        refused = Counter(self.refused_tools)
        refused.update(r.details.get("refused_tools", {}))
        self.refused_tools = dict(refused)
        final = Counter(self.final_calls_not_replayed)
        final.update(call["tool"] for call in r.details.get("final_calls_not_replayed", []))
        self.final_calls_not_replayed = dict(final)
        if "uncovered_calls_not_executed" in r.details:
            uncovered = Counter(self.uncovered_calls_not_executed)
            uncovered.update(call["tool"] for call in r.details["uncovered_calls_not_executed"])
            self.uncovered_calls_not_executed = dict(uncovered)
        unanswered = Counter(self.unanswered_calls_not_executed)
        unanswered.update(call["tool"] for call in r.details.get("unanswered_calls_not_executed", []))
        self.unanswered_calls_not_executed = dict(unanswered)
        self.states_not_reached += len(r.details.get("states_not_reached", []))
        self.states_short_of_k += r.details.get("states_short_of_k", 0)
        self.alternatives_short_of_k += r.details.get("alternatives_short_of_k", 0)
        if r.status == "done" and "expert_sandbox_failure" in r.details:  # at the last tool-call step (a failed record's: earlier)
            failed_last = Counter(self.final_call_sandbox_failures)
            failed_last[r.details["expert_sandbox_failure"]["tool"]] += 1
            self.final_call_sandbox_failures = dict(failed_last)
        failures = Counter(self.sandbox_failures)
        failures.update(r.details.get("sandbox_failures", {}))  # counted by the runner, wherever the rollouts went
        self.sandbox_failures = dict(failures)
        self.synthetic_branches += r.details.get("synthetic_branches", 0)  # counted by the runner, wherever the rollouts went
        self.refilled_branches += r.details.get("refilled_branches", 0)
        for name, count in r.fewer_answers().items():  # counted by the worker that replayed it (0 in older records)
            setattr(self, name, getattr(self, name) + count)
        proposals = Counter(self.unusable_proposals)
        proposals.update(r.details.get("unusable_proposals", {}) if r.status == "failed" else {})
        self.unusable_proposals = dict(proposals)
        unusable = Counter(self.synthetic_failures)
        unusable.update(r.details.get("synthetic_failures", {}))
        self.synthetic_failures = dict(unusable)
        for example in r.details.get("fidelity_mismatches", []):
            if len(self.fidelity_examples) < 5:
                self.fidelity_examples.append({"trajectory_id": r.trajectory_id, **example})
        for example in r.details.get("policy_error_examples", []):
            if len(self.policy_error_examples) < 5:
                self.policy_error_examples.append({"trajectory_id": r.trajectory_id, **example})


def forked_worker_modules(config: ReplayConfig, probe: object) -> list[str]:
    """What the job's fork server imports for this job besides :data:`~ee_middleware.replay.executors.WORKER_MODULES`:
    the sandbox's module, the modules of the plug-in factories its sandbox and policy specs name (a function in the
    user's package that builds a :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox`: the class's module alone
    would leave each worker to import the user's), and the sandbox's ``worker_modules`` (:func:`worker_modules`).
    The factories' modules are imported here (the sandbox's already is, by the probe built from it)."""
    from ee_middleware.replay.policies.registry import plugin_module
    from ee_middleware.replay.sandboxes.registry import factory_module

    plugins = [factory_module(config.sandbox), plugin_module(config.policy) if isinstance(config.policy, str) else None]
    # (a factory in the job's __main__ is not imported by name: such workers are spawned, see executors._refers_to_main)
    return [type(probe).__module__, *(module for module in plugins if module and module != "__main__"), *worker_modules(probe)]


def worker_modules(sandbox: object) -> list[str]:
    """The modules of the sandbox's optional ``worker_modules`` (see :mod:`~ee_middleware.replay.sandboxes.protocol`)
    the job's fork server may import. Each is imported here first, and one that fails is left to the workers, with a
    warning of the job's naming it (the server would go on without it too, saying so on its stderr only: see
    :mod:`~ee_middleware.replay.fork_server_preload`); this library's own (``ee_middleware.*``, which catch their own
    failures) are not, so that the server starts without waiting for them."""
    import importlib

    names = getattr(sandbox, "worker_modules", ())
    if isinstance(names, str):
        names = [names]  # one module's name
    elif not isinstance(names, Iterable):
        return []
    imported = []
    for name in dict.fromkeys(n for n in names if isinstance(n, str) and n):
        if name.startswith("ee_middleware."):
            imported.append(name)
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - whatever it raises, the workers import it themselves
            warnings.warn(
                f"ee replay: sandbox {type(sandbox).__name__} names worker module {name!r}, which does not import ({exc!r}); "
                "each worker imports it itself.",
                UserWarning,
                stacklevel=3,
            )
            continue
        imported.append(name)
    return imported


def refused_tool_text(tool: str, sandbox: str, hints: Mapping[str, str]) -> str:
    """Why replay refused the proposals of ``tool`` and how to allow it: the sandbox's own ``refusal_hint`` for it
    (``hints``, see :func:`~ee_middleware.replay.sandboxes.registry.refusal_hints`) or, without one, that ``sandbox``
    does not provide it (a tool with side effects, or one it does not know). ``ee replay run`` and ``ee improve`` say it."""
    if hints.get(tool):
        return hints[tool]
    return (
        f"it has side effects or is unknown, and sandbox {sandbox!r} does not provide it, so replay never calls it. If it reads "
        "or changes the world the sandbox rebuilds, add it to the sandbox's tools; if it needs no world and changes nothing, to "
        "read_only_tools; if it acts only outside the world (sends an e-mail, pages someone), declare it in outside_world_tools "
        "(acts_outside_world), so that the expert's calls of it are not executed, their recorded results standing for them."
    )


FINAL_CALLS_NOT_REPLAYED = (
    "the sandbox does not provide the tool, and no later state depends on it (only the final answer, if any, comes after "
    "it; a structured answer given as a tool call is itself the answer), so the alternatives at its state ran and the call "
    "itself was left out"
)
"""Why the expert's call at a trajectory's last tool call was not executed (``final_calls_not_replayed``)."""

UNCOVERED_CALLS_NOT_EXECUTED = (
    "the sandbox declares the tool to act only outside the world (outside_world_tools, acts_outside_world), so replay did "
    "not execute the expert's call and took its recorded result; every state was branched from. If it changes the world "
    "the sandbox rebuilds, the expert's later calls show fidelity errors naming it: add it to the sandbox's tools instead"
)
"""Why the expert's calls of tools the sandbox declares outside its world were not executed, wherever they are in a
trajectory (``uncovered_calls_not_executed``)."""


CUT_OFF = "the answer was cut off at max_tokens"
"""The start of every reason an answer that stopped at ``max_tokens`` is unusable for (the experience sandbox's, and
:data:`~ee_middleware.models.protocol.CUT_WHILE_REASONING`): more tokens are the fix, and the only one unless the answer
had not begun the JSON object asked for (:data:`~ee_middleware.replay.sandboxes.experience.CUT_BEFORE_JSON`)."""

MORE_TOKENS = (
    "run the same command again: another max_tokens is another replay configuration (a new replay id), which replays these trajectories"
)
"""What ``ee replay run`` does once max_tokens is raised (see :func:`no_usable_prediction_text`)."""


def no_usable_prediction_text(failures: dict[str, int], *, again: str, more_tokens: str = MORE_TOKENS) -> str:
    """Why replay with an experience model that gave no usable observation for any of the alternatives it was asked to
    predict (``failures``: how many by reason) stored no synthetic branch, and what to do, as the reasons say: answers
    cut off at max_tokens (:data:`CUT_OFF`) need more tokens (``more_tokens``: what the caller runs after raising
    them); any other unusable answer, and one cut off before it began the JSON object asked for (prose runs to any
    max_tokens), needs another model or template too (``again``: how the caller replays the same trajectories once the
    model is fixed)."""
    total = sum(failures.values())
    cut = sum(count for reason, count in failures.items() if reason.startswith(CUT_OFF))
    prose = sum(count for reason, count in failures.items() if reason.startswith(CUT_BEFORE_JSON))
    text = (
        f"the experience model gave no usable observation for any of the {total} alternative(s) it was asked to predict "
        f"({unusable_reasons(failures)}), so no synthetic branch was stored."
    )
    tokens = "raise max_tokens (`max_tokens` in [replay.sandbox_settings]; try a value with `ee experience eval --max-tokens N`)"
    model = (
        "It must answer one JSON object with an 'observation' field (measure it with `ee experience eval`; an untrained "
        "base model rarely does)."
    )
    fix = f"These trajectories count as replayed by this configuration: after fixing the model behind the same spec, {again}."
    if not cut:
        return f"{text} {model} {fix}"
    if cut == total:
        every = f"{text} Every answer was cut off at max_tokens before a whole observation: {tokens}, then {more_tokens}."
        if not prose:  # the answers were on their way to the JSON object: more room is the fix, the model may be fine
            return every
        which = "none of them had begun" if prose == cut else f"{prose} of them had not begun"
        return (
            f"{every} But {which} the JSON object asked for: the model may not be answering in the required JSON shape, "
            f"and prose is cut off at any max_tokens. {model} {fix}"
        )
    began = f" ({prose} of them before any JSON object began)" if prose else ""
    return (
        f"{text} {cut} of the answers were cut off at max_tokens{began}: {tokens}, then {more_tokens}. The other "
        f"{total - cut} were unusable for another reason: {model[0].lower()}{model[1:]} {fix}"
    )


def with_attempt(store: ExperienceStore, config: ReplayConfig) -> ReplayConfig:
    """``config`` at its current attempt in ``store``: the newest attempt of its configuration that replayed anything (a
    plain run continues it), or the one after it with :attr:`~ReplayConfig.again` (the first when none replayed yet)."""
    from ee_middleware.replay.config import attempt_id

    scan = getattr(store, "scan", None)  # the replay ids alone, not every table, where the store reads lazily
    ids = scan("replays").select("replay_id").unique().collect() if callable(scan) else store.replays().select("replay_id")
    replayed = set(ids["replay_id"].to_list())
    earlier = config.transport_inclusive_id
    if earlier is not None and earlier in replayed and config.configuration_id not in replayed:
        config = config.continuing(earlier)  # replayed before transport settings left the id: continued under its id
    attempt, newest = 1, 0
    while (config.configuration_id if attempt == 1 else attempt_id(config.configuration_id, attempt)) in replayed:
        newest, attempt = attempt, attempt + 1
    wanted = newest + 1 if config.again else max(newest, 1)
    return config if wanted == config.attempt else config.model_copy(update={"attempt": wanted})


def select_trajectories(store: ExperienceStore, config: ReplayConfig) -> tuple[list[str], int]:
    """Ids of approved trajectories still to replay under ``config`` (oldest first), and how many are done."""
    approved = trajectory_columns(store, ["id"], status="approved", app=config.app)  # (not every conversation)
    finished = store.replays(replay_id=config.replay_id).filter(pl.col("status").is_in(["done", "skipped"]))
    finished_ids = set(finished["trajectory_id"].to_list())
    ids = approved["id"].to_list()
    if config.trajectory_ids is not None:
        wanted = set(config.trajectory_ids)
        ids = [i for i in ids if i in wanted]
    todo = [i for i in ids if i not in finished_ids]
    already = len(ids) - len(todo)
    if config.limit is not None:
        todo = todo[: config.limit]
    return todo, already


def _worker_store_spec(store: ExperienceStore, spec: str | os.PathLike[str]) -> str:
    """How workers open the job's store: a local store by its absolute folder (a Ray worker's working folder is not the
    job's), which they write through its spool alone; any other store, a subclass of the local one or a wrapper around
    it included (an audit log, encryption, a mirror: its own ``write_replay`` must see every batch), by the user's spec."""
    from ee_middleware.store.local import LocalExperienceStore

    if type(store) is LocalExperienceStore:
        return f"local:{os.path.abspath(store.root)}"
    return str(spec)


def _checked_policy_options(config: ReplayConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options workers build ``config``'s policy with: those the user set, and the sampling options left at their
    defaults (a plug-in's factory gets those it takes, see
    :func:`~ee_middleware.replay.policies.registry.prepare_policy`). Checked first, before any worker starts or the
    progress shows (:func:`~ee_middleware.replay.policies.registry.check_policy`): a built-in policy that cannot be
    built, or a plug-in's factory that cannot be found or takes no such option, fails here with its reason. A plug-in's
    factory is not called here (it may load a model, which the job's process would pay for again and keep): the
    workers build it, and the first that fails stops the job."""
    from ee_middleware.replay.policies.registry import check_policy

    defaults = config.policy_defaults()
    given = {name: value for name, value in config.policy_options().items() if name not in defaults}
    check_policy(config.policy, given, defaults)
    return given, defaults


def build_executor(config: ReplayConfig, spec: WorkerSpec, *, fork_server: JobForkServer | None = None) -> Executor:
    """The executor ``config`` asks for; ``fork_server``: the job's fork server (see :func:`start_job_fork_server`), for
    local workers (the caller stops it where the executor does not take it), which are spawned without one: the job
    tried to start it, and this Python cannot (trying again would only say so twice)."""
    if config.executor == "ray":
        return RayExecutor(spec, config.workers, address=config.ray_address, replay_while_starting=light_in_process(config))
    if config.workers == 1:
        return InlineExecutor(spec)
    start_method = "forkserver" if fork_server is not None else "spawn"
    return ProcessExecutor(
        spec, config.workers, start_method=start_method, fork_server=fork_server, replay_while_starting=light_in_process(config)
    )


def light_in_process(config: ReplayConfig) -> bool:
    """Whether the job's process may replay with ``config``'s policy and sandbox while its workers start: the mutation
    policy or a server's (not a local model, nor a user's policy of unknown weight), and a sandbox that is not an
    experience model."""
    light_policy = config.policy.strip() == "mutate" or config.served_policy
    return light_policy and not config.experience_sandbox


def run_replay(
    config: ReplayConfig, *, on_outcome: ProgressCallback | None = None, on_start: Callable[[int], None] | None = None
) -> ReplaySummary:
    """Replay the approved trajectories of ``config.store`` that this configuration has not finished.

    ``on_start(total)`` is called once the selection is known and ``on_outcome(outcome, n, total)``
    after each trajectory is stored (the CLI draws its progress bar with them).
    """
    from ee_middleware.store.registry import open_store

    store = open_store(config.store, create=False)
    config = with_attempt(store, config)
    with replaying_alone(store, config.replay_id):
        options = {**sandbox_options(allow_network=config.allow_network), **config.sandbox_factory_options()}
        factory = sandbox_factory(
            config.sandbox, isolation=config.isolation, timeout_s=config.tool_timeout_s, memory_mb=config.memory_mb, options=options
        )
        # a sandbox that cannot be built fails here, with its reason, before any worker starts
        probe = build_sandbox(config.sandbox, **options)
        probe.close()
        # Local workers are forked by a fork server of the job's: started now, it imports what they need while the job
        # reads the store. The executor takes it over (a job that ends up needing none stops it: see the end).
        forks = config.executor == "local" and config.workers > 1
        fork_server = start_job_fork_server(forked_worker_modules(config, probe)) if forks else None
        try:
            return _replay_selected(config, store, factory, options, fork_server, on_outcome, on_start)
        finally:
            if fork_server is not None:
                fork_server.stop()  # (a no-op where the executor stopped it)


class ReplayRunningError(EEError):
    """Another replay job of the same configuration is replaying the store now."""


@contextmanager
def replaying_alone(store: ExperienceStore, replay_id: str) -> Iterator[None]:
    """Hold the store's lock for replay id ``replay_id`` (a file in a local store's folder) for the block; raise
    :class:`ReplayRunningError` at once where another process holds it. Two jobs of one configuration would each replay
    every trajectory the other has not finished yet: every tool call made twice, every rollout stored twice. Jobs of other
    configurations (another policy, K, seed or attempt) run beside each other. A store without a local folder (a plug-in's)
    is not locked."""
    folder = meta_folder(store)
    if folder is None or not folder.is_dir():
        yield
        return
    name = f"replay-{hashlib.sha256(replay_id.encode()).hexdigest()[:16]}.lock"

    def busy(holder: str) -> ReplayRunningError:
        return ReplayRunningError(
            f"Another replay of this configuration (replay id {replay_id}) is running on {folder} ({holder}): both would "
            "replay the same trajectories, every tool call made and every rollout stored twice. Wait for it to end, or stop "
            "that process (the lock is released when it exits, even if it is killed). A replay of another configuration "
            "(another --policy, --k or --seed) may run beside it."
        )

    with holder_lock(folder / name, busy, doing=f"replay {replay_id}", remove=True):
        yield


def _replay_selected(
    config: ReplayConfig,
    store: ExperienceStore,
    factory: Callable[[], Any],
    options: dict[str, Any],
    fork_server: JobForkServer | None,
    on_outcome: ProgressCallback | None,
    on_start: Callable[[int], None] | None,
) -> ReplaySummary:
    """:func:`run_replay` once its store is open and its sandbox checked: select, replay, store and sum up."""
    policy_options, policy_defaults = _checked_policy_options(config)
    # What is printed and stored of the specs: their URLs' credentials masked (the workers build the policy from the spec)
    policy, sandbox = shown_spec(config.policy), shown_spec(config.sandbox)
    settings = ReplaySettings(
        replay_id=config.replay_id,
        policy=policy,
        k=config.k,
        seed=config.seed,
        check_fidelity=config.check_fidelity,
        max_observation_chars=config.max_observation_chars,
        privacy=ReplayPrivacy.of_store(store),  # the store's own redaction rules, salt and vault
        attempt_of=config.configuration_id if config.attempt > 1 else None,
        attempt=config.attempt,
    )
    todo, already_done = select_trajectories(store, config)
    most = max_workers(config.executor)
    started = min(config.workers, most, max(len(todo), 1))  # a worker with no trajectory would only start, then stop
    if config.workers > most and todo:  # a job file written for a larger machine: its cores are what speed it up
        fewer = f" ({len(todo)} {'trajectory' if len(todo) == 1 else 'trajectories'} to replay, one worker each)" if started < most else ""
        warnings.warn(
            f"ee replay: workers={config.workers} is more than the {most} worker processes this machine's "
            f"{os.cpu_count() or 1} CPU core(s) take ({LOCAL_WORKERS_PER_CORE} per core); starting {started}{fewer}.",
            UserWarning,
            stacklevel=2,
        )
    if config.workers != started:
        config = config.model_copy(update={"workers": started})
    # Worker processes and Ray actors write into the store themselves (see executors); in-process, the job writes.
    writers = isinstance(config.store, (str, os.PathLike)) and (config.executor == "ray" or config.workers > 1)
    spec = WorkerSpec(
        sandbox_factory=factory,
        policy=config.policy,
        settings=settings,
        policy_options=policy_options,
        policy_defaults=policy_defaults,
        store=_worker_store_spec(store, config.store) if writers else None,
        store_marker=store_marker(store) if writers else None,
        requests_in_flight=config.proposal_requests,
    )
    summary = ReplaySummary(
        replay_id=config.replay_id,
        attempt=config.attempt,
        sandbox=sandbox,
        policy=policy,
        k=config.k,
        executor=config.executor,
        workers=config.workers,
        vault=settings.privacy.vault,
    )
    summary.already_done = already_done
    summary.selected = len(todo)
    if on_start is not None:
        on_start(len(todo))
    if not todo:
        return summary

    wanted = set(todo)
    # Trajectories as their rows where the store offers them: a worker (a process, a Ray actor) builds each one it is
    # sent, and one that cannot be built fails alone, as any other trajectory would.
    read = getattr(store, "iter_trajectory_rows", None) or store.iter_trajectories
    # the selected ones alone, where the store can read them so: a run of 20 in a store of 40k reads 20 trajectories' steps
    parameters = inspect.signature(read).parameters
    takes_ids = "ids" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    chosen = {"ids": wanted} if takes_ids else {}
    trajectories = (t for t in read(status="approved", **chosen) if t.id in wanted)
    started = time.perf_counter()
    executor = build_executor(config, spec, fork_server=fork_server)
    n = 0
    # What the process holds already (the loaded store, the caller's own data) lives through the whole job: the garbage
    # collector's full passes need not walk it again every few thousand allocations (see _frozen_heap).
    frozen = _frozen_heap()
    try:
        for outcome in executor.map(trajectories):
            if not outcome.stored:
                outcome = write_outcome(store, outcome, where=config.store)
            summary.add(outcome)
            n += 1
            if on_outcome is not None:
                on_outcome(outcome, n, len(todo))
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: what was stored before it (`ee replay run --json` prints it)
        exc.replay_summary = summary  # type: ignore[attr-defined]
        raise
    except Exception as exc:
        cause = getattr(exc, "cause", None)  # Ray wraps worker exceptions
        if isinstance(cause, EEError):
            exc = cause
        saved = _saved_text(summary)
        if isinstance(exc, PolicyError):
            # (a policy refused before anything was replayed, its options as its first worker built it: nothing to continue)
            exc = PolicyError(f"{exc} ({saved})") if summary.done or summary.failed or summary.skipped else exc
        elif isinstance(exc, ModelError) and len(exc.args) == 1:  # (a server down: the same command continues once it is up)
            exc.args = (f"{exc} ({saved})",)  # the same error (its type and fields: url, status), told what is kept
        if isinstance(exc, EEError):
            exc.replay_summary = summary  # type: ignore[attr-defined]  # what ran before it (`ee replay run --json` prints it)
        raise exc from None
    finally:
        if frozen:
            gc.unfreeze()
        summary.duration_s = time.perf_counter() - started
        try:
            executor.close()
        except KeyboardInterrupt as exc:  # a signal while the workers closed their sandboxes: stopped, all stored
            exc.replay_summary = summary  # type: ignore[attr-defined]
            raise
        finally:
            store.close()
    summary.refused_hints = refusal_hints(config.sandbox, summary.refused_tools, **options)
    return summary


def _saved_text(summary: ReplaySummary) -> str:
    """What a job that stopped on an error says is kept: the trajectories replayed before it (stored, done) and, apart,
    those that failed or were skipped (recorded so: a failed one is retried by the next run)."""
    others = [f"{len(summary.failed)} failed" if summary.failed else "", f"{len(summary.skipped)} skipped" if summary.skipped else ""]
    recorded = " and ".join(part for part in others if part)
    also = f", and {recorded} (recorded so: the next run retries the failed ones)" if recorded else ""
    return f"{summary.done} trajectories replayed before this are saved{also}; re-run the same command to continue."


def _frozen_heap() -> bool:
    """Move the objects alive now out of the collector's way for the job (``gc.freeze``); ``True`` when this call did.

    Each proposal and rollout allocates pydantic models and dicts, and every so often the collector walks the whole
    oldest generation, which holds everything the process had before the job; in a process holding about a million
    objects that was ~18% of the job's CPU (BFCL, K=8). Frozen objects are never freed by a collection, so the job
    unfreezes them when it ends (``gc.unfreeze`` puts them back in the oldest generation): nothing is lost, a cycle
    that became garbage meanwhile is only collected later. A process that froze objects itself is left as it is.
    """
    if gc.get_freeze_count():
        return False
    gc.freeze()
    return True
