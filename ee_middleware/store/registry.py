"""Naming experience stores: one :func:`open_store` for capture, ingest, replay, datasets and the CLI.

A store spec is one of (see :mod:`ee_middleware.plugins`):

* a **folder path** (a ``str`` or an ``os.PathLike``): the embedded
  :class:`~ee_middleware.store.local.LocalExperienceStore`;
* ``local:PATH`` (or ``local://PATH``): the same, spelled out (for a folder whose name has a colon);
* ``NAME:LOCATION`` or ``NAME://LOCATION``, where ``NAME`` is a built-in store (``local``) or the name
  of an installed ``ee_middleware.stores`` entry point: its factory, called as
  ``factory(LOCATION, create=create)``;
* ``package.module:factory``: a user's callable that takes no arguments and returns a store.

Every factory must return an :class:`~ee_middleware.store.protocol.ExperienceStore`. Specs are
strings so that worker processes (local or on a Ray cluster) open their own handle on the store.
A store plug-in is a callable ``(location: str, *, create: bool = True) -> ExperienceStore``
declared in ``pyproject.toml``::

    [project.entry-points."ee_middleware.stores"]
    s3 = "my_package.stores:open_s3_store"      # then: ee traces list --store s3://bucket/experience
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ee_middleware.errors import StoreError
from ee_middleware.plugins import FACTORY_SPEC, PluginKind
from ee_middleware.store.protocol import APPROVAL_COLUMNS, ExperienceStore

__all__ = ["STORES", "StoreSpec", "open_store", "store_config_value"]

StoreSpec = str | os.PathLike[str]
"""What :func:`open_store` takes (besides an already open store)."""

_NAMED = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.+-]*)(?P<sep>://|:)(?P<location>.*)$", re.DOTALL)


@dataclass(frozen=True)
class _StoreKind(PluginKind):
    """Stores are named by a path or ``NAME:LOCATION``; a bare built-in name would be a folder."""

    def accepted_forms(self) -> list[str]:
        installed = sorted(self.installed())
        where = f"installed: {', '.join(repr(n) for n in installed)}" if installed else "none installed"
        builtins = ", ".join(repr(n) for n in sorted(self.builtins))
        return [
            "a folder path (the embedded local store)",
            "'local:PATH'",
            f"'NAME:LOCATION' or 'NAME://LOCATION', NAME a built-in store ({builtins}) or the name of a '{self.group}' entry point ({where})",
            "'package.module:factory' (a callable with no arguments that returns a store)",
        ]


STORES = _StoreKind(
    kind="store",
    group="ee_middleware.stores",
    error=StoreError,
    builtins={"local": "ee_middleware.store.local:LocalExperienceStore"},
    protocol=ExperienceStore,
    requires="the ExperienceStore methods (write, set_approval, approvals, trajectories, steps, get, resolve_id, write_replay, rollouts, "
    "replays, get_rollout, compact, info, close, ...); see ee_middleware.store.protocol",
)


def reads_by_index(store: Any) -> bool:
    """Whether ``store``'s ``trajectory_index`` (columns of the trajectories table read alone) answers for its
    :meth:`trajectories`: its class has one (a wrapper that forwards other attributes to an inner store has its own
    ``trajectories`` to go through), and it is not a subclass of the local store with a ``trajectories`` of its own (an
    audit line, a filter, access control: reads of the trajectories go through it, as they did before there was an
    index)."""
    if not callable(getattr(type(store), "trajectory_index", None)):  # its class's own: not one a wrapper forwards to
        return False
    from ee_middleware.store.local import LocalExperienceStore

    return not isinstance(store, LocalExperienceStore) or type(store).trajectories is LocalExperienceStore.trajectories


def reads_rows_by_id(store: Any) -> bool:
    """Whether ``store`` reads chosen trajectories' rows alone (``trajectory_index(columns, ids=...)``, filtered as its
    Parquet parts are read): the local store, unless a subclass has a ``trajectories`` or a ``trajectory_index`` of its
    own (one of the signature before ``ids``, a filter: it answers through its own)."""
    from ee_middleware.store.local import LocalExperienceStore

    return (
        isinstance(store, LocalExperienceStore)
        and reads_by_index(store)
        and type(store).trajectory_index is LocalExperienceStore.trajectory_index
    )


def get_trajectory(store: Any, trajectory_id: str, *, states: bool = True) -> Any:
    """``store.get(trajectory_id)``; with ``states=False``, its steps' states empty, for a view that shows none (a long
    run's states are most of it: every step holds the conversation so far): left unread where the store can (the local
    store's own ``get``, not one a subclass or the object itself replaced), else emptied once read, so that nothing a view
    leaves unredacted is left in what it is given (a plug-in's computed field over a state, say)."""
    from ee_middleware.store.local import LocalExperienceStore

    if states:
        return store.get(trajectory_id)
    if isinstance(store, LocalExperienceStore) and getattr(store.get, "__func__", None) is LocalExperienceStore.get:
        return store.get(trajectory_id, states=False)
    trajectory = store.get(trajectory_id)
    return trajectory.model_copy(update={"steps": [step.model_copy(update={"state": []}) for step in trajectory.steps]})


def trajectory_columns(store: Any, columns: list[str], *, status: str | None = None, app: str | None = None) -> Any:
    """``store.trajectories(status=status, app=app)`` with ``columns`` and the ``approval*`` columns alone (a polars
    frame): read without the other columns where the store can (``trajectory_index``; a store's conversations and
    tools are most of its trajectories table), else selected from :meth:`trajectories`."""
    if reads_by_index(store):
        return store.trajectory_index(columns, status=status, app=app)
    frame = store.trajectories(status=status, app=app)
    wanted = dict.fromkeys([*columns, *APPROVAL_COLUMNS])
    return frame.select([c for c in wanted if c in frame.columns])  # (a plug-in's frame may lack a column: the caller checks)


def rollout_ids(store: Any) -> list[str]:
    """Every rollout id of ``store``: its id column alone where the store can read so (the local store's
    ``rollout_index``, unless a subclass has a ``rollouts`` of its own), else from :meth:`rollouts`."""
    from ee_middleware.store.local import LocalExperienceStore

    if isinstance(store, LocalExperienceStore) and type(store).rollouts is LocalExperienceStore.rollouts:
        return store.rollout_index(["id"])["id"].to_list()
    return store.rollouts()["id"].to_list()


def recorded_apps(store: Any) -> list[str]:
    """The apps ``store`` holds trajectories of, sorted: its app column alone where the store can read so
    (``trajectory_index``), not every table."""
    frame = trajectory_columns(store, ["app"])
    return sorted(str(a) for a in frame.get_column("app").unique().to_list() if a is not None)


def said_where_set(message: str, origin: str) -> str:
    """An error ``message`` about a store, naming where the store's spec came from (``origin``: ``EE_STORE=VALUE``,
    ``store in [TABLE] of FILE``) unless it was ``--store``, which the message names already ('check the --store
    path'), whose hint then says the store's path instead of that flag (the command may have none)."""
    if origin == "--store":
        return message
    return f"{message.replace('the --store path', 'its path')} (This store was set by {origin}.)"


def open_store(spec: StoreSpec | ExperienceStore, *, create: bool = True) -> ExperienceStore:
    """Open the store ``spec`` names (see the module docstring); an open store is passed through.

    ``create=False`` is for callers that need an existing store (the CLI, the replay job, dataset
    building): a local folder without a store then raises :class:`StoreError` instead of becoming a
    new, empty store. Every problem with the spec raises :class:`StoreError` naming the accepted forms.
    """
    if isinstance(spec, os.PathLike):
        return _open_local(spec, create)
    if not isinstance(spec, str):
        if isinstance(spec, ExperienceStore):
            return spec
        raise STORES.unknown(spec, f"a store spec is a path or a string, not {type(spec).__name__}")
    parsed = _parse(spec)
    if parsed.kind == "path":
        return _open_local(parsed.location, create)
    if parsed.kind == "named":
        return STORES.build(parsed.name, parsed.location, create=create)
    return STORES.build(parsed.name)


def store_config_value(spec: Any) -> Any:
    """A store spec as configuration objects keep it: local folders as :class:`~pathlib.Path`
    (normalized, as the CLI has always passed them), other specs as the string written."""
    if isinstance(spec, str) and spec.strip():
        try:
            parsed = _parse(spec, check=False)
        except StoreError:
            return spec  # open_store reports it, with the accepted forms
        if parsed.kind == "path":
            return Path(parsed.location)
    return spec


@dataclass(frozen=True)
class _Parsed:
    kind: str
    """``path`` (a local folder), ``named`` (built-in or entry point + location) or ``factory``."""
    name: str
    location: str


def _parse(spec: str, *, check: bool = True) -> _Parsed:
    text = spec.strip()
    if not text:
        raise STORES.unknown(spec, "the spec is empty")
    match = _NAMED.match(text)
    if match is None:  # no NAME: prefix: a plain folder path
        return _Parsed("path", "local", text)
    name, location = match["name"], match["location"]
    if name in STORES.builtins or name in STORES.installed():
        if not location.strip():
            raise STORES.error(f"The store spec {spec!r} names the {name!r} store but no location. Write {name}:LOCATION.")
        return _Parsed("path" if name == "local" else "named", name, location)
    if Path(text).expanduser().exists():  # an existing folder whose name happens to have a colon
        return _Parsed("path", "local", text)
    if match["sep"] == ":" and FACTORY_SPEC.match(text):
        if check:
            _resolve_factory(text)
        return _Parsed("factory", text, "")
    advice = "install the plug-in that provides it" if match["sep"] == "://" else f"for a folder whose name has a colon, write local:{text}"
    raise STORES.unknown(spec, f"{name!r} is neither a built-in store nor an installed {STORES.group!r} entry point; {advice}")


def _resolve_factory(text: str) -> None:
    try:
        STORES.resolve(text)
    except StoreError as exc:
        if exc.__cause__ is not None and not isinstance(exc.__cause__, ImportError):
            raise  # a module that exists raised while imported (its own line named): no folder to mean instead
        message = str(exc)
        raise StoreError(
            f"{message}{'' if message.endswith(('.', '?')) else '.'} For a folder whose name has a colon, write local:{text}."
        ) from exc


def _open_local(location: str | os.PathLike[str], create: bool) -> ExperienceStore:
    # The built-in goes through the registry like a plug-in, but is called directly, so that its
    # own errors (a missing store, a foreign folder) reach the caller exactly as they are.
    factory = STORES.resolve("local")
    store: ExperienceStore = factory(location, create=create)
    return store
