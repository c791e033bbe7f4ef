"""Configuration of a LoRA training job: one typed object, loadable from TOML, overridable by flags.

Precedence, lowest first: defaults, the TOML file's ``[train]`` table, then flags / keyword
arguments. Example ``train.toml``::

    [train]
    base_model = "/models/smollm2-135m-instruct"   # a save_pretrained folder, a .gguf file, or a folder with one
    data = "datasets/2026-11-22"                   # holds il.parquet, iwm.parquet, sr.parquet
    schedule = "iwm"
    output_dir = "adapters/support-bot-v7"
    epochs = 2
    batch_size = 4
    learning_rate = 2e-4
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ee_middleware._limits import INT32_MAX
from ee_middleware._toml import build_config, layered_values, missing_settings, named_path
from ee_middleware.errors import ConfigError

Schedule = Literal["il", "iwm", "sr", "experience-model"]


MAX_LORA_RANK = 65_536
"""The largest LoRA rank a run takes (far above any a server loads: vLLM's ``--max-lora-rank`` goes to 512); a larger one
failed inside torch, allocating the adapter."""


class TrainConfig(BaseModel):
    """Everything ``ee train`` needs.

    ``None`` for ``bf16``, ``gradient_checkpointing`` and ``num_threads`` means "pick for the
    device": bf16 and gradient checkpointing on a GPU, fp32 and one torch thread on the CPU.

    The paths (``base_model``, ``data``, ``output_dir``, ``base_cache_dir``) are made absolute against the working
    directory (``~`` expanded), as every ``ee`` command reads paths, also those in a config file (not from the file's
    folder, as ``ee improve`` reads its file): the manifest records them so. Every number is finite (``inf`` and
    ``nan`` are refused: ``epochs = inf`` would plan endless steps).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    base_model: str
    """A local folder saved with ``save_pretrained``, a ``.gguf`` file, or a folder holding one .gguf file."""
    data: Path = Path("data")
    """Folder with the dataset files ``il.parquet``, ``iwm.parquet``, ``sr.parquet``."""
    schedule: Schedule = "il"
    """``il``: imitation; ``iwm``: world modeling then imitation (same total steps as ``il``); ``sr``: SR mixed with IL."""
    output_dir: Annotated[Path, named_path("the adapter's folder")] = Path("adapter")
    """Where the adapter, ``manifest.json`` and ``loss.png`` are written."""

    lora_r: int = Field(8, ge=1, le=MAX_LORA_RANK)
    lora_alpha: int = Field(16, ge=1, le=INT32_MAX)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] | None = None
    """The base's layers that get LoRA weights. ``None``: ``q_proj`` and ``v_proj`` where the base has them (Llama,
    Qwen, Mistral, ...), else peft's default for its architecture (GPT-2: ``c_attn``), else a fused attention projection
    (Phi-3: ``qkv_proj``)."""

    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "constant"] = "linear"
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, le=INT32_MAX)
    """Optimizer updates of the whole schedule; overrides ``epochs``."""
    batch_size: int = Field(4, ge=1, le=INT32_MAX)
    """Examples per device per forward pass."""
    gradient_accumulation: int = Field(1, ge=1, le=INT32_MAX)
    max_length: int = Field(1024, ge=8, le=INT32_MAX)
    """Tokens per example; a longer prompt is fitted by the truncation policy (``ee_middleware.models.truncation``:
    older turns dropped first, a cut from the left last), the completion kept."""
    max_lost_context_share: float = Field(0.1, ge=0, le=1)
    """Warn when more than this share of a dataset's rows lose more than older turns to ``max_length`` (compact tool
    listings, a tool result or user message shortened in its middle, a target cut to its head, or a cut from the left
    that loses the system message, tools or task)."""
    iwm_share: float = Field(0.5, gt=0, lt=1)
    """Most of the ``iwm`` budget the world-modeling stage may take (it also stops after one pass over the IWM rows)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the LoRA initialization and the data order: 0 to 2**32 - 1 (numpy's range, which transformers seeds too;
    another was accepted, then failed the run once the model had loaded)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None
    packing: bool = False
    num_threads: int | None = Field(None, ge=1, le=INT32_MAX)
    backend: Literal["trl", "peft-loop"] = "trl"
    """``trl``: trl's SFTTrainer (the default); ``peft-loop``: a plain PyTorch loop, single process, for comparison."""
    logging_steps: int = Field(1, ge=1, le=INT32_MAX)
    base_cache_dir: Annotated[Path | None, named_path("the folder for converted base models")] = None
    """Where a base model read from GGUF is saved once as a plain folder (default: the user's cache,
    ``$EE_CACHE_DIR/base-models`` or ``~/.cache/ee-middleware/base-models``, shared by every run: see
    :func:`~ee_middleware.trainers.training.model.default_base_cache`)."""

    @field_validator("base_model", "data", "output_dir", "base_cache_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return Path(os.path.abspath(value.expanduser()))
        if isinstance(value, str) and value.strip():
            return os.path.abspath(os.path.expanduser(value))
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module, e.g. ['q_proj', 'v_proj']")
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, nightly: bool = False, **overrides: Any) -> TrainConfig:
        """Defaults <- TOML ``[train]`` table <- ``overrides`` (``None`` values are ignored). ``nightly``: ``path`` is
        ee improve's file, read for its train stage, so it may leave ``[train]`` out."""
        values = layered_values(path, "train", overrides, job="training job", nightly=nightly)
        if not values.get("base_model") and not nightly:  # a usage error (exit 2), as the other jobs' missing settings,
            values["base_model"] = "(not given)"  # set on the layered values themselves: their errors name the file
            build_config(cls, values, "train")  # after the file's own mistakes
            raise missing_settings("train job", "train", {"base_model": "--base-model PATH (a save_pretrained folder or a .gguf file)"})
        if not values.get("base_model"):
            raise ConfigError(
                "The train job needs a base model: pass --base-model PATH (a save_pretrained folder or a .gguf file) "
                "or set base_model in the [train] table."
            )
        return build_config(cls, values, "train")

    def resolved_device(self) -> str:
        """``cuda`` or ``cpu``: ``auto`` picks a GPU when torch sees one."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
