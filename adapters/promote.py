"""Promote, roll back and retire adapters across every replica, keeping the registry consistent.

**Promote** ``name``: on every replica, load it (unless it is listed already: same name, same
weights) and verify it (listed in ``/v1/models`` and a smoke chat request through it answers). Only
when every replica verified it does the registry make it the app's live adapter, which switches the
app's alias (the router resolves the alias per request). A failure on any replica unloads it from
every replica it was loaded on and raises :class:`~ee_middleware.adapters.errors.PromotionError`;
the live adapter never changed. The adapter is marked ``failed`` with the reason when the failure
was its own (a server refused to load it, or it did not pass the smoke request); vLLM answers a failed
load with HTTP 500 both for an adapter it cannot use and for its own trouble, so a 500 counts against
the adapter only when its message names an adapter problem
(:func:`~ee_middleware.adapters.serving.backend.adapter_problem`), and so does a failed smoke request. When a
replica did not answer (down, restarting, timed out, a 5xx or a broken connection on a listing or on the smoke
request, a 500 on a load naming no adapter problem: out of memory, no free slot, a stopped engine), cannot see
the registry's folder, or refuses the adapter's rank by its own ``--max-lora-rank`` (the servers' setting), it
stays ``candidate`` and can be promoted again once the servers are fixed (a failed adapter never
can, and the same weights registered again keep their failed record; except one that an earlier version marked failed
for a server's ``--max-lora-rank``: a promote makes it a candidate again, history ``reinstate``, and goes on). The replaced adapter stays
loaded, so a rollback is only an alias switch.

Before any server is asked, the registry's copy of the adapter must still be what was registered
(same content hash: :func:`~ee_middleware.adapters.records.check_registered_files`), be trained on
the base model of the app's live adapter (servers hold one base) and on the base each replica serves (what it
recorded at start or reports: :func:`check_served_bases`, also for an app's first adapter), and have a rank
within each replica's ``--max-lora-rank``: the one it was started with, which ``ee serve vllm`` and ``ee serve local``
record, and the one the promote was told. A server started otherwise says nothing of its limit (vLLM's API tells it
only in its development mode, ``/server_info``): it refuses a larger rank when it loads the adapter, which then stays a candidate.

**Promoting the live adapter again** loads it on every replica that lacks it (one restarted since: a server
starts with the base alone) with the same checks, verifies it there, and leaves the alias and the other replicas
alone (history: ``reload``); this is the way back after a restart. The router meanwhile sends the app's requests
to the replicas that hold it.

**Chat template.** Each replica's chat template (recorded by ``ee serve vllm`` / the local server at start) is
compared with the rendering the adapter was trained with (its manifest's ``rendering``:
:func:`~ee_middleware.adapters.serving.rendering.check_rendering`). A replica that renders a part otherwise (the
model's own template where the trainer used a fallback, or the other way round) would show the adapter prompts
unlike its training rows: the promote is refused with
:class:`~ee_middleware.adapters.errors.ChatTemplateMismatchError` before anything is loaded, unless
``ignore_rendering`` (the history records it). When either side is unknown (a manifest from before the rendering was
recorded, a server started by hand) the progress says so and the promote goes on; the result's ``rendering`` lists
every check. A rollback makes the same check and only says what it found (a rollback is how one gets out of trouble).

**Rollback** ``app``: the previous live adapter is checked on every replica (listed; loaded again if
a replica lost it, e.g. after a restart, from a registry copy checked first) and made live again; a
replica that does not answer stops it with the live adapter unchanged (every replica is listed before
the chat-template checks and any load, so one that is down stops it alone, with nothing loaded). **Retire**: unloaded
everywhere, withdrawn from the rollback stack.

A process killed mid-promote leaves the adapter ``candidate`` (the history shows the start without
an end) and the live adapter unchanged.

**One at a time**: promote, rollback and retire each hold the registry's operation lease from reading
the statuses to the last server call and index change
(:meth:`~ee_middleware.adapters.registry.LocalAdapterRegistry.operation`), so a retire cannot unload an
adapter that a promote is about to make live, nor a rollback switch between a promote's verification and
its switch. A second one, in any process, waits for the first (up to ``EE_REGISTRY_WAIT_S``, default
120 s, saying who it waits for), then fails with
:class:`~ee_middleware.adapters.errors.RegistryBusyError` naming the holder (pid, host, since when, what).
A plug-in registry gets the same guarantee by offering ``operation(doing, by=, on_wait=)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.adapters.errors import (
    AdapterNameInUseError,
    AdapterPathNotFoundError,
    BaseModelMismatchError,
    ChatTemplateMismatchError,
    GateFailedError,
    InvalidTransitionError,
    PromotionError,
    ServerRankError,
    ServerSetupError,
    ServerTimeoutError,
    ServerUnavailableError,
    ServingError,
)
from ee_middleware.adapters.records import AdapterRecord, Status, check_registered_files
from ee_middleware.adapters.registry import AdapterRegistry, base_not_told_apart
from ee_middleware.adapters.serving.backend import ServingBackend, Verification, rank_advice
from ee_middleware.adapters.serving.rendering import RenderingCheck, check_rendering, trained_rendering
from ee_middleware.errors import as_sentence
from ee_middleware.models.bases import same_base as same_base  # (the rendering check's import)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SwitchResult:
    """What a promote or rollback did: the adapter now live, the one it replaced, timings."""

    live: AdapterRecord
    replaced: str | None
    seconds: float
    verifications: list[Verification] = field(default_factory=list)
    loaded_on: list[str] = field(default_factory=list)
    rendering: list[RenderingCheck] = field(default_factory=list)
    """The adapter's training rendering against each replica's chat template (:func:`rendering_checks`)."""
    already_live: bool = False
    """A promote of the adapter that was live already: it was only loaded again where a replica lacked it (``loaded_on``)."""
    reinstated: bool = False
    """The adapter had been marked failed for a server's ``--max-lora-rank`` (:func:`failed_for_rank`); this promote made
    it a candidate again first."""

    def to_json(self) -> dict[str, object]:
        return {
            "live": self.live.name,
            "app": self.live.app,
            "replaced": self.replaced,
            "seconds": round(self.seconds, 4),
            "loaded_on": self.loaded_on,
            "verified_on": [v.url for v in self.verifications],
            "rendering": [check.to_json() for check in self.rendering],
            "already_live": self.already_live,
            "reinstated": self.reinstated,
        }


def promote(
    registry: AdapterRegistry,
    name: str,
    replicas: Sequence[ServingBackend],
    *,
    by: str | None = None,
    progress: Progress | None = None,
    ignore_gate: bool = False,
    ignore_rendering: bool = False,
) -> SwitchResult:
    """Load and verify ``name`` on every replica, then make it live (see the module docstring).

    An adapter whose last recorded deploy gate failed (``ee eval gate --adapter``, or the improve job's
    gate) is refused with :class:`GateFailedError` unless ``ignore_gate``; one that a replica would show prompts
    unlike its training rows, with :class:`ChatTemplateMismatchError` unless ``ignore_rendering``. The history
    records either override.
    """
    started = time.perf_counter()
    say = progress or (lambda _text: None)
    with _lease(registry, f"promote of {name}", by=by, say=say):
        return _promote(
            registry, name, replicas, by=by, say=say, ignore_gate=ignore_gate, ignore_rendering=ignore_rendering, started=started
        )


def _promote(
    registry: AdapterRegistry,
    name: str,
    replicas: Sequence[ServingBackend],
    *,
    by: str | None,
    say: Progress,
    ignore_gate: bool,
    ignore_rendering: bool,
    started: float,
) -> SwitchResult:
    record = registry.get(name)
    reinstated = False
    if record.status == Status.failed:
        record = _reinstate_failed_for_rank(registry, record, by=by, say=say)
        reinstated = True
    if record.status == Status.live:
        return _load_live_again(registry, record, replicas, by=by, say=say, ignore_rendering=ignore_rendering, started=started)
    gate = last_gate(record)
    if gate is not None and not gate["passed"] and not ignore_gate:
        raise GateFailedError(
            f"{name} did not pass its last deploy gate ({gate['at'] or 'time unknown'}): {'; '.join(gate['reasons']) or 'no reason recorded'}. "
            f"Evaluate a better candidate, or promote it anyway with --ignore-gate (ignore_gate=True; the history records it)."
        )
    _check_servable(registry, record)
    asking: list[ServingBackend] = []  # the replica the reachability check waits on, while it does
    try:
        _check_reachable(registry, record, replicas, by=by, say=say, asking=asking)
        check_served_bases(registry, record, replicas, say=say)
        _check_ranks(registry, record, replicas, say=say)
        checks = _checked_rendering(registry, record, replicas, say=say, ignore_rendering=ignore_rendering)
    except KeyboardInterrupt as exc:  # stopped while asking the replicas, before anything was loaded
        _interrupted(registry, record, exc, [], None, by=by, say=say, checking=True, unanswered=asking[0] if asking else None)
        raise
    differing = [check for check in checks if check.differs]
    overridden: dict[str, Any] = {"ignored_gate": True} if gate is not None and not gate["passed"] else {}
    if differing:
        overridden["ignored_rendering"] = [check.differences for check in differing]
    registry.note("promote-started", app=record.app, adapter=name, by=by, replicas=[r.url for r in replicas], **overridden)
    loaded: list[ServingBackend] = []
    held: list[ServingBackend] = []  # replicas that held it before this promote (a retired adapter stays loaded for a rollback)
    verifications: list[Verification] = []
    loading: ServingBackend | None = None  # the replica asked to load it, until it answers
    failure: tuple[ServingBackend, ServingError] | None = None
    try:
        for replica in replicas:
            try:
                if name not in replica.list():
                    say(f"loading {name} on {replica.url}")
                    loading = replica
                    try:
                        replica.load(name, record.path)
                        loaded.append(replica)
                    except AdapterNameInUseError:
                        held.append(replica)  # another promoter loaded it since the listing: one name is one set of weights
                    loading = None
                else:
                    held.append(replica)
                say(f"verifying {name} on {replica.url}")
                verifications.append(replica.verify(name))
            except ServingError as exc:
                failure = failure or (replica, exc)
                if not _adapter_at_fault(exc):
                    break
                # the adapter's fault, or this replica's: the replicas left tell which (one that serves it clears it)
                say(f"{name} failed on {replica.url}; trying the other replicas, to tell whether the adapter is at fault")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP in the CLI: undone as a failure is, then stopped
        _interrupted(registry, record, exc, loaded, loading, by=by, say=say)
        raise
    if failure is not None:  # (out of the handler above: _fail records the failure even when stopped while undoing it)
        cleared = _cleared(registry, record, verifications)
        _fail(registry, record, *failure, loaded, held, by=by, say=say, loading=loading, cleared=cleared)
    previous = registry.switch_live(name, by=by)
    say(f"{record.app} -> {name}")
    return SwitchResult(
        registry.get(name),
        previous.name if previous else None,
        time.perf_counter() - started,
        verifications,
        [r.url for r in loaded],
        checks,
        reinstated=reinstated,
    )


def _check_reachable(
    registry: AdapterRegistry,
    record: AdapterRecord,
    replicas: Sequence[ServingBackend],
    *,
    by: str | None,
    say: Progress,
    asking: list[ServingBackend],
) -> None:
    """Every replica answers its model listing before the checks that ask the replicas (base model, rank, chat template):
    one that cannot be reached fails the promote with that alone (:func:`_fail`: nothing loaded, the adapter not at
    fault), not after notes that blame its setup for what it did not say. ``asking`` holds the replica asked, until it
    answers (a stuck one is named where the promote is stopped meanwhile)."""
    for replica in replicas:
        asking[:] = [replica]
        try:
            replica.list()
        except ServingError as exc:
            _fail(registry, record, replica, exc, [], [], by=by, say=say)
    asking.clear()


def failed_for_rank(record: AdapterRecord) -> bool:
    """Whether ``record`` was marked failed because a server's ``--max-lora-rank`` refused its rank: what versions
    before the limit counted as the servers' setting did (its reason names a ``ServerRankError``, or a server's answer
    that the rank is greater than ``max_lora_rank``). Such a failure was not the adapter's own."""
    reason = record.reason or ""
    return record.status == Status.failed and (reason.startswith(f"{ServerRankError.__name__} ") or "greater than max_lora_rank" in reason)


