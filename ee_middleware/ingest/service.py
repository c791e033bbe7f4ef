"""Ingest spans into an experience store: group by trace, split into runs, check, assemble, write.

Every problem is collected, never raised: a bad file, span, trace or run costs itself only, the
good ones are written, and the report says what failed (the CLI exits non-zero then). At most
:data:`MAX_LISTED_PER_FILE` problems are listed per file and :data:`MAX_LISTED_PROBLEMS` in all;
the report counts the rest.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import AssemblyOptions, assemble, run_app, run_trajectory_id, span_time, split_nested
from ee_middleware.capture.normalize import normalize, operation_of
from ee_middleware.capture.offload import refuse_unimportable_redact_fn
from ee_middleware.capture.paused import PausedDecisions
from ee_middleware.capture.redaction import SALT_BYTES, SALT_FILE, Redactor, store_salt
from ee_middleware.capture.spandata import SpanData
from ee_middleware.capture.store_redaction import (
    StoreRedaction,
    function_name,
    has_rules,
    load_custom_function,
    read_store_redaction,
    record_store_redaction,
)
from ee_middleware.capture.vault import VAULT_ENV, Vault, vault_in_force
from ee_middleware.errors import ConfigError, EEError, IngestError, StoreError
from ee_middleware.ingest.dialects import _CHOICE, _DETAILS, _LEGACY, _MESSAGE_EVENTS, adapt, run_problem
from ee_middleware.ingest.genai_schema import check_model_span
from ee_middleware.ingest.otlp_json import ParseResult, RejectedSpan, iter_otlp_json
from ee_middleware.ingest.otlp_schema import Dropped
from ee_middleware.ingest.runs import (
    LANGCHAIN_MARKS,
    BareCall,
    Choices,
    Gaps,
    ModelCalls,
    SaidGaps,
    bare_call,
    ended_ok,
    group_runs,
    incomplete_reason,
    join_bare_calls,
    joined_run,
    lost_model_calls,
    read_gaps,
)
from ee_middleware.ingest.spill import MemorySpill, SpanSpill
from ee_middleware.records import SCHEMA_VERSION, Approval, Observation, Step, ToolCatalog, Trajectory, offered_tools, utcnow
from ee_middleware.store.approvals import decide
from ee_middleware.store.int64 import trajectory_problem
from ee_middleware.store.metadata import keeps_metadata, read_meta, write_meta
from ee_middleware.store.protocol import ExperienceStore
from ee_middleware.store.registry import StoreSpec, open_store, reads_by_index, reads_rows_by_id, trajectory_columns
from ee_middleware.store.rows import trajectory_from_rows
from ee_middleware.store.tables import TRAJECTORY_SCHEMA, as_utc

logger = logging.getLogger("ee_middleware.ingest")

MAX_LISTED_PROBLEMS = 200
MAX_LISTED_PER_FILE = 20
WRITE_BATCH = 200
"""New trajectories are written to the store in batches of this many (memory holds one batch)."""


@dataclass
class IngestReport:
    """What an ingest did: counts, the ids written, and one message per problem."""

    files: int = 0
    spans: int = 0
    runs: int = 0
    ingested: list[str] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    problems: int = 0
    unlisted_problems: int = 0
    repeated_spans: int = 0
    traces_without_runs: int = 0
    unread_spans: int = 0
    unread_keys: Counter[str] = field(default_factory=Counter)
    unfinished: list[str] = field(default_factory=list)
    """One line per run stored as ``interrupted`` because it never ended (not a problem: its steps are stored)."""
    replaced: list[str] = field(default_factory=list)
    """The ids of stored partial versions of runs that this ingest read more of (see :func:`_versions`), now rejected as
    superseded by the more complete version it stored."""
    notes: list[str] = field(default_factory=list)
    """One line per thing worth knowing that is no problem (a partial run replaced, spans read as bare model calls)."""
    several_choices: int = 0
    """Model calls of the runs read that returned several choices (alternative replies, ``n`` > 1): each kept the one its
    run went on with (:func:`~ee_middleware.ingest.runs.chosen_replies`)."""
    first_choice_kept: int = 0
    """Those of :attr:`several_choices` where nothing in the run told which one it went on with: the first was kept."""

    def problem(self, message: str) -> None:
        """Count a problem; list it while fewer than :data:`MAX_LISTED_PROBLEMS` are listed."""
        self.problems += 1
        self._list(message, 1)

    def file_problems(self, path: str | Path, messages: Sequence[str]) -> None:
        """A file's problems: the first :data:`MAX_LISTED_PER_FILE` listed, the rest counted in one line."""
        for message in messages[:MAX_LISTED_PER_FILE]:
            self.problem(message)
        rest = len(messages) - MAX_LISTED_PER_FILE
        if rest > 0:
            self.problems += rest
            self._list(f"{path}: {rest} more problem(s) in this file not listed ({len(messages)} in all).", rest)

    def _list(self, message: str, count: int) -> None:
        if len(self.errors) < MAX_LISTED_PROBLEMS:
            self.errors.append(message)
        else:
            self.unlisted_problems += count

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "spans": self.spans,
            "runs": self.runs,
            "ingested": len(self.ingested),
            "already_stored": len(self.already_stored),
            "problems": self.problems,
            "errors": self.errors,
            "unlisted_problems": self.unlisted_problems,
            "repeated_spans": self.repeated_spans,
            "traces_without_runs": self.traces_without_runs,
            "unfinished": self.unfinished,
            "trajectory_ids": self.ingested,
            "replaced": self.replaced,
            "notes": self.notes,
            "several_choices": self.several_choices,
            "first_choice_kept": self.first_choice_kept,
        }


def _ingest_settings(store: ExperienceStore, redactor: Redactor | None) -> StoreRedaction:
    """The redaction settings ingest applies, kept as the store's ``redaction.json`` (which names its vault): the store's
    own; with a caller's ``redactor``, the union of its rules and its ``custom`` function's name (a ``redact_fn``, which
    every later writer of the store imports and applies: one no other process can import is refused, as a recorder's is)
    with the store's (:meth:`StoreRedaction.union`), as every recorder applies the store's recorded rules besides its own.
    A redactor without a salt leaves pseudonyms as the store has them (on by default): its salt is only the one to use."""
    if redactor is None:
        return record_store_redaction(store, read_store_redaction(store))
    custom = redactor.custom
    refuse_unimportable_redact_fn(custom)
    own = StoreRedaction(rules=redactor.rules, custom_function=function_name(custom) if custom is not None else None)
    return record_store_redaction(store, own)


def _ingest_salt(store: ExperienceStore, settings: StoreRedaction, given: bytes | None) -> bytes | None:
    """The pseudonym salt ingest redacts with: the store's (``redaction.key``), so that a value gets the pseudonym it has
    in the store's other runs and that every later writer gives it (replay, datasets, exports). A caller's redactor's salt
    (``given``) becomes the store's where the store has none yet; for a store that keeps no metadata it is the one used.
    ``None`` without pseudonyms, or where the settings redact nothing."""
    if not (settings.pseudonyms and has_rules(settings.rules)):
        return None
    if not keeps_metadata(store):
        return given
    if given is not None and read_meta(store, SALT_FILE) is None:
        if len(given) < SALT_BYTES:  # kept as the store's key, which every later reader would refuse as too short
            raise ConfigError(
                f"The redactor given to ingest has a pseudonym salt of {len(given)} byte(s); it would become the store's "
                f"redaction.key, which must hold at least {SALT_BYTES} (a short key lets anyone who guesses a value recompute "
                f"its tag). Give it secrets.token_bytes({SALT_BYTES}), or no redactor: the store makes its own key."
            )
        write_meta(store, SALT_FILE, (given.hex() + "\n").encode(), exclusive=True)  # (another writer's, if it came first)
    salt = store_salt(store)
    if given is not None and salt != given:
        logger.warning(
            "ee-middleware: ingest redacts with the store's pseudonym salt, not the redactor's: a value gets the pseudonym it "
            "has in the store's other runs."
        )
    return salt if salt is not None else given


def _ingest_redactor(
    settings: StoreRedaction, salt: bytes | None, redactor: Redactor | None, on_replace: Callable[[str, Any], None] | None = None
) -> Redactor:
    """What ingest redacts with: the rules of ``settings`` (:func:`_ingest_settings`), ``salt`` (:func:`_ingest_salt`),
    every ``redact_fn`` the store recorded (imported by its name), and then, where the caller gave one, its ``redactor``
    whole as a last pass over each text: what ``redaction.json`` cannot name (its ``extra_patterns=`` rules, its
    ``custom`` function) is applied too, with the store's salt. ``on_replace`` is told of every pseudonym made (the
    vault), as the caller's redactor's own ``on_replace`` is. The caller's redactor is left as it was."""
    told = on_replace
    if redactor is not None and redactor.on_replace is not None:
        told = redactor.on_replace if on_replace is None else _also(redactor.on_replace, on_replace)
    custom = load_custom_function(settings.custom_function) if settings.custom_function else None
    if redactor is not None and redactor.enabled:  # (one that redacts nothing adds no pass)
        own = copy.copy(redactor)
        own.salt, own.on_replace = salt, told if salt is not None else None
        if own.custom is not None and function_name(own.custom) in settings.custom_functions:
            own.custom = None  # recorded with the store's: applied above, by its name, once
        own.canonical_pseudonyms = settings.canonical_pseudonyms
        custom = own.redact_text if custom is None else functools.partial(_in_turn, (custom, own.redact_text))
    return Redactor(settings.rules, salt=salt, custom=custom, on_replace=told)


def _in_turn(functions: tuple[Callable[[str], str], ...], text: str) -> str:
    for function in functions:
        text = function(text)
    return text


def _vault_to_feed(settings: StoreRedaction) -> str | None:
    """The vault ingest adds its pseudonyms to: the one the store's ``redaction.json`` names (capture's ``vault=``), at
    the path ``EE_VAULT`` gives where it names one (replay reads that one too), none with ``EE_VAULT=off`` (as replay
    then restores from none) or where the store names none."""
    if not settings.vault:
        return None
    return vault_in_force(settings.vault)


def _open_vault(path: str) -> Vault:
    """The store's vault (which exists: only capture creates one), opened to add to; a
    :class:`~ee_middleware.errors.ConfigError` saying what to do where it cannot be (encrypted and ``EE_VAULT_KEY``
    unset or wrong, a key set for a plain vault, loose permissions, a file that cannot be written)."""
    why = (
        "ingest adds each pseudonym it makes to the redaction vault the store's redaction.json names, as capture does, so "
        "that replay can restore the ingested runs' redacted arguments"
    )
    off = f"{VAULT_ENV}=off ingests without adding to it (replay then cannot restore the values only this ingest saw)"
    try:
        return Vault(path)
    except ConfigError as exc:
        raise ConfigError(f"{exc} ({why}; {off}.)") from None
    except OSError as exc:
        raise ConfigError(
            f"Cannot open the redaction vault {path} ({exc}): {why}. Set {VAULT_ENV}=PATH to where this store's vault "
            f"is on this machine, or {off}."
        ) from exc


def _missing_vault(path: str, where: str) -> str:
    """What the warning and the report's note about a vault that is not there (``where``: who names it) begin with."""
    return (
        f"The redaction vault {path} ({where}) is missing: ingest created none (only capture creates a vault; one made here "
        "would hold the real values in plain text, apart from the store's own vault)"
    )


def _also(first: Any, then: Any) -> Any:
    def both(placeholder: str, value: Any) -> None:
        first(placeholder, value)
        then(placeholder, value)

    return both


_INDEX_COLUMNS = ("id", "trace_id", "app", "source", "thread_id")
"""The columns of every stored trajectory an ingest reads (with its current decision): see :attr:`_Target._index`."""


