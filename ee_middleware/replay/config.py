"""Configuration of the replay job: one typed object, loadable from TOML, overridable by CLI flags.

Precedence, lowest first: defaults, the TOML file's ``[replay]`` table, then flags / keyword
arguments. Example ``replay.toml``::

    [replay]
    store = "experience"
    sandbox = "bfcl"
    policy = "openai:http://vllm:8000/v1#my-model"
    k = 8
    workers = 4
    temperature = 1.0

    [replay.policy_settings]     # keyword options of the policy, e.g. for mutate:
    invalid_share = 0.15         # share of deliberately invalid alternatives

An experience model (DreamGym) for tools that cannot be replayed, trusted only where its measured
fidelity is high enough (see :mod:`ee_middleware.replay.sandboxes.experience`)::

    [replay]
    sandbox = "experience:openai:http://vllm:8000/v1#experience-model"

    [replay.sandbox_settings]
    real = "bfcl"                           # tools this sandbox covers run for real
    fidelity = "experience-eval/report.json"  # written by `ee experience eval`
    min_fidelity = { "*" = 0.8, "send_email" = 0.9 }
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ee_middleware._limits import INT64_MAX, INT64_MIN, MAX_ALTERNATIVES
from ee_middleware._toml import build_config, finite_seconds, layered_values, missing_settings, stripped_not_blank
from ee_middleware.errors import ConfigError
from ee_middleware.models.spec import LOCAL_PREFIXES
from ee_middleware.store.registry import store_config_value

MAX_RAY_WORKERS = 1024
"""The most Ray actors a replay job takes."""

LOCAL_WORKERS_PER_CORE = 8
"""The most local worker processes a replay job takes, per CPU core of the machine (see :func:`max_workers`)."""


def max_workers(executor: str) -> int:
    """The most workers a replay job with ``executor`` (``local`` or ``ray``) takes: local worker processes share this
    machine's cores (8 per core leaves room for workers that mostly wait on a served policy), Ray actors a cluster's."""
    if executor == "ray":
        return MAX_RAY_WORKERS
    return LOCAL_WORKERS_PER_CORE * (os.cpu_count() or 1)


DEFAULT_SERVED_REQUESTS = 8
"""Proposal requests in flight per worker for an ``openai:`` policy when ``requests_in_flight`` is unset."""


class ReplayConfig(BaseModel):
    """Everything ``ee replay run`` needs. Fields that change the rollouts make up :attr:`replay_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Annotated[Path | str, BeforeValidator(store_config_value)]
    """The experience store: a folder, or a store spec (see :func:`ee_middleware.store.registry.open_store`)."""
    sandbox: str = "bfcl"
    """Sandbox spec: a built-in name (``bfcl``), ``package.module:factory``, or an entry point."""
    policy: str = "mutate"
    """Policy spec: ``mutate``, ``local:MODEL_DIR``, ``openai:BASE_URL#MODEL`` or ``package.module:factory``."""
    policy_settings: dict[str, Any] = Field(default_factory=dict)
    """Keyword options of the policy's constructor, e.g. ``{"invalid_share": 0.1, "same_tool_share": 0.5}`` for
    ``mutate`` (see :class:`~ee_middleware.replay.policies.mutate.MutationPolicy`). They shape the rollouts, so
    they are part of :attr:`replay_id`."""
    sandbox_settings: dict[str, Any] = Field(default_factory=dict)
    """Keyword options of the sandbox's factory, e.g. for ``experience:MODEL_SPEC``: ``top_k``, ``real``,
    ``min_fidelity`` and ``fidelity`` (an experience sandbox also gets this job's ``store`` unless set).
    Part of :attr:`replay_id` when set."""
    k: int = Field(8, ge=1, le=MAX_ALTERNATIVES)
    """Alternatives per recorded state (the paper: 8-30 for IWM, 2-4 for SR)."""
    seed: int = 0
    """Seed of the proposals: a 64-bit signed integer, as the store keeps it with each replay record."""
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int = Field(160, ge=1)
    workers: int = Field(1, ge=1)
    """Worker processes (or Ray actors): at most 1024. A local job starts at most :func:`max_workers` (8 per CPU core of
    its machine; more are capped, with a warning), and never more than it has trajectories to replay (its summary says
    how many it started)."""
    requests_in_flight: int | None = Field(None, ge=1, le=1024)
    """Proposal requests each worker keeps in flight at once (the states of a trajectory are proposed for
    concurrently): for a policy behind a server that batches concurrent requests (vLLM). Default: 8 for an
    ``openai:`` policy, 1 for every other one. ``mutate`` and ``local:`` take only 1 (the mutation policy is
    CPU work, and a local model answers one request at a time: use more ``workers``); a plug-in policy may set it
    when its ``propose`` can be called from several threads at once. It does not change the rollouts, so it is not
    part of :attr:`replay_id` (where the server's answers do not depend on what it batches them with)."""
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    """Ray cluster to join (``auto``, ``ray://host:10001``); default: ``RAY_ADDRESS`` or a local cluster."""
    isolation: Literal["none", "subprocess"] = "none"
    """``subprocess`` runs each worker's sandbox in a child process with the limits below."""
    tool_timeout_s: Annotated[float, finite_seconds("how long one tool call may run", "30, or 600 for slow tools")] = Field(30.0, gt=0)
    allow_network: bool = False
    """Let the sandbox run tools that send real network requests (the BFCL sandbox refuses them otherwise)."""
    memory_mb: int | None = Field(None, ge=64)
    app: Annotated[str | None, BeforeValidator(stripped_not_blank)] = None
    """Only trajectories of this app (its name without the blanks around it, as capture stores it; an empty one is
    refused, as ``ee improve``'s app is: it replayed nothing)."""
    limit: int | None = Field(None, ge=1)
    """At most this many trajectories in this run."""
    trajectory_ids: list[str] | None = None
    """Only these approved trajectories (in the store's order), e.g. the nightly job's selection: approvals that come
    in meanwhile do not take their places. Like :attr:`limit`, not part of :attr:`replay_id`."""
    check_fidelity: bool = True
    max_observation_chars: int = Field(200_000, ge=1)
    again: bool = False
    """Replay this configuration's trajectories again, as its next attempt (``ee replay run --again``): after the
    sandbox's code was fixed (its spec, and so its replay id, unchanged), a plain re-run finds everything done. The new
    attempt has its own :attr:`replay_id`; a later plain run continues it, and dataset builds use a trajectory's newest
    attempt of a configuration (the earlier ones are superseded)."""
    attempt: int = Field(1, ge=1)
    """Which replay of this configuration (1: the first). The job sets it from the store (the newest attempt, or the
    next with :attr:`again`); from 2 on it is part of :attr:`replay_id`."""
    _continued_id: str | None = PrivateAttr(None)
    """The :attr:`configuration_id` this configuration had before transport settings left the id (see
    :meth:`continuing`), where the store holds replays under it: the job continues them."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, nightly: bool = False, **overrides: Any) -> ReplayConfig:
        """Defaults <- TOML ``[replay]`` table <- ``overrides`` (``None`` values are ignored). ``nightly``: ``path`` is ee
        improve's file, read for its replay stage, so it may leave ``[replay]`` out."""
        from ee_middleware._toml import read_toml_table

        pinned = (
            sorted(_RUN_ONLY & set(read_toml_table(Path(path), "replay", settings_for="replay job", nightly=nightly)))
            if path is not None
            else []
        )
        if pinned:  # in a file every run (ee improve's nightly too) would start a new attempt, or never its own
            raise ConfigError(
                f"{path}: {', '.join(pinned)} in [replay] is not a setting: `ee replay run --again` replays a configuration "
                "again once, after its sandbox was fixed, and later runs continue that attempt. Remove it from the file."
            )
        values = layered_values(path, "replay", overrides, job="replay job", nightly=nightly)
        if "store" not in values:
            raise missing_settings("replay job", "replay", {"store": "--store"})
        return build_config(cls, values, "replay")

    @property
    def mutation_policy(self) -> bool:
        """Whether the policy is the built-in ``mutate`` (the spec as written may have blanks around it: its id is the
        spec's as written, as it always was, while it builds and is told apart as the policy it names)."""
        return self.policy.strip() == "mutate"

    def policy_options(self) -> dict[str, Any]:
        """Options passed to the policy: sampling options for model-backed policies (the mutation policy
        takes none of them), then :attr:`policy_settings`. The length limit is ``max_tokens`` for an
        ``openai:`` policy (the server's name for it) and ``max_new_tokens`` for every other one."""
        if self.mutation_policy:
            return dict(self.policy_settings)
        length = "max_tokens" if self.served_policy else "max_new_tokens"
        return {"temperature": self.temperature, "top_p": self.top_p, length: self.max_new_tokens, **self.policy_settings}

    def policy_defaults(self) -> dict[str, Any]:
        """The entries of :meth:`policy_options` the user left at their defaults (sampling options set by no flag, file
        or policy setting): a plug-in policy's factory gets them only where it takes them, so that one without sampling
        parameters works (see :func:`~ee_middleware.replay.policies.registry.prepare_policy`)."""
        if self.mutation_policy:
            return {}
        length = "max_tokens" if self.served_policy else "max_new_tokens"
        fields = {"temperature": "temperature", "top_p": "top_p", length: "max_new_tokens"}
        options = self.policy_options()
        return {
            option: options[option]
            for option, name in fields.items()
            if name not in self.model_fields_set and option not in self.policy_settings
        }

    @model_validator(mode="after")
    def _workers_a_job_can_start(self) -> ReplayConfig:
        # Each is a process (or an actor) building its own sandbox and policy: a job asked for 100000 set them up for
        # minutes before replaying anything, and a Ctrl-C meanwhile waited for every started one to finish starting.
        # A local job on a machine with fewer cores than the configuration was written for takes what this machine can
        # run (run_replay caps it at max_workers("local"), saying so): the same job file works on a laptop and a server.
        if self.workers > MAX_RAY_WORKERS:
            raise ConfigError(
                f"workers={self.workers} is more than the {MAX_RAY_WORKERS} workers a replay job starts (a local job takes "
                f"at most {LOCAL_WORKERS_PER_CORE} per CPU core of its machine; --executor ray spreads them over a cluster). "
                f"Set workers to at most {MAX_RAY_WORKERS}."
            )
        return self

    @field_validator("seed")
    @classmethod
    def _seed_fits_the_store(cls, seed: int) -> int:
        # The store keeps it in an Int64 column: a larger one was stored, then failed every read of the store.
        if not INT64_MIN <= seed <= INT64_MAX:
            raise ValueError(f"outside the 64-bit range the store keeps seeds in ({INT64_MIN} to {INT64_MAX}); pick one in it, e.g. 42")
        return seed

    @model_validator(mode="after")
    def _requests_fit_the_policy(self) -> ReplayConfig:
        requests, policy = self.requests_in_flight, self.policy.strip()
        if requests is not None and requests > 1 and (policy == "mutate" or policy.partition(":")[0] in LOCAL_PREFIXES):
            why = "CPU work in the worker" if policy == "mutate" else "a local model, which answers one request at a time"
            raise ConfigError(
                f"requests_in_flight={requests} needs a policy behind a server; {self.policy!r} is {why}. "
                "Set --workers to replay with more processes instead, or leave requests_in_flight unset."
            )
        return self

    @model_validator(mode="after")
    def _settings_that_act(self) -> ReplayConfig:
        """Sandbox limits without subprocess isolation, and a Ray cluster without the Ray executor, would do nothing: the
        same error whether a flag or a file's ``[replay]`` table set them (a user who set a time limit must have one)."""
        limits = [
            f"{name} ({flag})"
            for name, flag in (("tool_timeout_s", "--tool-timeout"), ("memory_mb", "--memory-mb"))
            if name in self.model_fields_set and getattr(self, name) is not None
        ]
        if limits and self.isolation != "subprocess":
            them = "it" if len(limits) == 1 else "them"
            raise ConfigError(
                f"{' and '.join(limits)} {'limits' if len(limits) == 1 else 'limit'} the sandbox only with isolation = 'subprocess' "
                "(--isolation subprocess); isolation "
                f"is {self.isolation!r}: set isolation = 'subprocess' (or add --isolation subprocess), or leave {them} out."
            )
        if self.ray_address is not None and self.executor != "ray":
            raise ConfigError(
                f"ray_address (--ray-address) is used only with executor = 'ray' (--executor ray); executor is {self.executor!r}: "
                "set executor = 'ray' (or add --executor ray), or leave it out."
            )
        return self

    @property
    def proposal_requests(self) -> int:
        """:attr:`requests_in_flight`, resolved: 8 for an ``openai:`` policy and 1 for any other when unset."""
        if self.requests_in_flight is not None:
            return self.requests_in_flight
        return DEFAULT_SERVED_REQUESTS if self.served_policy else 1

    @property
    def served_policy(self) -> bool:
        """Whether the policy is a model behind an OpenAI-compatible server (``openai:BASE_URL#MODEL``)."""
        return self.policy.strip().startswith("openai:")

    @property
    def experience_sandbox(self) -> bool:
        """Whether the sandbox is an experience model (``experience:MODEL_SPEC``) rather than real tools."""
        return self.sandbox.strip().startswith("experience:")

    def sandbox_factory_options(self) -> dict[str, Any]:
        """:attr:`sandbox_settings`, plus the store for an experience sandbox (its replay buffer) and, where the job
        replays one app, that app (the buffer holds its transitions alone, as its datasets do)."""
        options = dict(self.sandbox_settings)
        if self.experience_sandbox:
            options.setdefault("store", str(self.store))
            if self.app is not None:
                options.setdefault("app", self.app)
        return options

    @property
    def replay_id(self) -> str:
        """Identifies the configuration that shapes rollouts, and its :attr:`attempt`: a re-run with the same id resumes."""
        if self.attempt == 1:  # the id every configuration had before attempts existed
            return self.configuration_id
        return attempt_id(self.configuration_id, self.attempt)

    @property
    def configuration_id(self) -> str:
        """Identifies the configuration that shapes rollouts, whichever its attempt (its first attempt's replay id): the
        hash of :attr:`rollout_shaping` (or the earlier id it continues, see :meth:`continuing`)."""
        if self._continued_id is not None:
            return self._continued_id
        return _shaping_id(self.rollout_shaping)

    @property
    def transport_inclusive_id(self) -> str | None:
        """The :attr:`configuration_id` this configuration had while transport settings (:data:`TRANSPORT_SETTINGS`)
        counted in it, where it sets any (``None`` where it sets none: its id is the same)."""
        with_transport = self._shaping(transport=True)
        return _shaping_id(with_transport) if with_transport != self.rollout_shaping else None

    def continuing(self, configuration_id: str) -> ReplayConfig:
        """This configuration under ``configuration_id``, its :attr:`transport_inclusive_id`: a store's replays made
        before transport settings left the id are continued (and attempted again) under the id they have."""
        if configuration_id != self.transport_inclusive_id:
            raise ValueError(f"{configuration_id} is not this configuration's earlier id ({self.transport_inclusive_id})")
        copy = self.model_copy()
        copy._continued_id = configuration_id
        return copy

    @property
    def rollout_shaping(self) -> dict[str, Any]:
        """What shapes this configuration's rollouts, as :attr:`configuration_id` hashes it.

        The policy and sandbox specs count as they are shown (:func:`~ee_middleware.models.urls.shown_spec`, credentials
        in their URLs masked): the same id as ever for a spec without credentials, and one id for specs that differ only
        in their credentials (a rotated password replays the same configuration: it shapes no rollout). The policy's and
        the sandbox's settings count alike (:func:`shaping_settings`): a credential (``api_key``, ``hf_token``,
        ``Authorization``, at any depth) is left out and a credential-shaped value of any other setting masked, so a
        rotated key resumes the configuration and no key is an input of the id; every other setting counts
        (``token_budget``, ``eos_token``, ``key``).

        How a served model is reached (:data:`TRANSPORT_SETTINGS`: ``timeout_s``, ``retries``, ``backoff_s`` of an
        ``openai:`` policy or of an experience sandbox) shapes no rollout either: raising a time-out after a replay timed
        out continues that replay (:attr:`transport_inclusive_id` is the id such settings gave before)."""
        return self._shaping(transport=False)

    def _shaping(self, *, transport: bool) -> dict[str, Any]:
        from ee_middleware.models.urls import shown_spec

        shaping = {"sandbox": shown_spec(self.sandbox), "policy": shown_spec(self.policy), "k": self.k, "seed": self.seed}
        if self.allow_network:  # only when on, so that earlier ids stay valid
            shaping["allow_network"] = True
        sandbox_settings = shaping_settings(self.sandbox_settings)
        if not transport and self.experience_sandbox:
            sandbox_settings = _without_transport(sandbox_settings)
        if sandbox_settings:
            shaping["sandbox_settings"] = sandbox_settings
        policy_options = shaping_settings(self.policy_options())
        if not transport and self.served_policy:
            policy_options = _without_transport(policy_options)
        if not self.mutation_policy or policy_options:
            shaping.update(policy_options)
        return shaping


TRANSPORT_SETTINGS = frozenset({"timeout_s", "retries", "backoff_s"})
"""Settings of an ``openai:`` policy and of an experience sandbox that say how its server is reached, not what it
answers: they are not part of a replay id."""


def _without_transport(settings: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in settings.items() if name not in TRANSPORT_SETTINGS}


def _shaping_id(shaping: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


_CREDENTIAL_WORDS = frozenset(
    {"password", "passwd", "passphrase", "pwd", "secret", "secrets", "apikey", "authorization", "auth", "token"}
    | {"credential", "credentials", "cookie"}
)
"""A setting's last word that makes it a credential (``db_password``, ``client_secret``, ``Proxy-Authorization``,
``basic_auth``, ``token``: Hugging Face's ``token=``); ``token`` after another word only as :data:`_TOKEN_KINDS` say."""
_KEY_KINDS = frozenset(
    {"api", "access", "secret", "private", "signing", "encryption", "master", "client", "subscription", "account", "auth"}
    | {"session", "license"}
)
"""The words before a last ``key`` that make it a credential (``api_key``, ``X-Api-Key``, ``aws_secret_access_key``,
``Ocp-Apim-Subscription-Key``); ``key``, ``cache_key``, ``sort_key`` are not."""
_TOKEN_KINDS = frozenset(
    {"access", "refresh", "id", "auth", "bearer", "session", "api", "oauth", "oauth2", "jwt", "sso", "csrf", "xsrf", "security"}
    | {"hf", "hub", "huggingface", "github", "gh", "gitlab", "slack", "wandb", "openai", "anthropic", "bot", "discord"}
    | {"service", "app", "client", "admin", "master", "private", "secret", "personal"}
)
"""The words before a last ``token`` that make it a credential (``access_token``, ``hf_token``, ``github_token``,
``X-Auth-Token``). A tokenizer's tokens (``eos_token``, ``pad_token``, ``stop_token``) and counts (``token_budget``,
``max_tokens``) are not: a word not here keeps the setting in the id (a credential's form is masked there still)."""
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
"""Where a camelCase name's words meet (``apiKey``, ``HFToken``, ``APIKey``)."""


def is_credential_name(name: str) -> bool:
    """Whether a setting named ``name`` holds a credential: it picks the account that answers, never the rollouts.

    Narrower than the names masked for display (:func:`~ee_middleware._toml._is_secret_name`, which takes any name that
    might hold one: ``key``, ``eos_token``, ``token_budget``, ``auth_mode``): a name's last word, or last two, must name
    a credential (``api_key``, ``apiKey``, ``password``, ``client_secret``, ``Authorization``, ``access_token``,
    ``hf_token``, ``github_token``, ``token``, ``private_key``, ``credentials``)."""
    words = [word for word in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if word]
    if not words:
        return False
    last, before = words[-1], words[-2] if len(words) > 1 else None
    if last == "token":
        return before is None or before in _TOKEN_KINDS
    if last == "key":
        return before in _KEY_KINDS
    return last in _CREDENTIAL_WORDS


_CREDENTIAL_FORMS = {"private_key": True, "jwt": True, "basic_auth": True, "bearer_token": True, "api_key": True}
"""The built-in redaction kinds (:mod:`~ee_middleware.capture.redaction`) of a credential's form: masked in the value of
any setting, whatever its name (``key="sk-..."``, ``{"X-Custom": "Bearer ..."}``)."""


def shaping_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a policy's or a sandbox's keyword options) as they count in a replay id.

    - A credential (:func:`is_credential_name`: ``api_key``, ``hf_token``, ``client_secret``, ``Authorization``, in nested
      tables too) is left out, whatever its value: the id of a configuration given a key is the one without it (a key
      from the environment), a rotated key resumes it, and no key is an input of the id.
    - In every other text value, a credential's form (an OpenAI, Hugging Face, GitHub, ... key, a JWT, ``Bearer ...``,
      ``Basic ...``, a PEM private key; :data:`_CREDENTIAL_FORMS`) is replaced by its marker (``[REDACTED:api_key]``),
      the setting kept: ``key="orders"`` and ``key="refunds"`` are two configurations, ``key="sk-..."`` rotated is one.
    - The credentials of URLs are masked as :func:`~ee_middleware.models.urls.shown_spec` masks them.

    Settings without any are unchanged (their ids are the ones they always had)."""
    from ee_middleware.capture.redaction import RedactionRules, Redactor
    from ee_middleware.models.urls import shown_spec

    redactor = Redactor(RedactionRules(defaults=False, kinds=_CREDENTIAL_FORMS))

    def shaped(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: shaped(item) for key, item in value.items() if not (isinstance(key, str) and is_credential_name(key))}
        if isinstance(value, (list, tuple)):
            return [shaped(item) for item in value]
        return redactor.redact_text(shown_spec(value)) if isinstance(value, str) else value

    return shaped(settings)  # type: ignore[no-any-return]


_RUN_ONLY = {"again", "attempt"}
"""Fields a run is given (``--again``) or the job sets (the attempt), never a TOML file."""


def attempt_id(configuration_id: str, attempt: int) -> str:
    """The replay id of ``attempt`` (2 and on) of the configuration ``configuration_id`` (see :attr:`ReplayConfig.again`)."""
    return hashlib.sha256(f"{configuration_id}:attempt:{attempt}".encode()).hexdigest()[:12]
