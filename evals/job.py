"""The eval job's one config (:class:`EvalJob`): TOML ``[eval]`` table, flags on top."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ee_middleware._toml import build_config, finite_seconds, layered_values
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.suites import SuiteSettings


class EvalJob(BaseModel):
    """What to evaluate, with which model, how often, and where the results go.

    ``model`` is ``oracle``, ``noop`` or a model spec (``openai:BASE_URL#MODEL``,
    ``local:DIR[@ADAPTER]``, ``package.module:factory``). ``user_model`` (tau suites) is an
    OpenAI-compatible model spec for the LLM user simulator (at most ``max_user_turns`` messages);
    without it the user is scripted. ``tau_bench_dir``: a tau-bench checkout for ``tau:retail`` and
    ``tau:airline`` (default: the ``EE_TAU_BENCH_DIR`` environment variable). ``split``: the
    ``datasets.json`` whose held-out trajectories ``traces:`` suites evaluate; ``sandbox``: their
    sandbox spec (default ``bfcl`` for BFCL expert apps).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    suites: list[str] = Field(min_length=1)
    model: str = Field(min_length=1)
    out: str
    trials: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    seed: int = 0
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(512, ge=1)
    max_steps_per_turn: int = Field(20, ge=1)
    feed_back_parse_errors: bool = False
    timeout_s: Annotated[
        float, finite_seconds("how long one model request may take", "120, or 3600 for a model that may take very long")
    ] = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    user_model: str | None = None
    max_user_turns: int = Field(10, ge=1)
    tau_bench_dir: str | None = None
    split: str | None = None
    sandbox: str | None = None

    @field_validator("suites")
    @classmethod
    def _no_duplicates(cls, suites: list[str]) -> list[str]:
        if len(set(suites)) != len(suites):
            raise ValueError(f"a suite is listed twice: {suites}")
        return suites

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, nightly: bool = False, **overrides: Any) -> EvalJob:
        """Defaults <- TOML ``[eval]`` table <- ``overrides``. ``nightly``: ``path`` is ee improve's file, read for its
        evaluate stage, so it may leave ``[eval]`` out."""
        return build_config(cls, layered_values(path, "eval", overrides, job="eval job", nightly=nightly), "eval")

    def loop_config(self) -> LoopConfig:
        return LoopConfig(
            max_steps_per_turn=self.max_steps_per_turn,
            feed_back_parse_errors=self.feed_back_parse_errors,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def suite_settings(self) -> SuiteSettings:
        """What the suites need from this job (hashable: suites are cached per spec and settings)."""
        tau_bench_dir = self.tau_bench_dir or os.environ.get("EE_TAU_BENCH_DIR") or None
        return SuiteSettings(tau_bench_dir, self.user_model, self.max_user_turns, self.split, self.sandbox)

    def client_options(self) -> dict[str, Any]:
        """Options for the model client (only an OpenAI-compatible client takes them)."""
        return {"timeout_s": self.timeout_s, "retries": self.retries} if self.model.startswith("openai:") else {}

    def run_settings(self) -> dict[str, Any]:
        """The settings that make the run (two runs with the same ones give the same answers), credentials hidden.

        All but ``out``, ``suites`` (a run may grow by suites), ``workers``, ``timeout_s`` and ``retries`` (how long and
        how often the client waits for the server: a resumed run may change them)."""
        return _run_settings(self.model_dump())

    @classmethod
    def recorded_settings(cls, recorded: dict[str, Any]) -> dict[str, Any]:
        """:meth:`run_settings` of a job recorded in a ``run.json`` (an older version's record lacks the settings added
        since: they were at their defaults)."""
        known = {name: recorded.get(name, None if field.is_required() else field.default) for name, field in cls.model_fields.items()}
        return _run_settings(known)

    def changed_settings(self, recorded: dict[str, Any]) -> list[str]:
        """``[eval] SETTING: RECORDED -> THIS`` for each run setting that differs from a recorded job's (the shape of
        ``ee improve``'s changed settings)."""
        return settings_changes(self.recorded_settings(recorded), self.run_settings())

    def record(self) -> dict[str, Any]:
        """The job as ``run.json`` holds it: every setting, the credentials of URLs (``user:password@``) hidden."""
        return {name: _hidden(value) for name, value in self.model_dump().items()}

    def run_key(self) -> str:
        """A digest of :meth:`run_settings` (recorded in ``run.json``; holds no credential, not even hashed)."""
        return hashlib.sha256(json.dumps(self.run_settings(), sort_keys=True).encode()).hexdigest()[:16]


def settings_changes(before: dict[str, Any], after: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``[eval] SETTING: BEFORE -> AFTER`` for each of two :meth:`EvalJob.run_settings` that differs, but ``ignore``."""
    return [
        f"[eval] {name}: {_shown(before.get(name))} -> {_shown(after[name])}"
        for name in after
        if name not in ignore and before.get(name) != after[name]
    ]


ANSWER_NEUTRAL = ("out", "suites", "workers", "timeout_s", "retries")
"""Settings that do not change the answers: a run resumed with other values of them is the same run."""


def _run_settings(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _hidden(value) for name, value in values.items() if name not in ANSWER_NEUTRAL}


def _shown(value: Any) -> str:
    return "(not set)" if value is None else str(value)


def _hidden(value: Any) -> Any:
    from ee_middleware.errors import hide_credentials

    if isinstance(value, str):
        return hide_credentials(value)
    if isinstance(value, list):
        return [_hidden(v) for v in value]
    return value