def _reinstate_failed_for_rank(registry: AdapterRegistry, record: AdapterRecord, *, by: str | None, say: Progress) -> AdapterRecord:
    """A failed adapter is not promoted again (:class:`InvalidTransitionError`), unless it failed for a server's rank
    limit (:func:`failed_for_rank`): that is the servers' setting, so it is made a candidate again (the registry's
    ``reinstate``, recorded in the history) and promoted with every check, the servers' limits first."""
    name = record.name
    if not failed_for_rank(record):
        raise InvalidTransitionError(
            f"{name} failed before ({record.reason}); a failed adapter is not promoted again. Fix the cause and register a new one."
        )
    reinstate = getattr(registry, "reinstate", None)
    if not callable(reinstate):
        raise InvalidTransitionError(
            f"{name} was marked failed because a server refused its LoRA rank r={record.rank} ({record.reason}). That limit is "
            f"the servers' setting, not the adapter's fault, but this registry ({type(registry).__name__}) cannot make a failed "
            "adapter a candidate again (it offers no reinstate). Register the adapter's weights in a registry that can, or "
            "train it again."
        )
    say(
        f"{name} was marked failed by an earlier version because a server refused its LoRA rank r={record.rank}; that limit "
        "is the servers' setting, not the adapter's fault: it is a candidate again, and promoted now"
    )
    return reinstate(
        name,
        "failed for a server's --max-lora-rank, which is the servers' setting, not the adapter's fault: promoted again",
        by=by,
    )