class _Target:
    """The store ingest writes to, opened (a new local one created, its redaction and salt written)
    only once a run has assembled: an ingest that finds no run, or none that assembles, leaves no store
    behind and an existing one untouched."""

    def __init__(
        self,
        store: ExperienceStore | StoreSpec,
        app: str | None,
        redactor: Redactor | None,
        dropped: Mapping[tuple[str, str], Dropped] | None = None,
        traces: Collection[str] | None = None,
        live: bool = False,
        source: str = "otlp-ingest",
        max_observation_chars: int | None = None,
    ) -> None:
        self._spec, self._app, self._redactor = store, app, redactor
        self._source, self._max_chars = source, max_observation_chars
        self.live = live
        """Spans recorded live (the span processor's): each run is read once, whole, so no stored version of it is looked
        for (the store's trajectories are not read: at every batch of a busy service, that was the whole store)."""
        self.dropped: Mapping[tuple[str, str], Dropped] = dropped or {}
        """What the SDK dropped from a span to keep within its span limits, by (trace id, span id) (see
        :func:`_dropped_problem`)."""
        self._traces = traces
        """The ids of the traces read now (``None``: not known): only their stored trajectories may be versions of a run
        read now (:meth:`in_trace`), so only their steps are read (:attr:`_stored_steps`)."""

    def assemble(self, trace_id: str, run: list[SpanData], report: IngestReport, *, nested: bool = False) -> Trajectory | None:
        """``run`` as a trajectory redacted with the store's rules, or ``None`` (the problem reported).

        Until the store is open, a run is first assembled without redaction, kept only to know that it
        assembles: the store's rules and salt are read (and a new store created) only for one that does.
        ``nested``: a graph run inside a tool of another run (:func:`_runs_of`), whose pause is its outer run's, as the
        recorder reads it (no paused note of its own).
        """
        lost = lost_model_calls(run)  # its calls read from the next call's history and their tool spans

        def given(options: AssemblyOptions) -> AssemblyOptions:
            return replace(options, unread_model_calls=True) if lost else options

        if "options" not in self.__dict__ and _assemble(trace_id, run, given(self._trial), report) is None:
            return None
        trajectory = _assemble(trace_id, run, given(self.options), report)
        if trajectory is not None and not nested:
            self.paused.remember(trajectory)  # a later run resuming its thread after a human review finds its tools
        return trajectory

    @cached_property
    def _trial(self) -> AssemblyOptions:
        return AssemblyOptions(app=self._app, redactor=self._redactor, source=self._source, **self._chars)

    @cached_property
    def store(self) -> ExperienceStore:
        return open_store(self._spec)

    def existing(self) -> ExperienceStore | None:
        """The store where it exists already (opened, as :attr:`store`), else None: nothing is created."""
        if "store" not in self.__dict__:
            try:
                self.__dict__["store"] = open_store(self._spec, create=False)
            except StoreError:
                return None
        return self.store

    @cached_property
    def paused(self) -> PausedDecisions:
        """The tools offered at the decisions runs paused on for a human review (in this ingest, else in the store), for
        the runs resuming their threads, as the recorder finds them."""
        return PausedDecisions(self.store)

    @cached_property
    def _redaction(self) -> tuple[StoreRedaction, bytes | None]:
        """The redaction settings in force (recorded with the store) and the salt: :func:`_ingest_settings`, :func:`_ingest_salt`."""
        settings = _ingest_settings(self.store, self._redactor)
        return settings, _ingest_salt(self.store, settings, None if self._redactor is None else self._redactor.salt)

    @cached_property
    def options(self) -> AssemblyOptions:
        settings, salt = self._redaction
        redactor = _ingest_redactor(settings, salt, self._redactor, self._vault_feed(settings, salt))
        return AssemblyOptions(
            app=self._app,
            redactor=redactor,
            source=self._source,
            paused_tools=self.paused.tools,
            paused_steps=self.paused.awaiting_steps,
            **self._chars,
        )

    @property
    def _chars(self) -> dict[str, int]:
        return {} if self._max_chars is None else {"max_observation_chars": self._max_chars}

    @cached_property
    def _reviewer(self) -> Redactor:
        return _ingest_redactor(*self._redaction, self._redactor)

    def reviewer_text(self, text: str) -> str:
        """``text`` a person wrote (``--approve-by``'s name, the decision's reason) as it is stored: redacted by the
        ingest's rules and salt, as :func:`~ee_middleware.store.approvals.decide` stores a reviewer's (an e-mail address
        becomes the pseudonym it has in the store's runs; not added to the vault)."""
        return self._reviewer.redact_text(text) if self._reviewer.enabled else text

    vault: Vault | None = None
    """The store's redaction vault, fed the pseudonyms this ingest makes (:func:`_vault_to_feed`)."""
    unfed: tuple[str, set[str], str | None] | None = None
    """With ``EE_VAULT=off``, or where the vault to feed is missing: that vault, the pseudonyms this ingest made that were
    not added to it, and (missing) who names it."""

    def _vault_feed(self, settings: StoreRedaction, salt: bytes | None) -> Callable[[str, Any], None] | None:
        """What is told of every pseudonym this ingest makes: the store's vault (:func:`_vault_to_feed`), as capture's
        redactor feeds it; with ``EE_VAULT=off``, or where that vault is missing, a count for the report's note instead.
        A missing vault is never created here (only capture creates one): a store copied without its vault, or whose
        ``redaction.json`` names another machine's path, got a new vault in plain text, even where the store's own was
        encrypted. It is left out, as replay leaves it out, with a warning (stderr) and a note."""
        if not settings.vault or salt is None:  # no vault, or plain placeholders: nothing a vault could restore
            return None
        path = _vault_to_feed(settings)
        if path is not None and Path(path).expanduser().exists():
            self.vault = _open_vault(path)
            return self.vault.add
        where = None
        if path is not None:
            where = f"{VAULT_ENV} names it" if path != settings.vault else "the store's redaction.json names it"
            logger.warning(
                "%s; this ingest adds its pseudonyms to no vault. Set %s=PATH to where this store's vault is on this machine.",
                _missing_vault(path, where),
                VAULT_ENV,
            )
        self.unfed = (path or settings.vault, set(), where)
        made = self.unfed[1]

        def add(placeholder: str, value: Any) -> None:
            made.add(placeholder)

        return add

    def flush_vault(self) -> None:
        """Make the vault entries added so far durable (before the trajectories holding their pseudonyms are written)."""
        if self.vault is not None:
            self.vault.flush()

    def close(self, report: IngestReport) -> None:
        """Close the vault; note the pseudonyms not added to it (``EE_VAULT=off``, a vault that is missing)."""
        if self.vault is not None:
            self.vault.close()
        if self.unfed is None:
            return
        vault, made, missing = self.unfed
        lost = "replay cannot restore those the vault did not already hold (their steps are flagged unrestorable)"
        again = "(their runs are found stored, and redacted again as they are read)"
        if missing is not None:
            report.notes.append(
                f"{_missing_vault(vault, missing)}, so the {len(made)} pseudonym(s) this ingest made were not added to a "
                f"vault; {lost}. Set {VAULT_ENV}=PATH to where this store's vault is on this machine and ingest the same "
                f"files again to add them {again}."
            )
        elif made:
            report.notes.append(
                f"{VAULT_ENV}=off: the {len(made)} pseudonym(s) this ingest made were not added to the store's redaction "
                f"vault {vault}; {lost}. Ingesting the same files again without {VAULT_ENV}=off adds them {again}."
            )

    @cached_property
    def _index(self) -> pl.DataFrame:
        """Every stored trajectory's id, trace, app, source and thread, with its current decision: which stored
        trajectories may be versions of a run read now; their whole rows alone are read (:meth:`_rows`). A store that
        reads its table whole reads it once, for both."""
        return trajectory_columns(self.store, list(_INDEX_COLUMNS)) if reads_by_index(self.store) else self._whole

    @cached_property
    def _whole(self) -> pl.DataFrame:
        return self.store.trajectories()

    def _rows(self, ids: list[str]) -> pl.DataFrame:
        """The whole rows of the stored trajectories ``ids``, in the order they were written: read alone where the store
        can (:func:`~ee_middleware.store.registry.reads_rows_by_id`), else taken from its whole table."""
        if not ids:  # (a filtered read still decompresses the conversations of every row group it looks at)
            return pl.DataFrame(schema=TRAJECTORY_SCHEMA)
        if not reads_rows_by_id(self.store):
            return self._whole.filter(pl.col("id").is_in(ids))
        return self.store.trajectory_index(list(TRAJECTORY_SCHEMA), ids=ids)

    @cached_property
    def stored(self) -> pl.DataFrame:
        """The whole rows of the trajectories stored in the traces read now (every one where those are not known). Not the
        store's whole table: its conversations are most of it, and ingesting one file into a store of months read them
        all (its memory grew with the store, about 21 KB per stored run of 15 KB)."""
        if self._traces is None or "trace_id" not in self._index.columns:
            return self._whole
        return self._rows(self._index.filter(pl.col("trace_id").is_in(list(self._traces)))["id"].to_list())

    @cached_property
    def known(self) -> set[str]:
        return set() if self.live else set(self._index["id"].to_list())

    @cached_property
    def _rows_by_trace(self) -> dict[str, list[int]]:
        traces = self.stored["trace_id"].to_list() if "trace_id" in self.stored.columns else []
        out: dict[str, list[int]] = defaultdict(list)
        for index, trace_id in enumerate(traces):
            if trace_id is not None:
                out[trace_id].append(index)
        return out

    @cached_property
    def _added(self) -> dict[str, list[dict[str, Any]]]:
        return defaultdict(list)

    @cached_property
    def gaps(self) -> dict[int, Gaps]:
        """What of its spans each run read now holds (:class:`~ee_middleware.ingest.runs.Gaps`), by the ``id`` of its
        trajectory until :func:`_ingest_traces` keeps it (see :func:`_across_ingests`)."""
        return {}

    @cached_property
    def superseded(self) -> set[str]:
        """The partial versions this ingest rejected as superseded."""
        return set()

    def in_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The trajectories of ``trace_id`` stored before and in this ingest (the columns :func:`_versions` compares)."""
        if self.live:
            rows = []
        elif self._read_now(trace_id) or "trace_id" not in self._index.columns:
            rows = [self.stored.row(i, named=True) for i in self._rows_by_trace.get(trace_id, ())]
        else:  # a trace not read now (that of a run of bare model calls stored before: bare_versions)
            if trace_id not in self._other_traces:
                ids = self._index.filter(pl.col("trace_id") == trace_id)["id"].to_list()
                self._other_traces[trace_id] = list(self._rows(ids).iter_rows(named=True))
            rows = list(self._other_traces[trace_id])
        return rows + self._added.get(trace_id, [])

    @cached_property
    def _other_traces(self) -> dict[str, list[dict[str, Any]]]:
        return {}

    def add(self, trajectory: Trajectory) -> None:
        """Count ``trajectory`` as stored: a later run of this ingest compares with it as with those stored before."""
        self.known.add(trajectory.id)
        if trajectory.trace_id is not None:
            self._added[trajectory.trace_id].append(
                {
                    "id": trajectory.id,
                    "status": trajectory.status,
                    "error": trajectory.error,
                    "started_at": trajectory.started_at,
                    "ended_at": trajectory.ended_at,
                    "messages_json": json.dumps(trajectory.model_dump(mode="json")["messages"]),
                    "approval": trajectory.approval.status,
                    "approval_by": trajectory.approval.by,
                    "approval_at": trajectory.approval.at,
                    "approval_reason": trajectory.approval.reason,
                    "decisions": _decisions(trajectory.steps),
                }
            )

    @cached_property
    def _stored_steps(self) -> tuple[pl.DataFrame, dict[str, list[int]]]:
        """The steps of the trajectories stored in the traces read now, with their row numbers by trajectory id: read once
        per ingest, the first time a run read now has a stored version (for its decisions, and to merge it: a store read
        per version made an ingest that merged K runs read the whole store K more times)."""
        if self._traces is None:
            ids = None
        else:
            column = self.stored["id"]
            ids = [column[i] for trace_id in self._traces for i in self._rows_by_trace.get(trace_id, ())]
        steps = self.store.steps(ids)
        by_id: dict[str, list[int]] = defaultdict(list)
        for index, trajectory_id in enumerate(steps["trajectory_id"].to_list()):
            by_id[trajectory_id].append(index)
        return steps, by_id

    @cached_property
    def _stored_index(self) -> dict[str, int]:
        return {trajectory_id: index for index, trajectory_id in enumerate(self.stored["id"].to_list())}

    def version(self, trajectory_id: str) -> Trajectory:
        """A stored version of a run read now (a row of :meth:`in_trace`), from the rows read once per ingest."""
        index = self._stored_index.get(trajectory_id)
        if index is None or not self._read_now(self.stored.row(index, named=True).get("trace_id")):
            return self.store.get(trajectory_id)  # written by an earlier batch of this ingest, or of a trace not read now
        steps, by_id = self._stored_steps
        return trajectory_from_rows(self.stored.row(index, named=True), steps[by_id.get(trajectory_id, [])].to_dicts())

    def decisions(self, row: dict[str, Any]) -> Counter[tuple[Any, ...]]:
        """The decisions of a stored version (``row``, from :meth:`in_trace`), as :func:`_decisions` keys them."""
        if "decisions" in row:
            return row["decisions"]
        if row["id"] in self._stored_decisions:
            return self._stored_decisions[row["id"]]
        if not self._read_now(row.get("trace_id")):  # a run of bare model calls stored from other traces (bare_versions)
            self._stored_decisions[row["id"]] = _decisions(self.version(row["id"]).steps)
            return self._stored_decisions[row["id"]]
        steps, by_id = self._stored_steps
        keys: Counter[tuple[Any, ...]] = Counter()
        for index in by_id.get(row["id"], ()):
            step = steps.row(index, named=True)
            arguments = json.loads(step["arguments_json"]) if step["arguments_json"] else None
            state = json.loads(step["state_json"] or "[]")
            keys[_decision_key(step["action_kind"], step["tool_call_id"], step["tool_name"], arguments, step["content"], len(state))] += 1
        self._stored_decisions[row["id"]] = keys
        return keys

    @cached_property
    def _stored_decisions(self) -> dict[str, Counter[tuple[Any, ...]]]:
        return {}

    def _read_now(self, trace_id: str | None) -> bool:
        """Whether the trace ``trace_id`` is among those read now (all are where they are not known)."""
        return self._traces is None or trace_id is None or trace_id in self._traces

    def _bare_runs(self, app: str) -> dict[tuple[Any, ...], list[tuple[dict[str, Any], list[tuple[Any, ...]]]]]:
        """The stored runs of ``app`` that may be of bare model calls (ingested, no thread), of traces not read now and not
        superseded, with their messages' keys, by first two messages (a system prompt and the task: what every version of
        a run starts with, and few other runs); read once per app and ingest, that app's rows alone decoded."""
        if app in self._bare_runs_by_app:
            return self._bare_runs_by_app[app]
        out: dict[tuple[Any, ...], list[tuple[dict[str, Any], list[tuple[Any, ...]]]]] = defaultdict(list)
        self._bare_runs_by_app[app] = out
        if self._traces is None or self.existing() is None or "trace_id" not in self._index.columns or not len(self._index):
            return out
        candidates = self._index.filter(
            (pl.col("app") == app)
            & (pl.col("source") == "otlp-ingest")
            & pl.col("thread_id").is_null()
            & pl.col("trace_id").is_not_null()
            & ~pl.col("trace_id").is_in(list(self._traces))
            & ~((pl.col("approval") == "rejected") & (pl.col("approval_by") == SUPERSEDED_BY))
        )
        for row in self._rows(candidates["id"].to_list()).iter_rows(named=True):
            keys = _message_keys(json.loads(row["messages_json"] or "[]"))
            if keys:
                out[tuple(keys[:2])].append((row, keys))
        return out

    @cached_property
    def _bare_runs_by_app(self) -> dict[str, dict[tuple[Any, ...], list[tuple[dict[str, Any], list[tuple[Any, ...]]]]]]:
        return {}

    def bare_versions(self, trajectory: Trajectory) -> tuple[list[dict[str, Any]], str | None]:
        """The stored versions, in traces not read now, of a run of bare model calls read now (``trajectory``: each call a
        trace of its own, see :func:`~ee_middleware.ingest.runs.join_bare_calls`), as the calls read in one ingest are
        joined (a Collector file rotated between two calls of a run, each file ingested alone): the rows of the runs it
        goes on with (their messages start its own and end on a reply that asked for tools, its first call was given
        them and the results of those tools, and they ended before it started: its earlier calls) or that go on with it
        (the other way round: its later calls); and the id of a stored run that holds it whole (its messages, time and
        decisions: its calls read again), where one does."""
        mine = _message_keys(trajectory.model_dump(mode="json")["messages"])
        if not mine or self.live:
            return [], None
        out = []
        for row, theirs in self._bare_runs(trajectory.app).get(tuple(mine[:2]), ()):
            if row["id"] in self.superseded or row["id"] in self._linked:
                continue
            shorter, longer = (theirs, mine) if len(theirs) < len(mine) else (mine, theirs)
            if longer[: len(shorter)] != shorter:
                continue
            if len(theirs) >= len(mine) and _within(row, trajectory, inner=False):
                if _holds(self.decisions(row), _decisions(trajectory.steps)):
                    return [], row["id"]  # read again: the run it is part of is stored whole
                continue
            asked, results = shorter[-1], len(shorter)
            while results < len(longer) and longer[results][0] == "tool":
                results += 1
            if not (asked[0] == "assistant" and asked[2] and results > len(shorter)):
                continue  # (a new user message after an answer starts a run of its own)
            earlier = shorter is theirs
            later = _decisions(trajectory.steps) if earlier else self.decisions(row)
            if min((key[-1] for key in later), default=None) != results:
                continue  # the later one's first call was given more than those tool results: another run
            first, then = (row["ended_at"], trajectory.started_at) if earlier else (trajectory.ended_at, row["started_at"])
            if as_utc(first) <= as_utc(then):
                out.append(row)
        self._linked.update(row["id"] for row in out)
        return out, None

    @cached_property
    def _linked(self) -> set[str]:
        """The stored versions :meth:`bare_versions` found for a run read now (each is a version of one run only)."""
        return set()


