"""``ee datasets build``: IL, IWM and SR datasets from an experience store, as Parquet.

Writes ``OUT/il.parquet``, ``OUT/iwm.parquet``, ``OUT/sr.parquet`` (one row per example, see
:mod:`ee_middleware.trainers.datasets.rows`) and ``OUT/datasets.json`` (what was built from what).
Each file is written to a temporary name and renamed, so a crash never leaves half a dataset.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import polars as pl
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ee_middleware._files import atomic_open, atomic_path, atomic_write_text
from ee_middleware._toml import build_config, layered_values
from ee_middleware.capture.redaction import Redactor
from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.errors import ConfigError
from ee_middleware.messages import with_decoded_arguments
from ee_middleware.store.registry import store_config_value
from ee_middleware.trainers.datasets.il import build_il
from ee_middleware.trainers.datasets.iwm import IWMOptions, build_iwm
from ee_middleware.trainers.datasets.privacy import guard_rows, redact_messages, redaction_metadata
from ee_middleware.trainers.datasets.rows import KINDS
from ee_middleware.trainers.datasets.source import DatasetSource, load_source
from ee_middleware.trainers.datasets.split import (
    HELDOUT,
    HELDOUT_DIR,
    SPLIT_METADATA_KEY,
    SplitRule,
    heldout_ids,
    read_id_list,
    split_source,
)
from ee_middleware.trainers.datasets.sr import SROptions, build_sr
from ee_middleware.trainers.datasets.teachers import Teacher, build_teacher


class DatasetConfig(BaseModel):
    """Everything ``ee datasets build`` needs; loadable from a TOML ``[datasets]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Annotated[Path | str, BeforeValidator(store_config_value)]
    """The experience store: a folder, or a store spec (see :func:`ee_middleware.store.registry.open_store`)."""
    out: Path
    kinds: tuple[str, ...] = ("il", "iwm", "sr")
    teacher: str = "template"
    """``template`` (deterministic, for tests and demos), ``local:MODEL_DIR`` or ``openai:BASE_URL#MODEL``."""
    app: str | None = None
    replay_id: str | None = None
    """Only rollouts of this replay configuration (default: all real rollouts)."""
    include_synthetic: bool = False
    """Also use rollouts an experience model predicted (``synthetic``); recorded in ``datasets.json``'s config."""
    iwm_max_observation_tokens: int = Field(512, ge=8)
    iwm_max_error_share: float = Field(0.5, ge=0, le=1)
    iwm_include_expert_steps: bool = True
    sr_k: int = Field(3, ge=1)
    seed: int = 0
    heldout_share: float = Field(0.0, ge=0, lt=1)
    """Hold out this share of trajectories (seeded by ``seed``, stable as the store grows) into ``OUT/heldout/``."""
    heldout_ids: Path | None = None
    """A file of trajectory ids (one per line) to hold out."""
    heldout_app: str | None = None
    """Hold out every trajectory of this app."""
    heldout_started_after: datetime | None = None
    """Hold out trajectories that started at or after this time (ISO 8601; UTC when no zone)."""
    heldout_started_before: datetime | None = None
    """Hold out trajectories that started before this time."""

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
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> DatasetConfig:
        values = layered_values(path, "datasets", overrides)
        kinds = values.get("kinds")
        if isinstance(kinds, str):
            values["kinds"] = tuple(k.strip() for k in kinds.split(",") if k.strip())
        unknown = [k for k in values.get("kinds", ()) if k not in KINDS]
        if unknown:
            raise ConfigError(f"Unknown dataset kind(s) {', '.join(unknown)}. Choose from: {', '.join(KINDS)}.")
        for required in ("store", "out"):
            if required not in values:
                raise ConfigError(f"The dataset build needs --{required}.")
        return build_config(cls, values, "dataset")