def _load_live_again(
    registry: AdapterRegistry,
    record: AdapterRecord,
    replicas: Sequence[ServingBackend],
    *,
    by: str | None,
    say: Progress,
    ignore_rendering: bool,
    started: float,
) -> SwitchResult:
    """A promote of the live adapter: load it again on every replica that lacks it (one restarted since), with the checks
    of a promote (base model, rank, chat template, the registry's copy) and verified; the replicas that hold it and the
    alias are left alone. A replica that cannot take it is named in a :class:`PromotionError` after the others were
    done; it is unloaded again where it was loaded but not verified, and the adapter stays live."""
    name = record.name
    lacking: list[ServingBackend] = []
    problems: list[tuple[ServingBackend, ServingError]] = []
    for replica in replicas:
        try:
            if name not in replica.list():
                lacking.append(replica)
        except ServingError as exc:
            problems.append((replica, exc))
    checks: list[RenderingCheck] = []
    if lacking:
        check_served_bases(registry, record, lacking, say=say)
        _check_ranks(registry, record, lacking, say=say)
        checks = _checked_rendering(registry, record, lacking, say=say, ignore_rendering=ignore_rendering)
        if "://" not in record.path:
            check_registered_files(record, _registry_label(registry))
    loaded: list[str] = []
    verifications: list[Verification] = []
    for replica in lacking:
        sent = False
        try:
            say(f"{name} is live but {replica.url} does not hold it (restarted?): loading it there again")
            try:
                replica.load(name, record.path)
                sent = True
            except AdapterNameInUseError:
                pass  # loaded there since the listing (another promoter): the same adapter
            say(f"verifying {name} on {replica.url}")
            verifications.append(replica.verify(name))
            loaded.append(replica.url)
        except ServingError as exc:
            problems.append((replica, exc))
            if sent:
                with contextlib.suppress(ServingError):
                    replica.unload(name)  # not verified there: it is not served there half-working
    if loaded:
        registry.note("reload", app=record.app, adapter=name, by=by, loaded_on=loaded)
    if problems:
        replica, first = problems[0]
        holding = [r.url for r in replicas if r.url not in {p.url for p, _ in problems}]
        raise PromotionError(
            f"{name} is the live adapter of {record.app} and stays so, but it could not be loaded again on every replica that "
            "lacked it: "
            + " ".join(f"{p.url}: {exc}" for p, exc in problems)
            + (f" Loaded again on {', '.join(loaded)}." if loaded else "")
            + f" {record.app} is served by {', '.join(holding) or 'no replica'} (the router sends its requests to the replicas "
            f"that hold it). Fix the others and run this promote again: it loads {name} wherever it is missing.",
            adapter=name,
            replica=replica.url,
        ) from first
    if lacking:
        say(f"{record.app} -> {name} (already live; loaded again on {', '.join(loaded)})")
    elif replicas:
        say(f"{name} is already live on every replica: nothing to load")
    else:  # (--registry-only: no server was asked)
        say(f"{name} is already live in the registry: nothing to switch")
    return SwitchResult(record, None, time.perf_counter() - started, verifications, loaded, checks, already_live=True)


