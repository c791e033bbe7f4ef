"""Configuration of ``ee curriculum run``: one typed object, loadable from TOML, overridable by CLI flags.

Precedence, lowest first: defaults, the TOML file's ``[curriculum]`` table, then flags (and ``TASKS``, the command's
argument). Example ``curriculum.toml``::

    [curriculum]
    tasks = "tasks.jsonl"                 # from `ee curriculum propose`
    policy = "openai:http://vllm:8000/v1#policy"
    sandbox = "support_tools.sandbox:make_sandbox"
    judge = "openai:http://vllm:8000/v1#judge"
    store = "/data/experience"
    k = 4
    approve_if = "support_tools.review:short_and_clean"
    [curriculum.sandbox_settings]         # keyword options of the sandbox's factory
    region = "eu"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ee_middleware._toml import build_with_required, finite_seconds, named_path, stripped_not_blank
from ee_middleware.replay.curriculum import DEFAULT_APP
from ee_middleware.store.registry import store_config_value

TABLE = "curriculum"
"""The table ``ee curriculum run`` reads from its ``--config`` file."""

JUDGE_MAX_TOKENS = 1024
"""The judge's ``max_tokens`` unless told otherwise (``ee curriculum run --judge-max-tokens``): its verdict is a short JSON
object, but a reasoning judge (Qwen3, an R1 distill) thinks first, and one cut off while thinking gives no verdict. A
server that refuses it for its context (vLLM ``--max-model-len 2048`` and the judge's prompt of up to ~2k tokens) is
asked again with what the context leaves (``ee_middleware.evals.curriculum.judge``, which reads it from here)."""

NEEDED = {
    "tasks": "TASKS (the argument)",
    "policy": "--policy",
    "sandbox": "--sandbox",
    "judge": "--judge",
    "store": "--store",
}
"""The settings ``ee curriculum run`` cannot do without, and the argument or flag that gives each."""


class CurriculumRunConfig(BaseModel):
    """Everything ``ee curriculum run`` needs (its ``[curriculum]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: Annotated[Path, named_path("the tasks file")]
    """``tasks.jsonl`` from ``ee curriculum propose``."""
    policy: str
    """The policy to roll out: ``local:DIR[@ADAPTER]``, ``openai:BASE_URL#MODEL`` or ``package.module:factory``."""
    sandbox: str
    """Sandbox of the real tools (``bfcl``, ``package.module:factory``)."""
    sandbox_settings: dict[str, Any] = Field(default_factory=dict)
    """Keyword options of the sandbox's factory (``[curriculum.sandbox_settings]``, as ``[replay.sandbox_settings]``),
    e.g. ``allow_network = true`` for ``bfcl``; an option the factory does not take is refused before any rollout."""
    judge: str
    """The model that verifies each outcome."""
    judge_max_tokens: int = Field(JUDGE_MAX_TOKENS, ge=1)
    """Tokens the judge may write per verdict, its reasoning included."""
    store: Annotated[Path | str, BeforeValidator(store_config_value)]
    """The experience store the kept trajectories go to: a folder, or a store spec."""
    k: int = Field(1, ge=1)
    """Rollouts per task."""
    approve_if: str | None = None
    """``module:function(trajectory) -> bool``: the kept trajectories it accepts are approved, the others stay pending."""
    app: Annotated[str, BeforeValidator(stripped_not_blank)] = Field(DEFAULT_APP, min_length=1)
    """The app to store the trajectories of tasks that name none under."""
    timeout_s: Annotated[float, finite_seconds("per request to the policy and the judge", "120, or 3600")] = Field(60.0, gt=0)
    """Seconds per request to an ``openai:`` policy or judge."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> CurriculumRunConfig:
        """Defaults <- the TOML file's ``[curriculum]`` table <- ``overrides`` (``None`` values are ignored). A required
        setting neither gives is a :class:`ConfigError` naming its flag and its key, after the file's own problems (a key
        spelled as its flag gets its 'did you mean')."""
        return build_with_required(cls, path, TABLE, overrides, NEEDED, job="curriculum run", subject="curriculum run")
