"""Share caps: how many items of a capped kind a dataset may keep (IWM's error rows, synthetic-task trajectories)."""

from __future__ import annotations


def share_cap(others: int, max_share: float) -> int | None:
    """How many capped items may join ``others`` uncapped ones so that they are at most ``max_share``
    of all: ``max_share / (1 - max_share) * others``, rounded down; ``None`` (no cap) at a share of 1."""
    if max_share >= 1.0:
        return None
    return int(max_share / (1.0 - max_share) * others)
