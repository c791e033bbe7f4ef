"""LoRA training with peft + trl: one typed config, three schedules (il, iwm, sr).

``train(TrainConfig(...))`` reads the dataset files, renders them with the base model's chat
template, trains a LoRA adapter and writes it with ``manifest.json`` and ``loss.png``. torch,
transformers, peft and trl are imported only when training starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ee_middleware.trainers.training.config import TrainConfig
from ee_middleware.trainers.training.errors import (
    BaseModelError,
    ContextBudgetWarning,
    RenderingFallbackWarning,
    TrainDataError,
    TrainError,
    TrainOutOfMemoryError,
)

if TYPE_CHECKING:
    from ee_middleware.trainers.training.api import TrainResult, train

__all__ = [
    "BaseModelError",
    "ContextBudgetWarning",
    "RenderingFallbackWarning",
    "TrainConfig",
    "TrainDataError",
    "TrainError",
    "TrainOutOfMemoryError",
    "TrainResult",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from ee_middleware.trainers.training import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