def ingest_spans(
    spans: Iterable[SpanData],
    store: ExperienceStore | StoreSpec,
    *,
    app: str | None = None,
    approve_by: str | None = None,
    redactor: Redactor | None = None,
    report: IngestReport | None = None,
    rejected: Iterable[RejectedSpan] = (),
    decide: Callable[[Trajectory], Trajectory] | None = None,
    live: bool = False,
    source: str = "otlp-ingest",
    max_observation_chars: int | None = None,
) -> IngestReport:
    """Assemble spans into trajectories and write the new ones (ingest is idempotent by id).

    ``rejected`` names spans that could not be read: a run that held one is skipped, not stored
    without it (a run whose root span was rejected would otherwise lose its status, for example).
    ``store`` may be a spec (see :func:`~ee_middleware.store.registry.open_store`): it is opened only
    when a run assembles, so a new store is not created for input that holds none.

    Runs are redacted with the store's rules, ``redact_fn`` and salt (``redaction.json``), as capture redacts them; a
    ``redactor`` given here is applied besides them, never instead (:func:`_ingest_redactor`: its rules are recorded with
    the store's, its salt becomes the store's only where the store has none). ``approve_by`` approves every run stored
    in that name, redacted as ``ee traces approve`` stores a reviewer's; else ``decide`` (where given) is called with each
    new run no stored version decided on, before it is stored, and may set its approval (the live span processor's
    ``approve_if``). ``live``: spans recorded live, each run's all read at once (the span processor's): no stored version
    of a run is looked for, the spans are held in memory (no spill file), and a trace holding no run is no problem (an
    app's other traces). ``source`` and ``max_observation_chars`` are the trajectories' (the span processor's own). The
    store's redaction vault is fed the
    pseudonyms made, where it exists (``EE_VAULT``; a missing one is never created: a report note says what was left out).
    """
    report = report or IngestReport()
    traces: set[str] = set()
    with MemorySpill() if live else SpanSpill() as spill:
        report.spans += spill.add(_noted((adapt(span) for span in spans), traces))
        _ingest_traces(
            spill,
            store,
            app=app,
            approve_by=approve_by,
            redactor=redactor,
            report=report,
            rejected=rejected,
            traces=traces,
            decide=decide,
            live=live,
            source=source,
            max_observation_chars=max_observation_chars,
        )
    return report


def _noted(spans: Iterable[SpanData], traces: set[str]) -> Iterator[SpanData]:
    """``spans``, their trace ids added to ``traces`` as they pass."""
    for span in spans:
        traces.add(span.trace_id)
        yield span


