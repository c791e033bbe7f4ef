"""Promote, roll back and retire adapters across every replica, keeping the registry consistent.

**Promote** ``name``: on every replica, load it (unless it is listed already: same name, same
weights) and verify it (listed in ``/v1/models`` and a smoke chat request through it answers). Only
when every replica verified it does the registry make it the app's live adapter, which switches the
app's alias (the router resolves the alias per request). A failure on any replica unloads it from
every replica it was loaded on, marks it ``failed`` with the reason, and raises
:class:`~ee_middleware.adapters.errors.PromotionError`; the live adapter never changed. The replaced
adapter stays loaded, so a rollback is only an alias switch.

**Rollback** ``app``: the previous live adapter is checked on every replica (listed; loaded again if
a replica lost it, e.g. after a restart) and made live again. **Retire**: unloaded everywhere,
withdrawn from the rollback stack.

A process killed mid-promote leaves the adapter ``candidate`` (the history shows the start without
an end) and the live adapter unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ee_middleware.adapters.errors import InvalidTransitionError, PromotionError, ServingError
from ee_middleware.adapters.records import AdapterRecord, Status
from ee_middleware.adapters.registry import AdapterRegistry
from ee_middleware.adapters.serving.backend import ServingBackend, Verification

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SwitchResult:
    """What a promote or rollback did: the adapter now live, the one it replaced, timings."""

    live: AdapterRecord
    replaced: str | None
    seconds: float
    verifications: list[Verification] = field(default_factory=list)
    loaded_on: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "live": self.live.name,
            "app": self.live.app,
            "replaced": self.replaced,
            "seconds": round(self.seconds, 4),
            "loaded_on": self.loaded_on,
            "verified_on": [v.url for v in self.verifications],
        }


def promote(
    registry: AdapterRegistry,
    name: str,
    replicas: Sequence[ServingBackend],
    *,
    by: str | None = None,
    progress: Progress | None = None,
) -> SwitchResult:
    """Load and verify ``name`` on every replica, then make it live (see the module docstring)."""
    started = time.perf_counter()
    record = registry.get(name)
    if record.status == Status.failed:
        raise InvalidTransitionError(
            f"{name} failed before ({record.reason}); a failed adapter is not promoted again. Fix the cause and register a new one."
        )
    if record.status == Status.live:
        return SwitchResult(record, None, time.perf_counter() - started)
    say = progress or (lambda _text: None)
    registry.note("promote-started", app=record.app, adapter=name, by=by, replicas=[r.url for r in replicas])
    loaded: list[ServingBackend] = []
    verifications: list[Verification] = []
    for replica in replicas:
        try:
            if name not in replica.list():
                say(f"loading {name} on {replica.url}")
                replica.load(name, record.path)
                loaded.append(replica)
            say(f"verifying {name} on {replica.url}")
            verifications.append(replica.verify(name))
        except ServingError as exc:
            _fail(registry, record, replica, exc, loaded, by=by, say=say)
    previous = registry.switch_live(name, by=by)
    say(f"{record.app} -> {name}")
    return SwitchResult(
        registry.get(name), previous.name if previous else None, time.perf_counter() - started, verifications, [r.url for r in loaded]
    )


def _fail(
    registry: AdapterRegistry,
    record: AdapterRecord,
    replica: ServingBackend,
    exc: ServingError,
    loaded: list[ServingBackend],
    *,
    by: str | None,
    say: Progress,
) -> None:
    problems = []
    for other in loaded:
        say(f"rolling back: unloading {record.name} from {other.url}")
        try:
            other.unload(record.name)
        except ServingError as unload_exc:
            problems.append(f"could not unload it from {other.url} ({type(unload_exc).__name__}: {unload_exc})")
    reason = f"{type(exc).__name__} on {replica.url}: {exc}"
    if problems:
        reason += " Also " + "; ".join(problems) + "."
    registry.mark_failed(record.name, reason, by=by)
    live = registry.resolve(record.app)
    raise PromotionError(
        f"Promoting {record.name} failed on {replica.url}: {exc} It was unloaded from every replica it had been loaded on"
        + (" except where noted: " + "; ".join(problems) if problems else "")
        + f", and is marked failed. {record.app} still serves {live or 'the base model'}.",
        adapter=record.name,
        replica=replica.url,
    ) from exc


def rollback(registry: AdapterRegistry, app: str, replicas: Sequence[ServingBackend], *, by: str | None = None) -> SwitchResult:
    """Make the previous live adapter of ``app`` live again (loaded again where a replica lost it)."""
    started = time.perf_counter()
    target = registry.rollback_target(app)
    loaded = []
    for replica in replicas:
        if target.name not in replica.list():
            replica.load(target.name, target.path)
            replica.verify(target.name)
            loaded.append(replica.url)
    previous = registry.switch_live(target.name, by=by, action="rollback")
    return SwitchResult(registry.get(target.name), previous.name if previous else None, time.perf_counter() - started, loaded_on=loaded)


def retire(
    registry: AdapterRegistry, name: str, replicas: Sequence[ServingBackend], *, by: str | None = None, reason: str | None = None
) -> tuple[AdapterRecord, list[str]]:
    """Mark ``name`` retired, then unload it from every replica; returns the record and the replicas it could not be unloaded from."""
    record = registry.retire(name, by=by, reason=reason)
    problems = []
    for replica in replicas:
        try:
            replica.unload(name)
        except ServingError as exc:
            problems.append(f"{replica.url}: {exc}")
    return record, problems
