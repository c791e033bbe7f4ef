"""``train(config)``: one LoRA training run, from dataset files to an adapter folder with its manifest.

The output folder holds the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``:
what vLLM's runtime LoRA loader and ``PeftModel.from_pretrained`` read), ``manifest.json`` (config,
dataset hashes, library versions, metrics, losses) and ``loss.png``. It is written under a temporary
name and renamed when complete, so a crash never leaves a half-written adapter behind.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ee_middleware._files import remove_left_behind
from ee_middleware._locks import holder_lock
from ee_middleware._optional import import_optional
from ee_middleware._version import __version__
from ee_middleware.errors import ChatTemplateError
from ee_middleware.models.chat_template import TemplateSupport, probe_template
from ee_middleware.trainers.training import backends, schedule
from ee_middleware.trainers.training.config import TrainConfig
from ee_middleware.trainers.training.data import DatasetFile, check_one_build, load_dataset, unread_at_build
from ee_middleware.trainers.training.errors import (
    BaseModelError,
    ContextBudgetWarning,
    RenderingFallbackWarning,
    TrainDataError,
    TrainError,
    TrainOutOfMemoryError,
)
from ee_middleware.trainers.training.model import add_lora, check_context, default_base_cache, load_base, plain_base, resolve_base
from ee_middleware.trainers.training.render import Example, RenderStats, tokenize_rows
from ee_middleware.trainers.training.report import (
    LOSS_PLOT_FILE,
    MANIFEST_FILE,
    MANIFEST_SCHEMA_VERSION,
    RENDER_CUTS_FILE,
    library_versions,
    plot_loss,
    print_summary,
    write_manifest,
    write_render_cuts,
)

_PURPOSE = "train LoRA adapters"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class TrainResult:
    """The adapter folder and the manifest written into it."""

    adapter_dir: Path
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """Steps, tokens, tokens/s, losses, duration, device (``manifest["metrics"]``)."""
        return self.manifest["metrics"]


@dataclass
class _Prepared:
    datasets: dict[str, DatasetFile]
    examples: dict[str, list[Example]]
    stats: dict[str, RenderStats]
    support: TemplateSupport


def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train a LoRA adapter on ``config.base_model`` with ``config.schedule``; write it to ``config.output_dir``.

    Raises :class:`~ee_middleware.trainers.training.errors.TrainError` subclasses with the fix in the
    message: base model missing or not loadable offline, datasets missing, empty or malformed, out of memory.
    """
    started = time.perf_counter()
    output_dir = Path(config.output_dir).expanduser().resolve()
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists())
    if not existing.is_dir():  # checked before training: the adapter is written only at the end
        raise TrainError(f"{existing} is a file, not a folder: set output_dir (--output-dir) to a new folder for the adapter.")
    with _holding_output(output_dir):
        refuse_output_dir(output_dir)
        return _train(config, output_dir, started, progress)