def _ingest_traces(
    spill: SpanSpill | MemorySpill,
    store: ExperienceStore | StoreSpec,
    *,
    report: IngestReport,
    rejected: Iterable[RejectedSpan],
    unended: Iterable[tuple[str, str]] = (),
    dropped: Mapping[tuple[str, str], Dropped] | None = None,
    traces: Collection[str] | None = None,
    app: str | None = None,
    approve_by: str | None = None,
    redactor: Redactor | None = None,
    decide: Callable[[Trajectory], Trajectory] | None = None,
    live: bool = False,
    source: str = "otlp-ingest",
    max_observation_chars: int | None = None,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> None:
    """Assemble the spilled spans trace by trace, writing the new trajectories in batches; ``traces``: the ids of the
    spilled traces, where known; ``on_progress``: told of each trace assembled (see :func:`ingest_files`)."""
    rejected_by_trace: dict[str, list[RejectedSpan]] = defaultdict(list)
    untraced: list[RejectedSpan] = []
    for bad in rejected:
        if bad.trace_id is not None:
            rejected_by_trace[bad.trace_id].append(bad)
        elif bad.span_id is not None or bad.parent_span_id is not None:
            untraced.append(bad)  # its traceId missing or unreadable: its run is found by its span ids (_with_untraced)
    unended_by_trace: dict[str, set[str]] = defaultdict(set)
    for trace_id, span_id in unended:
        unended_by_trace[trace_id].add(span_id)
    target = _Target(store, app, redactor, dropped, traces, live, source, max_observation_chars)
    new: list[Trajectory] = []
    supersede: list[tuple[dict[str, Any], Trajectory]] = []

    def keep(trajectory: Trajectory, others: Collection[str], parts: Collection[tuple[str, str]] = (), bare: bool = False) -> None:
        gaps, read_now = target.gaps.pop(id(trajectory), None), (trajectory.status, trajectory.error)
        linked, whole = target.bare_versions(trajectory) if bare else ([], None)
        versions = _versions(trajectory, target, others, parts, linked)
        if whole is not None:
            versions.stored = whole
        if any(_unread_call(step) for step in trajectory.steps):
            # a call read from its tool span: a stored version that read its model span gives the model's own step
            versions.merge += [row for row in versions.partial if all(row is not kept for kept in versions.merge)]
        if versions.stored is not None:
            report.already_stored.append(versions.stored)
            return
        if versions.merge:  # stored versions holding decisions this one lacks (their spans were not read this time)
            own = (trajectory.id, trajectory.trace_id, as_utc(trajectory.started_at))
            earlier = [next((t for t in new if t.id == row["id"]), None) or target.version(row["id"]) for row in versions.merge]
            trajectory, added = _merged(trajectory, earlier, target.options.max_observation_chars)
            if added:
                report.notes.append(
                    f"Trace {trajectory.trace_id}: {added} decision(s) of the run are held only by its stored version(s) "
                    f"{', '.join(row['id'] for row in versions.merge)} (their spans were in files not read this time): "
                    "they are kept in the version stored now, with the decisions read now."
                )
            trajectory.id = _run_id(trajectory.id, versions.rows)  # named after a stored version: the run it is one of
            if linked:  # named and traced as the run read whole is: after its first call, read now or stored
                first = min(linked, key=lambda row: as_utc(row["started_at"]))
                if as_utc(first["started_at"]) < own[2]:
                    own = (_run_id(first["id"], target.in_trace(first["trace_id"])), first["trace_id"], own[2])
                trajectory.id, trajectory.trace_id = own[0], own[1]
                for step in trajectory.steps:
                    step.trajectory_id = trajectory.id
        if versions.partial and gaps is not None:
            _across_ingests(trajectory, gaps, versions.partial, report, read_now)
        if trajectory.id in target.known:  # the same run stored less complete: this version gets an id of its own
            trajectory.id = _version_id(trajectory.id, _completeness(trajectory), target.known)
            for step in trajectory.steps:
                step.trajectory_id = trajectory.id
        decision = versions.decision
        if decision is not None:
            trajectory.approval = decision
            if versions.decided_on is not None and decision.status == "approved":
                unseen = _unseen(trajectory, target.decisions(versions.decided_on))
                if unseen:
                    report.notes.append(
                        f"Trace {trajectory.trace_id}: the approval of {versions.decided_on['id']} by {decision.by} is carried "
                        f"over to {trajectory.id}, the more complete version of its run, though it was given without "
                        f"{len(unseen)} of its decisions ({'; '.join(unseen)}): review them with `ee traces show {trajectory.id}`."
                    )
        elif approve_by:
            trajectory.approval = Approval(
                status="approved", by=target.reviewer_text(approve_by), at=utcnow(), reason=target.reviewer_text("approved at ingest")
            )
        elif decide is not None:
            trajectory = decide(trajectory)
        target.add(trajectory)
        new.append(trajectory)
        supersede.extend((old, trajectory) for old in versions.partial)

    def flush(at_least: int) -> None:
        nonlocal new, supersede
        if new and len(new) >= at_least:
            target.flush_vault()
            _write(target.store, new, report)
            _supersede(target, supersede, report)
            new, supersede = [], []

    bare: list[BareCall] = []
    model_calls = ModelCalls()
    try:
        for done, (trace_id, trace_spans) in enumerate(spill.traces(), 1):
            found = _trace_trajectories(
                trace_id,
                trace_spans,
                _with_untraced(rejected_by_trace.get(trace_id, []), untraced, trace_spans),
                target,
                report,
                unended_by_trace[trace_id],
                bare,
                model_calls,
            )
            for trajectory in found:
                keep(trajectory, {t.id for t in found if t is not trajectory})
            flush(WRITE_BATCH)
            if on_progress is not None:
                on_progress("traces assembled", done, len(traces) if traces is not None else None)
        echoed = [model_calls.echoed(call) for call in bare]
        if any(echoed):
            report.notes.append(_echoes_note(sum(echoed)))
        joined = 0
        for calls in join_bare_calls([call for call, echo in zip(bare, echoed, strict=True) if not echo]):
            grouped = [group_runs(c.trace_id, spill.trace(c.trace_id)) for c in calls]
            runs = [g.runs[0] for g in grouped]
            for g in grouped:
                _count_choices(g.choices, report)
            report.runs += 1
            trajectory = _run_trajectory(calls[0].trace_id, joined_run(runs), None, None, [], target, report)
            if trajectory is not None:
                keep(trajectory, (), [(c.trace_id, run_trajectory_id(c.trace_id, c.span_id)) for c in calls[1:]], bare=True)
            joined += len(calls) > 1
            flush(WRITE_BATCH)
        flush(1)
        if joined:
            report.notes.append(_joined_note(len(bare), joined))
    finally:
        target.close(report)  # the vault's entries made durable, also where a write failed
    if report.several_choices:
        report.notes.append(_choices_note(report.several_choices, report.first_choice_kept))
    if report.unread_spans and not report.runs and not live:  # (live: an app's other traces, not a file it gave)
        report.problem(_nothing_read(report))
    _redact_listed(report, target)


def _redact_listed(report: IngestReport, target: _Target) -> None:
    """The report's problems and notes as the store's runs would show what they quote (a span's or run's name, which an
    instrumentation may make from a request: ``GET /customers/jane@example.com``): redacted by the ingest's rules and
    salt where this ingest read them from the store, else by the built-in rules: a store nothing was written to is not
    created or touched for it. A store that cannot be read leaves them as they are (its own problem says why)."""
    try:
        redact = target.reviewer_text if "_redaction" in vars(target) else Redactor().redact_text
        report.errors[:] = [redact(text) for text in report.errors]
        report.notes[:] = [redact(text) for text in report.notes]
        report.unfinished[:] = [redact(text) for text in report.unfinished]
    except (EEError, OSError):
        return


def _with_untraced(rejected: list[RejectedSpan], untraced: Sequence[RejectedSpan], spans: Sequence[SpanData]) -> list[RejectedSpan]:
    """The rejected spans of a trace (``rejected``) with those whose trace id could not be read (``untraced``: missing,
    not a string, not 32 hex digits) that belong to it by their span ids: a span of the trace is their parent, or their
    child. Such a span belonged to a run as any other rejected span does, and its run is not stored without it (a
    model span lost so would leave its decision out of a run stored ``completed``)."""
    if not untraced:
        return rejected
    ids = {s.span_id for s in spans}
    parents = {s.parent_span_id for s in spans if s.parent_span_id is not None}
    found = [bad for bad in untraced if bad.parent_span_id in ids or bad.span_id in parents]
    return [*rejected, *found] if found else rejected


def _echoes_note(count: int) -> str:
    return (
        f"{count} model call(s) traced in a trace of their own by a model client's instrumentation (OpenTelemetry's or "
        "OpenInference's OpenAI, say) are calls of runs read from their framework's spans (the same reply to the same "
        "messages, within the framework's model span): each is read once, from the run's trace."
    )


def _count_choices(choices: Choices, report: IngestReport) -> None:
    report.several_choices += choices.told + choices.first
    report.first_choice_kept += choices.first


def _choices_note(calls: int, first: int) -> str:
    """What ingest kept of model calls that returned several choices (``n`` > 1), ``first`` of them without a sign of
    which one the run went on with."""
    told = calls - first
    parts = []
    if told:
        parts.append(f"{told} kept the one the run went on with (the next call's history, the tools that ran or the run's answer tell it)")
    if first:
        parts.append(
            f"for {first} nothing in the run tells which one it went on with (its last call, or no later call, tool span or "
            "answer holds one), so the first choice was kept, the reply by OpenAI's convention: check them with `ee traces show`"
        )
    return (
        f"{calls} model call(s) returned several choices (alternative replies to one request, n > 1); each is stored with one "
        f"choice, the others left out rather than read as steps: {'; '.join(parts)}."
    )


def _joined_note(calls: int, joined: int) -> str:
    """What ingest did with model calls traced each in a trace of its own, and how to have runs read from the spans."""
    return (
        f"{calls} model call(s) were each a trace of its own, with no agent or request span around them (a model client's "
        "instrumentation alone, as OpenTelemetry's OpenAI v2 writes an agent's calls when no span of the app is active): "
        f"{joined} run(s) of several calls were read by their messages (a call whose history is an earlier call's history, "
        "its reply and the results of the tools it asked for goes on with it; a new user message starts a new run), with "
        "no thread, which such spans do not name. To have each agent run read from the spans, put a span around it "
        "(tracer.start_as_current_span(...) around graph.invoke) or record it with ee-middleware's own capture "
        "(record_experience)."
    )


SUPERSEDED_BY = "ee traces ingest"
"""Who rejects a stored partial version of a run once a later ingest stored a more complete one."""


@dataclass
class _RunVersions:
    """How a run just assembled stands to the versions of it already stored (see :func:`_versions`)."""

    stored: str | None = None
    """The id of a stored version that holds it whole (its messages and its decisions): nothing to store."""
    partial: list[dict[str, Any]] = field(default_factory=list)
    """The stored versions it completes (their rows), to be superseded once it is written."""
    merge: list[dict[str, Any]] = field(default_factory=list)
    """Those of ``partial`` that hold decisions it lacks, or more of the run's messages: they are merged into it
    (:func:`_merged`) before it is written, so that superseding them loses no decision."""
    decision: Approval | None = None
    """The decision carried over to it from them (:func:`_carried_decision`)."""
    decided_on: dict[str, Any] | None = None
    """The row of the version ``decision`` is the approval of (none for a rejection)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The trajectories stored in its trace(s) (before and in this ingest)."""


def _versions(
    trajectory: Trajectory,
    target: _Target,
    others: Collection[str] = (),
    parts: Collection[tuple[str, str]] = (),
    linked: Sequence[dict[str, Any]] = (),
) -> _RunVersions:
    """The stored versions of the run ``trajectory`` is (a run's spans may arrive in several ingests: a file read while
    the run was still written, a rotated file holding its first spans).

    A stored trajectory is a version of the same run when it comes from the same trace, its messages start the other's
    (or are the same), its time lies within the other's (a part of a run starts no earlier and ends no later), and it
    is the same run by id (:func:`~ee_middleware.capture.assembler.run_trajectory_id` of its root, or a later version's
    id), or the less complete one never ended (``interrupted``: its root was not read, so its id could not be the run's).
    Another run of the same trace (a later turn whose history holds the earlier one) starts later, so it is never one;
    nor is one stored under the id of another run read now (``others``: two loops of the same task, one within the other).
    A run joined from several traces (bare model calls, see :func:`~ee_middleware.ingest.runs.join_bare_calls`) names
    its later traces and the ids their calls had as runs of their own (``parts``): those are versions too, as are the
    stored runs of its earlier or later bare calls in traces not read now (``linked``: :meth:`_Target.bare_versions`),
    merged into it.

    A version is complete by its messages (a later model call's input holds the whole history before it) and by its
    decisions (its steps: one per model call whose span was read). Only a stored version that holds both of the run
    read now makes it ``stored``; one that holds fewer messages, or fewer decisions, is ``partial``: superseded by the
    run read now, into which it is merged first where it holds a decision this one lacks or more messages (``merge``):
    a run whose later half is read alone (its first model calls in a file already read and moved away) holds the whole
    history in its last call's input, but only its own decisions.
    """
    rows = target.in_trace(trajectory.trace_id) if trajectory.trace_id else []
    for trace_id, _ in parts:
        rows += target.in_trace(trace_id)
    out = _RunVersions(rows=rows)
    if not rows:
        out.partial, out.merge = list(linked), list(linked)
        out.decision, out.decided_on = _carried_decision(out.partial)
        return out
    messages = _message_keys(trajectory.model_dump(mode="json")["messages"])
    mine = _completeness(trajectory)
    decisions = _decisions(trajectory.steps)
    part_ids = {part for _, part in parts}
    ended = trajectory.status != "interrupted"
    keys = [_message_keys(json.loads(row["messages_json"] or "[]")) for row in rows]
    mine_ids = {trajectory.id} | _version_ids(
        trajectory.id, Counter(2 * len(k) + (r["status"] != "interrupted") for r, k in zip(rows, keys, strict=True))
    )
    for row, theirs in zip(rows, keys, strict=True):
        if row["id"] in others:
            continue  # another run of the trace, read with this one (beside it, of the same messages)
        row_ended = row["status"] != "interrupted"
        stored = 2 * len(theirs) + row_ended
        same_run = row["id"] in mine_ids
        if row["id"] in part_ids:
            if theirs == messages[: len(theirs)] and (
                _within(row, trajectory) or (same_run and not row_ended and _within(row, trajectory, inner=False))
            ):
                # (or the version that read the run's root span in an earlier ingest, its time holding this one's: a root read
                # in an earlier file than the rest of its run)
                out.partial.append(row)  # one call of the run stored as a run of its own: its last decision only
            continue
        if theirs == messages[: len(theirs)] and (
            _within(row, trajectory) or (same_run and not row_ended and _within(row, trajectory, inner=False))
        ):
            # (or the version that read the run's root span in an earlier ingest, its time holding this one's: a root read
            # in an earlier file than the rest of its run)
            if stored >= mine and (same_run or (row_ended and not ended)):
                if _holds(target.decisions(row), decisions):
                    out.stored = row["id"]
                    return out
                out.partial.append(row)  # all of its messages, but not every decision read now
                out.merge.append(row)
            elif (stored < mine and (same_run or not row_ended)) or (stored == mine and ended and _within(row, trajectory, strict=True)):
                # less of the run, or all of it read under a span below its root (its root span not read yet)
                out.partial.append(row)
                if not _holds(decisions, target.decisions(row)):
                    out.merge.append(row)
        elif messages == theirs[: len(messages)] and (
            (_within(row, trajectory, inner=False) and (same_run or (row_ended and not ended)))
            or (_within(row, trajectory) and not row_ended and (same_run or not ended))
        ):
            # (or a later part of the run stored before, within this one's time: this one read its root, in a later file)
            if _holds(target.decisions(row), decisions):
                out.stored = row["id"]  # a part of a run stored whole
                return out
            out.partial.append(row)  # more of the run's messages, but not the decisions read now: merged with them
            out.merge.append(row)
    out.partial += linked
    out.merge += linked
    out.decision, out.decided_on = _carried_decision(out.partial)
    return out


def _across_ingests(
    trajectory: Trajectory, gaps: Gaps, partial: Sequence[dict[str, Any]], report: IngestReport, read_now: tuple[str, str | None]
) -> None:
    """``trajectory`` (a run read now, with the stored versions it completes: ``partial``) ``completed`` where, read
    together, its versions read every span of it: a run whose spans were exported to several files (a root read in an
    earlier file than its children, several processes or collectors writing rotated files) and ingested one file at a
    time. Each version says what it lacked (its :class:`~ee_middleware.ingest.runs.Gaps` now, a stored one's error: see
    :func:`~ee_middleware.ingest.runs.read_gaps`); it is complete where the spans one lacked another read (a stored
    version's root span, the spans read now) and the root span, read by one of them, ended without an error. Else, where
    a root was read, its error names what is still missing, so that the next ingest can complete it. A run that lacks
    anything else (a span that never ended, a reason no version names) stays as it is, as does one that did not end on
    its model's reply (its last step a tool call: paused, or stopped by a node, which only the whole run's assembly
    tells apart). ``read_now``: the status and error of the run read now before it was merged with its stored versions
    (its line in the report's ``unfinished``, dropped once it is complete)."""
    if trajectory.status != "interrupted" or not gaps.only_missing:
        return
    roots = {gaps.root: gaps.ended_ok} if gaps.root is not None else {}
    holes, read = set(gaps.missing), set(gaps.read)
    for row in partial:
        if row["status"] != "interrupted":
            continue
        said = read_gaps(row.get("error"))
        if said is None:
            return  # it lacked something else (or says so in words ingest did not write)
        if said.root is not None:
            roots[said.root] = roots.get(said.root, False) or said.ended
        holes |= said.lacked
        read |= said.read
    if len(roots) != 1:
        return
    [(root, ended)] = roots.items()
    holes -= read | {root}
    if holes or not ended:
        trajectory.error = incomplete_reason(None, root, [(hole, None) for hole in sorted(holes)], ended) if holes else trajectory.error
        return
    if not trajectory.steps or trajectory.steps[-1].action.kind != "answer":
        return  # it did not end on its model's reply: paused, or stopped by a node, which the spans read together would say
    said = f"is stored as {read_now[0]}, with the steps its finished spans show: {read_now[1]}."  # its note: no longer so
    report.unfinished = [
        line for line in report.unfinished if not (line.startswith(f"Trace {trajectory.trace_id}: ") and line.endswith(said))
    ]
    trajectory.status, trajectory.error = "completed", None
    report.notes.append(
        f"Trace {trajectory.trace_id}: the run read now and its stored version(s) {', '.join(row['id'] for row in partial)} hold "
        f"every span of it between them (its root span {root} read in an earlier ingest or now, the spans it lacked in the "
        "other): it is stored completed."
    )


def _version_ids(run_id: str, versions: Mapping[int, int]) -> set[str]:
    """The ids later versions of the run ``run_id`` may be stored under (:func:`_version_id`), in a trace holding
    ``versions[c]`` stored trajectories as complete as ``c``: a version is numbered ``n`` only where ``n`` more as complete
    are stored, so these are all the ids its versions can have."""
    return {run_trajectory_id(run_id, f"v{c}") for c in versions} | {
        run_trajectory_id(run_id, f"v{c}.{n}") for c, count in versions.items() for n in range(count)
    }


def _version_id(run_id: str, completeness: int, known: Collection[str]) -> str:
    """The id of a later version of the run ``run_id`` (stored under that id) as complete as ``completeness``
    (:func:`_completeness`): named by it, numbered where a version as complete is stored (one holding fewer of its
    decisions; a long run read one file per ingest makes one per decision), never an id stored already."""
    candidate = run_trajectory_id(run_id, f"v{completeness}")
    n = 0
    while candidate in known:
        candidate = run_trajectory_id(run_id, f"v{completeness}.{n}")
        n += 1
    return candidate


def _run_id(trajectory_id: str, rows: Sequence[dict[str, Any]]) -> str:
    """The id of the run a trajectory stored as ``trajectory_id`` (one of ``rows``, the trajectories of its trace) is a
    version of: the id of another of ``rows`` that it was named after (:func:`_version_id`), else its own. A version of
    a version (as ingest named one before) leads to the run too."""
    completeness = {row["id"]: 2 * len(json.loads(row["messages_json"] or "[]")) + (row["status"] != "interrupted") for row in rows}
    for _ in range(len(rows)):
        if trajectory_id not in completeness:
            break
        counts = Counter(c for c in completeness.values() if c == completeness[trajectory_id])
        of = next((i for i in completeness if i != trajectory_id and trajectory_id in _version_ids(i, counts)), None)
        if of is None:
            break
        trajectory_id = of
    return trajectory_id


def _unseen(trajectory: Trajectory, seen: Counter[DecisionKey]) -> list[str]:
    """The steps of ``trajectory`` whose decisions are not among ``seen`` (a version's), each as ``step N (what)``."""
    left = Counter(seen)
    out = []
    for step in trajectory.steps:
        (key,) = _decisions([step])
        if left[key] > 0:
            left[key] -= 1
            continue
        call = step.action.tool_call
        out.append(f"step {step.index} ({f'a call of {call.name}' if call is not None else 'the answer'})")
    return out


DecisionKey = tuple[Any, ...]


def _decision_key(kind: str, call_id: str | None, name: str | None, arguments: Any, content: str | None, state: int) -> DecisionKey:
    """One step as what tells it from the other steps of its run: its action and how many messages its model was given
    (the same answer's text at two turns are two decisions)."""
    return (kind, call_id or None, name, None if arguments is None else json.dumps(arguments, sort_keys=True), content, state)


def _decisions(steps: Iterable[Step]) -> Counter[DecisionKey]:
    """The decisions of a version of a run (its steps, keyed by :func:`_decision_key`; parallel calls are one step each)."""
    return Counter(
        _decision_key(
            s.action.kind,
            s.action.tool_call.id if s.action.tool_call else None,
            s.action.tool_call.name if s.action.tool_call else None,
            s.action.tool_call.arguments if s.action.tool_call else None,
            s.action.content,
            len(s.state),
        )
        for s in steps
    )


def _holds(these: Counter[DecisionKey], those: Counter[DecisionKey]) -> bool:
    """Whether the decisions ``these`` include every one of ``those``."""
    return not (those - these)


def _first_decision_order(version: Trajectory) -> tuple[float, dt.datetime]:
    """Versions of one run ordered by how early their first decision came: how many messages it was given, then when
    the version started (one with no decision last)."""
    return (len(version.steps[0].state) if version.steps else math.inf, as_utc(version.started_at))


def _merged(trajectory: Trajectory, earlier: Sequence[Trajectory], max_chars: int) -> tuple[Trajectory, int]:
    """The run ``trajectory`` is, with the decisions of its stored versions ``earlier`` that it lacks, and how many of
    its decisions only they held (see :func:`_versions`: each version's messages start the others' or hold them).

    The messages (and what is read from them: the final answer) are the longest version's; the status, error and id
    those of the version that read the run's root span: an ended one whose time holds the others' (a root span lasts
    the whole run; a part of it read under a span below the root reads as ended too, and is named after that span);
    where none did, the status and error are an ended version's (one that never ended knows less of how the run ended)
    and the id that of one whose time holds the others' (named after the span above those it read, the nearest to the
    root known). The time spans them all; tools offered in one
    version only are added (a step offered its own version's tools keeps them named); a thread or model one version
    lacks is taken from another; the task is that of the version that read the run's first model call (whose first
    decision was given the fewest messages) where it has one. The steps are the longest version's, each added step before the first one
    given more messages than it, numbered again in that order (decisions too). A call whose version read no result for
    it (its run was still waiting for the tool there) observes the tool message answering it in the messages, as the
    whole run's assembly reads it (``max_chars`` caps it); its error flag, which a tool span or the instrumentation's
    message marks, is not known then, and is false."""
    versions = [trajectory, *earlier]
    base = max(versions, key=lambda t: (len(t.messages), t.status != "interrupted"))
    start, end = min(as_utc(t.started_at) for t in versions), max(as_utc(t.ended_at) for t in versions)
    outermost = [t for t in versions if as_utc(t.started_at) <= start and as_utc(t.ended_at) >= end]
    ended = next((t for t in outermost if t.status != "interrupted"), None)
    named = ended or next(iter(outermost), None)
    ended = ended or next((t for t in (trajectory, base, *versions) if t.status != "interrupted"), base)
    named = named or ended
    have = _decisions(base.steps)
    steps: list[tuple[Step, int]] = [(s, 0) for s in base.steps]  # (step, which version's decision it is)
    catalog = ToolCatalog(base.tools)  # the base's steps keep their Step.tools: its schemas come first, in its order
    added = False
    for source, version in enumerate((v for v in versions if v is not base), start=1):
        seen: Counter[DecisionKey] = Counter()
        known = set(catalog.default_refs())
        offered = catalog.refs(offered_tools(version.tools, None))  # what the version's steps without Step.tools were offered
        own = None if set(offered) == known else offered
        for step in version.steps:
            (key,) = _decisions([step])
            seen[key] += 1
            # its Step.tools, named as the merged run's tools name them (a tool's other schemas are numbered there)
            tools = own if step.tools is None else catalog.refs(version.step_tools(step))
            if seen[key] <= have[key]:
                at = next((i for i, (s, _) in enumerate(steps) if _read_from_tool_span(s, step) and _decisions([s])[key]), None)
                if at is not None:  # held as read from its tool span (its model span not read there): the model's own step
                    held, where = steps[at]
                    update = {"decision_index": held.decision_index, "observation": held.observation, "latency_ms": held.latency_ms}
                    if tools is not None:
                        update["tools"] = tools
                    steps[at] = (step.model_copy(update=update), where)
                    added = True
                continue  # held already
            have[key] += 1
            added = True
            if tools != step.tools:
                step = step.model_copy(update={"tools": tools})
            at = next((i for i, (s, _) in enumerate(steps) if len(s.state) > len(step.state)), len(steps))
            steps.insert(at, (step, source))
        catalog.refs(version.tools)
    if not added and base is trajectory and named is trajectory:
        return trajectory, 0
    if catalog.varies:  # a tool offered with several schemas: every step names the ones it was offered (Step.tools)
        every = catalog.default_refs()
        steps = [(s if s.tools is not None else s.model_copy(update={"tools": every}), where) for s, where in steps]
    only_stored = sum((_decisions(s for s, _ in steps) - _decisions(trajectory.steps)).values())
    replies = {
        str(m["tool_call_id"]): (position, m)
        for position, m in reversed(list(enumerate(base.messages)))
        if m.get("role") == "tool" and m.get("tool_call_id")
    }
    answered = Counter(str(m["tool_call_id"]) for m in base.messages if m.get("role") == "tool" and m.get("tool_call_id"))
    numbered: list[Step] = []
    turns: dict[tuple[int, int], int] = {}
    for index, (step, source) in enumerate(steps):
        turn = turns.setdefault((source, step.decision_index), len(turns))
        update: dict[str, Any] = {"trajectory_id": named.id, "index": index, "decision_index": turn}
        call = step.action.tool_call
        if call is not None and call.id in replies and replies[call.id][0] > len(step.state):
            content = replies[call.id][1].get("content", "")
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            given = Observation(content=text).capped(max_chars)
            if step.observation is None:
                update["observation"] = given
            elif _wraps_span_result(step.observation, given) and answered[call.id] == 1:
                # the result as the model was given it (a later call's tool message), as the whole run's assembly takes
                # it: a version that read the call's tool span but not that later call kept the span's text, which
                # ToolNode's message wraps ("Error: upstream timeout"); its error flag from the span. Only where the
                # message holds the span's whole text (nothing of it cut) and answers no other call of that id
                update["observation"] = step.observation.model_copy(update={"content": given.content})
        numbered.append(step.model_copy(update=update))
    merged = base.model_copy(
        update={
            "id": named.id,
            "steps": numbered,
            "tools": catalog.tools,
            # a version's NAME#K refs are this library's: the merged run is read as this schema says
            "schema_version": SCHEMA_VERSION,
            "status": ended.status,
            "error": ended.error,
            "started_at": start,
            "ended_at": end,
            "thread_id": next((t.thread_id for t in (base, *versions) if t.thread_id), None),
            # the task its first model call asked: the version's that read it (its first decision given the fewest
            # messages); a later part read alone takes its own first call's last user message, a later question of
            # the run ("Summarize that." after "Write a haiku about snow")
            "task": next((t.task for t in sorted(versions, key=_first_decision_order) if t.task), None),
            "model": next((t.model for t in (base, *versions) if t.model), None),
            "approval": trajectory.approval,
            "trace_id": trajectory.trace_id,
        }
    )
    return merged, only_stored


def _wraps_span_result(held: Observation, given: Observation) -> bool:
    """Whether ``given`` (a tool message's text) holds the whole of ``held`` (a tool span's result, uncut) and more:
    the message a tool node wrote around it (LangGraph's ToolNode: ``"Error: " + the exception's text``)."""
    uncut = held.truncated_chars == 0 and given.truncated_chars == 0
    return uncut and bool(held.content) and held.content != given.content and held.content in given.content


def _unread_call(step: Step) -> bool:
    """Whether ``step`` may be a call read without its model span, from a later call's history and its tool span (see
    :func:`_unread_calls_note`; a resumed run's reviewed turns are read so too): no model latency, a tool's result."""
    return step.action.tool_call is not None and step.model_latency_ms is None and step.observation is not None


def _read_from_tool_span(held: Step, step: Step) -> bool:
    """Whether ``held`` is a step of the same decision as ``step`` read without its model span (:func:`_unread_call`),
    where ``step`` was read from that model span."""
    return _unread_call(held) and step.model_latency_ms is not None


def _carried_decision(partial: list[dict[str, Any]]) -> tuple[Approval | None, dict[str, Any] | None]:
    """The decision a run takes from the stored versions it completes (``partial``: earlier pieces of it, or the calls it
    was joined from, each stored as a run of its own), besides their own rejection as superseded.

    A rejection of any of them carries over: the run holds the decision a reviewer rejected, so it must not be trained
    on, nor approved at ingest (``--approve-by``); its reason names each rejected version and its reason, and any
    approval of another version, which is not carried over. It is rejected rather than left pending: pending, the run
    would be approved at ingest or by the next bulk approval, and a reviewer overturns the rejection with ``--force``
    (every decision stays in the history). With no rejection, the most complete version's approval carries over, as
    before (the last call of a joined run holds the whole conversation the reviewer saw), with the row it is that of."""
    decided = [row for row in partial if row["approval"] not in (None, "pending") and row["approval_by"] != SUPERSEDED_BY]
    rejected = [row for row in decided if row["approval"] == "rejected"]
    if rejected:
        latest = max(rejected, key=lambda row: as_utc(row["approval_at"]) or dt.datetime.min.replace(tzinfo=dt.UTC))
        reasons = [
            f"{row['approval_reason'] or 'rejected'} (rejected by {row['approval_by']} on {row['id']}, a partial version of this run)"
            for row in rejected
        ]
        overruled = [f"{row['id']} by {row['approval_by']}" for row in decided if row["approval"] == "approved"]
        if overruled:
            reasons.append(f"not carried over: the approval of {', '.join(overruled)}, another partial version")
        return Approval(status="rejected", by=latest["approval_by"], at=latest["approval_at"] or utcnow(), reason="; ".join(reasons)), None
    longest = max(partial, key=lambda row: (len(row["messages_json"] or ""), row["status"] != "interrupted"), default=None)
    if longest is None or not any(row is longest for row in decided):
        return None, None
    return Approval(
        status=longest["approval"],
        by=longest["approval_by"],
        at=longest["approval_at"] or utcnow(),
        reason=f"{longest['approval_reason'] or longest['approval']} (decided on {longest['id']}, a partial version of this run)",
    ), longest


def _message_keys(messages: list[Any]) -> list[tuple[Any, ...]]:
    """What two versions of a run's messages share: each message's role, text, tool calls and the call it answers (a
    later version may know more about a message, as the name of the agent that wrote it)."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            out.append((repr(m),))
            continue
        calls = tuple(
            (c.get("id"), (c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments"))
            for c in m.get("tool_calls") or []
            if isinstance(c, dict)
        )
        out.append((m.get("role"), json.dumps(m.get("content"), sort_keys=True), calls, m.get("tool_call_id")))
    return out


def _completeness(trajectory: Trajectory) -> int:
    """How much of its run a trajectory holds: its messages, then whether it ended (a run read whole again is as complete)."""
    return 2 * len(trajectory.messages) + (trajectory.status != "interrupted")


def _within(row: dict[str, Any], trajectory: Trajectory, *, inner: bool = True, strict: bool = False) -> bool:
    """Whether the stored ``row``'s time lies within ``trajectory``'s (``inner``), or ``trajectory``'s within the row's;
    ``strict``: within and not the same time."""
    start, end = as_utc(row["started_at"]), as_utc(row["ended_at"])
    if start is None or end is None:
        return False
    if strict:
        return _within(row, trajectory) and (start, end) != (as_utc(trajectory.started_at), as_utc(trajectory.ended_at))
    if inner:
        return start >= as_utc(trajectory.started_at) and end <= as_utc(trajectory.ended_at)
    return start <= as_utc(trajectory.started_at) and end >= as_utc(trajectory.ended_at)


def _supersede(target: _Target, pairs: list[tuple[dict[str, Any], Trajectory]], report: IngestReport) -> None:
    """Reject each stored partial version of a run now stored more completely, naming the version that replaces it
    (every earlier decision on it stays in its history), all in one decision (one read of the store, not three each)."""
    done = target.superseded
    reasons: dict[str, str] = {}
    for old, new in pairs:
        if old["id"] in done or (old["approval"] == "rejected" and old["approval_by"] == SUPERSEDED_BY):
            continue
        if old["id"] == new.id:  # never the version written now: its run would be left with none live
            report.problem(
                f"Trace {new.trace_id}: the run stored now as {new.id} was to supersede the version stored under the same id; "
                "it is left as it is (an ee-middleware bug: please report it)."
            )
            continue
        done.add(old["id"])
        reasons[old["id"]] = f"superseded by {new.id}: a later ingest read more of the same run ({new.num_steps} step(s), {new.status})"
        carried = ""
        if old["approval"] != "pending":
            carried = f"; its {old['approval']} decision by {old['approval_by']} is " + (
                "carried over"
                if new.approval.status == old["approval"]
                else f"not carried over ({new.id} is {new.approval.status}: see its reason)"
            )
        report.replaced.append(old["id"])
        report.notes.append(
            f"Trace {new.trace_id}: the run stored as {old['id']} ({old['status']}, partial) is replaced by its complete "
            f"version {new.id} ({new.num_steps} step(s), {new.status}); the partial one is rejected as superseded{carried}."
        )
        old["approval"], old["approval_by"] = "rejected", SUPERSEDED_BY
    if reasons:
        decide(target.store, list(reasons), "rejected", by=SUPERSEDED_BY, reason=reasons, force=True)


def _nothing_read(report: IngestReport) -> str:
    """Why no span was read: what ingest looks for, and what the spans carry instead."""
    keys = ", ".join(key for key, _ in report.unread_keys.most_common(12)) or "none"
    return (
        f"None of the {report.unread_spans} span(s) read is one ingest understands, so no trajectory was made: no span names a "
        "GenAI operation (gen_ai.operation.name), an OpenInference or OpenLLMetry span kind (openinference.span.kind, "
        "traceloop.span.kind), a LangSmith run kind (langsmith.span.kind), a Langfuse observation type "
        "(langfuse.observation.type), an MLflow span type (mlflow.spanType), a Vercel AI SDK operation (ai.operationId) "
        "or a Logfire OpenAI Agents SDK span (logfire.msg_template). "
        f"Their most common attributes: {keys}. Export the spans of a GenAI instrumentation "
        "that follows the OpenTelemetry GenAI conventions (or one of these), with message content capture on."
    )


def _write(store: ExperienceStore, trajectories: list[Trajectory], report: IngestReport) -> None:
    """Write ``trajectories``; where the store refuses the batch, each alone, so that one run it refuses (a record too
    large to write, one it cannot encode) does not take the others along: each refused one is a problem of the report.
    A store that refuses the first two alone the same way refuses them all (a full disk): the error is raised."""
    if not trajectories:
        return
    try:
        store.write(trajectories)
    except Exception:
        if len(trajectories) == 1:
            raise
    else:
        report.ingested.extend(t.id for t in trajectories)
        return
    failures: list[str] = []
    for position, trajectory in enumerate(trajectories):
        try:
            store.write([trajectory])
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            if position == 1 and len(failures) == 2 and failures[0] == failures[1]:
                raise  # the first two alone, the same way: the store refuses every write
            report.problem(f"Trace {trajectory.trace_id}: run {trajectory.id} could not be stored ({failures[-1]}); the others were.")
        else:
            report.ingested.append(trajectory.id)


def _trace_trajectories(
    trace_id: str,
    spans: list[SpanData],
    rejected: list[RejectedSpan],
    target: _Target,
    report: IngestReport,
    unended: set[str],
    bare: list[BareCall] | None = None,
    model_calls: ModelCalls | None = None,
) -> list[Trajectory]:
    """The trajectories of one trace's runs. A trace that holds one model call and nothing around it goes to ``bare``
    instead (when given), to be joined with the calls of other traces it goes on with; the model calls of the other
    runs go to ``model_calls`` (when given), which tells the bare calls that are one of them traced again."""
    grouped = group_runs(trace_id, spans, unended)
    report.repeated_spans += grouped.repeated_spans
    if grouped.problem is not None:
        report.problem(grouped.problem)
        return []
    if not grouped.runs:
        completed = _completed_by(trace_id, spans, target, report, unended)
        if completed is not None:
            return completed
        if not grouped.recognized and any(key in span.attributes for span in spans for key in LANGCHAIN_MARKS):
            report.problem(
                f"trace {trace_id}: no agent run found: its {len(spans)} span(s) are a LangChain instrumentation's, with no model, "
                "agent or tool span among them (a graph's span ends last, so a rotated file may hold it alone: ingest the files "
                "together, or the earlier one first: the run it stores as interrupted is completed by this span); skipped."
            )
            return []
        if grouped.agent_related:
            report.problem(f"trace {trace_id}: no agent run found (no 'chat' or 'invoke_agent' spans among {len(spans)}); skipped.")
        else:
            report.traces_without_runs += 1  # e.g. OpenLLMetry's create_agent span: not a run, not a problem
        if not grouped.recognized:
            report.unread_spans += len(spans)
            report.unread_keys.update(key for span in spans for key in span.attributes)
        return []
    if not any(operation_of(span.attributes) in sc.MODEL_OPERATIONS for run in grouped.runs for span in run):
        # no decision among the spans read now: they may be what a stored version lacked (its root, in a later file)
        completed = _completed_by(trace_id, spans, target, report, unended, {span.span_id: run[0] for run in grouped.runs for span in run})
        if completed is not None:
            return completed
    if bare is not None and not rejected and (call := bare_call(trace_id, grouped)) is not None:
        bare.append(call)
        return []  # its choices are counted when the bare calls are joined
    _count_choices(grouped.choices, report)
    if model_calls is not None:
        for run in grouped.runs:
            model_calls.add(run)
    out = []
    for *whole, gaps in zip(grouped.runs, grouped.unfinished, grouped.missing_roots, grouped.gaps, strict=True):
        for n, (run, unfinished, absent_root, nested) in enumerate(_runs_of(*whole, rejected, unended)):
            report.runs += 1
            trajectory = _run_trajectory(trace_id, run, unfinished, absent_root, rejected, target, report, nested=nested)
            if trajectory is not None:
                out.append(trajectory)
                if n == 0 and len(run) == len(whole[0]):  # the run as read (not a part of it capture stored apart)
                    target.gaps[id(trajectory)] = gaps
    return out


def _completed_by(
    trace_id: str,
    spans: list[SpanData],
    target: _Target,
    report: IngestReport,
    unended: Collection[str] = (),
    run_roots: Mapping[str, SpanData] | None = None,
) -> list[Trajectory] | None:
    """The stored runs ``spans`` (read now, no model call among them) complete (:func:`_filled_in`); none (``[]``) where
    an earlier ingest completed them with these spans (:func:`_filled_before`); None where they complete no stored run
    (or the spans are live ones: a run recorded live is read whole)."""
    if target.live:
        return None
    filled = _filled_in(trace_id, spans, target, report, unended, run_roots)
    return filled if filled or _filled_before(trace_id, spans, target, report) else None


def _filled_in(
    trace_id: str,
    spans: list[SpanData],
    target: _Target,
    report: IngestReport,
    unended: Collection[str] = (),
    run_roots: Mapping[str, SpanData] | None = None,
) -> list[Trajectory]:
    """The stored versions of this trace's runs completed by ``spans`` (read now, no model call among them), as
    :func:`_across_ingests` completes a run read now (its last step an answer, its root ended without an error):

    - a version that lacked only spans between its root (read) and its steps, where ``spans`` hold them all (a file
      holding only such spans: LangGraph's node spans);
    - a version that lacked its root span (``interrupted``: "its root span ... is not among the spans read"), where
      ``spans`` hold it, ended without an error: a rotated file holding the spans that end last (the graph's, the
      agent's), the run's steps in the file read before and moved away.

    Versions whose missing spans lead, through ``spans``, to the same root are pieces of one run (a file rotated between
    the last model span and its graph node's span stored the last call apart from the nodes before it): they are merged
    (:func:`_merged`) and completed as one run, never each on its own.

    :func:`_ingest_traces` stores each as the complete version, superseding the stored one (its approval carried over).
    A run completed by its root is named, timed and given its app as the run read whole is (by the root of the run read
    now that holds that span, ``run_roots``: span id -> its run's root; else the span itself), so that reading all its
    files again later finds it stored. Nothing where the store does not exist yet."""
    store = target.existing()
    if store is None:
        return []
    by_id = {s.span_id: s for s in spans}
    pieces: dict[str, list[tuple[dict[str, Any], SaidGaps]]] = {}
    for row in target.in_trace(trace_id):
        if row["status"] != "interrupted" or (row["approval"] == "rejected" and row["approval_by"] == SUPERSEDED_BY):
            continue
        said = read_gaps(row.get("error"))
        if said is None or not said.lacked or not said.lacked <= by_id.keys():
            continue
        if said.root is None:  # its root is among the spans read now: it must have ended, and well
            [root_id] = said.lacked
            root = _top_read(by_id[root_id], by_id)
            if root.span_id in unended or not ended_ok(root):
                continue
            key = root.span_id
        elif not said.ended:
            continue
        else:
            key = said.root
        pieces.setdefault(key, []).append((row, said))
    for key, group in list(pieces.items()):
        parent = by_id[key].parent_span_id if key in by_id else None
        if parent in pieces and all(said.root is None for _, said in group):
            # pieces under a span read now whose parent is the root another stored piece read: one run
            pieces[parent].extend(pieces.pop(key))
    out = []
    for key, group in pieces.items():
        rows = [row for row, _ in group]
        said = next((said for _, said in group if said.root is not None), group[0][1])
        versions = [target.version(row["id"]) for row in rows]
        version = versions[0]
        if len(versions) > 1:
            # pieces of one run (a rotated file cut inside it stored each part apart, their spans below the ones read now):
            # merged, as keep() merges the versions of a run read now
            version, _ = _merged(versions[0], versions[1:], target.options.max_observation_chars)
        if not version.steps or version.steps[-1].action.kind != "answer":
            continue
        report.runs += 1
        stored_as = ", ".join(row["id"] for row in rows)
        pieces_of = f"runs stored as {stored_as} (pieces of one run)" if len(rows) > 1 else f"run stored as {stored_as}"
        lacked = set().union(*(said.lacked for _, said in group))
        report.notes.append(
            f"Trace {trace_id}: its spans read now (no model call among them) are the {len(lacked)} span(s) between its "
            f"root span {said.root} and its steps that the {pieces_of} lacked: the run is stored completed."
            if said.root is not None
            else f"Trace {trace_id}: its spans read now (no model call among them) hold the root span {by_id[key].name!r} "
            f"({key}) of the {pieces_of}, which lacked it (in a file read later than its steps): the run is stored completed."
        )
        update: dict[str, Any] = {"status": "completed", "error": None, "approval": Approval()}
        if said.root is not None:
            run_id = _run_id(next(row["id"] for row, s in group if s is said), target.in_trace(trace_id))
            # (named as the run it is a version of, as keep() names a merge)
        else:
            root = by_id[key]
            top = (run_roots or {}).get(root.span_id, root)
            named = normalize(top).attributes
            run_id = run_trajectory_id(trace_id, top.span_id)
            update["app"] = run_app(named, top.resource, version.app)
            if version.thread_id is None and named.get(sc.CONVERSATION_ID) not in (None, ""):
                # the run's thread named on its root alone (read whole, the run takes it from there)
                redactor = target.options.redactor
                thread = str(named[sc.CONVERSATION_ID])
                update["thread_id"] = redactor.redact(thread) if redactor is not None else thread
            update["started_at"] = min(version.started_at, span_time(top.start_ns))
            update["ended_at"] = max(version.ended_at or version.started_at, span_time(top.end_ns))
        completed = version.model_copy(update={"id": run_id, **update}, deep=True)
        for step in completed.steps:
            step.trajectory_id = run_id
        out.append(completed)
    return out


def _top_read(span: SpanData, by_id: Mapping[str, SpanData]) -> SpanData:
    """The highest span above ``span`` (or itself) among ``by_id`` (the spans read now), following their parents."""
    seen = {span.span_id}
    while span.parent_span_id in by_id and span.parent_span_id not in seen:
        span = by_id[span.parent_span_id]
        seen.add(span.span_id)
    return span


def _filled_before(trace_id: str, spans: list[SpanData], target: _Target, report: IngestReport) -> bool:
    """Whether ``spans`` (read now, no model call among them) are what a stored version lacked that an earlier ingest
    completed (:func:`_filled_in`; the version superseded): its run is stored whole, nothing to add (a note says so)."""
    if target.existing() is None:
        return False
    read = {s.span_id for s in spans}
    for row in target.in_trace(trace_id):
        if row["approval"] == "rejected" and row["approval_by"] == SUPERSEDED_BY:
            said = read_gaps(row.get("error"))
            if said is not None and said.lacked and said.lacked <= read:
                report.notes.append(
                    f"Trace {trace_id}: its spans read now are what the run stored as {row['id']} lacked, and an earlier "
                    "ingest stored that run whole with them: nothing added."
                )
                return True
    return False


def _runs_of(
    run: list[SpanData], unfinished: str | None, absent_root: str | None, rejected: list[RejectedSpan], unended: Collection[str]
) -> list[tuple[list[SpanData], str | None, str | None, bool]]:
    """One run read from the spans as the runs ee-middleware's capture stored from them, each with why it never ended,
    the id of its root when absent (as :func:`_run_trajectory` takes them) and whether it ran inside another's tool.

    Capture's own spans name the trajectory they belong to, and a recorder stores each trajectory apart: a recorded
    agent run in flight inside another (a sub-agent wrapped with ``record_experience`` invoked in a tool, a recorded graph
    as a node), whose root span is a child of the outer run's root when both export to one tracer provider, is a run of
    its own (:func:`_recorded_parts`), as its recorder stored it. In each, a graph run inside one of its tools that
    capture marked (:data:`~ee_middleware.capture.semconv.EE_NESTED_IN`: an unwrapped agent as a tool) follows it, split
    as live capture splits it (:func:`~ee_middleware.capture.assembler.split_nested`). A nested run ended with its tool
    call; one whose tool call never ended shares the outer run's reason. A run holding a span that could not be read is
    left whole (skipped, said once). Spans of other instrumentations carry neither mark: their run is left as it is."""
    if _rejected_in(run, rejected) is not None:
        return [(run, unfinished, absent_root, False)]
    out: list[tuple[list[SpanData], str | None, str | None, bool]] = []
    for n, part in enumerate(_recorded_parts(run)):
        why, absent = (unfinished, absent_root) if n == 0 else (unfinished if any(s.span_id in unended for s in part) else None, None)
        if not any(sc.EE_NESTED_IN in s.attributes for s in part):
            out.append((part, why, absent, False))
            continue
        outer, *nested = split_nested(part)
        ended = {s.span_id for s in outer if s.attributes.get(sc.EE_NESTED_RUN) and s.span_id not in unended}
        out.append((outer, why, absent, False))
        out.extend((inner, None if inner[0].span_id in ended else why, None, True) for inner in nested)
    return out


def _recorded_parts(run: list[SpanData]) -> list[list[SpanData]]:
    """``run`` split by the trajectory its spans name (:data:`~ee_middleware.capture.semconv.EE_TRAJECTORY_ID`, on every
    span capture writes; a span that names none goes with the nearest one above it that does), as each recorder's span
    processor groups them: the run's own part first, then the others as they started, each with its top span first.
    ``[run]`` when its spans name at most one trajectory (one recorded run, or another instrumentation's)."""
    if len({v for s in run if (v := s.attributes.get(sc.EE_TRAJECTORY_ID))}) < 2:
        return [run]
    by_id = {s.span_id: s for s in run}
    owners: dict[str, str | None] = {}

    def owner(span: SpanData) -> str | None:
        path, node = [], span
        while node is not None and node.span_id not in owners and len(path) <= len(by_id):
            if value := node.attributes.get(sc.EE_TRAJECTORY_ID):
                owners[node.span_id] = str(value)
                break
            path.append(node.span_id)
            node = by_id.get(node.parent_span_id or "")
        found = owners.get(node.span_id) if node is not None else None
        for span_id in path:
            owners[span_id] = found
        return found

    first = owner(run[0])
    groups: dict[str | None, list[SpanData]] = {}
    for span in run:
        groups.setdefault(owner(span) or first, []).append(span)
    parts = []
    for group in groups.values():
        inside = {s.span_id for s in group}
        parts.append(sorted(group, key=lambda s: (s.parent_span_id in inside, s.start_ns)))
    return [parts[0], *sorted(parts[1:], key=lambda part: part[0].start_ns)]


def _run_trajectory(
    trace_id: str,
    run: list[SpanData],
    unfinished: str | None,
    absent_root: str | None,
    rejected: list[RejectedSpan],
    target: _Target,
    report: IngestReport,
    *,
    nested: bool = False,
) -> Trajectory | None:
    """One run as a trajectory, or None (the problem reported); ``nested``: a graph run inside another run's tool."""
    problem = run_problem(run)
    if problem is not None:
        report.problem(f"Trace {trace_id}: run {run[0].name!r}: {problem}; run skipped.")
        return None
    missing = _rejected_in(run, rejected)
    if missing is not None:
        report.problem(
            f"Trace {trace_id}: run {run[0].name!r} is incomplete: its span {missing.name or missing.span_id or '?'!r} could not be "
            "read (see its problem above); run skipped rather than stored without it."
        )
        return None
    problem, notes = _dropped_problem(trace_id, run, target.dropped)
    if problem is not None:
        report.problem(problem)
        return None
    trajectory = target.assemble(trace_id, run, report, nested=nested)
    if trajectory is not None:
        report.notes.extend(notes)
        unread = _unread_calls_note(trace_id, run, trajectory)
        if unread is not None:
            report.notes.append(unread)
    if trajectory is not None and absent_root is not None and sc.EE_TRAJECTORY_ID not in run[0].attributes:
        # named after the root it lacks, as the whole run will be once its root is exported: ingesting the files again
        # later finds it stored instead of storing the same run a second time
        trajectory.id = run_trajectory_id(trace_id, absent_root)
        for step in trajectory.steps:
            step.trajectory_id = trajectory.id
    if trajectory is not None and unfinished is not None:
        said = read_gaps(unfinished)
        if trajectory.status == "stopped" and said is not None and said[0] is not None:
            # its root was read, spans between it and its steps were not: that no model call wrote the reply it returned
            # (stopped) may be only that the call's span is among those missing
            trajectory.status, trajectory.error = "interrupted", None
        if trajectory.status == "completed":  # a run that failed before its process died stays an error
            trajectory.status = "interrupted"
        trajectory.error = trajectory.error or unfinished
        report.unfinished.append(
            f"Trace {trace_id}: run {run[0].name!r} is stored as {trajectory.status}, with the steps its finished spans show: {unfinished}."
        )
    return trajectory


def _unread_calls_note(trace_id: str, run: list[SpanData], trajectory: Trajectory) -> str | None:
    """What a note says of the steps of a run (not resumed) read from its tool spans that ran before its first model
    span read, their calls made in that model call's history (:attr:`~ee_middleware.capture.assembler.AssemblyOptions.
    unread_model_calls`): the model span that made them was not read. None where there are none."""
    if any(s.attributes.get(sc.EE_RESUMED) for s in run):
        return None  # a resumed run's reviewed turns: decided in the paused run, as capture records them
    first = min((s.start_ns for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS), default=None)
    if first is None:
        return None
    early = {
        str(call_id)
        for s in run
        if s.start_ns < first
        and operation_of(s.attributes) == sc.OP_EXECUTE_TOOL
        and (call_id := normalize(s).attributes.get(sc.TOOL_CALL_ID))
    }
    calls = [f"{c.name} ({c.id})" for step in trajectory.steps if (c := step.action.tool_call) is not None and c.id in early]
    if not calls:
        return None
    return (
        f"Trace {trace_id}: run {run[0].name!r}: the model span that made its call(s) {', '.join(calls)} is not among the spans "
        "read (in a file not read with this one: a rotated file's earlier part, read in another ingest or lost); each call is "
        "a step read from the next model call's history and its tool span (its result and error), without the model call's "
        "latency; ingesting that file too completes them (or, where the app itself wrote that call in the history before "
        "any model call, it is no decision of the model: reject the run with `ee traces reject`)."
    )


_LIMITS = (
    ("attribute", "droppedAttributesCount", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT (or OTEL_ATTRIBUTE_COUNT_LIMIT)"),
    ("event", "droppedEventsCount", "OTEL_SPAN_EVENT_COUNT_LIMIT"),
    ("event attribute", "droppedAttributesCount of its events", "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT"),
)
"""Per :class:`~ee_middleware.ingest.otlp_schema.Dropped` field: what was dropped, the OTLP field that says so, and the
OpenTelemetry SDK setting that raises the limit (128 by default)."""


def _dropped_problem(trace_id: str, run: list[SpanData], dropped: Mapping[tuple[str, str], Dropped]) -> tuple[str | None, list[str]]:
    """Whether ``run`` holds spans its SDK exported cut to its span limits (``dropped``) where what was cut is what
    ingest reads from them (:func:`_lost`): a problem for a model or tool span (the run is skipped: the history, tool
    result or error read from it is known to be incomplete, and instrumentations that flatten messages into indexed
    attributes exceed the default limit of 128 attributes at about 60 messages), and a note for any other span of the
    run (its decisions are whole; a thread, task or error read from it may not be). Events ingest does not read (one per
    streamed chunk, as OpenLLMetry's OpenAI instrumentation adds them) may be dropped without either."""
    if not dropped:
        return None, []
    cut = [(span, lost) for span in run if (d := dropped.get((span.trace_id, span.span_id))) and (lost := _lost(span, d))]
    if not cut:
        return None, []
    decisive = [(span, d) for span, d in cut if _decision_span(span)]
    if decisive:
        span, d = decisive[0]
        tool = operation_of(span.attributes) == sc.OP_EXECUTE_TOOL
        more = f" (and {len(decisive) - 1} more model or tool span(s) of the run)" if len(decisive) > 1 else ""
        return (
            f"Trace {trace_id}: run {run[0].name!r} is incomplete: its {'tool' if tool else 'model'} span {span.name!r} "
            f"({span.span_id}) was exported with {_dropped_text(d)}{more}, so {_lost_text(d, tool)}; "
            f"raise {_limits_text(d)} where the app runs (the default is 128) so that later runs are exported whole; "
            "run skipped rather than stored with a history known to be incomplete."
        ), []
    notes = [
        f"Trace {trace_id}: run {run[0].name!r}: its span {span.name!r} ({span.span_id}) was exported with {_dropped_text(d)}; "
        f"it is no model or tool span, so the run's decisions are whole, but what is read from it "
        f"({'a thread, a task' if d.attributes else 'an error'}{', an error' if d.attributes and (d.events or d.event_attributes) else ''}) "
        f"may be missing: raise {_limits_text(d)} where the app runs (the default is 128) so that later runs are exported whole."
        for span, d in cut
    ]
    return None, notes


_READ_EVENTS = frozenset({*_MESSAGE_EVENTS, _CHOICE, _DETAILS, *_LEGACY, "gen_ai.tool.message", "exception"})
"""The span events ingest reads (:mod:`~ee_middleware.ingest.dialects`): the GenAI conventions' message events (the
event form of a model span's history and reply), their older ``gen_ai.content.*`` and the inference details event, a
tool span's message and result events (Strands), and ``exception`` (an error, an interrupt)."""


def _lost(span: SpanData, dropped: Dropped) -> Dropped:
    """What of ``dropped`` (cut from ``span`` by its SDK's span limits) is what ingest reads from the span: its attributes
    (messages in attribute form, a tool's result, the model, a thread), and its events only where it reads some there
    (:func:`_reads_events`). Others are no loss: OpenLLMetry's OpenAI instrumentation adds an event per streamed chunk, so
    a reply of more than 128 chunks is exported with ``droppedEventsCount`` though its messages are attributes."""
    if (dropped.events or dropped.event_attributes) and not _reads_events(span):
        return dropped._replace(events=0, event_attributes=0)
    return dropped


def _reads_events(span: SpanData) -> bool:
    """Whether ingest reads (or would have read) part of ``span`` from its events: it holds an event ingest reads
    (:data:`_READ_EVENTS`), or it is a model span without the history, or an answer it should have (not an error), in
    attributes or events (all of them may be among those dropped), or a tool span without a result."""
    if any(name in _READ_EVENTS for name, _ in span.events):
        return True
    operation = operation_of(span.attributes)
    if operation in sc.MODEL_OPERATIONS:
        attrs = normalize(span).attributes
        return attrs.get(sc.INPUT_MESSAGES) in (None, "") or (attrs.get(sc.OUTPUT_MESSAGES) in (None, "") and not span.is_error)
    if operation == sc.OP_EXECUTE_TOOL:
        return normalize(span).attributes.get(sc.TOOL_CALL_RESULT) is None
    return False


def _lost_text(dropped: Dropped, tool: bool) -> str:
    """What may be missing from a model or tool span that lost ``dropped`` (all of it read by ingest: :func:`_lost`)."""
    if tool:
        return "the tool's arguments, result or error read from it may be missing"
    parts = []
    if dropped.attributes:
        parts.append(
            "the messages read from its attributes may lack some (the Python SDK drops the oldest attributes: a history's "
            "system prompt and first messages where they are indexed attributes; other SDKs drop the newest: the last "
            "messages and the reply)"
        )
    if dropped.events:
        parts.append(
            "the messages read from its events (one per message) may lack some (the Python SDK drops the oldest events: "
            "a history's system prompt and first messages; other SDKs drop the newest: the last messages and the reply)"
        )
    if dropped.event_attributes:
        parts.append("the messages read from its events may lack some of their fields (a message's content or tool calls)")
    return ", and ".join(parts)


def _decision_span(span: SpanData) -> bool:
    """A model span (the decision and the history it was given) or a tool span (its call's observation)."""
    operation = operation_of(span.attributes)
    return operation in sc.MODEL_OPERATIONS or operation == sc.OP_EXECUTE_TOOL


def _dropped_text(dropped: Dropped) -> str:
    parts = [f"{n} {what}(s) dropped (OTLP {field})" for n, (what, field, _) in zip(dropped, _LIMITS, strict=True) if n]
    return " and ".join(parts) + " by the SDK's span limits"


def _limits_text(dropped: Dropped) -> str:
    return " and ".join(setting for n, (_, _, setting) in zip(dropped, _LIMITS, strict=True) if n)


def _rejected_in(run: list[SpanData], rejected: list[RejectedSpan]) -> RejectedSpan | None:
    """A rejected span that belonged to ``run``: its parent is in the run, or it is a run span's parent."""
    ids = {s.span_id for s in run}
    parents = {s.parent_span_id for s in run}
    for bad in rejected:
        if (bad.parent_span_id is not None and bad.parent_span_id in ids) or (bad.span_id is not None and bad.span_id in parents):
            return bad
    return None


def _assemble(trace_id: str, run: list[SpanData], options: AssemblyOptions, report: IngestReport) -> Trajectory | None:
    root = run[0]
    models = [normalize(span) for span in run if operation_of(span.attributes) in sc.MODEL_OPERATIONS]
    if not models:
        report.problem(f"Trace {trace_id}: run {root.name!r}: {_no_model_calls(run)}; run skipped.")
        return None
    for span in models:
        problem = check_model_span(span)
        if problem:
            report.problem(f"Trace {trace_id}: span {span.span_id} ({span.name!r}): {problem}; run {root.name!r} skipped.")
            return None
    if models and not any(span.attributes.get(key) for span in models for key in (sc.INPUT_MESSAGES, sc.OUTPUT_MESSAGES)):
        report.problem(
            f"Trace {trace_id}: run {root.name!r}: its {len(models)} model span(s) carry no messages (no gen_ai.input.messages or "
            "gen_ai.output.messages, indexed prompt attributes or message events), so it would be a trajectory without steps; "
            "turn on message content capture in the instrumentation, on spans: OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="
            "SPAN_ONLY (or SPAN_AND_EVENT) for OpenTelemetry's GenAI instrumentations (older versions: true; current ones read true "
            "as NO_CONTENT, and EVENT_ONLY writes the messages to logs, not to the trace file), TRACELOOP_TRACE_CONTENT=true for "
            "OpenLLMetry, OPENINFERENCE_HIDE_INPUTS/OUTPUTS unset; run skipped."
        )
        return None
    try:
        trajectory = assemble(run, options)
    except IngestError as exc:
        report.problem(str(exc))
        return None
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        report.problem(f"Trace {trace_id}: run {root.name!r} could not be read as a trajectory ({type(exc).__name__}: {exc}); skipped.")
        return None
    trajectory.model = _answering_model(models) or trajectory.model
    outside = trajectory_problem(trajectory)
    if outside is not None:  # a span's number (ee.observation.truncated_chars) the store's write would refuse
        report.problem(f"Trace {trace_id}: run {root.name!r}: {outside}; run skipped.")
        return None
    return trajectory


PLACEHOLDER_MODELS = frozenset({"unknown", "none", "null", "n/a"})
"""What instrumentations write as the answering model when the reply named none (OpenLLMetry's ``unknown``): no model's
name, so the one asked for is kept."""


def _answering_model(models: list[SpanData]) -> str | None:
    """The model that answered the run's first decision, as capture records it since cdc489c: the first model call that
    did not fail (one that failed decided nothing: a fallback replaced it), in the order the assembler reads them, and
    its ``gen_ai.response.model`` (a router serving an alias answers with the adapter's own name, a provider with the
    dated version of the model asked for, an OpenAI-compatible server with the model it loaded); ``None`` where that
    call names none (or a placeholder, :data:`PLACEHOLDER_MODELS`): the trajectory keeps the model asked for.
    ``models``: the run's model spans, normalized."""
    if not models:
        return None
    chats = sorted(models, key=lambda s: (s.start_ns, s.end_ns))
    chat = next((c for c in chats if not c.is_error), chats[0])
    answered = chat.attributes.get(sc.RESPONSE_MODEL)
    if not isinstance(answered, str) or answered.strip().lower() in PLACEHOLDER_MODELS | {""}:
        return None
    return answered


def _no_model_calls(run: list[SpanData]) -> str:
    """Why a run has no model span: its instrumentation traced the agent (and its tools) but not the model client; or,
    in spans ee-middleware's own capture exported, the run called no model (a run resumed after a review and ended by
    a node): then there is nothing to fix."""
    if any(sc.EE_RECORDER in s.attributes for s in run):
        return (
            f"a run recorded by ee-middleware that called no model (its {len(run)} span(s) name no chat operation: e.g. a run "
            "resumed after a review and ended by a node), so it holds no decision to learn from; nothing to fix"
        )
    crewai = any("tool.agent_role" in s.attributes or "crew_key" in s.attributes for s in run)
    hint = (
        "OpenInference's CrewAI instrumentation writes them with CrewAIInstrumentor().instrument(use_event_listener=True)"
        if crewai
        else "instrument the model client too (the GenAI or OpenInference instrumentation of the SDK that calls the model)"
    )
    if len(run) <= 3 and all(sum(t.parent_span_id == s.span_id for t in run) <= 1 for s in run):  # a root, nothing under it
        return (
            f"no model call among its {len(run)} span(s), the agent's or graph's own with nothing under them read: its steps "
            "are in files not read with this one (its root ends last, so a rotated file may hold it alone: ingest the files "
            "together, or the earlier one first: the run it stores as interrupted is completed by these spans), or the "
            f"instrumentation traced the agent but not its model calls: {hint}"
        )
    return (
        f"no model call among its {len(run)} span(s) (no span names a chat operation), so there are no decisions to read: "
        f"the instrumentation traced the agent but not its model calls; {hint}"
    )


FOLDER_FILES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
"""The names of the files a folder given to :func:`ingest_files` stands for (a Collector file exporter's, gzip'd or not)."""


def _files_of(paths: Sequence[str | Path], report: IngestReport) -> list[str | Path]:
    """``paths`` with each folder replaced by its OTLP files (:data:`FOLDER_FILES`, sorted by name); a folder holding none
    is a problem naming what it looked for."""
    out: list[str | Path] = []
    for path in paths:
        folder = Path(path)
        if not folder.is_dir():
            out.append(path)
            continue
        try:
            found = sorted(f for f in folder.iterdir() if f.name.endswith(FOLDER_FILES) and not f.name.startswith(".") and f.is_file())
        except OSError as exc:
            report.file_problems(path, [f"{path}: cannot read the folder: {exc.strerror or exc}"])
            continue
        if not found:
            report.file_problems(
                path, [f"{path}: a folder with no OTLP file in it (files named *{', *'.join(FOLDER_FILES)}; subfolders are not read)."]
            )
        out.extend(found)
    return out


def ingest_files(
    paths: Sequence[str | Path],
    store: ExperienceStore | StoreSpec,
    *,
    on_progress: Callable[[str, int, int | None], None] | None = None,
    **kwargs: object,
) -> IngestReport:
    """Read OTLP JSON files (plain or gzip'd) and ingest their spans; problems are collected, never raised.

    ``store`` may be a spec, opened only when a run assembles (as in :func:`ingest_spans`). A folder stands for the OTLP
    files in it (:data:`FOLDER_FILES`, by name; not its subfolders): a Collector's file exporter rotates its output into
    one (a shell glob of many thousand files can pass the system's argument limit). ``on_progress(stage, done,
    total)``: called as the files are read (``"files read"``) and as their traces are assembled (``"traces
    assembled"``), for a progress bar.

    The files are read one request at a time and their spans kept on disk until every file is read
    (a run's spans may be split across files).
    """
    report = IngestReport()
    paths = _files_of(paths, report)
    rejected: list[RejectedSpan] = []
    unended: set[tuple[str, str]] = set()
    dropped: dict[tuple[str, str], Dropped] = {}
    traces: set[str] = set()
    with SpanSpill() as spill:
        for path in paths:
            parsed = ParseResult()
            report.spans += spill.add(_noted((adapt(span) for span in iter_otlp_json(path, parsed)), traces))
            report.files += 1
            report.file_problems(path, parsed.errors)
            rejected.extend(parsed.rejected)
            unended |= parsed.unended
            dropped.update(parsed.dropped)
            if on_progress is not None:
                on_progress("files read", report.files, len(paths))
        _ingest_traces(
            spill,
            store,
            report=report,
            rejected=rejected,
            unended=unended,
            dropped=dropped,
            traces=traces,
            on_progress=on_progress,
            **kwargs,  # type: ignore[arg-type]
        )
    return report