def _checked_rendering(
    registry: AdapterRegistry, record: AdapterRecord, replicas: Sequence[ServingBackend], *, say: Progress, ignore_rendering: bool
) -> list[RenderingCheck]:
    """:func:`rendering_checks`; :class:`ChatTemplateMismatchError` for a replica that renders otherwise, unless
    ``ignore_rendering`` (then, and where it could not tell, the progress says so)."""
    checks = rendering_checks(record, replicas)
    differing = [check for check in checks if check.differs]
    if differing and not ignore_rendering:
        raise ChatTemplateMismatchError(
            " ".join(check.message for check in differing)
            + f" Nothing was loaded; {record.app} still serves {registry.resolve(record.app) or 'the base model'}. Promote it "
            "anyway with --ignore-rendering (ignore_rendering=True; the history records it).",
            url=differing[0].server,
            checks=differing,
        )
    for check in checks:
        if check.status != "same":
            say(("ignored: " if check.differs else "note: ") + check.message)
    return checks


def check_served_bases(registry: AdapterRegistry, record: AdapterRecord, replicas: Sequence[ServingBackend], *, say: Progress) -> None:
    """Each replica serves the base model ``record`` was trained on, before anything is loaded: what the replica recorded
    at start or reports (``served_base()``, where the backend offers it:
    :meth:`~ee_middleware.adapters.serving.backend.HTTPServingBackend.served_base`) against the adapter's base, compared
    by :func:`same_base`. :class:`BaseModelMismatchError` naming both for a replica that serves another one; a replica
    that says nothing, or names its base so that it cannot be compared (a hub id against a folder), gets a note."""
    mismatches = []
    for replica in replicas:
        served_base = getattr(replica, "served_base", None)
        served = served_base() if callable(served_base) else None
        if not served:
            say(
                f"note: {replica.url} does not say which base model it serves; {record.name}'s base ({record.base_model}) is not checked there"
            )
            continue
        same = same_base(record.base_model, served)
        if same is None:
            say(
                f"note: {replica.url} serves {served} and {record.name} was trained on {record.base_model}; whether they are "
                "the same model cannot be told from the names"
            )
        elif not same:
            mismatches.append(f"{replica.url} serves {served}")
    if mismatches:
        raise BaseModelMismatchError(
            f"{record.name} was trained on base model {record.base_model}, but {'; '.join(mismatches)}. A LoRA adapter works only on "
            f"the base it was trained on. Nothing was loaded: {record.app} still serves "
            f"{registry.resolve(record.app) or 'the base model'}. Promote it into servers started with --base {record.base_model}, "
            "or train it on the base the servers hold."
        )


