"""Configuration of ``ee experience eval`` and ``ee experience dataset``: one typed object each, loadable from TOML,
overridable by CLI flags.

Precedence, lowest first: defaults, the TOML file's table (``[experience_eval]``, ``[experience_dataset]``), then
flags. One file may hold both tables (and other jobs' tables: ``[replay]``, ``[datasets]``, ...); the two commands hold
out the same trajectories when ``held_out`` and ``seed`` agree, so that the eval measures transitions the dataset never
trained on. Example ``experience.toml``::

    [experience_eval]
    model = "openai:http://vllm:8000/v1#experience-model"
    store = "/data/experience"
    held_out = 0.2
    top_k = 3
    out = "experience-eval"
    retriever = "my_package.search:EmbeddingRetriever"

    [experience_eval.retriever_settings]   # keyword options of the retriever's factory
    model_name = "all-MiniLM-L6-v2"

    [experience_dataset]
    store = "/data/experience"
    out = "em-data"
    teacher = "openai:http://vllm:8000/v1#teacher"
    held_out = 0.2                          # as [experience_eval]: the eval measures what was never trained on
    retriever = "bm25"
    retriever_settings = { k1 = 1.2, b = 0.75 }
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ee_middleware._toml import build_with_required, finite_seconds, named_path, not_blank, stripped_not_blank
from ee_middleware.replay.retrieval import DEFAULT_RETRIEVER, DEFAULT_TOP_K
from ee_middleware.store.registry import store_config_value

EVAL_TABLE = "experience_eval"
"""The table ``ee experience eval`` reads from its ``--config`` file."""
DATASET_TABLE = "experience_dataset"
"""The table ``ee experience dataset`` reads from its ``--config`` file."""

DEFAULT_HELD_OUT = 0.2
DEFAULT_TIMEOUT_S = 60.0

_Seconds = Annotated[float, finite_seconds("per request to the model", "120 for a model served on CPU, or 3600")]


class _HeldOutSplitSettings(BaseModel):
    """What both commands share: the store, the held-out split (the same ``held_out`` and ``seed`` give the same split)
    and how the replay buffer is searched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Annotated[Path | str, BeforeValidator(store_config_value)]
    """The experience store: a folder, or a store spec (see :func:`ee_middleware.store.registry.open_store`)."""
    app: Annotated[str | None, BeforeValidator(stripped_not_blank)] = None
    """Only trajectories of this app: held out, indexed and built from."""
    held_out: float = Field(DEFAULT_HELD_OUT, ge=0, le=1)
    """Share of the approved trajectories held out (at least one, also at 0)."""
    seed: int = 0
    """Seed of the held-out split."""
    retriever: str = DEFAULT_RETRIEVER
    """How the replay buffer is searched: ``bm25``, ``bm25s``, ``package.module:factory`` or an entry point (see
    :data:`~ee_middleware.replay.retrieval.RETRIEVERS`)."""
    retriever_settings: dict[str, Any] = Field(default_factory=dict)
    """Keyword options of the retriever's factory (``{"k1": 1.2, "b": 0.5}`` for ``bm25``, a plug-in's own); one it takes no
    parameter for is refused by the retriever registry."""
    timeout_s: _Seconds = Field(DEFAULT_TIMEOUT_S, gt=0)
    """Seconds per request to an ``openai:`` model (a local model or a plug-in has no request timeout)."""


class ExperienceEvalConfig(_HeldOutSplitSettings):
    """Everything ``ee experience eval`` needs (its ``[experience_eval]`` table)."""

    model: Annotated[str, BeforeValidator(not_blank)]
    """The experience model: ``local:DIR[@ADAPTER]``, ``openai:BASE_URL#MODEL`` or ``package.module:factory``."""
    trained: Annotated[str | None, BeforeValidator(not_blank)] = None
    """A trained experience model: adds the ``retrieval+trained`` variant."""
    top_k: int = Field(DEFAULT_TOP_K, ge=1)
    """Retrieved real transitions per prediction in the ``retrieval`` variant."""
    limit: int | None = Field(None, ge=1)
    """At most this many held-out transitions."""
    max_tokens: int = Field(256, ge=1)
    """Tokens the model may write per prediction."""
    out: Annotated[Path, named_path("the output folder")] = Path("experience-eval")
    """Folder for ``report.json`` and ``fidelity.png``."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> ExperienceEvalConfig:
        """Defaults <- the TOML file's ``[experience_eval]`` table <- ``overrides`` (``None`` values are ignored)."""
        return _load(cls, path, EVAL_TABLE, "experience eval", overrides, needed={"model": "--model", "store": "--store"})


TEMPLATE_TEACHER = "template"
"""The teacher that writes each em row's reasoning from a template (no model)."""


def _teacher_spec(value: Any) -> Any:
    """``teacher`` as given, but :data:`TEMPLATE_TEACHER` however it is spelt or spaced (``Template``, `` template``:
    read as a model spec it was an unknown model client "template", the very word the accepted forms leave out)."""
    if isinstance(value, str) and value.strip().lower() == TEMPLATE_TEACHER:
        return TEMPLATE_TEACHER
    return not_blank(value)


class ExperienceDatasetConfig(_HeldOutSplitSettings):
    """Everything ``ee experience dataset`` needs (its ``[experience_dataset]`` table)."""

    out: Annotated[Path, named_path("the output folder")]
    """Folder for ``em.parquet``."""
    teacher: Annotated[str, BeforeValidator(_teacher_spec)] = TEMPLATE_TEACHER
    """Who writes the reasoning: ``template``, ``local:DIR``, ``openai:BASE_URL#MODEL`` or ``package.module:factory``."""
    top_k: int = Field(DEFAULT_TOP_K, ge=0)
    """Retrieved real transitions in each prompt."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> ExperienceDatasetConfig:
        """Defaults <- the TOML file's ``[experience_dataset]`` table <- ``overrides`` (``None`` values are ignored)."""
        return _load(cls, path, DATASET_TABLE, "experience dataset", overrides, needed={"store": "--store", "out": "--out"})


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _load(
    cls: type[ConfigT], path: str | os.PathLike[str] | None, table: str, job: str, overrides: dict[str, Any], *, needed: dict[str, str]
) -> ConfigT:
    """``cls`` from ``path``'s ``[table]`` and ``overrides``; a required setting neither gives is a :class:`ConfigError`
    naming its flag and its key (``needed``: setting -> flag; see :func:`~ee_middleware._toml.build_with_required`)."""
    return build_with_required(cls, path, table, overrides, needed, job=job, subject=job)
