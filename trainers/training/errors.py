"""Errors of LoRA training. Each message says what failed and how to fix it."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ee_middleware.errors import EEError


class TrainError(EEError):
    """Root of every training error."""


class BaseModelError(TrainError):
    """The base model is missing, or cannot be loaded from local files."""


class TrainDataError(TrainError, ValueError):
    """A dataset file is missing, empty, or holds rows that are not chat prompt/completion pairs."""


DATASETS_RECORD = "datasets.json"
"""What ``ee datasets build`` writes beside its files: the store and the settings (``config``) it built them with."""

_FLAGS = {
    "kinds": "--kinds",
    "teacher": "--teacher",
    "app": "--app",
    "replay_id": "--replay-id",
    "include_synthetic": "--include-synthetic",
    "include_sandbox_failures": "--include-sandbox-failures",
    "include_fidelity_mismatches": "--include-fidelity-mismatches",
    "max_synthetic_share": "--max-synthetic-share",
    "chunk_mb": "--chunk-mb",
    "iwm_max_error_share": "--max-error-share",
    "iwm_max_observation_tokens": "--max-observation-tokens",
    "sr_k": "--sr-k",
    "heldout_share": "--heldout-share",
    "heldout_ids": "--heldout-ids",
    "heldout_app": "--heldout-app",
    "heldout_started_after": "--heldout-after",
    "heldout_started_before": "--heldout-before",
    "seed": "--seed",
}
"""The ``ee datasets build`` flag of each recorded setting (``store``, ``out`` and ``teacher_settings`` are written apart)."""


@dataclass(frozen=True)
class BuildAdvice:
    """How to (re)build a dataset file: ``command`` to run, and ``note``, what the command alone does not say ("" when
    it is complete as written)."""

    command: str
    note: str = ""
    recorded: Path | None = None
    """The ``datasets.json`` the command's store and options come from (``None``: nothing recorded them)."""


def build_folder(kind: str, folder: str | os.PathLike[str]) -> Path:
    """The ``--out`` folder of the build that writes ``kind`` into ``folder``: for a held-out file (``OUT/heldout/``, a
    folder with no ``datasets.json`` of its own) ``OUT``, which the build writes ``heldout/`` into; else ``folder``."""
    from ee_middleware.trainers.datasets.split import HELDOUT_DIR

    folder = Path(folder)
    if folder.name in ("", ".", ".."):  # "." inside heldout/: its name tells the build's folder, so read it
        folder = folder.resolve()
    if kind != "em" and folder.name == HELDOUT_DIR and not (folder / DATASETS_RECORD).is_file():
        return folder.parent
    return folder


def build_advice(kind: str, folder: str | os.PathLike[str], *, together: Collection[str] = ()) -> BuildAdvice:
    """The command that writes the ``kind`` dataset file into ``folder``. ``em``: ``ee experience dataset`` (``ee datasets
    build`` refuses that kind), whose options em.parquet does not record. ``il``, ``iwm``, ``sr``: ``ee datasets build
    --out`` the build's folder (:func:`build_folder`) with the store and the options its ``datasets.json`` records
    (``kind`` and ``together``, kinds to build with it, added to its kinds), so that it writes the same build again,
    held-out split included; with ``STORE`` and no options (but ``--kinds`` when ``together`` names kinds) when there is
    no readable record."""
    if kind == "em":
        return BuildAdvice(f"ee experience dataset --store STORE --out {_arg(folder)}")
    out = build_folder(kind, folder)
    record = _read_record(out / DATASETS_RECORD)
    wanted = {kind, *together}
    if record is None:
        kinds = f" --kinds {','.join(_ordered(wanted))}" if together else ""
        return BuildAdvice(f"ee datasets build --store STORE --out {_arg(out)}{kinds}")
    from ee_middleware.errors import hide_credentials

    notes: list[str] = []
    recorded_store = record["config"].get("store") or record.get("store")
    store = _recorded_path(recorded_store, "the store", notes) if isinstance(recorded_store, str) else "STORE"
    args = ["ee", "datasets", "build", "--store", store, "--out", str(out)]
    args += _recorded_options(record["config"], wanted, notes)
    command = hide_credentials(" ".join(_arg(a) for a in args))
    if "***" in command:
        notes.append("fill in each *** (a secret datasets.json does not record)")
    return BuildAdvice(command, "; ".join(notes), out / DATASETS_RECORD)


def build_command(kind: str, folder: str | os.PathLike[str]) -> str:
    """The command of :func:`build_advice`."""
    return build_advice(kind, folder).command


def rebuild_hint(path: str | os.PathLike[str], kind: str) -> str:
    """How a broken dataset file's error ends: the command that writes ``path`` again as its build wrote it
    (:func:`build_advice`): ``ee experience dataset`` for ``em.parquet`` (``ee datasets build`` refuses that kind);
    for the others ``ee datasets build`` into the build's folder (the parent of ``heldout/``) with the store and options
    its ``datasets.json`` records. Options nothing records are asked for: rebuilt with the defaults, the files would
    differ (another held-out split, or none, and its files removed)."""
    path = Path(path)
    advice = build_advice(kind, path.parent)
    note = f" ({advice.note})" if advice.note else ""
    if kind == "em":
        return (
            f"Rebuild it with `{advice.command}` and the options it was built with (--held-out, --seed, --top-k, --teacher, "
            "--retriever: em.parquet does not record them); with others the rows differ, and another --held-out or --seed "
            "trains on transitions that ee experience eval holds out."
        )
    out = build_folder(kind, path.parent)
    if advice.recorded is not None:
        return (
            f"Rebuild it with `{advice.command}`{note}: the store and options {advice.recorded} records, so it writes that "
            f"build's files in {out} again (heldout/ included), from the store as it is now."
        )
    return (
        f"Rebuild it with `{advice.command}` and the options it was built with (--kinds, --heldout-share/-ids/-app/-after/"
        f"-before, --seed, --app, --replay-id, ...: {out} has no readable {DATASETS_RECORD} to say which); without them the "
        f"build uses the defaults, holds nothing out, and removes {out / 'heldout'}."
    )


