"""What the builders read from an experience store: approved trajectories, their steps, rollouts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import polars as pl


@dataclass(frozen=True)
class DatasetSource:
    """Frames of the store content a dataset is built from (approved trajectories only)."""

    trajectories: pl.DataFrame
    steps: pl.DataFrame
    rollouts: pl.DataFrame
    unrestored_rollouts: int = 0
    """Rollouts left out because the sandbox answered a redaction placeholder, not the value (``Rollout.unrestored``)."""

    @property
    def source_hash(self) -> str:
        """Identifies the content: approved trajectory ids, their step count and rollout ids."""
        digest = hashlib.sha256()
        for ids in (self.trajectories["id"], self.rollouts["id"]):
            digest.update("\n".join(sorted(ids.to_list())).encode())
            digest.update(b"\x00")
        digest.update(str(self.steps.height).encode())
        return digest.hexdigest()[:16]


def load_source(store: Any, *, app: str | None = None, replay_id: str | None = None, include_synthetic: bool = False) -> DatasetSource:
    """Approved trajectories of ``store`` (optionally one app), their steps and rollouts.

    Rollouts flagged ``synthetic`` (experience-model output) are left out unless ``include_synthetic``:
    IWM learns from real observations only by default. So are
    rollouts whose arguments held redaction placeholders replay could not restore: their
    observation answers the placeholder (``user not found``), not the value.
    """
    trajectories = store.trajectories(status="approved", app=app).select("id", "tools_json")
    ids = trajectories["id"].to_list()
    steps = store.steps(ids)
    rollouts = store.rollouts(ids, replay_id=replay_id)
    if not include_synthetic:
        rollouts = rollouts.filter(~pl.col("synthetic"))
    unrestored = 0
    if "unrestored_json" in rollouts.columns:
        restored = rollouts.filter(pl.col("unrestored_json").is_null())
        unrestored, rollouts = rollouts.height - restored.height, restored
    return DatasetSource(trajectories=trajectories, steps=steps, rollouts=rollouts, unrestored_rollouts=unrestored)
