"""``ee datasets build``: IL, IWM and SR datasets from an experience store, as Parquet.

Writes ``OUT/il.parquet``, ``OUT/iwm.parquet``, ``OUT/sr.parquet`` (one row per example, see
:mod:`ee_middleware.trainers.datasets.rows`) and ``OUT/datasets.json`` (what was built from what).
The files are written into a hidden folder in ``OUT`` and moved in when all are written
(:func:`publish`), with ``datasets.json`` last: a build that fails or is killed leaves the earlier build
whole, and the folder holds one build (an earlier build's files this one does not write are removed).

The build runs in bounded memory, whatever the store's size: it first reads only the keys of the
source (:class:`~ee_middleware.trainers.datasets.source.SourceIndex`), then reads, builds and writes
one group of trajectories at a time (about ``chunk_mb`` of prompt text each) as Parquet parts in a
hidden folder beside the file, and finally streams the parts, in order, into the one file. A group is
read once for every kind that uses it (:mod:`~ee_middleware.trainers.datasets.passes`: one pass for
IWM's rollout rows, one for IL, SR and IWM's expert-step rows). The rows,
and their order, are the same for any group size (a group is a run of consecutive trajectories in
the order the rows have; IWM's error cap is decided from the keys before any row is built).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import polars as pl
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from ee_middleware._files import (
    atomic_open,
    atomic_write_parquet,
    atomic_write_text,
    folders_made,
    fsync_dir,
    parquet_sources,
    remove_left_behind,
)
from ee_middleware._limits import INT32_MAX, MAX_ALTERNATIVES
from ee_middleware._toml import build_config, layered_values, missing_settings, named_path, stripped_not_blank
from ee_middleware.capture.redaction import Redactor
from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.errors import ConfigError, EEError, IncompleteReadWarning
from ee_middleware.messages import content_to_text, with_decoded_arguments
from ee_middleware.models.urls import shown_spec
from ee_middleware.records import SANDBOX_FAILURES
from ee_middleware.replay.curriculum import CURRICULUM_SOURCE
from ee_middleware.replay.policies.schema import NO_SCHEMAS_FIX
from ee_middleware.store.registry import store_config_value, trajectory_columns
from ee_middleware.trainers.datasets.caps import share_cap
from ee_middleware.trainers.datasets.iwm import IWMOptions, find_repeated_rollouts
from ee_middleware.trainers.datasets.passes import ILWriter, IWMWriter, KindWriter, SRWriter, run_pass
from ee_middleware.trainers.datasets.privacy import (
    REDACTION_METADATA_KEY,
    guard_rows,
    redact_messages,
    redact_tools_text,
    redaction_metadata,
)
from ee_middleware.trainers.datasets.rows import KINDS, SYNTHETIC, conform
from ee_middleware.trainers.datasets.source import GROUNDED_ON_HELD_OUT, SourceIndex, SourceReader
from ee_middleware.trainers.datasets.split import (
    HELDOUT,
    HELDOUT_DIR,
    SPLIT_METADATA_KEY,
    SplitRule,
    read_id_list,
    recorded_units,
    resolve_listed_ids,
    split_trajectories,
)
from ee_middleware.trainers.datasets.sr import SROptions
from ee_middleware.trainers.datasets.teachers import Teacher, build_teacher, closing_teacher


def _known_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """``kinds`` without repeats, refused when empty or naming a kind there is none of (a config built in code is checked
    as one loaded from TOML: an unknown kind was built as SR, an empty tuple removed the earlier build's files)."""
    if not kinds:
        raise ValueError(f"kinds is empty: nothing would be built. Choose one or more of {', '.join(KINDS)} (--kinds il,iwm,sr).")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"Unknown dataset kind(s) {', '.join(map(str, unknown))}. Choose from: {', '.join(KINDS)}.")
    return tuple(dict.fromkeys(kinds))


def _iso_time(value: Any) -> Any:
    """A held-out time as ISO 8601 text: a date written without dashes (``20270101``, what ``date +%Y%m%d`` prints, as
    text or a TOML integer) is that date, and other digits alone are refused (pydantic read both as seconds since 1970, so 20270101 was
    1970-08-23 and held out every trajectory); anything else as pydantic reads it."""
    if isinstance(value, int) and not isinstance(value, bool):  # a TOML integer written without quotes: its digits
        value = str(value)
    if not isinstance(value, str) or not value.strip().isdigit():
        return value
    text = value.strip()
    if len(text) == 8:
        try:
            return datetime.strptime(text, "%Y%m%d")
        except ValueError:
            pass
    raise ValueError(f"{text!r} is no ISO 8601 time: write a date (2027-01-01) or a time (2027-01-01T06:00:00+02:00)")


class DatasetBuildRunningError(EEError):
    """Another dataset build is writing the output folder now (not a mistake in the configuration: the same build runs
    once that one has finished)."""


