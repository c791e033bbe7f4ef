"""Configuration of ``ee curriculum propose``: one typed object, loadable from TOML, overridable by CLI flags.

Precedence, lowest first: defaults, the TOML file's ``[curriculum_propose]`` table, then flags (``EE_STORE`` between
the file and ``--store``). One file may hold it beside ``[curriculum]`` (``ee curriculum run``'s), so one file drives
both steps: ``out`` here is ``tasks`` there. Example ``curriculum.toml``::

    [curriculum_propose]
    results = "eval/base"                 # --from: an eval run's folder (or its results.jsonl / results.parquet)
    model = "openai:http://vllm:8000/v1#writer"
    store = "/data/experience"
    app = "support-bot"
    n = 20
    out = "tasks.jsonl"
    seed = 0
    max_tokens = 400
    timeout_s = 120

    [curriculum]
    tasks = "tasks.jsonl"
    ...

Keys are named as the flags are (``app``, ``timeout_s`` and ``store`` as in ``[curriculum]``), but for ``--from``,
whose name Python keeps for itself: ``results``. A model spec may carry a credential in its URL (``openai:http://
user:key@host/v1#m``); no output of the command prints it. The one-off switches ``--json`` and ``--allow-partial`` are
flags only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ee_middleware._toml import build_with_required, finite_seconds, named_path, stripped_not_blank
from ee_middleware.store.registry import store_config_value

TABLE = "curriculum_propose"
"""The table ``ee curriculum propose`` reads from its ``--config`` file."""

NEEDED = {"results": "--from", "model": "--model", "store": "--store"}
"""The settings ``ee curriculum propose`` cannot do without, and the flag that gives each."""


class CurriculumProposeConfig(BaseModel):
    """Everything ``ee curriculum propose`` needs (its ``[curriculum_propose]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    results: Path
    """An eval run's folder (or its ``results.jsonl`` / ``results.parquet``): ``--from``."""
    model: str = Field(min_length=1)
    """The model that writes variants: ``local:DIR``, ``openai:BASE_URL#MODEL`` or ``package.module:factory``."""
    store: Annotated[Path | str, BeforeValidator(store_config_value)]
    """The experience store whose trajectories give the variants their tools, world and system prompt."""
    app: Annotated[str | None, BeforeValidator(stripped_not_blank)] = None
    """Match the eval's tasks only to this app's trajectories."""
    n: int = Field(10, ge=1)
    """Variants to write, allotted to the tasks in proportion to p(1-p)."""
    out: Annotated[Path, named_path("the file to write")] = Path("tasks.jsonl")
    """The file the variants go to (JSON lines; not a folder)."""
    seed: int = 0
    """Sampling seed of the model (variant k uses seed + k)."""
    max_tokens: int = Field(200, ge=1)
    """Tokens the model may write per variant."""
    timeout_s: Annotated[float, finite_seconds("per request to the model", "120, or 3600")] = Field(60.0, gt=0)
    """Seconds per request to an ``openai:`` model."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> CurriculumProposeConfig:
        """Defaults <- the TOML file's ``[curriculum_propose]`` table <- ``overrides`` (``None`` values are ignored). A
        required setting neither gives is a :class:`ConfigError` naming its flag and its key, after the file's own
        problems (a key spelled as its flag gets its 'did you mean')."""
        return build_with_required(cls, path, TABLE, overrides, NEEDED, job="curriculum propose", subject="curriculum propose job")
