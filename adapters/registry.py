"""The adapter registry: immutable versioned names, statuses, the app's live adapter, an append-only history.

:class:`AdapterRegistry` is the protocol every caller uses (the CLI, the promoter, the router);
:class:`LocalAdapterRegistry` is the embedded default, a folder::

    registry/
      index.json        apps (live adapter, rollback stack, version counter) and adapter records;
                        replaced atomically (ee_middleware._files), so a reader sees the old or the new one
      history.jsonl     one JSON line per action (who, what, when), appended and fsync-ed BEFORE the
                        index changes; an event whose index write never happened (a crash) reads
                        back with "applied": false
      adapters/NAME/    the registry's own copy of each adapter (config, weights, manifest), what servers load;
                        index.json records its absolute path, ".../adapters/NAME", read as THIS folder's
                        adapters/NAME wherever the registry is now, so a registry moved or copied elsewhere serves
                        its own copies (a relative "adapters/NAME", as some versions wrote, is read so too). Written
                        absolute, as older versions read it: an older ee, put back after an upgrade, still finds
                        the copies (it reads the path as it is). Records handed to callers (get, list, ...) carry
                        the absolute path of this folder's copy, as servers need
      .lock             writers take an exclusive lock (several CLI processes may write at once)
      .operation.lock   the operation lease: one promote, rollback, retire or switch at a time, held across
                        the servers' loads and unloads and the index change (see :meth:`LocalAdapterRegistry.operation`)

An app's name is its **alias**: applications ask for ``support-bot`` and the router serves
whatever adapter is live for it (:meth:`AdapterRegistry.resolve`). Names are never reused: the name
carries the content hash of the weights, and registering the same weights again for the same app
returns the existing record (restoring the registry's copy where it is missing or altered).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import getpass
import json
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ee_middleware._files import atomic_write_text, file_above, fsync_dir, pid_alive
from ee_middleware._locks import holder_lock
from ee_middleware._text import json_lines
from ee_middleware.adapters.errors import (
    AdapterNotFoundError,
    BaseModelMismatchError,
    InvalidTransitionError,
    RankTooLargeError,
    RegistryBusyError,
    RegistryCorruptionError,
    RegistryError,
    RegistryNotFoundError,
)
from ee_middleware.adapters.records import (
    ADAPTER_NAME,
    AdapterFiles,
    AdapterRecord,
    Status,
    adapter_name,
    check_app_name,
    content_hash,
    copy_problem,
    inspect_adapter,
    record_field_problem,
)
from ee_middleware.errors import ConfigError, StoreCorruptionWarning
from ee_middleware.messages import finite_or_null
from ee_middleware.models.bases import same_base
from ee_middleware.plugins import FACTORY_SPEC, PluginKind, _did_you_mean

INDEX_SCHEMA_VERSION = 1
DEFAULT_MAX_LORA_RANK = 16
"""vLLM's own default for ``--max-lora-rank``; set ``EE_MAX_LORA_RANK`` (or ``--max-lora-rank``) to your servers' value."""
DEFAULT_WAIT_S = 120.0
"""How long a promote, rollback, retire or switch waits for another one on the same registry before it gives up
(:class:`RegistryBusyError` naming the holder); set ``EE_REGISTRY_WAIT_S`` (0: give up at once)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def current_user() -> str:
    """Who is acting, for the history: ``EE_USER``, else the login name."""
    try:
        return os.environ.get("EE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@runtime_checkable
class AdapterRegistry(Protocol):
    """Versioned adapters per app, their statuses, the live one per app, and who did what when.

    A plug-in (an ``ee_middleware.adapter_registries`` entry point) is a factory called as ``factory(location,
    create=...)``. With ``create=True`` it makes the registry where there is none; with ``create=False`` (commands and
    checks that only read it, such as ee improve's check before a run) it makes nothing, and a registry that is not
    there yet is a :class:`~ee_middleware.adapters.errors.RegistryNotFoundError` (ee improve takes it, or a plain
    ``RegistryError`` from a plug-in written before that class, as "no live adapter yet"; busy or corrupt are errors).

    A registry may also offer ``reinstate(name, reason, *, by=None)`` (:meth:`LocalAdapterRegistry.reinstate`): a promote
    uses it to make an adapter that an earlier version marked failed for a server's ``--max-lora-rank`` a candidate
    again; without it, such an adapter stays failed and the promote says so.
    """

    def register(
        self, path: str | os.PathLike[str], app: str, *, by: str | None = None, max_lora_rank: int | None = None
    ) -> AdapterRecord: ...

    def get(self, name: str) -> AdapterRecord: ...

    def list(self, *, app: str | None = None, status: str | None = None) -> list[AdapterRecord]: ...

    def resolve(self, alias: str) -> str | None:
        """The name of the adapter live for app ``alias`` (None when none is)."""
        ...

    def apps(self) -> dict[str, dict[str, Any]]:
        """Per app (alias): ``live`` (adapter name or None), ``previous`` (the rollback stack), ``versions``."""
        ...

    def rollback_target(self, app: str) -> AdapterRecord:
        """The adapter a rollback of ``app`` would make live again."""
        ...

    def switch_live(self, name: str, *, by: str | None = None, action: str = "promote", reason: str | None = None) -> AdapterRecord | None:
        """Make ``name`` the live adapter of its app; returns the one it replaced."""
        ...

    def mark_failed(self, name: str, reason: str, *, by: str | None = None) -> AdapterRecord: ...

    def retire(self, name: str, *, by: str | None = None, reason: str | None = None) -> AdapterRecord: ...

    def note(self, action: str, *, app: str | None = None, adapter: str | None = None, by: str | None = None, **details: Any) -> None:
        """Append an event to the history without changing any record."""
        ...

    def add_eval(self, name: str, result: dict[str, Any], *, by: str | None = None) -> AdapterRecord: ...

    def history(self, *, app: str | None = None, adapter: str | None = None) -> list[dict[str, Any]]:
        """The events in the order made, each with ``applied``; of one ``app``, and of one ``adapter``: those acting on it
        (``adapter``) and those that replaced it as live (``replaced``: the promote that superseded it, a rollback from it).
        Each has ``at`` (when, an ISO 8601 string with its zone: ``datetime.now(UTC).isoformat()``; a time without one
        could be any zone's, so ``ee improve``'s promote counts a rollback within 14 hours of its run as since the run), ``by``
        and ``action``. A registry that keeps no
        history raises ``NotImplementedError`` (ee improve's promote then skips its check of a rollback since its run,
        with a warning)."""
        ...


class LocalAdapterRegistry:
    """The embedded registry: a local folder (see the module docstring).

    ``wait_s``: how long :meth:`operation` waits for another holder of the lease (default ``EE_REGISTRY_WAIT_S``,
    else :data:`DEFAULT_WAIT_S`). With ``create=True`` a registry that is not there yet reads as empty and its folder is
    made by the first write, so a refused :meth:`register` (not an adapter, a bad app name) leaves nothing behind.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, wait_s: float | None = None) -> None:
        if not os.fspath(root).strip():  # Path("") is the working folder: a registry made in a checkout, unasked
            raise ConfigError(
                f"The adapter registry {os.fspath(root)!r} is empty or blank: name the registry's folder (-r PATH, local:PATH, "
                "NAME:LOCATION for a plug-in, or package.module:factory; EE_ADAPTER_REGISTRY). An unset variable in the command?"
            )
        self.root = Path(root).expanduser().resolve()
        self._wait_s = None if wait_s is None else max(0.0, wait_s)
        self._apps_cache: tuple[tuple[Any, ...], dict[str, dict[str, Any]] | RegistryError] | None = None
        self._create = create
        if self.root.exists() and not self.root.is_dir():  # a setting's mistake, not "not there yet" (a first night)
            raise ConfigError(
                f"The adapter registry {self.root} is a file, not a folder: name the registry's folder (it holds index.json; "
                "a new one is made where none is)."
            )
        if (blocking := file_above(self.root)) is not None:  # (found by the first write: ee improve's train stage, hours in)
            raise ConfigError(
                f"The adapter registry {self.root} can never be made: {blocking} above it is a file. Name the registry's folder "
                "(it holds index.json; a new one is made where none is)."
            )
        if not create and not (self.root / "index.json").is_file() and self._left_without_index():
            self._read_index()  # a registry that lost its index says so, not that none is there
        if not create and not (self.root / "index.json").is_file():
            raise RegistryNotFoundError(
                f"No adapter registry at {self.root} (no index.json). Register an adapter first: "
                f"ee adapters register PATH --app APP -r {self.root}"
            )

    def __repr__(self) -> str:
        return f"LocalAdapterRegistry({str(self.root)!r})"

    @property
    def wait_s(self) -> float:
        """How long :meth:`operation` waits for another holder (read from ``EE_REGISTRY_WAIT_S`` when first needed,
        so a reader such as the router never trips over it)."""
        if self._wait_s is None:
            self._wait_s = _wait_s()
        return self._wait_s

    # --- reading -------------------------------------------------------------------------------

    def get(self, name: str) -> AdapterRecord:
        data = self._read_index()["adapters"].get(name)
        if data is None:
            raise AdapterNotFoundError(f"No adapter named {name!r} in the registry at {self.root}. See `ee adapters list`.")
        return self._public(data)

    def list(self, *, app: str | None = None, status: str | None = None) -> list[AdapterRecord]:
        records = [self._public(d) for d in self._read_index()["adapters"].values()]
        records = [r for r in records if (app is None or r.app == app) and (status is None or r.status == status)]
        return sorted(records, key=lambda r: (r.app, r.version))

    def apps(self) -> dict[str, dict[str, Any]]:
        """Per app: the live adapter, the rollback stack and the last version number."""
        return copy.deepcopy(self._apps())

    def resolve(self, alias: str) -> str | None:
        app = self._apps().get(alias)
        return app.get("live") if app else None

    def _apps(self) -> dict[str, dict[str, Any]]:
        """The apps table, parsed again only when the index or the history changed on disk.

        The router resolves an alias per request, and the index holds every adapter's record with its
        training manifest (losses included): a year of nightly adapters is megabytes of JSON, which took
        about half a second to parse on every request. Every write through the registry appends to the
        history before it replaces the index, so the history's size changes with every write even when a
        new index happens to get the same inode, size and time stamp as an older one; an index replaced
        by other means gets a new inode or time stamp. An index the registry refuses (damaged, edited by hand) is
        refused again without parsing it again, until it changes: the router asks on every request meanwhile."""
        key = (_stat_key(self.root / "index.json"), _stat_key(self.root / "history.jsonl"))
        cached = self._apps_cache
        if cached is not None and cached[0] == key:
            if isinstance(cached[1], RegistryError):
                raise cached[1].with_traceback(None)
            return cached[1]
        try:
            apps = self._read_index()["apps"]
        except RegistryError as exc:
            self._apps_cache = (key, exc)
            raise
        self._apps_cache = (key, apps)
        return apps

    def rollback_target(self, app: str) -> AdapterRecord:
        index = self._read_index()
        return self._public(index["adapters"][_rollback_name(index, app, lambda: self._served(app))])

    def _served(self, app: str) -> set[str]:
        """The adapters of ``app`` that were ever live (promoted, or rolled back to), from the history's applied events."""
        return {e["adapter"] for e in self.history(app=app) if e.get("action") in ("promote", "rollback") and e["applied"]}

    def history(self, *, app: str | None = None, adapter: str | None = None) -> list[dict[str, Any]]:
        events = _with_applied(self._read_history(), self._read_index()["last_event"])
        return [
            event
            for event in events
            if (app is None or event.get("app") == app) and (adapter is None or adapter in (event.get("adapter"), event.get("replaced")))
        ]

    # --- writing -------------------------------------------------------------------------------

    def register(
        self,
        path: str | os.PathLike[str],
        app: str,
        *,
        by: str | None = None,
        max_lora_rank: int | None = None,
        on_restore: Callable[[str], None] | None = None,
    ) -> AdapterRecord:
        """Copy the adapter in under a new versioned name (or return the record of the same weights).

        Where the same weights are registered already but the registry's copy of them is missing or altered (deleted
        by hand, a registry moved without its ``adapters/`` folder), they are copied in again (their content hash
        checked), a ``restore`` event is added to the history, and ``on_restore`` hears what was restored and why.

        Refused with :class:`BaseModelMismatchError` when the app's live adapter has another base
        model, and with :class:`RankTooLargeError` when the rank exceeds ``max_lora_rank``
        (default ``EE_MAX_LORA_RANK``, else vLLM's default 16).
        """
        check_app_name(app)
        files = inspect_adapter(path)
        limit = max_lora_rank if max_lora_rank is not None else int(os.environ.get("EE_MAX_LORA_RANK", DEFAULT_MAX_LORA_RANK))
        if files.rank > limit:
            raise RankTooLargeError(
                f"{files.path} has LoRA rank r={files.rank}, above the servers' --max-lora-rank {limit}: vLLM would refuse to load it. "
                f"Train with lora_r <= {limit}, or start the servers with --max-lora-rank {files.rank} and pass --max-lora-rank "
                f"{files.rank} (or set EE_MAX_LORA_RANK)."
            )
        with self._locked():
            index = self._read_index()
            for data in index["adapters"].values():
                if data["app"] == app and data["content_hash"] == files.content_hash:
                    return self._registered_again(index, data, files, by=by, on_restore=on_restore)
            self._check_base(index, app, files.base_model, str(files.path))
            self._remove_crash_leftovers(index)
            version = index["apps"].get(app, {}).get("versions", 0) + 1
            name = adapter_name(app, version, files.content_hash)
            copy = self._copy_in(files.path, name, files.weights_file, files.content_hash)
            stamp, who = now(), by or current_user()
            record = AdapterRecord(
                name=name,
                app=app,
                version=version,
                content_hash=files.content_hash,
                status=Status.candidate.value,
                base_model=files.base_model,
                rank=files.rank,
                path=str(copy),  # (stored relative to the registry's folder: _write_index)
                source_path=str(files.path),
                created_at=stamp,
                created_by=who,
                updated_at=stamp,
                manifest=files.manifest,
            )
            app_entry = index["apps"].setdefault(app, _new_app())
            app_entry["versions"] = version
            index["adapters"][name] = record.to_json()
            self._commit(index, "register", app=app, adapter=name, by=who, source=str(files.path), base_model=files.base_model)
            return record

    def _registered_again(
        self, index: dict[str, Any], data: dict[str, Any], files: AdapterFiles, *, by: str | None, on_restore: Callable[[str], None] | None
    ) -> AdapterRecord:
        """The record of weights registered before, its registry copy restored from ``files`` where it is missing or
        altered (under the writers' lock, like every change)."""
        record = self._public(data)
        problem = copy_problem(record, verify=True)
        if problem is None:
            return record
        self._copy_in(files.path, record.name, files.weights_file, files.content_hash)
        data["path"] = str(self.root / _COPIES / record.name)  # (where the copy is now, whatever a hand edit had put there)
        self._commit(index, "restore", app=record.app, adapter=record.name, by=by or current_user(), source=str(files.path), was=problem)
        if on_restore is not None:
            on_restore(f"restored the registry's copy of {record.name} from {files.path} (same content hash): {problem}")
        return self._public(data)

    def switch_live(self, name: str, *, by: str | None = None, action: str = "promote", reason: str | None = None) -> AdapterRecord | None:
        with self.operation(f"{action} of {name}", by=by), self._locked():
            index = self._read_index()
            record = self._record(index, name)
            if record["status"] not in (Status.candidate, Status.retired, Status.live):
                raise InvalidTransitionError(
                    f"{name} is {record['status']} ({record.get('reason')}); a failed adapter is not served again. "
                    "Fix the cause and register a newly trained adapter."
                )
            app = index["apps"][record["app"]]
            previous_name = app.get("live")
            if previous_name == name:
                return None
            if action != "rollback":  # a rollback restores what these servers ran before
                self._check_base(index, record["app"], record["base_model"], name)
            stamp = now()
            previous = None
            if previous_name is not None:
                previous = index["adapters"][previous_name]
                if action == "rollback":
                    previous.update(status=Status.retired.value, reason=reason or f"rolled back to {name}", updated_at=stamp)
                else:
                    previous.update(status=Status.retired.value, reason=f"superseded by {name}", updated_at=stamp)
                    app["previous"] = [n for n in app["previous"] if n != previous_name] + [previous_name]
            app["previous"] = [n for n in app["previous"] if n != name]
            app["live"] = name
            record.update(status=Status.live.value, reason=reason, updated_at=stamp)
            self._commit(index, action, app=record["app"], adapter=name, by=by or current_user(), replaced=previous_name)
            return self._public(previous) if previous else None

    def mark_failed(self, name: str, reason: str, *, by: str | None = None) -> AdapterRecord:
        with self.operation(f"fail of {name}", by=by), self._locked():
            index = self._read_index()
            record = self._record(index, name)
            if record["status"] == Status.live:
                raise InvalidTransitionError(f"{name} is live; it cannot be marked failed. Roll back or promote another adapter first.")
            record.update(status=Status.failed.value, reason=reason, updated_at=now())
            app = index["apps"][record["app"]]
            app["previous"] = [n for n in app["previous"] if n != name]
            self._commit(index, "fail", app=record["app"], adapter=name, by=by or current_user(), reason=reason)
            return self._public(record)

    def reinstate(self, name: str, reason: str, *, by: str | None = None) -> AdapterRecord:
        """Make the failed adapter ``name`` a candidate again, for a failure that was not its own (a server's
        ``--max-lora-rank`` that an earlier version took for the adapter's fault: :func:`~ee_middleware.adapters.promote.promote`
        does it for such an adapter). The history's ``reinstate`` event keeps the reason it had failed for (``was``) beside
        ``reason``; the earlier ``fail`` event stays. :class:`InvalidTransitionError` for an adapter that is not failed."""
        with self.operation(f"reinstate of {name}", by=by), self._locked():
            index = self._read_index()
            record = self._record(index, name)
            if record["status"] != Status.failed:
                raise InvalidTransitionError(f"{name} is {record['status']}, not failed: there is nothing to reinstate.")
            was = record.get("reason")
            record.update(status=Status.candidate.value, reason=None, updated_at=now())
            self._commit(index, "reinstate", app=record["app"], adapter=name, by=by or current_user(), reason=reason, was=was)
            return self._public(record)

    def retire(self, name: str, *, by: str | None = None, reason: str | None = None) -> AdapterRecord:
        with self.operation(f"retire of {name}", by=by), self._locked():
            index = self._read_index()
            record = self._record(index, name)
            app = index["apps"][record["app"]]
            if record["status"] == Status.live:
                try:  # (the rollback's own rule: only where one would go somewhere)
                    target = _rollback_name(index, record["app"], lambda: self._served(record["app"]))
                except InvalidTransitionError:
                    target = None
                back = f" or `ee adapters rollback {record['app']}` (to {target})" if target else ""
                nothing = "" if back else f" (no earlier adapter of {record['app']} is left to roll back to)"
                raise InvalidTransitionError(f"{name} is the live adapter of {record['app']}: promote another one{back} first{nothing}.")
            if record["status"] == Status.retired and name not in app["previous"]:  # retired by hand before: no change
                return self._public(record)  # (retired again to unload it from more replicas: one retire in the history)
            record.update(status=Status.retired.value, reason=reason or "retired", updated_at=now())
            app["previous"] = [n for n in app["previous"] if n != name]
            self._commit(index, "retire", app=record["app"], adapter=name, by=by or current_user(), reason=reason)
            return self._public(record)

    def add_eval(self, name: str, result: dict[str, Any], *, by: str | None = None) -> AdapterRecord:
        with self._locked():
            index = self._read_index()
            record = self._record(index, name)
            record["evals"] = [*record.get("evals", []), {"at": now(), **result}]
            record["updated_at"] = now()
            self._commit(index, "eval", app=record["app"], adapter=name, by=by or current_user())
            return self._public(record)

    def note(self, action: str, *, app: str | None = None, adapter: str | None = None, by: str | None = None, **details: Any) -> None:
        with self._locked():
            self._commit(self._read_index(), action, app=app, adapter=adapter, by=by or current_user(), **details)

    @contextlib.contextmanager
    def operation(self, doing: str, *, by: str | None = None, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the registry's operation lease for the block: one promote, rollback, retire or switch at a time.

        The lease spans what the servers do and the index change (a promote holds it from reading the status to
        switching the alias), so a retire cannot unload an adapter that a promote is about to make live. Another
        holder, in this or any process, is waited for up to ``wait_s`` seconds (``on_wait`` hears once who it is);
        then :class:`RegistryBusyError` names it. The lease is an ``flock``: a holder that dies (even killed)
        releases it at once. A thread that holds it may take it again (a promote's switch, its marking failed).
        """
        held = _leases_held()
        if held.get(self.root):
            held[self.root] += 1
            try:
                yield
            finally:
                held[self.root] -= 1
            return
        self._make()
        what = f"{doing} by {by or current_user()}"
        deadline = time.monotonic() + self.wait_s
        told = False
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    stack.enter_context(holder_lock(self.root / ".operation.lock", _LeaseHeld, doing=what))
                    break
                except _LeaseHeld as busy:
                    holder = str(busy)
                    if time.monotonic() >= deadline:
                        raise RegistryBusyError(
                            f"The adapter registry at {self.root} is busy: {holder}. Waited {self.wait_s:g} s for it to finish "
                            f"before the {doing}. Run it again when that is done (`ee adapters show NAME` shows the history), or "
                            "wait longer with EE_REGISTRY_WAIT_S=SECONDS. A holder that was killed releases the registry at once.",
                            holder=holder,
                        ) from None
                    if on_wait is not None and not told:
                        on_wait(f"waiting for the registry at {self.root}: {holder}")
                        told = True
                    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            held[self.root] = 1
            try:
                yield
            finally:
                held.pop(self.root, None)

    # --- internals -----------------------------------------------------------------------------

    def _public(self, data: dict[str, Any]) -> AdapterRecord:
        """A stored record as callers get it: its ``path`` the absolute path of this registry's copy."""
        return AdapterRecord.from_json({**data, "path": self._copy_path(data)})

    def _copy_path(self, data: dict[str, Any]) -> str:
        """Where the copy of the record ``data`` is now: an absolute ``.../adapters/NAME`` (as written: the folder the
        registry was in then) and ``adapters/NAME`` (as some versions wrote) are this registry's ``adapters/NAME``; any
        other absolute path (a hand edit) is kept as it is."""
        stored = Path(str(data.get("path") or ""))
        if not stored.is_absolute():
            return str(self.root / stored)
        if stored.parts[-2:] == (_COPIES, data["name"]):
            return str(self.root / _COPIES / data["name"])
        return str(stored)

    def _record(self, index: dict[str, Any], name: str) -> dict[str, Any]:
        record = index["adapters"].get(name)
        if record is None:
            raise AdapterNotFoundError(f"No adapter named {name!r} in the registry at {self.root}. See `ee adapters list`.")
        return record

    def _check_base(self, index: dict[str, Any], app: str, base: str, what: str) -> None:
        """``what`` (a folder or an adapter name) runs on the base model of ``app``'s live adapter."""
        live = index["apps"].get(app, {}).get("live")
        if live is None or live == what:
            return
        live_base = index["adapters"][live]["base_model"]
        same = same_base(live_base, base)  # (two copies of one model, e.g. one GGUF dequantized in two caches, are one base)
        if same is None:  # (a hub id against a folder: the same model downloaded, as likely as another one)
            raise BaseModelMismatchError(base_not_told_apart(what, base, app, live, live_base))
        if not same:
            raise BaseModelMismatchError(
                f"{what} was trained on base model {base}, but {app}'s live adapter {live} runs on {live_base}; the servers "
                f"hold only that base. Train on {live_base}, or register it under another app."
            )

    def _remove_crash_leftovers(self, index: dict[str, Any]) -> None:
        """(Under the writers' lock.) Remove what a register killed before its index entry was written left in the copies'
        folder: its partial copy (``.NAME.partial-PID``: no other writer copies now), and a whole copy of a version the
        index never counted (``APP-vN-HASH`` with N above the app's versions), which a later register of the app numbers
        alike (the copy of other weights under that version's name then stood beside it for good)."""
        apps = index["apps"]
        for folder in self.leftover_copies(index, live_partials=True):
            named = ADAPTER_NAME.fullmatch(folder.name)
            uncounted = named is not None and named["app"] in apps and int(named["version"]) > apps[named["app"]].get("versions", 0)
            if _PARTIAL_COPY.fullmatch(folder.name) or uncounted:
                shutil.rmtree(folder, ignore_errors=True)

    def leftover_copies(self, index: dict[str, Any] | None = None, *, live_partials: bool = False) -> list[Path]:
        """The folders among the registry's copies that no adapter of the index names: partial copies (``.NAME.partial-PID``)
        and whole ones a register killed before its index entry was written left (the next register removes those it can
        tell are: a partial copy, a copy of a version of an app the index holds that it never counted; a folder put there
        by hand is only listed). A partial copy of a process still running (a register copying now) is left out unless
        ``live_partials`` (under the writers' lock, where none can be)."""
        folder = self.root / _COPIES
        if not folder.is_dir():
            return []
        named = (index if index is not None else self._read_index())["adapters"]
        left = []
        for entry in folder.iterdir():
            if not entry.is_dir() or entry.name in named:
                continue
            partial = _PARTIAL_COPY.fullmatch(entry.name)
            if partial is None or live_partials or not pid_alive(partial["pid"]):
                left.append(entry)
        return sorted(left)

    def _copy_in(self, source: Path, name: str, weights_file: str, expected_hash: str) -> Path:
        target = self.root / _COPIES / name
        partial = target.with_name(f".{name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, partial / item.name)
        if content_hash(partial, weights_file) != expected_hash:
            shutil.rmtree(partial, ignore_errors=True)
            raise RegistryError(f"{source} changed while it was being copied into the registry; register it again when it is complete.")
        for item in partial.iterdir():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(target, ignore_errors=True)  # a copy left by a crash before its index entry was written
        partial.rename(target)
        fsync_dir(target.parent)
        return target

    def _commit(self, index: dict[str, Any], action: str, **event: Any) -> None:
        seq = index["last_event"] + 1
        record = {"seq": seq, "at": now(), "action": action, **{k: v for k, v in event.items() if v is not None}}
        self._append_history(record)
        index["last_event"] = seq
        self._write_index(index)

    def _append_history(self, event: dict[str, Any]) -> None:
        path = self.root / "history.jsonl"
        line = json.dumps(finite_or_null(event), ensure_ascii=False, default=str, allow_nan=False) + "\n"
        with open(path, "ab+") as fh:
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a line cut by a crash: start ours on a fresh line
                    line = "\n" + line
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())

    def _read_history(self) -> list[dict[str, Any]]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        events = []
        for number, line in json_lines(path.read_text(encoding="utf-8", errors="replace")):
            try:
                events.append(json.loads(line))
            except ValueError:
                warnings.warn(f"{path}:{number} is a damaged history line (cut by a crash?); skipped", StoreCorruptionWarning, stacklevel=3)
        return events

    def _read_index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            left = self._left_without_index()
            if left:  # a registry that lost its index: starting over would number versions anew, the old ones orphaned
                raise RegistryCorruptionError(
                    f"The registry at {self.root} has no index.json, but holds {left}: its index was lost (deleted, or a "
                    "partial copy or restore). Restore index.json from a backup of the registry (history.jsonl lists every "
                    "action); ee does not start a new registry over an old one's adapters and history."
                ) from None
            if self._create:  # not made yet: the first write makes it
                return _empty_index()
            raise RegistryError(f"No adapter registry at {self.root} (no index.json).") from None
        except (OSError, ValueError) as exc:
            raise RegistryCorruptionError(
                f"The registry index {path} cannot be read ({exc}). It is written atomically, so this is outside damage: "
                "restore it from a backup; history.jsonl lists every action."
            ) from exc
        if not isinstance(index, dict):
            raise RegistryCorruptionError(f"{path} holds a JSON {type(index).__name__}, not the registry's index object. {_RESTORE}")
        if index.get("schema_version") != INDEX_SCHEMA_VERSION:
            raise RegistryCorruptionError(
                f"{path} has schema version {index.get('schema_version')!r}; this ee-middleware reads version {INDEX_SCHEMA_VERSION}."
            )
        problem = _index_problem(index)
        if problem:
            raise RegistryCorruptionError(f"{path} was edited or damaged outside ee-middleware: {problem}. {_RESTORE}")
        return index

    def _left_without_index(self) -> str:
        """What of a registry that had an index is in its folder without one (its history, its adapters' copies), said;
        "" for none. The index is written before anything else of a registry (:meth:`_make`), so any of them says the
        registry had one."""
        found = []
        try:
            events = sum(1 for line in (self.root / "history.jsonl").read_bytes().splitlines() if line.strip())
        except OSError:
            events = 0
        if events:
            found.append(f"a history of {events} action{'s' if events != 1 else ''} (history.jsonl)")
        copies = self.root / _COPIES
        count = sum(1 for entry in copies.iterdir() if entry.is_dir()) if copies.is_dir() else 0
        if count:
            found.append(f"{count} adapter cop{'y' if count == 1 else 'ies'} in {_COPIES}/")
        return " and ".join(found)

    def _write_index(self, index: dict[str, Any]) -> None:
        for record in index["adapters"].values():  # this folder's copy, by its absolute path (see the module docstring)
            if Path(str(record.get("path") or "")).parts[-2:] == (_COPIES, record["name"]):
                record["path"] = str(self.root / _COPIES / record["name"])
        text = json.dumps(finite_or_null(index), ensure_ascii=False, indent=1, sort_keys=True, default=str, allow_nan=False)
        atomic_write_text(self.root / "index.json", text)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The writers' exclusive lock, on a registry made first if it is not there yet."""
        self._make()
        with self._flock():
            yield

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _make(self) -> None:
        """Make the registry's folder and empty index where there is none (``create=True``: deferred to the first write)."""
        if (self.root / "index.json").is_file():
            return
        if not self._create:
            raise RegistryError(f"No adapter registry at {self.root} (no index.json).")
        (self.root / "adapters").mkdir(parents=True, exist_ok=True)
        with self._flock():
            if not (self.root / "index.json").is_file():
                self._read_index()  # (no index: a registry that lost its own is refused, not made anew)
                self._write_index(_empty_index())


class _LeaseHeld(Exception):
    """Another holder has the operation lease (the message says who); :meth:`LocalAdapterRegistry.operation` waits."""


_THREAD_LEASES = threading.local()


def _leases_held() -> dict[Path, int]:
    """The registries whose operation lease this thread holds, with how deeply it took each."""
    held = getattr(_THREAD_LEASES, "held", None)
    if held is None:
        held = _THREAD_LEASES.held = {}
    return held


def _wait_s() -> float:
    text = os.environ.get("EE_REGISTRY_WAIT_S", "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        return max(0.0, float(text))
    except ValueError:
        raise RegistryError(f"EE_REGISTRY_WAIT_S={text!r} is not a number of seconds; set it to e.g. 120 (0: do not wait).") from None


_COPIES = "adapters"
_PARTIAL_COPY = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>[0-9]+)")
"""The name of a copy being made (:meth:`LocalAdapterRegistry._copy_in`): the adapter's, then the copying process's id."""
"""The folder, in a local registry's folder, that holds the registry's copy of each adapter (``adapters/NAME``)."""
_RESTORE = "Restore index.json from a backup, or correct that entry by hand (history.jsonl lists every action); nothing was changed."
_RECORD_FIELDS = tuple(
    f.name for f in dataclasses.fields(AdapterRecord) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
_STATUSES = frozenset(Status)


def _index_problem(index: dict[str, Any]) -> str | None:
    """What makes ``index`` unusable (a missing table, a record without its fields, a reference to no record), or None."""
    if not isinstance(index.get("last_event"), int):
        return f"'last_event' should be an integer, got {index.get('last_event')!r}"
    adapters, apps = index.get("adapters"), index.get("apps")
    if not isinstance(adapters, dict) or not isinstance(apps, dict):
        return "it needs an 'apps' object and an 'adapters' object"
    for name, record in adapters.items():
        if not isinstance(record, dict):
            return f"adapters.{name} is not an object"
        missing = [f for f in _RECORD_FIELDS if f not in record]
        if missing:
            return f"adapters.{name} lacks {', '.join(missing)}"
        wrong = record_field_problem(record)
        if wrong:
            return f"adapters.{name}.{wrong}"
        if record["name"] != name or record["status"] not in _STATUSES or record["app"] not in apps:
            return (
                f"adapters.{name} has name {record['name']!r}, status {record['status']!r} and app {record['app']!r} "
                f"(expected its own name, one of {', '.join(sorted(_STATUSES))}, and an app under 'apps')"
            )
    for app, entry in apps.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("previous"), list)
            or not isinstance(entry.get("versions"), int)
            or isinstance(entry.get("versions"), bool)
            or not isinstance(entry.get("live"), (str, type(None)))
            or not all(isinstance(name, str) for name in entry["previous"])
        ):
            return (
                f"apps.{app} should be an object with 'live' (an adapter's name or null), a 'previous' list of adapter names "
                "and a 'versions' integer"
            )
        unknown = [n for n in [entry.get("live"), *entry["previous"]] if n is not None and n not in adapters]
        if unknown:
            return f"apps.{app} refers to {', '.join(map(repr, unknown))}, which has no record under 'adapters'"
    return _live_problem(adapters, apps)


def _live_problem(adapters: dict[str, Any], apps: dict[str, Any]) -> str | None:
    """Where an app's live adapter (``apps.APP.live``) and the adapters whose status is ``live`` disagree (every write
    changes both at once: one adapter, of that app, is live exactly when the app names it), or None."""
    marked: dict[str, list[str]] = {app: [] for app in apps}
    for name, record in adapters.items():
        if record["status"] == Status.live:
            marked[record["app"]].append(name)
    for app, entry in apps.items():
        named = [] if entry.get("live") is None else [entry["live"]]
        if sorted(marked[app]) != named:
            said = ", ".join(map(repr, sorted(marked[app]))) or "none"
            return (
                f"apps.{app}.live names {entry.get('live')!r}, but the adapters of {app} with status 'live' are {said} "
                "(an app has one live adapter, the one apps.APP.live names)"
            )
    return None


def _stat_key(path: Path) -> tuple[int, ...]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _empty_index() -> dict[str, Any]:
    return {"schema_version": INDEX_SCHEMA_VERSION, "last_event": 0, "apps": {}, "adapters": {}}


def _new_app() -> dict[str, Any]:
    return {"live": None, "previous": [], "versions": 0}


def no_app_message(app: str, apps: Iterable[str]) -> str:
    """What ``rollback``, ``list --app`` and the like say of an app the registry has never held (``apps``: the ones it
    has): that it holds none by that name and, for a near miss, the one it probably means."""
    return f"No app named {app!r} in the registry{_did_you_mean(app, sorted(apps), quoted=True)}. See `ee adapters list`."


def _with_applied(events: list[dict[str, Any]], applied_up_to: int) -> list[dict[str, Any]]:
    """Each history event with ``applied``: whether the index change it records was made. The index counts the events
    applied (``last_event``); one written after that count, its index write lost to a crash, was not, and the next commit
    takes its ``seq`` again: of the events sharing a ``seq``, only the last can have been applied."""
    last_with_seq = {event["seq"]: position for position, event in enumerate(events) if isinstance(event.get("seq"), int)}
    return [
        {**event, "applied": event.get("seq", 0) <= applied_up_to and last_with_seq.get(event.get("seq"), position) == position}
        for position, event in enumerate(events)
    ]


def _rollback_name(index: dict[str, Any], app: str, served: Callable[[], set[str]]) -> str:
    """The adapter a rollback of ``app`` makes live: the last one a promote replaced that is still retired. ``served``: the
    adapters of the app that were ever live (read only to say, when there is none, which ones a rollback left)."""
    entry = index["apps"].get(app)
    if entry is None:
        raise AdapterNotFoundError(no_app_message(app, index["apps"]))
    usable = [n for n in entry["previous"] if index["adapters"][n]["status"] == Status.retired]
    if not usable and entry.get("live") is None:
        raise InvalidTransitionError(
            f"{app} has no live adapter: it serves the base model, and no adapter of it was ever promoted, so nothing can be "
            f"rolled back. Promote one first (ee adapters promote NAME ...; see ee adapters list --app {app})."
        )
    if not usable:
        live, was_live = entry.get("live"), served()
        left = sorted(
            (
                record
                for name, record in index["adapters"].items()
                if record["app"] == app and name != live and name in was_live and record["status"] == Status.retired
            ),
            key=lambda record: str(record.get("updated_at") or ""),
            reverse=True,
        )
        if not left:
            others = sorted(was_live - {live})
            if not was_live:  # no history to tell (a registry restored without its history.jsonl): no claim about it
                raise InvalidTransitionError(
                    f"{app} has no earlier live adapter to roll back to: no adapter a promote replaced is retired and waiting "
                    f"(`ee adapters list --app {app}` shows the others; promoting one serves it)."
                )
            if others:
                states = "; ".join(f"{name} ({index['adapters'][name]['status']})" for name in others if name in index["adapters"])
                raise InvalidTransitionError(
                    f"{app} has no earlier live adapter to roll back to: none of those it served before {live} can be served "
                    f"again ({states})."
                )
            raise InvalidTransitionError(f"{app} has no earlier live adapter to roll back to (nothing was promoted before {live}).")
        named = "; ".join(f"{record['name']} ({record.get('reason') or 'retired'})" for record in left[:3])
        raise InvalidTransitionError(
            f"{app} has no earlier live adapter to roll back to: those it served before {live} were left for good, by a "
            f"rollback from them or a retire ({named}{'; ...' if len(left) > 3 else ''}), and a rollback does not go back to "
            f"an adapter it left. To serve one of them again, promote it: ee adapters promote {left[0]['name']} ..."
        )
    return usable[-1]


REGISTRIES = PluginKind(
    kind="adapter registry",
    group="ee_middleware.adapter_registries",
    error=RegistryError,
    builtins={"local": "ee_middleware.adapters.registry:LocalAdapterRegistry"},
    protocol=AdapterRegistry,
    requires="register, get, list, resolve, apps, rollback_target, switch_live, mark_failed, retire, note, add_eval and history",
    forms=("a folder path (the embedded local registry)", "'local:PATH'"),
)


def imports_code(spec: str | os.PathLike[str]) -> bool:
    """Whether opening the registry ``spec`` names would import a module of its own (``package.module:factory``), not a
    folder's or an installed plug-in's: a spec read from a run's records (a runs folder's files, which whoever can write
    there can change) is opened only where the job's own configuration names the same registry."""
    text = os.fspath(spec)
    name, sep, _ = text.partition(":")
    if not sep or name == "local" or name in REGISTRIES.installed():
        return False
    return bool(FACTORY_SPEC.match(text)) and not Path(text).expanduser().is_dir()


def base_not_told_apart(what: str, base: str, app: str, live: str, live_base: str) -> str:
    """The refusal of ``what`` (a folder or an adapter), trained on ``base``, where :func:`same_base` cannot tell whether
    that is the model ``app``'s live adapter ``live`` runs on (``live_base``): a hub id against a folder, or folders
    that are not on this machine. The servers hold one base; a guess either way could serve an adapter on another."""
    return (
        f"{what} was trained on base model {base}, and {app}'s live adapter {live} runs on {live_base}: whether they are the "
        "same model cannot be told from the names (a hub id against a folder, or folders not on this machine), and the "
        f"servers hold only {live_base}. If {base} holds that very model (a download of it), set base_model_name_or_path "
        f"in the adapter's adapter_config.json to {live_base} and register it again; else train on {live_base}, or register "
        "it under another app."
    )


def open_registry(spec: str | os.PathLike[str] | AdapterRegistry, *, create: bool = True) -> AdapterRegistry:
    """The registry ``spec`` names: a folder (or ``local:PATH``), ``NAME:LOCATION`` for a plug-in, or ``package.module:factory``."""
    if isinstance(spec, AdapterRegistry):
        return spec
    text = os.fspath(spec)
    name, sep, location = text.partition(":")
    if sep and name == "local":
        return LocalAdapterRegistry(location.removeprefix("//"), create=create)
    if sep and name in REGISTRIES.installed():
        return REGISTRIES.build(name, location.removeprefix("//"), create=create)
    if FACTORY_SPEC.match(text):
        if Path(text).expanduser().is_dir():  # a folder whose name looks like module:factory (reg:v2)
            return LocalAdapterRegistry(text, create=create)
        try:
            factory = REGISTRIES.resolve(text)
        except RegistryError as exc:
            raise RegistryError(
                f"{exc} If {text!r} is a registry folder, write it as ./{text} or local:{text} (a name with a colon is read as "
                "module:factory, a plug-in)."
            ) from exc
        return REGISTRIES.construct(text, factory)
    return LocalAdapterRegistry(text, create=create)