class DatasetConfig(BaseModel):
    """Everything ``ee datasets build`` needs; loadable from a TOML ``[datasets]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Annotated[Path | str, BeforeValidator(store_config_value)]
    """The experience store: a folder, or a store spec (see :func:`ee_middleware.store.registry.open_store`)."""
    out: Annotated[Path, named_path("the output folder"), AfterValidator(Path.expanduser)]
    """The output folder (``~`` expanded, as the store's path is)."""
    kinds: Annotated[tuple[str, ...], AfterValidator(_known_kinds)] = ("il", "iwm", "sr")
    """The datasets to build, each once: ``il``, ``iwm``, ``sr``."""
    teacher: str = "template"
    """``template`` (deterministic, for tests and demos), ``local:MODEL_DIR``, ``openai:BASE_URL#MODEL``, or a plug-in:
    ``package.module:factory`` or the name of an ``ee_middleware.teachers`` entry point."""
    teacher_settings: dict[str, Any] = Field(default_factory=dict)
    """Keyword options of the teacher's factory (``[datasets.teacher_settings]``, ``--teacher-setting KEY=VALUE``): for
    ``openai:`` ``max_tokens``, ``timeout_s``, ``api_key``; for ``local:`` ``max_new_tokens``, ``num_threads``; a
    plug-in's own."""
    app: Annotated[str | None, BeforeValidator(stripped_not_blank)] = None
    replay_id: str | None = None
    """Only rollouts of this replay configuration (the replay id of any of its attempts: of a configuration replayed
    again, each trajectory's newest finished attempt). Default: every replay's real rollouts (all the configurations
    that replayed a trajectory: more alternatives per state); ``datasets.json``'s ``replays`` lists the ones used."""
    include_synthetic: bool = False
    """Also use rollouts an experience model predicted (``synthetic``); recorded in ``datasets.json``'s config. Every row
    built from one is marked (:data:`~ee_middleware.trainers.datasets.rows.SYNTHETIC`) and counted per kind
    (``synthetic_rows``); with a held-out rule, those whose model was shown a held-out trajectory's real transitions
    are left out of training (``rollouts_left_out.synthetic_grounded_on_held_out``:
    :meth:`~ee_middleware.trainers.datasets.source.SourceReader.leave_out_grounded_on_held_out`)."""
    include_sandbox_failures: bool = False
    """Also use rollouts whose observation is the sandbox's own failure (a time-out, a crash, the memory limit:
    ``Observation.sandbox_failure``). Off by default: the model would learn to predict the sandbox's messages, which no
    production tool returns. How many were left out is ``datasets.json``'s ``sandbox_failures_left_out``."""
    include_fidelity_mismatches: bool = False
    """Also use the rollouts of a replay whose record reports fidelity mismatches (the sandbox's answer to the expert's
    own recorded call differed from production's). Off by default: that sandbox answers some tool unlike production
    (:func:`~ee_middleware.trainers.datasets.source.untrusted_replays`); what was left out is ``datasets.json``'s
    ``fidelity_mismatches_left_out``."""
    iwm_max_observation_tokens: int = Field(512, ge=8, le=INT32_MAX)
    """Tokens of an observation an IWM row keeps: 8 to 2**31 - 1, as ``--max-observation-tokens`` (a larger one failed the
    build inside polars, as an unexpected error)."""
    iwm_max_error_share: float = Field(0.5, ge=0, le=1)
    """At most this share of IWM rows have an error observation; how many error rows the cap left out is
    ``datasets.json``'s ``datasets.iwm.errors_left_out``."""
    iwm_include_expert_steps: bool = True
    sr_k: int = Field(3, ge=1, le=MAX_ALTERNATIVES)
    """Alternatives shown to the SR teacher per state: 1 to 256, the most a replay records per state (``ee replay run
    --k``)."""
    seed: int = Field(0, ge=0, le=2**64 - 1)
    """Seeds the IWM error cap's sample, the held-out split and the synthetic-task cap: 0 to 2**64 - 1 (the sampler's
    range; a seed outside it failed the build only where the error cap took effect, as an unexpected OverflowError)."""
    heldout_share: float = Field(0.0, ge=0, lt=1)
    """Hold out this share of units (trajectories sharing a thread or a task; seeded by ``seed``, stable as the store grows)
    into ``OUT/heldout/``. Every held-out rule also holds out what would carry a held-out trajectory's targets into
    training: see :mod:`~ee_middleware.trainers.datasets.split`."""
    heldout_ids: Annotated[
        Path | None, named_path("the held-out id list"), AfterValidator(lambda path: path.expanduser() if path is not None else None)
    ] = None
    """A file of trajectory ids (one per line) to hold out."""
    heldout_app: Annotated[str | None, BeforeValidator(stripped_not_blank)] = None
    """Hold out every trajectory of this app (its name without the blanks around it, as capture stores it; an empty one
    is refused: it held out nothing, and as a flag it replaced the file's held-out rule)."""
    heldout_started_after: Annotated[datetime | None, BeforeValidator(_iso_time)] = None
    """Hold out trajectories that started at or after this time (ISO 8601; UTC when no zone)."""
    heldout_started_before: Annotated[datetime | None, BeforeValidator(_iso_time)] = None
    """Hold out trajectories that started before this time."""
    max_synthetic_share: float | None = Field(None, ge=0, le=1)
    """Cap the share of synthetic-task trajectories (``source = curriculum``: rollouts on tasks a model
    wrote, see ``ee curriculum run``) among the trajectories the training datasets are built from (after the held-out
    split: the held-out side is not capped, its counts are ``synthetic_tasks.heldout``); which ones stay is chosen by
    ``seed`` (:func:`cap_synthetic_tasks`). Default: no cap. Recorded in ``datasets.json``."""
    chunk_mb: float = Field(32.0, gt=0, le=1_000_000)
    """Build and write about this many MB of prompt text at a time: bounds the build's memory. The rows
    are the same for any value."""

    def split_rule(self) -> SplitRule:
        """The held-out rule these settings describe."""
        return SplitRule(
            share=self.heldout_share,
            seed=self.seed,
            ids=read_id_list(self.heldout_ids) if self.heldout_ids is not None else (),
            app=self.heldout_app,
            started_after=self.heldout_started_after,
            started_before=self.heldout_started_before,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, nightly: bool = False, **overrides: Any) -> DatasetConfig:
        """Defaults <- the TOML file's ``[datasets]`` table <- ``overrides`` (``None`` values are ignored). A held-out rule
        in ``overrides`` (any ``heldout_*`` setting given) replaces the file's rule whole: ``--heldout-ids FILE`` holds out
        those ids, not them and the file's ``heldout_share`` too. ``nightly``: ``path`` is ee improve's file, read for
        its datasets stage, so it may leave ``[datasets]`` out."""
        values = layered_values(path, "datasets", overrides, job="dataset build", nightly=nightly)
        if any(key.startswith(HELDOUT_PREFIX) and value is not None for key, value in overrides.items()):
            for key in [k for k in values if k.startswith(HELDOUT_PREFIX) and overrides.get(k) is None]:
                del values[key]
        kinds = values.get("kinds")
        if isinstance(kinds, str):
            values["kinds"] = tuple(k.strip() for k in kinds.split(",") if k.strip())
        elif kinds is not None and (not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) for k in kinds)):
            raise ConfigError(f"kinds must be a list of dataset kinds such as ['il', 'iwm', 'sr'] (or 'il,iwm'), got {kinds!r}.")
        if "kinds" in values:
            try:
                _known_kinds(tuple(values["kinds"]))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        missing = {key: f"--{key}" for key in ("store", "out") if key not in values}
        if missing:
            raise missing_settings("dataset build", "datasets", missing)
        return build_config(cls, values, "dataset")


HELDOUT_PREFIX = "heldout_"
"""The settings that make up the held-out rule (``heldout_share``, ``heldout_ids``, ``heldout_app``, ``heldout_started_*``)."""

SYNTHETIC_TASK_SOURCE = CURRICULUM_SOURCE
"""``Trajectory.source`` of trajectories rolled out on generated tasks (``ee curriculum run``)."""