def _check_ranks(registry: AdapterRegistry, record: AdapterRecord, replicas: Sequence[ServingBackend], *, say: Progress) -> None:
    """Refuse, before any server is asked, an adapter whose rank is above a replica's known ``--max-lora-rank``: the one it
    was started with (``served_max_lora_rank()``, what ``ee serve vllm`` / ``ee serve local`` recorded:
    :meth:`~ee_middleware.adapters.serving.backend.HTTPServingBackend.served_max_lora_rank`) and the one the promote was
    told (the backend's ``max_lora_rank``). It stays a candidate, since the limit is the servers'. A replica whose limit is
    unknown (started otherwise) gets a note: it refuses the rank, if at all, when it loads the adapter."""
    over: list[tuple[str, int, str]] = []
    for replica in replicas:
        recorded = getattr(replica, "served_max_lora_rank", None)
        started = recorded() if callable(recorded) else None
        given = getattr(replica, "max_lora_rank", None)
        limits = [(started, "the --max-lora-rank it was started with"), (given, "the --max-lora-rank given to this promote")]
        known = [(limit, source) for limit, source in limits if isinstance(limit, int)]
        if not known:
            say(
                f"note: {replica.url} did not record its --max-lora-rank (it was not started by ee serve vllm or ee serve local "
                f"on this machine), so {record.name}'s rank r={record.rank} is checked only when that server loads it; give "
                "the promote --max-lora-rank (or EE_MAX_LORA_RANK) to check it before"
            )
        exceeded = [(limit, source) for limit, source in known if record.rank > limit]
        if exceeded:
            over.append((replica.url, *exceeded[0]))
    if over:
        raise ServerRankError(
            f"{record.name} has LoRA rank r={record.rank}, above the --max-lora-rank of "
            + "; ".join(f"{url} ({limit}: {source})" for url, limit, source in over)
            + f". Nothing was loaded; it stays {_status_text(record.status)}, and {record.app} still serves "
            f"{registry.resolve(record.app) or 'the base model'}. {rank_advice(record.rank, min(limit for _, limit, _ in over))}",
            url=over[0][0],
        )


def rendering_checks(record: AdapterRecord, replicas: Sequence[ServingBackend]) -> list[RenderingCheck]:
    """The rendering ``record`` was trained with against each replica's chat template (one check for them all when the
    manifest records none). A replica that can say what it renders offers ``served_template()``
    (:meth:`~ee_middleware.adapters.serving.backend.HTTPServingBackend.served_template`: what the server recorded at
    start); one that recorded nothing is asked with ``probe_template(base)`` where the replica offers it (the server
    renders the check requests itself: :meth:`~ee_middleware.adapters.serving.backend.HTTPServingBackend.probe_template`)."""
    if not replicas:
        return []
    if trained_rendering(record.manifest) is None:
        return [check_rendering(record.name, record.manifest, ", ".join(r.url for r in replicas), None)]
    checks = []
    for replica in replicas:
        served = getattr(replica, "served_template", None)
        state = served() if callable(served) else None
        probe = getattr(replica, "probe_template", None)
        if state is None and callable(probe) and record.base_model:  # nothing recorded: ask the server itself
            state = probe(record.base_model)
        checks.append(check_rendering(record.name, record.manifest, replica.url, state, base_model=record.base_model))
    return checks


def _lease(registry: AdapterRegistry, doing: str, *, by: str | None, say: Progress | None) -> contextlib.AbstractContextManager[Any]:
    """The registry's operation lease for ``doing`` (see the module docstring; ``say`` hears whom it waits for); nothing for a
    registry without one."""
    operation = getattr(registry, "operation", None)
    return operation(doing, by=by, on_wait=say) if callable(operation) else contextlib.nullcontext()


def last_gate(record: AdapterRecord) -> dict[str, Any] | None:
    """The adapter's most recent gate decision among its evals: ``passed``, ``reasons``, ``at``; None when never gated.

    Reads both shapes: ``ee eval gate --adapter`` (``kind: gate``, ``passed``, ``reasons``) and the improve
    job's (``gate_passed``, ``gate_reasons``)."""
    for entry in reversed(record.evals or []):
        verdict = gate_verdict(entry)
        if verdict is not None:
            return {key: verdict[key] for key in ("passed", "reasons", "at")}
    return None


def gate_verdict(entry: Any) -> dict[str, Any] | None:
    """The gate decision one of an adapter's evals records, None for an eval that is no gate decision: ``passed``,
    ``reasons``, ``at``, ``runs`` (what was compared, in words: ``ee eval gate --adapter``'s candidate and baseline run
    folders, or the ``ee improve`` run and its baseline; None when the entry names none) and ``notes`` (the gate's
    remarks that decided nothing). Reads both shapes, as :func:`last_gate`."""
    if not isinstance(entry, dict):
        return None
    if entry.get("kind") == "gate" and isinstance(entry.get("passed"), bool):
        passed, reasons = entry["passed"], entry.get("reasons")
        compared = [f"{side} run {entry[f'{side}_run']}" for side in ("candidate", "baseline") if entry.get(f"{side}_run")]
    elif isinstance(entry.get("gate_passed"), bool):
        passed, reasons = entry["gate_passed"], entry.get("gate_reasons")
        compared = [f"ee improve run {entry['run']}"] if entry.get("run") else []
        compared += [f"baseline {entry['baseline']}"] if entry.get("baseline") else []
    else:
        return None
    notes = entry.get("notes")
    return {
        "passed": passed,
        "reasons": [str(reason) for reason in reasons or []] if isinstance(reasons, list) else [str(reasons)] if reasons else [],
        "at": entry.get("at"),
        "runs": ", ".join(compared) or None,
        "notes": [str(note) for note in notes] if isinstance(notes, list) else [],
    }


