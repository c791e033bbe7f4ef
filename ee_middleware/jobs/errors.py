"""Errors of the jobs layer (``ee improve``, ``ee runs``), under the one root :class:`~ee_middleware.errors.EEError`."""

from __future__ import annotations

from ee_middleware.errors import ConfigError, EEError


class JobError(EEError):
    """A job run cannot start, continue or be read."""


class RunLockedError(JobError):
    """Another run holds the runs folder's lock (two nightly runs never overlap)."""


class RunNotFoundError(JobError, KeyError):
    """No run with the given id (or unambiguous prefix) in the runs folder."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunConfigChangedError(JobError, ConfigError):
    """An unfinished run was started with another configuration, so it cannot be continued with this one."""


class BudgetExhausted(JobError):
    """The ``max_minutes`` budget ran out: the run stops before its next step and continues on the next call."""


class LiveAdapterChangedError(JobError):
    """The promote stage found another adapter live than the one the evaluate stage measured the candidate against
    (promoted or rolled back since): promoting would replace an adapter no gate compared it with.

    ``details``: ``alias``, ``candidate``, ``gated_against`` (the evaluate stage's baseline: an adapter name, or
    ``base``) and ``live`` (the adapter live now, or None): the failed stage's manifest records them as ``live_changed``.
    Also raised for a candidate that went live and was taken off again since its run registered it (rolled back, or
    another adapter promoted over it): then ``taken_off`` (the history's action), ``taken_off_by``, ``taken_off_at`` and
    ``replaced_by`` (the adapter that went live in its place) say how."""

    def __init__(self, message: str, *, details: dict[str, str | None]) -> None:
        super().__init__(message)
        self.details = details
