"""Errors of LoRA training. Each message says what failed and how to fix it."""

from __future__ import annotations

from ee_middleware.errors import EEError


class TrainError(EEError):
    """Root of every training error."""


class BaseModelError(TrainError):
    """The base model is missing, or cannot be loaded from local files."""


class TrainDataError(TrainError, ValueError):
    """A dataset file is missing, empty, or holds rows that are not chat prompt/completion pairs."""


class TrainOutOfMemoryError(TrainError, MemoryError):
    """Training ran out of (GPU or host) memory; the message names the settings to lower."""


class ContextBudgetWarning(UserWarning):
    """Many rows lose more than older turns to ``max_length``: the model will train on states without their tools or task."""
