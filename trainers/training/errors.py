"""Errors of LoRA training. Each message says what failed and how to fix it."""

from __future__ import annotations

import os
from pathlib import Path

from ee_middleware.errors import EEError


class TrainError(EEError):
    """Root of every training error."""


class BaseModelError(TrainError):
    """The base model is missing, or cannot be loaded from local files."""


class TrainDataError(TrainError, ValueError):
    """A dataset file is missing, empty, or holds rows that are not chat prompt/completion pairs."""


def build_command(kind: str, folder: str | os.PathLike[str]) -> str:
    """The command that writes the ``kind`` dataset file into ``folder``, as advice names it: ``ee experience dataset``
    for ``em`` (``ee datasets build`` refuses that kind), ``ee datasets build`` for the others (``il``, ``iwm``, ``sr``)."""
    if kind == "em":
        return f"ee experience dataset --store STORE --out {folder}"
    return f"ee datasets build --store STORE --out {folder}"


class MissingDatasetError(TrainDataError):
    """A dataset file the schedule trains on is not in the data folder. ``setting``: the setting that named the folder, as
    the message says it (``ee train`` names the flag or the config file it came from)."""

    def __init__(self, path: str | os.PathLike[str], kind: str, setting: str = "--data (or data in [train])") -> None:
        self.path, self.kind = Path(path), kind
        folder = self.path.parent
        build = build_command(kind, folder)
        super().__init__(
            f"No {kind.upper()} dataset at {self.path} ({self.path.absolute()}): {setting} names the folder {folder}. Build the "
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
