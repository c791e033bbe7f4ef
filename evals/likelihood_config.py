"""Configuration of ``ee eval likelihood``: one typed object, loadable from TOML, overridable by CLI flags.

Precedence, lowest first: defaults, the TOML file's ``[likelihood]`` table, then flags. Example ``likelihood.toml``::

    [likelihood]
    data = "datasets/2026-11-22"          # its heldout/il.parquet (from ee datasets build --heldout-...)
    base_model = "/models/smollm2-135m-instruct"
    adapters = ["adapters/il", "adapters/iwm"]
    max_length = 2048                     # as the adapters were trained ([train] max_length)
    decode = 20
    limit = 200
    num_threads = 4
    device = "cpu"

Its own table, not keys of ``[eval]``: ``ee eval run``'s ``[eval]`` is about rollouts of a served model on suites
(``model`` is a model spec, ``max_tokens`` a request's answer, ``trials``, ``workers``, ...), and is the eval stage's
table in ``ee improve``'s file, while this job loads a base and adapter folders with torch and scores one forward pass
per held-out state; no setting of one means the same as a setting of the other. Names follow the other tables where a
setting is the same: ``base_model`` and ``num_threads`` as in ``[train]`` (and ``[improve]``), ``max_length`` as in
``[train]``, whose value it should be (``ee improve`` scores with its ``[train]`` max_length, its ``[improve]``
``likelihood_states`` and ``likelihood_decode`` being ``limit`` and ``decode`` here). Paths are read from the working
directory, as every ``ee`` command reads them. No setting is a secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ee_middleware._toml import build_with_required

TABLE = "likelihood"
"""The table ``ee eval likelihood`` reads from its ``--config`` file."""

MAX_THREADS = 1024
"""The most torch threads ``num_threads`` takes."""

NEEDED = {"data": "--data", "base_model": "--base"}
"""The settings ``ee eval likelihood`` cannot do without, and the flag that gives each."""


class LikelihoodConfig(BaseModel):
    """Everything ``ee eval likelihood`` needs (its ``[likelihood]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    """Held-out states: ``DATA/heldout``, ``DATA``, or a held-out ``il.parquet``."""
    base_model: Path
    """The base model: a ``save_pretrained`` folder or a ``.gguf`` file."""
    adapters: list[Path] = Field(default_factory=list)
    """LoRA adapter folders to score against the base."""
    max_length: int = Field(1024, ge=8)
    """Tokens per state, fitted as training fits them."""
    decode: int = Field(0, ge=0)
    """Also decode greedily on the first N states: parse rate, name and exact match."""
    max_new_tokens: int = Field(128, ge=1)
    """Tokens per greedy answer."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N held-out states (default: all)."""
    num_threads: int = Field(1, ge=1, le=MAX_THREADS)
    """torch threads (1 is often fastest on a shared CPU)."""
    device: str = Field("cpu", min_length=1)
    """``cpu`` or ``cuda``."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> LikelihoodConfig:
        """Defaults <- the TOML file's ``[likelihood]`` table <- ``overrides`` (``None`` values, and an empty
        ``adapters``, are ignored). A required setting neither gives is a :class:`ConfigError` naming its flag and its
        key, after the file's own problems."""
        overrides = {key: (None if value == [] else value) for key, value in overrides.items()}
        return build_with_required(cls, path, TABLE, overrides, NEEDED, job="likelihood eval", subject="likelihood eval")
