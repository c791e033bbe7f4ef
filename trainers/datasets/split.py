"""Held-out splits by trajectory that cannot leak into training.

A trajectory is held out by a rule (a seeded share, an id list, an app, a start-time range), never
by row: every state of a held-out trajectory stays out of training. The seeded share hashes the
trajectory id with the seed, so a trajectory keeps its side when the store grows: a night's new
trajectories never move an old held-out one into training.

Held-out dataset files carry ``ee.split = heldout`` in their Parquet metadata, and the trainer
refuses them wherever they are copied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.errors import ConfigError

SPLIT_METADATA_KEY = "ee.split"
HELDOUT = "heldout"
HELDOUT_DIR = "heldout"


@dataclass(frozen=True)
class SplitRule:
    """Which trajectories are held out: any trajectory matched by any of the set rules."""

    share: float = 0.0
    seed: int = 0
    ids: tuple[str, ...] = ()
    app: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.share < 1:
            raise ConfigError(f"heldout_share must be in [0, 1), got {self.share}")

    @property
    def active(self) -> bool:
        return bool(self.share or self.ids or self.app or self.started_after or self.started_before)

    def describe(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "seed": self.seed,
            "ids": len(self.ids),
            "app": self.app,
            "started_after": self.started_after.isoformat() if self.started_after else None,
            "started_before": self.started_before.isoformat() if self.started_before else None,
            "unit": "trajectory",
        }


def in_share(trajectory_id: str, share: float, seed: int) -> bool:
    """Whether ``trajectory_id`` falls in the seeded ``share``: stable as the store grows."""
    digest = hashlib.sha256(f"ee-heldout:{seed}:{trajectory_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def heldout_ids(trajectories: pl.DataFrame, rule: SplitRule) -> set[str]:
    """Ids of ``trajectories`` (columns ``id``, ``app``, ``started_at``) that ``rule`` holds out."""
    held: set[str] = set(rule.ids) & set(trajectories["id"].to_list())
    for row in trajectories.select("id", "app", "started_at").iter_rows(named=True):
        started = row["started_at"]
        if (
            (rule.share and in_share(row["id"], rule.share, rule.seed))
            or (rule.app is not None and row["app"] == rule.app)
            or (rule.started_after is not None and started is not None and started >= _aware(rule.started_after))
            or (rule.started_before is not None and started is not None and started < _aware(rule.started_before))
        ):
            held.add(row["id"])
    return held


def read_id_list(path: Path) -> tuple[str, ...]:
    """Trajectory ids from a file, one per line (blank lines and ``#`` comments ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"Cannot read the held-out id list {path}: {exc}. Give a text file with one trajectory id per line.") from exc
    return tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def is_heldout_file(metadata: dict[str, Any] | None) -> bool:
    """Whether Parquet key-value metadata marks a held-out dataset file."""
    return bool(metadata) and metadata.get(SPLIT_METADATA_KEY) == HELDOUT


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