def _train(config: TrainConfig, output_dir: Path, started: float, progress: bool) -> TrainResult:
    torch = import_optional("torch", extra="train", purpose=_PURPOSE)
    runtime = _runtime(config, torch, progress)
    datasets = {kind: load_dataset(Path(config.data), kind) for kind in schedule.kinds_needed(config.schedule)}
    check_one_build(datasets)
    _warn_if_built_from_part(Path(config.data))

    source = resolve_base(config.base_model)
    cache_dir = Path(config.base_cache_dir).expanduser().resolve() if config.base_cache_dir else default_base_cache()
    base_folder, cached_now = plain_base(source, cache_dir)
    dtype = torch.bfloat16 if runtime.bf16 else torch.float32
    model, tokenizer = load_base(base_folder, dtype=dtype)
    check_context(getattr(model, "config", None), config.max_length, base_folder / "config.json")
    prepared = _prepare(datasets, tokenizer, config, progress=progress)

    per_update = config.batch_size * config.gradient_accumulation * int(os.environ.get("WORLD_SIZE", "1"))
    counts = {kind: len(examples) for kind, examples in prepared.examples.items()}
    stages = schedule.plan(
        config.schedule, counts, per_update=per_update, epochs=config.epochs, max_steps=config.max_steps, iwm_share=config.iwm_share
    )
    if config.backend == "peft-loop":
        model.to(runtime.device)
    model = add_lora(model, config, gradient_checkpointing=runtime.gradient_checkpointing)
    runs = _run_stages(model, tokenizer, prepared, stages, config, runtime, torch)
    _check_finite(model, runs, config, torch)

    base_info = {"source": source.describe(), "path": str(base_folder), "from_gguf": source.gguf_file is not None, "cached_now": cached_now}
    manifest = _manifest(config, runtime, base_info, prepared, stages, runs, model, time.perf_counter() - started, output_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        _write_output(model, manifest, runs, output_dir, {kind: stats.cuts for kind, stats in prepared.stats.items()})
        if progress:
            print_summary(manifest)
    return TrainResult(output_dir, manifest)


@contextmanager
def _holding_output(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir`` for the whole run (on rank 0, the rank that writes the adapter): a lock file beside it
    (``.NAME.train.lock``, removed at the end; released when the process exits, even killed). A second run into the same
    folder is refused at once, naming the folder and the run that holds it: both would train, then the last to finish
    would replace the first's adapter (adapters are immutable per version)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = [folder for folder in [output_dir.parent, *output_dir.parent.parents] if not folder.exists()]
    output_dir.parent.mkdir(parents=True, exist_ok=True)

    def busy(holder: str) -> TrainError:
        return TrainError(
            f"Another training run is writing an adapter to {output_dir} ({holder}). Adapters are immutable per version: "
            "set another output_dir (--output-dir) for this run, or wait for that run to finish (or stop it; its hold is "
            "released when it exits, even if killed)."
        )

    try:
        with holder_lock(output_dir.parent / f".{output_dir.name}{LOCK_SUFFIX}", busy, remove=True):
            yield
    finally:  # a run that wrote no adapter (it failed at once: a mistyped --data) leaves none of the folders it created
        for folder in created:  # deepest first; one that holds anything (the adapter, another's file) stays, and its parents
            try:
                folder.rmdir()
            except OSError:
                break


LOCK_SUFFIX = ".train.lock"
"""The lock file a run holds beside its output folder (``.NAME.train.lock``), removed when the run ends."""


OUTPUT_FILES = (*ADAPTER_FILES, "README.md", MANIFEST_FILE, RENDER_CUTS_FILE, LOSS_PLOT_FILE)
"""Every file a run writes into its ``output_dir`` (``README.md``: peft's model card)."""
_MODEL_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.pt", "*.pth", "tf_model.h5", "flax_model.msgpack")


def refuse_output_dir(output_dir: Path) -> None:
    """Refuse an ``output_dir`` the adapter may not be written into, with :class:`TrainError` naming the fix: one that
    holds an adapter (adapters are immutable per version), a model (``config.json`` and weights, or a ``.gguf``: the base
    model's own folder, which would load with the adapter applied from then on), or a file of a name the run writes
    (:data:`OUTPUT_FILES`: a user's ``README.md`` or ``manifest.json`` is never replaced). Other files may stay: the
    adapter's files are put beside them."""
    if any((output_dir / name).exists() for name in ADAPTER_FILES):
        raise TrainError(f"{output_dir} already holds an adapter. Adapters are immutable per version: pick a new output_dir, or delete it.")
    if not output_dir.is_dir():
        return
    weights = sorted({p.name for pattern in _MODEL_WEIGHTS for p in output_dir.glob(pattern) if p.is_file()})
    ggufs = sorted(p.name for p in output_dir.glob("*.gguf"))
    if ggufs or ((output_dir / "config.json").is_file() and weights):
        held = ", ".join(ggufs) if ggufs else f"config.json and {', '.join(weights[:3])}{', ...' if len(weights) > 3 else ''}"
        raise TrainError(
            f"{output_dir} holds a model ({held}): an adapter is never written into a model's folder (the model would load "
            "with the adapter applied from then on, and its files could be replaced). Set output_dir (--output-dir) to a new "
            "folder for the adapter."
        )
    taken = [name for name in OUTPUT_FILES if (output_dir / name).exists()]
    if taken:
        raise TrainError(
            f"{output_dir} already holds {', '.join(taken)}, which the adapter's folder is made of ({', '.join(OUTPUT_FILES)}); "
            "files already there are never replaced. Set output_dir (--output-dir) to a new folder (the adapter is written "
            "there whole), or move those files out of it."
        )


def _runtime(config: TrainConfig, torch: Any, progress: bool) -> backends.Runtime:
    device = config.resolved_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("device is 'cuda' but torch sees no GPU. Set device = 'cpu' (or 'auto'), or install a CUDA build of torch.")
    threads = config.num_threads if config.num_threads is not None else (1 if device == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    bf16 = config.bf16 if config.bf16 is not None else device == "cuda" and torch.cuda.is_bf16_supported()
    checkpointing = config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
    return backends.Runtime(device=device, bf16=bool(bf16), gradient_checkpointing=checkpointing, progress=progress)


def _prepare(datasets: dict[str, DatasetFile], tokenizer: Any, config: TrainConfig, *, progress: bool = False) -> _Prepared:
    try:
        support = probe_template(tokenizer)
    except ChatTemplateError as exc:  # a template that shows no message text: every row would train on nothing
        raise BaseModelError(f"Cannot train on {config.base_model}: {exc}") from exc
    examples, stats = {}, {}
    for kind, dataset in datasets.items():
        label = f"fit {kind} rows to max_length {config.max_length}" if progress else None
        examples[kind], stats[kind] = tokenize_rows(tokenizer, dataset.rows, config.max_length, support, progress=label)
        if not examples[kind]:
            raise TrainDataError(
                f"Every row of {dataset.path} was dropped ({stats[kind].dropped_too_long} completions longer than "
                f"max_length={config.max_length}, {stats[kind].dropped_empty} empty, {stats[kind].dropped_control_tokens} "
                "holding the tokenizer's control tokens in their text). Raise max_length or rebuild the dataset."
            )
        _warn_if_rows_dropped(kind, dataset, stats[kind], config)
        _warn_if_context_lost(kind, stats[kind], config)
        note = stats[kind].fallback_note(kind)
        if note:
            warnings.warn(note, RenderingFallbackWarning, stacklevel=2)
    return _Prepared(datasets, examples, stats, support)


def _warn_if_rows_dropped(kind: str, dataset: DatasetFile, stats: RenderStats, config: TrainConfig) -> None:
    """Say that rows of ``dataset`` are not trained on (a target of ``max_length`` tokens or more, or an empty one): the
    adapter learns from the others only, the long targets left out, which no exit code or loss shows."""
    dropped = stats.dropped_too_long + stats.dropped_empty + stats.dropped_control_tokens
    if not dropped:
        return
    reasons = []
    if stats.dropped_control_tokens:
        reasons.append(
            f"{stats.dropped_control_tokens} hold the base tokenizer's control tokens "
            f"({', '.join(stats.control_token_examples)}) inside a message's text, a call or a tool schema (a tool's "
            "result quoting a chat template, a web page): a server tokenizes them as the real tokens, so these rows would "
            "teach a turn that ends, or another that starts, inside an observation"
        )
    if stats.dropped_too_long:
        reasons.append(
            f"{stats.dropped_too_long} have a target of max_length={config.max_length} tokens or more (the longest "
            f"{stats.longest_dropped_completion}): raise max_length, or rebuild the dataset with shorter targets"
        )
    if stats.dropped_empty:
        reasons.append(
            f"{stats.dropped_empty} have an empty target, or an observation cut to a token or none so that no token of it "
            f"is learned (a long state left its target no room in max_length={config.max_length}): rebuild the dataset, or "
            "raise max_length"
        )
    warnings.warn(
        f"{dropped} of the {stats.rows} {kind.upper()} rows of {dataset.path} ({dropped / stats.rows:.0%}) are not trained on: "
        + "; ".join(reasons)
        + ".",
        ContextBudgetWarning,
        stacklevel=3,
    )


def _warn_if_built_from_part(data_dir: Path) -> None:
    """Say that the datasets come from part of a damaged store (built with ``--allow-partial``): what the unread files
    held is not trained on."""
    unread = unread_at_build(data_dir)
    if unread:
        warnings.warn(
            f"The datasets in {data_dir} were built from part of a damaged store ({len(unread)} file(s) could not be read, "
            f"datasets.json's incomplete_store_read; the first: {unread[0]}): what they held is not trained on. Repair the "
            "store (`ee store repair`, then the files restored from a backup) and build the datasets again to train on all of it.",
            UserWarning,
            stacklevel=3,
        )


def _warn_if_context_lost(kind: str, stats: RenderStats, config: TrainConfig) -> None:
    share = stats.lost_essentials_share
    if share <= config.max_lost_context_share:
        return
    # what each cut row needs whole: its prompt and its target (an IWM target cut to its head needs more than its prompt)
    needed = sorted(cut.get("whole_tokens") or cut["original_tokens"] for cut in stats.cuts)
    p90 = needed[min(len(needed) - 1, int(0.9 * len(needed)))] if needed else config.max_length
    losses = [
        f"{stats.compact_tools} have their tool schemas listed compactly",
        *([f"{stats.shortened} have a tool result or user message shortened in its middle"] if stats.shortened else []),
        *([f"{stats.completion_cut} keep only the head of their target"] if stats.completion_cut else []),
        f"{stats.left_cut} are cut from the left, losing the system message, the tools or the task",
    ]
    warnings.warn(
        f"{share:.0%} of the {stats.examples} {kind.upper()} rows trained on lose more than older turns at max_length={config.max_length}: "
        f"{', '.join(losses[:-1])} and {losses[-1]}. Raise max_length (90% of the rows that did not fit need up to "
        f"{p90} tokens whole, prompt and target), or accept these losses by raising max_lost_context_share "
        f"(now {config.max_lost_context_share}); see `ee datasets show --tokenizer BASE --max-length N`.",
        ContextBudgetWarning,
        stacklevel=3,
    )


def _run_stages(
    model: Any,
    tokenizer: Any,
    prepared: _Prepared,
    stages: list[schedule.Stage],
    config: TrainConfig,
    runtime: backends.Runtime,
    torch: Any,
) -> list[backends.StageRun]:
    runs, offset = [], 0
    for index, stage in enumerate(stages):
        examples = schedule.mixed([prepared.examples[kind] for kind in stage.kinds], config.seed + index)
        try:
            run = backends.run_stage(
                config.backend, model, tokenizer, examples, stage.steps, config, runtime, name=stage.name, offset=offset
            )
        except (RuntimeError, MemoryError) as exc:
            if not backends.is_out_of_memory(exc):
                raise
            if runtime.device == "cuda":
                torch.cuda.empty_cache()
            raise TrainOutOfMemoryError(
                f"Training ran out of memory on {runtime.device} in stage {stage.name} (batch_size={config.batch_size}, "
                f"max_length={config.max_length}, gradient_checkpointing={runtime.gradient_checkpointing}). Lower batch_size "
                "(raise gradient_accumulation to keep the effective batch), lower max_length, or set gradient_checkpointing = true."
            ) from exc
        runs.append(run)
        offset += run.steps
    return runs


def _check_finite(model: Any, runs: list[backends.StageRun], config: TrainConfig, torch: Any) -> None:
    """Raise :class:`TrainError` when the trained LoRA weights hold a NaN or an infinity: the training diverged, and the
    adapter would answer nothing when served (``ee adapters register`` refuses such files). Before, ``ee train`` wrote it
    and exited 0, its loss curve ending before the NaN step and its summary reading ``loss 7.668 -> -``."""
    trained = [name for name, parameter in model.named_parameters() if parameter.requires_grad and not torch.isfinite(parameter).all()]
    if not trained:
        return
    losses = [(step, loss, run.name) for run in runs for step, loss in run.losses]
    first = next(((step, loss, name) for step, loss, name in losses if not math.isfinite(loss)), None)
    where = f"; the loss was {first[1]} from step {first[0]} (stage {first[2]})" if first else ""
    raise TrainError(
        f"The training diverged: {len(trained)} of the LoRA weight tensors hold NaN or infinity after the last step{where}. "
        f"No adapter was written. Lower the learning rate (learning_rate, --lr: now {config.learning_rate:g}), or train in "
        "bf16 or fp32 rather than fp16."
    )


def _stage_metrics(run: backends.StageRun) -> dict[str, Any]:
    return {
        "name": run.name,
        "steps": run.steps,
        "tokens": run.tokens,
        "seconds": round(run.seconds, 3),
        "tokens_per_s": run.tokens / run.seconds if run.seconds > 0 else 0.0,
        "first_loss": run.losses[0][1] if run.losses else None,
        "final_loss": run.losses[-1][1] if run.losses else None,
    }


def _manifest(
    config: TrainConfig,
    runtime: backends.Runtime,
    base_info: dict[str, Any],
    prepared: _Prepared,
    stages: list[schedule.Stage],
    runs: list[backends.StageRun],
    model: Any,
    duration: float,
    output_dir: Path,
) -> dict[str, Any]:
    losses = [pair for run in runs for pair in run.losses]
    train_seconds = sum(run.seconds for run in runs)
    tokens = sum(run.tokens for run in runs)
    trainable, total = model.get_nb_trainable_parameters()
    boundaries, step = [], 0
    for run in runs:
        boundaries.append({"stage": run.name, "first_step": step + 1, "last_step": step + run.steps})
        step += run.steps
    metrics = {
        "steps": sum(run.steps for run in runs),
        "tokens": tokens,
        "tokens_per_s": tokens / train_seconds if train_seconds > 0 else 0.0,
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "train_seconds": round(train_seconds, 3),
        "duration_s": round(duration, 3),
        "device": runtime.device,
        "bf16": runtime.bf16,
        "gradient_checkpointing": runtime.gradient_checkpointing,
        "backend": config.backend,
        "trainable_params": trainable,
        "total_params": total,
        "stages": [_stage_metrics(run) for run in runs],
        "stage_boundaries": boundaries,
    }
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "ee_middleware_version": __version__,
        "created_at": datetime.now(UTC).isoformat(),
        "adapter_dir": str(output_dir),
        "config": {**config.model_dump(mode="json"), "data": str(Path(config.data).resolve())},
        "base_model": base_info,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "target_modules": _adapted_modules(model)},
        "schedule": {"name": config.schedule, "stages": [s.describe() for s in stages], "rule": schedule.__doc__.strip()},
        "datasets": {
            kind: {**dataset.describe(), "render": prepared.stats[kind].describe()} for kind, dataset in prepared.datasets.items()
        },
        "rendering": prepared.support.describe(),
        "versions": library_versions(),
        "metrics": metrics,
        "losses": [[s, v] for s, v in losses],
    }


def _adapted_modules(model: Any) -> list[str]:
    """The target modules the peft model was made with (the config's, or the base's default)."""
    config = getattr(model, "peft_config", {}).get("default")
    return sorted(getattr(config, "target_modules", None) or [])


def _write_output(
    model: Any, manifest: dict[str, Any], runs: list[backends.StageRun], output_dir: Path, cuts: dict[str, list[dict[str, Any]]]
) -> None:
    partial = output_dir.with_name(f"{output_dir.name}.partial-{os.getpid()}")
    # a run killed while saving left its partial folder: remove those of processes now gone
    remove_left_behind(output_dir.parent, f"{glob.escape(output_dir.name)}.partial-*", ".partial-")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _fill_output(model, manifest, runs, partial, cuts)
    except BaseException:  # a half-written adapter is never left where it could be taken for one
        shutil.rmtree(partial, ignore_errors=True)
        raise
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        refuse_output_dir(output_dir)  # again: something that holds no lock (a copy, an older version) may have put one there
        if not output_dir.exists() or not any(output_dir.iterdir()):
            partial.replace(output_dir)  # the adapter appears whole, in one rename (also over an empty folder)
            return
    except (TrainError, OSError) as exc:  # e.g. a folder created with files in it since the check
        kept = output_dir.with_name(f"{output_dir.name}.unpublished-{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}")
        partial.rename(kept)
        raise TrainError(
            f"Not written to {output_dir}: {exc if isinstance(exc, TrainError) else f'moving the adapter into place failed ({exc})'}. "
            f"This run's adapter is in {kept}: move it to a new folder (or delete it)."
        ) from exc
    # a folder of the user's other files (notes): the run's files go in beside them (none has their names: checked just
    # above), the adapter's own files last, so that a folder holding them holds the whole adapter
    for item in sorted(partial.iterdir(), key=lambda p: p.name in ADAPTER_FILES):
        item.replace(output_dir / item.name)
    partial.rmdir()


def _fill_output(
    model: Any, manifest: dict[str, Any], runs: list[backends.StageRun], partial: Path, cuts: dict[str, list[dict[str, Any]]]
) -> None:
    for config in getattr(model, "peft_config", {}).values():
        # peft writes a set (target_modules, ...) as a list in the set's order, which Python's string hashing makes differ
        # from one process to the next: the same weights would get another content hash, so another registry version
        for name, value in vars(config).items():
            if isinstance(value, set) and all(isinstance(item, str) for item in value):
                setattr(config, name, sorted(value))
    model.save_pretrained(partial)
    write_manifest(partial, manifest)
    write_render_cuts(partial / RENDER_CUTS_FILE, cuts)
    boundaries, step = [], 0
    for run in runs[:-1]:
        step += run.steps
        boundaries.append((step, f"{runs[len(boundaries) + 1].name} starts"))
    title = f"{manifest['schedule']['name']} schedule, {manifest['metrics']['backend']} on {manifest['metrics']['device']}"
    plot_loss(partial / LOSS_PLOT_FILE, [tuple(p) for p in manifest["losses"]], boundaries, title)