def _check_servable(registry: AdapterRegistry, record: AdapterRecord) -> None:
    """The registry's copy is intact and the adapter runs on the live adapter's base model; nothing is marked
    (a restored folder, or a promote after the live adapter changed, can still succeed)."""
    if "://" not in record.path:  # a plug-in registry may keep adapters where only the servers see them
        check_registered_files(record, _registry_label(registry))
    live_name = registry.resolve(record.app)
    if live_name is None or live_name == record.name:
        return
    live = registry.get(live_name)
    same = same_base(live.base_model, record.base_model)  # (copies of one model are one base)
    if same is None:
        raise BaseModelMismatchError(base_not_told_apart(record.name, record.base_model, record.app, live.name, live.base_model))
    if not same:
        raise BaseModelMismatchError(
            f"{record.name} was trained on base model {record.base_model}, but {record.app}'s live adapter {live.name} runs on "
            f"{live.base_model}; the servers hold only that base, so {record.name} cannot be served there. Train on "
            f"{live.base_model}, or register the adapter under another app served from its own base."
        )


def _registry_label(registry: AdapterRegistry) -> str:
    return str(getattr(registry, "root", "REGISTRY"))


def _adapter_at_fault(exc: ServingError) -> bool:
    """Whether a promote failure says something about the adapter (then it is marked failed), not about the servers: a
    replica that did not answer, cannot see the folder, lacks the runtime LoRA API, or refuses the rank by its own
    ``--max-lora-rank`` says nothing about the adapter."""
    return not isinstance(exc, (ServerUnavailableError, ServerSetupError, AdapterPathNotFoundError, ServerRankError))


def _interrupted(
    registry: AdapterRegistry,
    record: AdapterRecord,
    exc: KeyboardInterrupt,
    loaded: list[ServingBackend],
    in_flight: ServingBackend | None,
    *,
    by: str | None,
    say: Progress,
    checking: bool = False,
    unanswered: ServingBackend | None = None,
) -> None:
    """A promote stopped before its switch (Ctrl-C, SIGTERM): unload the adapter from the replicas it was loaded on, note
    ``promote-aborted`` with why, and say what is left where. The replica whose load was under way when it stopped is not
    asked again (it may be the one that hung): it may hold the adapter if that load went through, which is said.
    ``checking``: stopped before any load, while checking the replicas; ``unanswered``: the replica whose model listing
    the checks waited on, where they did."""
    results: list[tuple[ServingBackend, str | None]] = []
    _unload_each(record.name, loaded, "interrupted", results, say=say)
    parts = ["before the switch", *(problem or f"unloaded from {other.url}" for other, problem in results)]
    if checking:
        parts.append("while checking the replicas, before any load")
    if unanswered is not None:
        parts.append(f"{unanswered.url} had not answered its model listing")
    if in_flight is not None:
        parts.append(
            f"{in_flight.url} had not answered its load: it holds it if that load went through (a promote of it again finds it "
            "there and verifies it)"
        )
    kind = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    registry.note("promote-aborted", app=record.app, adapter=record.name, by=by, reason=f"interrupted ({kind}) " + "; ".join(parts))
    live = registry.resolve(record.app)
    say(
        f"interrupted: promoting {record.name} stopped {'; '.join(parts)}. It stays {_status_text(registry.get(record.name).status)}; "
        f"{record.app} still serves {live or 'the base model'}."
    )