def _read_record(path: Path) -> dict[str, Any] | None:
    """``datasets.json``'s content, when it is readable and records the build's settings."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None
    return record


def _recorded_options(config: dict[str, Any], wanted: Collection[str], notes: list[str]) -> list[str]:
    """The flags that give a build the recorded settings ``config`` (those that differ from the defaults), the
    ``wanted`` kinds added to its kinds; a setting without a flag goes into ``notes`` as the ``--config`` line that
    gives it."""
    from ee_middleware.trainers.datasets.build import DatasetConfig

    defaults = DatasetConfig.model_construct(store="", out=Path()).model_dump(mode="json")
    config = dict(config)
    config["kinds"] = _ordered({*(config.get("kinds") or defaults["kinds"]), *wanted})
    args: list[str] = []
    unflagged: list[str] = []
    for name, value in config.items():
        if name in ("store", "out") or (name in defaults and value == defaults[name]):
            continue
        flag = _FLAGS.get(name)
        if name == "teacher_settings" and isinstance(value, dict):
            for key, setting in value.items():
                args += ["--teacher-setting", f"{key}={_setting_text(setting)}"]
        elif flag is None:
            unflagged.append(f"{name} = {json.dumps(value)}")
        elif isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        elif name == "kinds":
            args += [flag, ",".join(value)]
        elif name == "heldout_ids" and value is not None:
            args += [flag, _recorded_path(value, "the --heldout-ids file", notes)]
        else:
            args += [flag, str(value)]
    if unflagged:
        notes.append(
            f"add {', '.join(unflagged)} to the [datasets] table of a --config file: no flag sets {'it' if len(unflagged) == 1 else 'them'}"
        )
    return args


def _ordered(kinds: Collection[str]) -> list[str]:
    """``kinds`` in the order ``ee datasets build`` names them (il, iwm, sr; others after)."""
    from ee_middleware.trainers.datasets.rows import KINDS

    return [k for k in KINDS if k in kinds] + sorted(k for k in kinds if k not in KINDS)


def _recorded_path(text: str, what: str, notes: list[str]) -> str:
    """A recorded path (or store spec) as the command names it: a relative path that names something from here,
    absolute; one that does not, as recorded, with a note that it is relative to where the build ran."""
    from ee_middleware.store.registry import store_config_value

    value = store_config_value(text)
    if not isinstance(value, Path) or value.is_absolute():
        return text
    if value.exists():
        return str(value.absolute())
    notes.append(f"{what} {text!r} is relative to the folder the build ran in: run it from there")
    return text


def _setting_text(value: Any) -> str:
    """A teacher setting as ``--teacher-setting KEY=VALUE`` reads it back: JSON, or text that does not parse as JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def _arg(value: str | os.PathLike[str]) -> str:
    """``value`` as one shell word (quoted only when it needs it)."""
    return shlex.quote(str(value))


class MissingDatasetError(TrainDataError):
    """A dataset file the schedule trains on is not in the data folder. ``setting``: the setting that named the folder, as
    the message says it (``ee train`` names the flag or the config file it came from)."""

    def __init__(self, path: str | os.PathLike[str], kind: str, setting: str = "--data (or data in [train])") -> None:
        self.path, self.kind = Path(path), kind
        folder = self.path.parent
        if folder.is_file() or folder.suffix == ".parquet":  # --data data/il.parquet: the file, not its folder
            holder = folder.parent
            super().__init__(
                f"{setting} must be the folder that holds the dataset files ({self.path.name} and the others of the build), "
                f"not a file: {folder} {'is a file' if folder.is_file() else f'names a dataset file ({folder.name})'}. Set "
                f"{setting} to {holder}, its folder."
            )
            return
        advice = build_advice(kind, folder)
        build = f"`{advice.command}`" + (f"; {advice.note}" if advice.note else "")
        where = f"{self.path}" + ("" if self.path.is_absolute() else f" ({self.path.absolute()})")
        super().__init__(
            f"No {kind.upper()} dataset at {where}: {setting} names the folder {folder}. Build the "
            f"datasets there first ({build}), or set {setting} to the folder that holds {self.path.name}."
        )

    def named_by(self, setting: str) -> MissingDatasetError:
        """The same error, naming ``setting`` (``--data``, ``data in [train] of FILE``) as the one that gave the folder."""
        return MissingDatasetError(self.path, self.kind, setting)


class TrainOutOfMemoryError(TrainError, MemoryError):
    """Training ran out of (GPU or host) memory; the message names the settings to lower."""


class ContextBudgetWarning(UserWarning):
    """Many rows lose more than older turns to ``max_length``: the model will train on states without their tools or task."""


class RenderingFallbackWarning(UserWarning):
    """Rows were rendered with a fallback for the base model's chat template (``RenderStats.fallback_note`` says which
    and why): their prompts are not exactly the served ones, or their tool calls are ``<tool_call>`` text."""
