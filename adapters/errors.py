"""Errors of the adapter registry and of serving. Each message says what failed and what to do.

Match on the class, never on the text:

- :class:`RegistryError` — the registry refused or cannot do something (:class:`AdapterNotFoundError`,
  :class:`AdapterFilesError`, :class:`BaseModelMismatchError`, :class:`RankTooLargeError`,
  :class:`InvalidTransitionError` and its :class:`GateFailedError`, :class:`RegistryCorruptionError`,
  :class:`RegistryBusyError`);
- :class:`ServingError` — a model server refused or failed a request; ``url`` names it
  (:class:`ServerUnavailableError`, :class:`ServerTimeoutError`, :class:`ServerSetupError`, :class:`AdapterNameInUseError`,
  :class:`AdapterPathNotFoundError`, :class:`ServerRankError`, :class:`AdapterLoadError`,
  :class:`VerificationError`, :class:`ServerStartError`, :class:`ChatTemplateMismatchError`);
- :class:`PromotionError` — a promote failed on some replica and was rolled back everywhere.
"""

from __future__ import annotations

from ee_middleware.errors import EEError


class AdapterError(EEError):
    """Root of every adapter registry and serving error."""


class RegistryError(AdapterError):
    """The adapter registry refused an operation or cannot carry it out."""


class RegistryNotFoundError(RegistryError):
    """No registry at the place named, and it was opened without ``create``."""


class AdapterNotFoundError(RegistryError, KeyError):
    """No adapter (or app) with that name is registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AdapterFilesError(RegistryError):
    """An adapter folder is missing, incomplete or corrupt (config, weights, manifest)."""


class BaseModelMismatchError(RegistryError):
    """An adapter was trained on another base model than the one its app serves."""


class RankTooLargeError(RegistryError):
    """An adapter's LoRA rank exceeds the servers' ``--max-lora-rank``."""


class InvalidTransitionError(RegistryError):
    """The adapter's status does not allow this operation (e.g. retiring the live adapter)."""


class GateFailedError(InvalidTransitionError):
    """The adapter's last recorded deploy gate failed; a promote needs ``ignore_gate`` (``--ignore-gate``)."""


class RegistryCorruptionError(RegistryError):
    """The registry's index cannot be read."""


class RegistryBusyError(RegistryError):
    """Another promote, rollback, retire or switch held the registry's operation lease for longer than this one
    would wait; ``holder`` says who (pid, host, since when, what)."""

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class ServingError(AdapterError):
    """A model server refused or failed a request about adapters; ``url`` names the server."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class ServerUnavailableError(ServingError):
    """The server did not answer (connection refused, reset) or kept failing (5xx)."""


class ServerTimeoutError(ServerUnavailableError):
    """The server did not answer in time."""


class ServerSetupError(ServingError):
    """The server answers, but was started without what the request needs: no runtime LoRA API (vLLM without
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``, or a server that is not vLLM). Asking again does not
    help; starting it so does. It says nothing about the adapter."""


class AdapterNameInUseError(ServingError):
    """The server already has an adapter under this name (vLLM: HTTP 400)."""


class AdapterPathNotFoundError(ServingError):
    """The server cannot find the adapter folder (vLLM: HTTP 404); it must see the same file system."""


class ServerRankError(ServingError):
    """The server refused the adapter's rank (vLLM and ``ee serve local``: HTTP 500 saying it is above ``max_lora_rank``)."""


class AdapterLoadError(ServingError):
    """The server could not load (or unload) the adapter for a reason of the adapter's own (a 4xx refusal, or a 500
    whose message names an adapter problem: other target modules, no weights, an unsupported LoRA feature, ...)."""


class VerificationError(ServingError):
    """A loaded adapter is not listed by the server, or a smoke request through it failed."""


class ServerStartError(ServingError):
    """A launched server exited or did not become healthy in time; the message has its last log lines."""


class ChatTemplateMismatchError(ServingError):
    """A server renders prompts otherwise than the adapter's training rows were rendered (its manifest's ``rendering``
    against the template the server recorded at start); nothing was loaded. ``checks`` holds each server's
    :class:`~ee_middleware.adapters.serving.rendering.RenderingCheck`."""

    def __init__(self, message: str, *, url: str = "", checks: list[object] | None = None) -> None:
        super().__init__(message, url=url)
        self.checks = checks or []


class PromotionError(AdapterError):
    """A promote failed on a replica; every replica was rolled back. The adapter is marked failed when the
    failure was its own, and stays a candidate when a server did not answer or cannot see its folder."""

    def __init__(self, message: str, *, adapter: str, replica: str | None) -> None:
        super().__init__(message)
        self.adapter = adapter
        self.replica = replica
