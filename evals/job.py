"""The eval job's one config (:class:`EvalJob`): TOML ``[eval]`` table, flags on top."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ee_middleware._toml import build_config, layered_values
from ee_middleware.evals.loop import LoopConfig


class EvalJob(BaseModel):
    """What to evaluate, with which model, how often, and where the results go.

    ``model`` is ``oracle``, ``noop`` or a model spec (``openai:BASE_URL#MODEL``,
    ``local:DIR[@ADAPTER]``, ``package.module:factory``). ``user_model`` (tau suites) is an
    OpenAI-compatible model spec for the LLM user simulator; without it the user is scripted.
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
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    user_model: str | None = None

    @field_validator("suites")
    @classmethod
    def _no_duplicates(cls, suites: list[str]) -> list[str]:
        if len(set(suites)) != len(suites):
            raise ValueError(f"a suite is listed twice: {suites}")
        return suites

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> EvalJob:
        return build_config(cls, layered_values(path, "eval", overrides), "eval")

    def loop_config(self) -> LoopConfig:
        return LoopConfig(
            max_steps_per_turn=self.max_steps_per_turn,
            feed_back_parse_errors=self.feed_back_parse_errors,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def client_options(self) -> dict[str, Any]:
        """Options for the model client (only an OpenAI-compatible client takes them)."""
        return {"timeout_s": self.timeout_s, "retries": self.retries} if self.model.startswith("openai:") else {}

    def run_key(self) -> str:
        """What makes two runs the same run (a resumed run must match): everything but ``out`` and ``workers``."""
        data = self.model_dump(exclude={"out", "workers", "suites"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