def _check_out_beside(store: Any, out: Path) -> None:
    """Refuse an output folder that is the store's own folder or inside it (a store with a local folder): the build
    would write its files and remove its stale ones among the store's, and a store's maintenance (``ee store``) and
    copies would carry the datasets."""
    from ee_middleware.store.metadata import meta_folder

    root = meta_folder(store)
    if root is None:
        return
    root, where = root.resolve(), out.expanduser().resolve()
    if where == root or root in where.parents:
        raise ConfigError(
            f"--out {out} is {'the experience store itself' if where == root else 'inside the experience store ' + str(root)}: "
            f"the datasets would be written among the store's files. Give a folder outside it, e.g. --out {root.parent / 'datasets'}."
        )


def build_datasets(
    config: DatasetConfig,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_sr_progress: Callable[[int, int], None] | None = None,
    refuse_out_in_store: bool = False,
) -> dict[str, Any]:
    """Build the configured kinds; return the summary also written to ``OUT/datasets.json``. ``refuse_out_in_store``
    (``ee datasets build``): an output folder that is the store's folder or inside it is refused before anything is
    written (``ee improve`` writes into its run folder, wherever its ``runs`` are: a set-up that worked stays working).

    A read of a damaged store that warns it left records out (``IncompleteReadWarning``: a caller that lets the build go
    on, ``--allow-partial``) is recorded in ``datasets.json`` (``incomplete_store_read``: what each warning said), so
    that what trains on these datasets can tell they were built from part of the store; the warnings are passed on."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            return _build_datasets(
                config, caught, on_stage=on_stage, on_sr_progress=on_sr_progress, refuse_out_in_store=refuse_out_in_store
            )
    finally:
        # to the caller's filters and handlers, as if never caught (after the recording has stopped: re-emitted inside
        # it, each would be recorded again, and re-emitted, forever)
        for said in caught:
            warnings.warn_explicit(said.message, said.category, said.filename, said.lineno, source=said.source)


def _build_datasets(
    config: DatasetConfig,
    caught: list[warnings.WarningMessage],
    *,
    on_stage: Callable[[str], None] | None,
    on_sr_progress: Callable[[int, int], None] | None,
    refuse_out_in_store: bool,
) -> dict[str, Any]:
    from ee_middleware.store.registry import open_store

    store = open_store(config.store, create=False)
    if refuse_out_in_store:
        _check_out_beside(store, Path(config.out))
    reader = SourceReader(
        store,
        app=config.app,
        replay_id=config.replay_id,
        include_synthetic=config.include_synthetic,
        include_sandbox_failures=config.include_sandbox_failures,
        include_fidelity_mismatches=config.include_fidelity_mismatches,
    )
    redactor = store_redactor(store, create_salt=False, tagged_before=True)  # the app's own rules and salt, on every row
    if reader.trajectories.is_empty():
        raise ConfigError(_nothing_approved(store, config))
    rule = config.split_rule()
    split = None
    grounded = 0
    if rule.active:
        recorded = recorded_units(store)
        rule = resolve_listed_ids(rule, store, recorded, config.heldout_ids)
        _check_heldout_app(rule, reader.trajectories, config)
        split = split_trajectories(reader.trajectories.select("id", "app", "started_at"), rule, recorded, store)
        if not split.train:
            added = (
                f" ({len(split.added)} of them because they share a task or a thread with one it holds out, run within or around one, or are rollouts on a "
                "variant of its task)"
                if split.added
                else ""
            )
            raise ConfigError(
                f"The held-out rule ({_rule_text(rule)}) holds out all {len(split.heldout)} approved trajectories{added}: nothing "
                "is left to train on. Loosen it."
            )
        # a prediction shown a held-out trajectory's real transition may carry what its tool returned into training
        grounded = reader.leave_out_grounded_on_held_out(split.train, split.heldout)
    index = reader.index()
    used = index
    heldout_index = None
    if split is not None:
        index, heldout_index = index.subset(split.train), index.subset(split.heldout)
    synthetic: dict[str, Any] | None = None
    # a cap on what is trained on: after the split, over the training side; without one, trajectories of generated tasks
    # in the source are still counted, so a dataset says how much of it is the policy's own rollouts on them
    sides = [index] if heldout_index is None else [index, heldout_index]
    if config.max_synthetic_share is not None or any(
        side.trajectories.filter(pl.col("source") == SYNTHETIC_TASK_SOURCE).height for side in sides
    ):
        index, synthetic = cap_synthetic_tasks(index, config.max_synthetic_share, config.seed)
        if heldout_index is not None:
            held_synthetic = heldout_index.trajectories.filter(pl.col("source") == SYNTHETIC_TASK_SOURCE).height
            synthetic["heldout"] = {
                "synthetic_trajectories": held_synthetic,
                "real_trajectories": heldout_index.trajectories.height - held_synthetic,
            }
        if index.trajectories.is_empty():
            raise ConfigError(
                f"--max-synthetic-share {config.max_synthetic_share} leaves nothing to train on: the training side holds "
                f"{synthetic['synthetic_trajectories']} source={SYNTHETIC_TASK_SOURCE} trajectories and no real one. Approve "
                "recorded trajectories, or raise the share."
            )
        if synthetic["left_out"]:
            both = set(index.trajectories["id"].to_list())
            if heldout_index is not None:
                both |= set(heldout_index.trajectories["id"].to_list())
            used = used.subset(both)
    summary: dict[str, Any] = {
        "store": shown_spec(str(config.store)),
        "source_hash": used.source_hash,
        "trajectories": used.trajectories.height,
        "steps": used.steps.height,
        "rollouts": used.rollouts.height,
        "sandbox_failures_left_out": sandbox_failures_left_out(used),
        "rollouts_left_out": {
            "synthetic": used.filtered_out.get("synthetic", 0),
            "other_replays": used.filtered_out.get("other_replays", 0),
            GROUNDED_ON_HELD_OUT: grounded,
        },
        "fidelity_mismatches_left_out": fidelity_mismatches_left_out(used),
        # a decision two trajectories of one trace hold (a recorded graph used as a node of another): taught once
        **({"repeated_decisions_left_out": repeats} if (repeats := used.repeats_left_out()) else {}),
        "replays": replays_used(used, config.replay_id),
        "config": _config_record(config),
        "redaction": {
            "kinds": redactor.rules.enabled_kinds(),
            "patterns": sorted(redactor.rules.patterns),
            "pseudonyms": redactor.salt is not None,
            "unrestored_rollouts_left_out": used.unrestored_rollouts,
        },
        "datasets": {},
    }
    if synthetic is not None:
        summary["synthetic_tasks"] = synthetic
    moved = sorted(_earlier_heldout(config.out) & set(index.trajectories["id"].to_list()))
    if moved:  # (with a rule or without one: a rebuild without --heldout-* trains on everything)
        summary["heldout_moved_to_training"] = {
            "count": len(moved),
            "ids_sample": moved[:20],
            "warning": (
                f"{len(moved)} trajectories the earlier build in {config.out} held out are trained on now (the held-out rule "
                "was left out or changed, its unit or the approved runs changed: an upgrade that draws units by thread or "
                "task does): an adapter trained on them scores them as seen, so compare it only on a split built after "
                f"this one (e.g. {', '.join(moved[:3])})"
            ),
        }
    if split is not None and heldout_index is not None:
        summary["split"] = {
            "rule": rule.describe(),
            "train_trajectories": sorted(index.trajectories["id"].to_list()),
            "heldout_trajectories": sorted(split.heldout),
            "heldout_dir": str(config.out / HELDOUT_DIR),
            **split.describe(),
        }
        if not split.heldout:
            summary["split"]["nothing_held_out"] = (
                f"the held-out rule ({_rule_text(rule)}) holds out none of the {len(split.train)} trajectories built: every "
                "one is trained on, and no `ee eval` suite has a held-out trajectory to score. Loosen the rule."
            )
    teacher = build_teacher(config.teacher, **config.teacher_settings) if "sr" in config.kinds else None
    # (a failed build, on a full disk or past a file-size limit, leaves no empty --out folder behind)
    with contextlib.ExitStack() as stack:
        stack.enter_context(folders_made(config.out))
        teacher_open = stack.enter_context(contextlib.ExitStack())
        teacher_open.enter_context(closing_teacher(teacher))
        stack.enter_context(writing_folder(config.out))
        staging = stack.enter_context(staging_folder(config.out))
        summary["datasets"] = _build_split(
            reader, index, config, teacher, staging, redactor, config.out, on_stage=on_stage, on_sr_progress=on_sr_progress
        )
        if heldout_index is not None and not heldout_index.trajectories.is_empty():
            folder = staging / HELDOUT_DIR
            folder.mkdir()
            summary["split"]["datasets"] = _build_split(
                reader, heldout_index, config, teacher, folder, redactor, config.out / HELDOUT_DIR, heldout=True
            )
        missing = tool_schemas_missing(index, {kind: staging / Path(info["path"]).name for kind, info in summary["datasets"].items()})
        if missing is not None:
            summary["tool_schemas_missing"] = missing
        # closed before the build is published: a teacher whose close() fails fails the build with the earlier one whole
        teacher_open.close()
        incomplete = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, IncompleteReadWarning)))
        if incomplete:
            summary["incomplete_store_read"] = incomplete
        summary["stale_removed"] = publish(staging, config.out)
        atomic_write_text(config.out / "datasets.json", json.dumps(summary, indent=2))
    return summary


def _earlier_heldout(out: Path) -> set[str]:
    """The trajectories the earlier build in ``out`` held out (its ``datasets.json``'s split), read before this build
    replaces it; none where there was no build, or its record cannot be read (nothing to compare with)."""
    try:
        earlier = json.loads((out / "datasets.json").read_text(encoding="utf-8"))
        held = (earlier.get("split") or {}).get("heldout_trajectories") or []
        return {str(i) for i in held}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def _config_record(config: DatasetConfig) -> dict[str, Any]:
    """The settings as ``datasets.json`` records them: a secret-named teacher setting (``api_key``) as ``***``, and the
    teacher's and store's specs with the credentials in their URLs masked (``openai:http://***@host/v1#model``)."""
    from ee_middleware._toml import _is_secret_name  # the one rule for secret-named settings

    # (not model_dump_json: a path that is not UTF-8, a folder named in Latin-1, failed the build; json.dumps keeps it)
    record = _shown_specs(config.model_dump(mode="json"), ("teacher", "store"))
    record["teacher_settings"] = {
        key: "***" if _is_secret_name(key) and value not in (None, "") else value for key, value in record["teacher_settings"].items()
    }
    return record


def _check_heldout_app(rule: SplitRule, trajectories: pl.DataFrame, config: DatasetConfig) -> None:
    """Refuse a ``heldout_app`` that no trajectory of the build is of (a typo, or an app ``--app`` leaves out): it would
    hold out nothing of that app, as a held-out id list naming no trajectory is refused."""
    apps = sorted(set(trajectories["app"].to_list()))
    if rule.app is None or rule.app in apps:
        return
    shown = ", ".join(apps[:10]) + (f" and {len(apps) - 10} more" if len(apps) > 10 else "")
    within = f" (--app {config.app})" if config.app else ""
    raise ConfigError(
        f"--heldout-app {rule.app} (heldout_app) names no app of the trajectories this build reads{within}: {shown}. "
        "Name one of them (ee traces list shows each trajectory's app); nothing was built."
    )


def _rule_text(rule: SplitRule) -> str:
    """``rule``'s settings as its flags say them."""
    parts = [f"--heldout-share {rule.share}"] if rule.share else []
    parts += [f"--heldout-ids ({len(rule.ids)} ids)"] if rule.ids else []
    parts += [f"--heldout-app {rule.app}"] if rule.app else []
    parts += [f"--heldout-after {rule.started_after.isoformat()}"] if rule.started_after else []
    parts += [f"--heldout-before {rule.started_before.isoformat()}"] if rule.started_before else []
    return ", ".join(parts)


def _nothing_approved(store: Any, config: DatasetConfig) -> str:
    """Why there is nothing to build from: no approved trajectory in the store, or none of ``config.app`` (``--app``),
    then with the apps that have approved trajectories."""
    if config.app is None:
        return f"No approved trajectories in {config.store}. Approve some (ee traces approve) before building datasets."
    approved = trajectory_columns(store, ["app"], status="approved")
    apps = Counter(approved["app"].to_list())
    if not apps:
        return f"No approved trajectories in {config.store} (of any app). Approve some (ee traces approve) before building datasets."
    listed = ", ".join(f"{app} ({n})" for app, n in sorted(apps.items(), key=lambda item: (-item[1], str(item[0]))))
    return (
        f"No approved trajectories of app {config.app!r} in {config.store} (--app). Apps with approved trajectories there: {listed}. "
        f"Give one of those to --app, or approve trajectories of {config.app} (ee traces list --store {config.store} --app "
        f"{config.app} --status pending)."
    )


STAGING_PREFIX = ".build-"
"""A build writes its files into ``OUT/.build-<pid>-<random>/`` and moves them into ``OUT`` when all are written."""


@contextmanager
def writing_folder(out: Path) -> Iterator[None]:
    """Hold ``out`` for one build: an exclusive ``flock`` on the folder itself (released when the process ends, even
    killed; no lock file is left). A second build into it is refused at once, naming the first: the folder holds one
    build, and two would each report their own while the folder ends up with the last one's files (or a mix)."""
    import fcntl

    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pids = sorted({p.name[len(STAGING_PREFIX) :].split("-")[0] for p in out.glob(f"{STAGING_PREFIX}*")})
            who = f"pid {', '.join(pids)}" if pids else "another process"
            raise DatasetBuildRunningError(
                f"Another dataset build ({who}) is writing {out}: the folder holds one build. "
                "Wait for it to finish, or build into another --out."
            ) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A fresh hidden folder in ``out`` for a build's files, removed on the way out; staging folders
    and part folders that builds killed before (their process is gone) left in ``out`` are removed first."""
    remove_left_behind(out, ".*.parquet.parts-*", ".parts-")  # part folders written straight into OUT before staging
    try:
        folder = _claim_folder(out, STAGING_PREFIX)
    except OSError as exc:  # named as the folder the user gave, not as the hidden one made in it
        from ee_middleware.errors import OutputError, os_error_advice

        raise OutputError(
            f"Cannot write the datasets into {out}: {exc.strerror or exc}. Nothing was written. {os_error_advice(exc, output=True)}"
        ) from exc
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(staging: Path, out: Path) -> list[str]:
    """Move the dataset files written in ``staging`` into ``out`` (and ``out/heldout``) and remove the
    dataset files (:data:`KINDS`) of an earlier build there that this one did not write (where the folder held a build,
    or the file says a build wrote it: files of those names that are not, a user's table, stay), so that the folder holds
    one build; the removed files' paths relative to ``out``. The earlier ``datasets.json`` goes first: a build killed
    while it moves files leaves no description of a build the folder no longer holds. Other files (an ``em.parquet``, a
    user's notes) stay."""
    built_here = (out / "datasets.json").is_file()  # the folder held a build: its files are a build's, of any version
    (out / "datasets.json").unlink(missing_ok=True)
    removed = []
    for folder in (out, out / HELDOUT_DIR):
        staged = staging / folder.relative_to(out)
        for kind in KINDS:
            name = f"{kind}.parquet"
            if (staged / name).is_file():
                folder.mkdir(exist_ok=True)
                os.replace(staged / name, folder / name)
            elif (folder / name).is_file() and (built_here or _written_by_a_build(folder / name)):
                (folder / name).unlink()
                removed.append(str((folder / name).relative_to(out)))
        if folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        fsync_dir(folder)
    fsync_dir(out)
    return removed


def _written_by_a_build(path: Path) -> bool:
    """Whether dataset file ``path`` is one a build wrote (its Parquet metadata records the redaction it was built
    with): a file of that name that is not (a user's table, a text file) is left where it is."""
    try:
        return REDACTION_METADATA_KEY in (pl.read_parquet_metadata(path) or {})
    except Exception:  # noqa: BLE001 - not Parquet, or unreadable: not a build's
        return False


def sandbox_failures_left_out(index: SourceIndex) -> dict[str, int]:
    """Rollouts left out because the sandbox failed instead of the tool answering: ``total`` and each kind
    (:data:`~ee_middleware.records.SANDBOX_FAILURES`, zero when none)."""
    counts = {kind: index.sandbox_failures.get(kind, 0) for kind in SANDBOX_FAILURES}
    return {"total": sum(index.sandbox_failures.values()), **counts}


MAX_LISTED_REPLAYS = 20
"""Replays ``datasets.json`` lists by name in ``fidelity_mismatches_left_out`` (the rest are counted)."""


def fidelity_mismatches_left_out(index: SourceIndex) -> dict[str, Any]:
    """What ``datasets.json`` says of the rollouts left out for fidelity mismatches
    (:func:`~ee_middleware.trainers.datasets.source.untrusted_replays`): how many rollouts and trajectories; ``replays``:
    the replays that found mismatches (configuration, trajectory, sandbox, policy, mismatching expert calls, the first
    one's step and tool, rollouts left out), the first :data:`MAX_LISTED_REPLAYS`; ``wrong_tools``: per configuration and
    tool it answered wrongly, the rollouts calling it left out in trajectories whose own replay matched; and why."""
    left, untrusted = index.fidelity_left_out, index.untrusted
    per_replay = left.group_by("replay_id", "trajectory_id").agg(pl.col("rollouts").sum())
    replays = untrusted.join(per_replay, on=["replay_id", "trajectory_id"], how="left").with_columns(pl.col("rollouts").fill_null(0))
    replays = replays.sort("replay_id", "trajectory_id").drop("wrong_tools")
    elsewhere = left.join(untrusted, on=["replay_id", "trajectory_id"], how="anti")
    wrong_tools = (
        elsewhere.group_by("replay_id", "tool_name")
        .agg(pl.col("trajectory_id").n_unique().alias("trajectories"), pl.col("rollouts").sum())
        .rename({"tool_name": "tool"})
        .sort("replay_id", "tool")
    )
    return {
        "rollouts": int(left["rollouts"].sum()),
        "trajectories": left["trajectory_id"].n_unique(),
        "replays": [
            _shown_specs({**row, "rollouts": int(row["rollouts"])}) for row in replays.head(MAX_LISTED_REPLAYS).iter_rows(named=True)
        ],
        "replays_not_listed": max(0, replays.height - MAX_LISTED_REPLAYS),
        "wrong_tools": [{**row, "rollouts": int(row["rollouts"])} for row in wrong_tools.iter_rows(named=True)],
        "reason": (
            "the replay re-executed the expert's own recorded call and the sandbox answered otherwise than production: "
            "from that step on its world may not be production's, and the tool it answered wrongly answers every call "
            "wrongly, so that replay's rollouts from that step on are not used, nor that configuration's calls to that "
            "tool anywhere (a tool whose answer holds the time or a fresh id never matches: keep those in the world, see "
            "docs/sandboxes.md; --include-fidelity-mismatches uses them)"
        ),
    }


def replays_used(index: SourceIndex, replay_id: str | None) -> dict[str, Any]:
    """What ``datasets.json`` says of the replays whose rollouts were used: the rule (every replay configuration's,
    or ``replay_id``'s alone), each configuration (id, policy, sandbox, K, seed, trajectories, rollouts, newest
    record) and how many trajectories have rollouts of more than one."""
    rule = (
        f"only replay {replay_id}'s rollouts (--replay-id)"
        if replay_id is not None
        else "every replay's rollouts: each configuration (sandbox, policy, K, seed) that replayed a trajectory adds its "
        "alternatives (--replay-id ID uses one)"
    )
    used = [
        _shown_specs(
            {**row, "newest_finished_at": row["newest_finished_at"].isoformat() if row["newest_finished_at"] is not None else None}
        )
        for row in index.replays.iter_rows(named=True)
    ]
    return {"rule": rule, "used": used, "trajectories_with_several": index.trajectories_with_several_replays}


def _shown_specs(row: dict[str, Any], keys: tuple[str, ...] = ("policy", "sandbox")) -> dict[str, Any]:
    """``row`` with its specs (``keys``) as ``datasets.json`` shows them: credentials in their URLs masked
    (:func:`~ee_middleware.models.urls.shown_spec`; a store replayed before they were masked at replay holds them)."""
    return {key: shown_spec(value) if key in keys and isinstance(value, str) else value for key, value in row.items()}


NO_SCHEMAS = pl.col("tools_json").is_null() | pl.col("tools_json").str.strip_chars().is_in(["", "[]"])
"""A trajectory that recorded no tool schemas (the spans of some instrumentations carry no tool definitions)."""


def tool_schemas_missing(index: SourceIndex, files: dict[str, Path]) -> dict[str, Any] | None:
    """What ``datasets.json`` says of the trajectories that call tools but recorded no tool schemas (``None`` when every
    trajectory that calls a tool recorded them): how many, their first ids, how many rows of each kind came from them,
    and a warning saying what such rows teach and where schemas come from (``files``: each kind's file written). The rows are kept as they are: schemas are
    never made up."""
    calling = index.steps.filter(pl.col("action_kind") == "tool_call")["trajectory_id"].unique()
    ids = index.trajectories.filter(NO_SCHEMAS & pl.col("id").is_in(calling.implode()))["id"].sort().to_list()
    if not ids:
        return None
    rows = {}
    for kind, path in files.items():
        with parquet_sources([path]) as sources:
            rows[kind] = pl.scan_parquet(sources).filter(pl.col("trajectory_id").is_in(ids)).select(pl.len()).collect().item()
    with_calls = index.trajectories.filter(pl.col("id").is_in(calling.implode())).height
    return {
        "trajectories": len(ids),
        "of": with_calls,
        "ids": ids[:20],
        "rows": rows,
        "warning": (
            f"{len(ids)} of {with_calls} trajectories record no tool schemas (their spans carried no tool definitions: "
            "OpenTelemetry's OpenAI v2 instrumentation, Strands without OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_tool_definitions and "
            "OpenInference's Chat Completions spans do not record them), "
            f"so {', '.join(f'{n} {kind} rows' for kind, n in rows.items())} show calls to tools their prompt never offers: "
            f"a model trained on them learns to call tools it is not shown. {NO_SCHEMAS_FIX} Or leave these trajectories out "
            "(ee traces reject ID)."
        ),
    }


def cap_synthetic_tasks(index: SourceIndex, max_share: float | None, seed: int) -> tuple[SourceIndex, dict[str, Any]]:
    """``index`` with at most ``max_share`` of its trajectories from synthetic tasks (``source =
    curriculum``), and what was kept: at most ``max_share / (1 - max_share)`` of them per real
    trajectory (:func:`~ee_middleware.trainers.datasets.caps.share_cap`), those ranked first by a hash
    of the seed and the id (:func:`synthetic_rank`), so every build of the same store keeps the same
    ones; adding real trajectories only ever keeps more. ``max_share`` ``None``: no cap, every one kept and counted."""
    synthetic_ids = index.trajectories.filter(pl.col("source") == SYNTHETIC_TASK_SOURCE)["id"].to_list()
    real = index.trajectories.height - len(synthetic_ids)
    allowed = None if max_share is None else share_cap(real, max_share)
    ranked = sorted(synthetic_ids, key=lambda i: (synthetic_rank(i, seed), i))
    left_out = set(ranked[allowed:]) if allowed is not None else set()
    info = {
        "source": SYNTHETIC_TASK_SOURCE,
        "max_share": max_share,
        "synthetic_trajectories": len(synthetic_ids),
        "kept": len(synthetic_ids) - len(left_out),
        "left_out": len(left_out),
        "real_trajectories": real,
    }
    if not left_out:
        return index, info
    return index.subset(set(index.trajectories["id"].to_list()) - left_out), info


def synthetic_rank(trajectory_id: str, seed: int) -> float:
    """Where a synthetic-task trajectory ranks for the cap (lower stays first): a seeded hash in [0, 1)."""
    digest = hashlib.sha256(f"ee-synthetic:{seed}:{trajectory_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _build_split(
    reader: SourceReader,
    index: SourceIndex,
    config: DatasetConfig,
    teacher: Teacher | None,
    folder: Path,
    redactor: Redactor,
    final_folder: Path,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_sr_progress: Callable[[int, int], None] | None = None,
    heldout: bool = False,
) -> dict[str, dict[str, Any]]:
    """Build ``config.kinds`` from ``index`` into ``folder``, to be moved to ``final_folder`` (the paths recorded) (the passes of
    :mod:`~ee_middleware.trainers.datasets.passes`: each group is read once for every kind that uses
    it); what ``datasets.json`` records of each kind. A kind's ``seconds`` count its own work and an
    equal share of reading the groups it was fed."""
    kinds = list(dict.fromkeys(config.kinds))
    budget = max(1, int(config.chunk_mb * 2**20))
    metadata = redaction_metadata(redactor) | ({SPLIT_METADATA_KEY: HELDOUT} if heldout else {})
    seconds = dict.fromkeys(kinds, 0.0)
    announce = on_stage if on_stage is not None else (lambda kind: None)
    with ExitStack() as stack:
        writers: dict[str, KindWriter] = {}
        for kind in kinds:
            started = time.perf_counter()
            parts = stack.enter_context(PartWriter(folder / f"{kind}.parquet", metadata, kind, redactor))
            writers[kind] = _writer(kind, parts, index, config, teacher, on_sr_progress, reader, budget)
            seconds[kind] += time.perf_counter() - started
        iwm = writers.get("iwm")
        if isinstance(iwm, IWMWriter):  # IWM's rollout rows come first in its file, trajectories sorted
            announce("iwm")
            run_pass(reader, index, index.sorted_order(), budget, {"iwm": iwm.add_rollouts}, seconds, rollouts=True)
        shared = {kind: writer for kind, writer in writers.items() if writer.reads_storage_order}
        for kind in sorted(shared, key=lambda k: k == "sr"):  # SR's progress bar last: it is the live one
            if kind != "iwm":
                announce(kind)
        needs_rollouts = any(writer.needs_rollouts for writer in shared.values())
        feeds = {kind: writer.add for kind, writer in shared.items()}
        run_pass(reader, index, index.storage_order(), budget, feeds, seconds, rollouts=needs_rollouts)
        extras: dict[str, dict[str, Any]] = {}
        for kind, writer in writers.items():
            started = time.perf_counter()
            extras[kind] = writer.finish()
            seconds[kind] += time.perf_counter() - started
        # The largest file is merged first: the memory a merge leaves with the allocator serves the smaller ones.
        for kind, writer in sorted(writers.items(), key=lambda item: -item[1].parts.text_bytes):
            started = time.perf_counter()
            writer.parts.commit()
            seconds[kind] += time.perf_counter() - started
    results = {}
    for kind, writer in writers.items():
        parts, extra = writer.parts, extras[kind]
        if parts.placeholders:
            extra["placeholders"] = dict(parts.placeholders)
        results[kind] = {
            "path": str(final_folder / parts.path.name),
            "rows": parts.rows,
            "synthetic_rows": parts.synthetic_rows,
            "seconds": round(seconds[kind], 3),
            **extra,
            "parts": parts.count,
        }
    return results


def _writer(
    kind: str,
    parts: PartWriter,
    index: SourceIndex,
    config: DatasetConfig,
    teacher: Teacher | None,
    on_sr_progress: Callable[[int, int], None] | None,
    reader: SourceReader,
    budget: int,
) -> KindWriter:
    if kind == "il":
        return ILWriter(parts)
    if kind == "iwm":
        options = IWMOptions(
            max_observation_tokens=config.iwm_max_observation_tokens,
            max_error_share=config.iwm_max_error_share,
            include_expert_steps=config.iwm_include_expert_steps,
            seed=config.seed,
        )
        return IWMWriter(parts, index, options, find_repeated_rollouts(reader, index, budget))
    assert teacher is not None
    return SRWriter(
        parts, teacher, SROptions(k=config.sr_k, seed=config.seed, teacher_spec=shown_spec(config.teacher)), index, on_sr_progress
    )


ROW_GROUP_BYTES = 8 * 2**20
"""About this much prompt and completion text per row group of a dataset file."""
MIN_ROW_GROUP_ROWS = 64


class PartWriter:
    """One dataset file written from parts, in bounded memory.

    Each group's rows go through the privacy guard (:func:`~ee_middleware.trainers.datasets.privacy.guard_rows`)
    and become a Parquet part (written atomically) in a hidden folder beside the file; :meth:`commit`
    streams the parts, in order (``tail`` parts last), into the file, written atomically with
    ``metadata``. The folder is removed either way: a crash leaves the old file or the new one whole."""

    def __init__(self, path: Path, metadata: dict[str, str], kind: str, redactor: Redactor) -> None:
        self.path, self.metadata, self.kind, self.redactor = path, metadata, kind, redactor
        self.rows = 0
        self.synthetic_rows = 0
        """Rows built from experience-model predictions (:data:`~ee_middleware.trainers.datasets.rows.SYNTHETIC`)."""
        self.text_bytes = 0
        self.placeholders: Counter[str] = Counter()
        self._main: list[Path] = []
        self._tail: list[Path] = []
        self._folder: Path | None = None

    @property
    def count(self) -> int:
        return len(self._main) + len(self._tail)

    def __enter__(self) -> PartWriter:
        self._folder = _claim_folder(self.path.parent, f".{self.path.name}.parts-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def write(self, frame: pl.DataFrame, *, tail: bool = False) -> None:
        """Guard ``frame``'s rows and write them as the next part (of the tail with ``tail``)."""
        assert self._folder is not None, "use PartWriter as a context manager"
        if frame.is_empty():
            return
        frame, placeholders = guard_rows(self.kind, frame, self.redactor)
        self.placeholders.update(placeholders)
        self.rows += frame.height
        if frame.is_empty():
            return
        self.synthetic_rows += int(frame[SYNTHETIC].sum())
        self.text_bytes += int(frame.select(pl.col("prompt").str.len_bytes().sum() + pl.col("completion").str.len_bytes().sum()).item())
        part = self._folder / f"part-{self.count:06d}.parquet"
        atomic_write_parquet(frame, part, fsync=False, compression="zstd")  # the file they are merged into is synced
        (self._tail if tail else self._main).append(part)

    def commit(self) -> None:
        """Stream the parts into the dataset file (atomically), then remove them."""
        parts = self._main + self._tail
        if parts:  # row groups of about ROW_GROUP_BYTES of text: the merge holds one at a time
            rows = max(MIN_ROW_GROUP_ROWS, self.rows * ROW_GROUP_BYTES // max(1, self.text_bytes))
            with parquet_sources(parts) as sources:  # (a folder named in Latin-1: the parts opened here)
                atomic_write_parquet(pl.scan_parquet(sources), self.path, compression="zstd", metadata=self.metadata, row_group_size=rows)
        else:
            atomic_write_parquet(conform(pl.DataFrame()), self.path, compression="zstd", metadata=self.metadata)
        if self._folder is not None:  # merged: the parts' disk space goes back before the next kind's merge
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def read_dataset(path: str | os.PathLike[str]) -> pl.DataFrame:
    """One dataset file, checked to have the dataset columns. A missing or broken one's error names the command that
    writes it (:func:`~ee_middleware.trainers.training.errors.rebuild_hint`: the store and options its build's
    ``datasets.json`` records), as ``ee train``'s does."""
    from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Dataset {path} does not exist. {_build_advice(path)}")
    if path.is_dir() and path.suffix != ".parquet":  # (a folder named KIND.parquet is one dataset written in parts)
        files = sorted(p.name for p in path.glob("*.parquet") if _file_kind(p) is not None)
        held = sorted(f"{HELDOUT_DIR}/{p.name}" for p in (path / HELDOUT_DIR).glob("*.parquet") if _file_kind(p) is not None)
        named = ", ".join(str(path / name) for name in [*files, *held]) or "none: it holds no dataset file"
        raise ConfigError(f"{path} is a folder: give one dataset file of it (its dataset files: {named}).")
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:
        raise ConfigError(f"Dataset {path} is not readable Parquet ({exc}). {_rebuild_advice(path)}") from exc
    missing = [c for c in ("prompt", "completion", "tools") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"Dataset {path} lacks column(s) {', '.join(missing)}; a dataset file needs prompt, completion and tools. "
            f"{_rebuild_advice(path)}"
        )
    return frame.select([c for c in DATASET_SCHEMA if c in frame.columns])


def _file_kind(path: Path) -> str | None:
    """The kind a dataset file's name says (``il.parquet``: il; ``em.parquet``, written by ``ee experience dataset``:
    em), ``None`` for another name."""
    return path.stem if path.suffix == ".parquet" and path.stem in (*KINDS, "em") else None


def _rebuild_advice(path: Path) -> str:
    """How the error about a broken dataset file ends: ``ee train``'s advice for the kind its name says, or, for a file
    named otherwise (its kind unknown), the two commands that write dataset files."""
    from ee_middleware.trainers.training.errors import rebuild_hint

    kind = _file_kind(path)
    if kind is not None:
        return rebuild_hint(path, kind)
    return (
        "Rebuild it with the command that wrote it: `ee datasets build --store STORE --out FOLDER` (il, iwm and sr files, "
        "named KIND.parquet) or `ee experience dataset --store STORE --out FOLDER` (em.parquet), with the options it was "
        "built with."
    )


def _build_advice(path: Path) -> str:
    """How the error about a missing dataset file ends: the command that writes it into its folder."""
    import shlex

    from ee_middleware.trainers.training.errors import build_advice

    kind = _file_kind(path)
    if kind is None:
        out = shlex.quote(str(path.parent))
        return f"Build it with `ee datasets build --store STORE --out {out}` (it writes il.parquet, iwm.parquet, sr.parquet)."
    advice = build_advice(kind, path.parent)
    return f"Build it with `{advice.command}`" + (f" ({advice.note})" if advice.note else "") + "."


def chat_examples(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as OpenAI chat fine-tuning examples (``messages`` = prompt + completion, ``tools``). The completion alone is
    taught, as ``ee train`` trains on it: every assistant message of the prompt (earlier turns, IWM's proposed
    alternative call) carries ``"weight": 0``, OpenAI's mark for context, as ``ee traces export`` marks the turns a run
    did not decide."""
    examples = []
    for prompt, completion, tools in frame.select("prompt", "completion", "tools").iter_rows():
        context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in json.loads(prompt)]
        example: dict[str, Any] = {"messages": _calls_answered(context + json.loads(completion))}
        parsed_tools = json.loads(tools or "[]")
        if parsed_tools:
            example["tools"] = parsed_tools
        examples.append(example)
    return examples


def _calls_answered(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` where every tool call but the last message's is answered, as OpenAI's chat format requires: an
    assistant message whose calls another message follows before any tool message answers them (IWM's proposed call,
    then the instruction to predict its result) says its calls in its text instead (``Calling lookup(...)``)."""
    out = []
    for n, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if not calls or n == len(messages) - 1:
            out.append(message)
            continue
        answered = set()
        for later in messages[n + 1 :]:
            if later.get("role") != "tool":
                break
            answered.add(later.get("tool_call_id"))
        unanswered = [c for c in calls if c.get("id") not in answered]
        if unanswered:
            said = [f"Calling {c.get('function', {}).get('name')}({c.get('function', {}).get('arguments') or ''})" for c in unanswered]
            text = "\n".join(part for part in (content_to_text(message.get("content")), *said) if part)
            kept = [c for c in calls if c.get("id") in answered]
            message = {k: v for k, v in message.items() if k != "tool_calls"} | {"content": text} | ({"tool_calls": kept} if kept else {})
        out.append(message)
    return out


def export_chat_jsonl(frame: pl.DataFrame, path: str | os.PathLike[str], *, redactor: Redactor | None = None) -> int:
    """Write the OpenAI chat JSONL fine-tuning format; return the number of lines.

    Every example goes through ``redactor`` (the dataset's own rules:
    :func:`~ee_middleware.trainers.datasets.privacy.dataset_redactor`;
    default: the built-in default kinds)."""
    path = Path(path)
    redactor = redactor if redactor is not None else Redactor()
    examples = [redact_messages(redactor, e) for e in chat_examples(frame)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        for example in examples:
            fh.write(json.dumps(example, ensure_ascii=False) + "\n")
    return len(examples)


def to_hf_dataset(frame: pl.DataFrame, *, redactor: Redactor | None = None) -> Any:
    """A Hugging Face ``datasets.Dataset`` of the rows, through ``redactor`` as :func:`export_chat_jsonl`.

    ``prompt``, ``completion`` and ``tools`` stay JSON text (Arrow cannot hold tool arguments of
    varying shapes in one column), with tool-call arguments decoded to objects, as chat templates
    expect: ``json.loads(row["prompt"])`` gives the messages to pass to ``apply_chat_template``.
    """
    from ee_middleware._optional import import_optional

    datasets = import_optional("datasets", extra="train", purpose="export to a Hugging Face dataset")
    redactor = redactor if redactor is not None else Redactor()
    records = []
    for row in frame.iter_rows(named=True):
        records.append(
            {
                **{k: v for k, v in row.items() if k not in ("prompt", "completion", "tools")},
                "prompt": json.dumps(redactor.redact_value(with_decoded_arguments(json.loads(row["prompt"])))),
                "completion": json.dumps(redactor.redact_value(with_decoded_arguments(json.loads(row["completion"])))),
                "tools": redact_tools_text(redactor, row["tools"]),
            }
        )
    return datasets.Dataset.from_list(records)


def _claim_folder(parent: Path, prefix: str) -> Path:
    """A fresh hidden folder ``parent/<prefix><pid>-<random>`` for this process, after removing those that
    processes now gone (builds that were killed) left there."""
    remove_left_behind(parent, f"{prefix}*", prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
