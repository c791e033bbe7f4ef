"""The exception tree of ee-middleware.

Every error the library raises on purpose derives from :class:`EEError`; match on the class, never
on the message text. Each message says what failed and what to do about it.
"""

from __future__ import annotations


class EEError(Exception):
    """Root of every ee-middleware error."""


class ConfigError(EEError, ValueError):
    """A configuration value is missing, malformed or inconsistent."""


class RecordError(EEError, ValueError):
    """A record (trajectory, step, approval) does not fit the schema."""


class StoreError(EEError):
    """The experience store cannot be opened, read or written."""


class StoreCorruptionWarning(UserWarning):
    """A stored record was damaged (for example half-written by a crash) and was skipped."""


class TrajectoryNotFoundError(StoreError, KeyError):
    """No trajectory with the given id exists in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CaptureError(EEError):
    """Recording a run failed. Raised only in strict mode; otherwise logged and counted."""


class IngestError(EEError):
    """A span or trace file could not be turned into a trajectory."""


class MissingExtraError(EEError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class SandboxError(EEError):
    """A sandbox cannot be built, or failed in a way that is not a tool's own error."""


class EnvironmentUnavailableError(SandboxError):
    """A sandbox cannot rebuild the world from a trajectory's environment reference.

    The replay job skips such a trajectory and reports this message as the reason.
    """


class PolicyError(EEError):
    """A proposal policy cannot be built or reached (bad spec, model missing, server down)."""


class ModelError(EEError):
    """A chat model cannot be built, loaded, reached or understood (see the subclasses)."""


class ModelLoadError(ModelError):
    """A local model (or its adapter) cannot be found or loaded from disk."""


class ModelServerError(ModelError):
    """A model server gave no usable answer: unreachable, timed out, or failing (5xx, 429) after retries."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ModelRequestError(ModelServerError):
    """A model server refused the request (4xx): wrong model name, API key or request settings."""

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message, url=url)
        self.status = status


class ModelResponseError(ModelServerError):
    """A model server answered with something that is not a chat completion (not JSON)."""


class ChatTemplateError(ModelError):
    """A model's chat template cannot render the given messages."""
