"""The training schedules and their step budgets (pure arithmetic, no torch).

One optimizer update consumes ``batch_size * gradient_accumulation * world_size`` examples.

- ``il``: the IL rows; budget ``B = max_steps`` or ``ceil(epochs * ceil(n_il / per_update))``.
- ``iwm`` (the paper's two-stage schedule): first world modeling on the IWM rows, then imitation on
  the IL rows with the same adapter, with the same total budget ``B`` as ``il`` on the same IL rows.
  The IWM stage gets ``min(one pass over the IWM rows, floor(iwm_share * B))`` updates, at least one;
  the IL stage gets the rest (at least one). A budget of one update goes to IL alone.
- ``sr``: SR rows mixed with IL rows (shuffled with the seed) in one stage; budget ``max_steps`` or
  ``ceil(epochs * ceil((n_sr + n_il) / per_update))``.
- ``experience-model``: the ``em`` rows alone (``em.parquet``, built by ``ee experience dataset``): the
  adapter learns to predict next observations and rewards (DreamGym's experience model), not actions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule: its name, the dataset kinds it draws from, its number of optimizer updates."""

    name: str
    kinds: tuple[str, ...]
    steps: int

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kinds": list(self.kinds), "steps": self.steps}


def updates_per_epoch(rows: int, per_update: int) -> int:
    """Optimizer updates for one pass over ``rows`` examples (at least one)."""
    return max(1, math.ceil(rows / per_update))


def budget(rows: int, per_update: int, epochs: float, max_steps: int | None) -> int:
    """Total optimizer updates: ``max_steps`` if set, else ``epochs`` passes over ``rows``."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * updates_per_epoch(rows, per_update)))


def plan(
    schedule: str, counts: dict[str, int], *, per_update: int, epochs: float, max_steps: int | None, iwm_share: float = 0.5
) -> list[Stage]:
    """The stages of ``schedule`` given the number of examples of each kind (after rendering)."""
    if schedule == "experience-model":  # the experience model (DreamGym): next observations and rewards only
        return [Stage("em", ("em",), budget(counts["em"], per_update, epochs, max_steps))]
    il_budget = budget(counts["il"], per_update, epochs, max_steps)
    if schedule == "il":
        return [Stage("il", ("il",), il_budget)]
    if schedule == "iwm":
        if il_budget < 2:
            return [Stage("il", ("il",), il_budget)]
        iwm_steps = max(1, min(updates_per_epoch(counts["iwm"], per_update), math.floor(iwm_share * il_budget)))
        iwm_steps = min(iwm_steps, il_budget - 1)
        return [Stage("iwm", ("iwm",), iwm_steps), Stage("il", ("il",), il_budget - iwm_steps)]
    if schedule == "sr":
        return [Stage("sr+il", ("sr", "il"), budget(counts["sr"] + counts["il"], per_update, epochs, max_steps))]
    raise ValueError(f"unknown schedule {schedule!r}")


def kinds_needed(schedule: str) -> tuple[str, ...]:
    """The dataset files a schedule reads."""
    return {"il": ("il",), "iwm": ("iwm", "il"), "sr": ("sr", "il"), "experience-model": ("em",)}[schedule]


def mixed(groups: list[list[T]], seed: int) -> list[T]:
    """All items of ``groups`` in one list, shuffled with ``seed``."""
    items = [item for group in groups for item in group]
    random.Random(seed).shuffle(items)
    return items