def _fail(
    registry: AdapterRegistry,
    record: AdapterRecord,
    replica: ServingBackend,
    exc: ServingError,
    loaded: list[ServingBackend],
    held: list[ServingBackend],
    *,
    by: str | None,
    say: Progress,
    loading: ServingBackend | None = None,
    cleared: str | None = None,
) -> None:
    """Undo what this promote loaded, mark the adapter failed where it is at fault (not where ``cleared`` says why it is
    not: :func:`_cleared`), and raise :class:`PromotionError`
    saying what happened: which replicas it was unloaded from or stays loaded on, and its status now (a retired
    adapter that is not at fault stays retired, not a candidate). ``loading``: the replica whose load failed without an
    answer (a timeout), which holds the adapter if that load went through after all. Stopped while undoing (Ctrl-C), it
    records the failure with the replicas still holding the adapter, then stops."""
    results: list[tuple[ServingBackend, str | None]] = []
    reason = f"{type(exc).__name__} on {replica.url}: {exc}"
    try:
        _unload_each(record.name, loaded, "rolling back", results, say=say)
    except KeyboardInterrupt:
        answered = [other for other, _ in results]
        unloading, *left = [other.url for other in loaded if other not in answered]  # (the first: its unload was under way)
        still = f"still loaded on {', '.join(left)}" if left else "loaded on no other replica"
        _record_failure(
            registry, record, exc, f"{reason} Then interrupted while unloading it from {unloading}: {still}.", by=by, cleared=cleared
        )
        raise
    problems = [problem for _, problem in results if problem]
    if problems:
        reason += " Also " + "; ".join(problems) + "."
    unanswered = ""
    if loading is not None and isinstance(exc, ServerTimeoutError):
        unanswered = f" {loading.url} did not answer its load in time: it holds {record.name} if that load went through."
        reason += unanswered
    outcome = _record_failure(registry, record, exc, reason, by=by, cleared=cleared)
    if held and registry.get(record.name).status == Status.failed:  # never served again: nothing to keep it loaded for
        done: list[tuple[ServingBackend, str | None]] = []
        _unload_each(record.name, held, "failed", done, say=say)
        problems += [problem for _, problem in done if problem]
        dropped, held = held, []
    else:
        dropped = []
    live = registry.resolve(record.app)
    raise PromotionError(
        f"Promoting {record.name} failed on {replica.url}: {as_sentence(str(exc))} {_unload_text(loaded, held, problems, dropped)}"
        f"{unanswered} {outcome}. "
        f"{record.app} still serves {live or 'the base model'}.",
        adapter=record.name,
        replica=replica.url,
    ) from exc


def _unload_each(
    name: str, replicas: list[ServingBackend], doing: str, results: list[tuple[ServingBackend, str | None]], *, say: Progress
) -> None:
    """Unload adapter ``name`` from each of ``replicas`` in turn, saying so (``doing``: why); each answer goes into
    ``results`` as it comes, ``(replica, None)`` or ``(replica, what went wrong)``, so a caller stopped midway knows how far
    it got."""
    for other in replicas:
        say(f"{doing}: unloading {name} from {other.url}")
        try:
            other.unload(name)
            results.append((other, None))
        except ServingError as unload_exc:
            results.append((other, f"could not unload it from {other.url} ({type(unload_exc).__name__}: {unload_exc})"))


def _record_failure(
    registry: AdapterRegistry, record: AdapterRecord, exc: ServingError, reason: str, *, by: str | None, cleared: str | None = None
) -> str:
    """Mark the adapter failed where ``exc`` is its own fault and nothing ``cleared`` it, else note ``promote-aborted``;
    what its status now is, said."""
    blamed = _adapter_at_fault(exc)
    if blamed and cleared is None:
        registry.mark_failed(record.name, reason, by=by)
        outcome = "It is marked failed"
    else:
        replica_at_fault = blamed and cleared is not None
        if replica_at_fault:
            reason += f" Not the adapter's fault: {cleared}."
        registry.note("promote-aborted", app=record.app, adapter=record.name, by=by, reason=reason)
        when = (
            f"once every replica allows rank {record.rank}"
            if isinstance(exc, ServerRankError)
            else "once that replica is started as said"
            if isinstance(exc, ServerSetupError)
            else "once that replica serves it as the others do (see its log), or without that replica"
            if replica_at_fault
            else "when every replica answers"
        )
        why = f"{cleared}, so the fault is that replica's, not the adapter's" if replica_at_fault else "the adapter is not at fault"
        outcome = (
            f"It stays {_status_text(registry.get(record.name).status)}: {why}. Promote it again {when} "
            f"(ee adapters promote {record.name} ...)"
        )
    return outcome


def _cleared(registry: AdapterRegistry, record: AdapterRecord, verifications: Sequence[Verification]) -> str | None:
    """Why a failure of ``record`` on one replica is not its own, or ``None``: another replica served it in this promote
    (loaded, listed, answered its smoke request), or it served its app before (promoted or rolled back to: the
    registry's copy checked intact since). A replica that answers with no choices, or does not list an adapter it
    accepted, then has trouble of its own, which marking the adapter failed for good would not fix."""
    if verifications:
        return f"it served a smoke request on {', '.join(v.url for v in verifications)} in this promote"
    try:
        events = registry.history(adapter=record.name)
    except Exception:  # noqa: BLE001 - a plug-in registry without a readable history: no evidence either way
        return None
    if any(e.get("action") in ("promote", "rollback") and e.get("applied", True) for e in events):
        return f"it served {record.app} before (ee adapters history {record.name})"
    return None


def _status_text(status: Status | str) -> str:
    """``a candidate``, ``retired``: a status as the end of "it stays ..."."""
    value = getattr(status, "value", status)
    return "a candidate" if value == Status.candidate.value else str(value)