def write_parquet_atomic(frame: pl.DataFrame, path: Path, *, metadata: dict[str, str] | None = None) -> None:
    """Write ``frame`` to ``path`` as zstd Parquet, atomically (a crash leaves the old file or none)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd", metadata=metadata)


def build_datasets(
    config: DatasetConfig,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_sr_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Build the configured kinds; return the summary also written to ``OUT/datasets.json``."""
    from ee_middleware.store.registry import open_store

    store = open_store(config.store, create=False)
    source = load_source(store, app=config.app, replay_id=config.replay_id, include_synthetic=config.include_synthetic)
    redactor = store_redactor(store, create_salt=False)  # the app's own rules and salt, on every row written
    config.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "store": str(config.store),
        "source_hash": source.source_hash,
        "trajectories": source.trajectories.height,
        "steps": source.steps.height,
        "rollouts": source.rollouts.height,
        "config": json.loads(config.model_dump_json()),
        "redaction": {
            "kinds": redactor.rules.enabled_kinds(),
            "patterns": sorted(redactor.rules.patterns),
            "pseudonyms": redactor.salt is not None,
            "unrestored_rollouts_left_out": source.unrestored_rollouts,
        },
        "datasets": {},
    }
    if source.trajectories.is_empty():
        raise ConfigError(f"No approved trajectories in {config.store}. Approve some (ee traces approve) before building datasets.")
    rule = config.split_rule()
    heldout_source = None
    if rule.active:
        held = heldout_ids(store.trajectories(status="approved", app=config.app).select("id", "app", "started_at"), rule)
        source, heldout_source = split_source(source, held)
        if source.trajectories.is_empty():
            raise ConfigError(f"The held-out rule holds out all {len(held)} approved trajectories: nothing is left to train on. Loosen it.")
        summary["split"] = {
            "rule": rule.describe(),
            "train_trajectories": sorted(source.trajectories["id"].to_list()),
            "heldout_trajectories": sorted(held),
            "heldout_dir": str(config.out / HELDOUT_DIR),
        }
    teacher = None
    for kind in config.kinds:
        if on_stage is not None:
            on_stage(kind)
        if kind == "sr" and teacher is None:
            teacher = build_teacher(config.teacher)
        summary["datasets"][kind] = _build_kind(kind, source, config, teacher, config.out / f"{kind}.parquet", on_sr_progress, redactor)
        if heldout_source is not None and not heldout_source.trajectories.is_empty():
            path = config.out / HELDOUT_DIR / f"{kind}.parquet"
            path.parent.mkdir(exist_ok=True)
            summary["split"].setdefault("datasets", {})[kind] = _build_kind(
                kind, heldout_source, config, teacher, path, None, redactor, heldout=True
            )
    atomic_write_text(config.out / "datasets.json", json.dumps(summary, indent=2))
    return summary


def _build_kind(
    kind: str,
    source: DatasetSource,
    config: DatasetConfig,
    teacher: Teacher | None,
    path: Path,
    on_sr_progress: Callable[[int, int], None] | None,
    redactor: Redactor,
    *,
    heldout: bool = False,
) -> dict[str, Any]:
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if kind == "il":
        frame = build_il(source)
    elif kind == "iwm":
        if source.rollouts.is_empty():
            extra["warning"] = "no rollouts: run `ee replay run` first; IWM has expert steps only"
        options = IWMOptions(
            max_observation_tokens=config.iwm_max_observation_tokens,
            max_error_share=config.iwm_max_error_share,
            include_expert_steps=config.iwm_include_expert_steps,
            seed=config.seed,
        )
        frame = build_iwm(source, options)
        extra["error_share"] = round(float(frame["is_error"].mean() or 0.0), 3) if frame.height else 0.0
        extra["truncated_rows"] = int((frame["observation_truncated_chars"] > 0).sum())
    else:
        assert teacher is not None
        total = source.steps.filter(pl.col("action_kind") == "tool_call").height
        done = 0

        def tick(n: int, total: int = total) -> None:
            nonlocal done
            done += n
            if on_sr_progress is not None:
                on_sr_progress(done, total)

        frame, report = build_sr(source, teacher, SROptions(k=config.sr_k, seed=config.seed), on_batch=tick)
        extra.update(teacher=teacher.name, states=report.states, dropped=dict(report.dropped), flagged=dict(report.flagged))
    frame, placeholders = guard_rows(kind, frame, redactor)
    if placeholders:
        extra["placeholders"] = placeholders
    metadata = redaction_metadata(redactor) | ({SPLIT_METADATA_KEY: HELDOUT} if heldout else {})
    write_parquet_atomic(frame, path, metadata=metadata)
    return {"path": str(path), "rows": frame.height, "seconds": round(time.perf_counter() - started, 3), **extra}


def read_dataset(path: str | os.PathLike[str]) -> pl.DataFrame:
    """One dataset file, checked to have the dataset columns."""
    from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Dataset {path} does not exist. Build it with: ee datasets build --store DIR --out {path.parent}")
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:
        raise ConfigError(f"Dataset {path} is not readable Parquet ({exc}). Rebuild it with ee datasets build.") from exc
    missing = [c for c in ("prompt", "completion", "tools") if c not in frame.columns]
    if missing:
        raise ConfigError(f"Dataset {path} lacks column(s) {', '.join(missing)}; it was not built by ee datasets build.")
    return frame.select([c for c in DATASET_SCHEMA if c in frame.columns])


def chat_examples(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as OpenAI chat fine-tuning examples (``messages`` = prompt + completion, ``tools``)."""
    examples = []
    for prompt, completion, tools in frame.select("prompt", "completion", "tools").iter_rows():
        example: dict[str, Any] = {"messages": json.loads(prompt) + json.loads(completion)}
        parsed_tools = json.loads(tools or "[]")
        if parsed_tools:
            example["tools"] = parsed_tools
        examples.append(example)
    return examples


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
                "tools": row["tools"],
            }
        )
    return datasets.Dataset.from_list(records)