def _unload_text(
    loaded: list[ServingBackend], held: list[ServingBackend], problems: list[str], dropped: Sequence[ServingBackend] = ()
) -> str:
    """What a failed promote did on the replicas: unloaded it where it had loaded it, and where a replica held it before
    (``dropped``) once it is marked failed (bar the ``problems``), and left it where a replica held it before."""
    if loaded or dropped:
        parts = [f"from {', '.join(r.url for r in loaded)}, where this promote had loaded it"] if loaded else []
        parts += [f"from {', '.join(r.url for r in dropped)}, which held it before (a failed adapter is never served)"] if dropped else []
        text = "It was unloaded " + ", and ".join(parts)
        text += f" (except: {'; '.join(problems)})." if problems else "."
    else:
        text = "Nothing was loaded by this promote."
    if held:
        text += f" It stays loaded on {', '.join(r.url for r in held)}, which held it before."
    return text


def rollback(
    registry: AdapterRegistry, app: str, replicas: Sequence[ServingBackend], *, by: str | None = None, progress: Progress | None = None
) -> SwitchResult:
    """Make the previous live adapter of ``app`` live again (loaded again where a replica lost it)."""
    started = time.perf_counter()
    with _lease(registry, f"rollback of {app}", by=by, say=progress):
        return _rollback(registry, app, replicas, by=by, say=progress, started=started)


def _rollback(
    registry: AdapterRegistry, app: str, replicas: Sequence[ServingBackend], *, by: str | None, say: Progress | None, started: float
) -> SwitchResult:
    target = registry.rollback_target(app)
    if not replicas and "://" not in target.path:  # (--registry-only) a server that starts loads the live adapter from these files
        label = _registry_label(registry)
        check_registered_files(
            target,
            label,
            fix=(
                f"A server that starts would load it from those files. Nothing was switched: {app} still serves "
                f"{registry.resolve(app) or 'the base model'}. Restore its folder from a backup, or retire it (ee adapters retire "
                f"{target.name} -r {label}) and roll back again: the rollback then goes to the live adapter before it."
            ),
        )
    listed: dict[str, list[str]] = {}
    for replica in replicas:  # every replica answers before the rendering notes, which would blame a setup it did not say
        try:
            listed[replica.url] = replica.list()
        except ServingError as exc:
            raise _rollback_stopped(registry, app, target, replica, exc) from exc
    checks = rendering_checks(target, replicas)
    for check in checks:
        if check.status != "same" and say is not None:
            say(("warning: " if check.differs else "note: ") + check.message)
    loaded = []
    for replica in replicas:
        try:
            if target.name not in listed[replica.url]:
                if "://" not in target.path:
                    label = _registry_label(registry)
                    check_registered_files(
                        target,
                        label,
                        fix=(
                            f"{replica.url} no longer holds it, so it would be loaded from those files. Nothing was switched: {app} "
                            f"still serves {registry.resolve(app) or 'the base model'}. To roll back past it, retire it (ee adapters "
                            f"retire {target.name} -r {label}) and roll back again: the rollback then goes to the live adapter before "
                            "it. Or restore its folder from a backup."
                        ),
                    )
                replica.load(target.name, target.path)
                replica.verify(target.name)
                loaded.append(replica.url)
        except ServingError as exc:
            raise _rollback_stopped(registry, app, target, replica, exc) from exc
    if loaded:  # as a promote's re-load: which replicas it was loaded on again, before the switch
        registry.note("reload", app=app, adapter=target.name, by=by, loaded_on=loaded)
    previous = registry.switch_live(target.name, by=by, action="rollback")
    return SwitchResult(
        registry.get(target.name), previous.name if previous else None, time.perf_counter() - started, loaded_on=loaded, rendering=checks
    )


def _rollback_stopped(
    registry: AdapterRegistry, app: str, target: AdapterRecord, replica: ServingBackend, exc: ServingError
) -> ServingError:
    """``exc`` (of the same class where it can be built so) saying that the rollback stopped at ``replica`` and switched nothing."""
    live = registry.resolve(app)
    message = (
        f"Rolling {app} back to {target.name} stopped at {replica.url}: {exc} Nothing was switched: {app} still serves "
        f"{live or 'the base model'}. Run the rollback again when every replica answers (or without the broken one)."
    )
    try:
        return type(exc)(message, url=exc.url)
    except TypeError:  # a plug-in's error class with another signature
        return ServingError(message, url=exc.url)


def retire(
    registry: AdapterRegistry,
    name: str,
    replicas: Sequence[ServingBackend],
    *,
    by: str | None = None,
    reason: str | None = None,
    progress: Progress | None = None,
) -> tuple[AdapterRecord, list[str]]:
    """Mark ``name`` retired, then unload it from every replica; returns the record and the replicas it could not be unloaded from."""
    with _lease(registry, f"retire of {name}", by=by, say=progress):
        record = registry.retire(name, by=by, reason=reason)
        problems = []
        for replica in replicas:
            try:
                replica.unload(name)
            except ServingError as exc:
                problems.append(f"{replica.url}: {exc}")
        return record, problems
