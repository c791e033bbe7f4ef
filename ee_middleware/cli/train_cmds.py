"""``ee train``: train a LoRA adapter from the IL / IWM / SR datasets.

Wire it into the root app with ``train_cmds.register(app)``; ``app`` here is a standalone Typer with
the same single command (used by the tests).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from ee_middleware._lifetime import interrupt_name
from ee_middleware.cli.common import JsonOption, examples, interrupted, library_bars_off, path_given, print_json, warnings_as_lines
from ee_middleware.errors import EEError, MissingSettingError


class ScheduleChoice(StrEnum):
    il = "il"
    iwm = "iwm"
    sr = "sr"
    experience_model = "experience-model"


class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class BackendChoice(StrEnum):
    trl = "trl"
    peft_loop = "peft-loop"


def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file with a [train] table; flags override it."),
    base_model: str | None = typer.Option(None, "--base-model", help="Local save_pretrained folder or .gguf file (never downloaded)."),
    data: Path | None = typer.Option(None, "--data", help="Folder with il.parquet, iwm.parquet, sr.parquet. [default: data]"),
    schedule: ScheduleChoice | None = typer.Option(
        None,
        "--schedule",
        help="il, iwm (world modeling then IL), sr (SR mixed with IL) or experience-model (em.parquet from 'ee experience dataset').",
    ),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        "-o",
        parser=lambda value: path_given(value, "--output-dir", "the adapter's folder"),
        metavar="PATH",
        help="Where the adapter, manifest.json and loss.png go. [default: adapter]",
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Optimizer updates in total (overrides epochs)."),
    epochs: float | None = typer.Option(None, "--epochs", help="Passes over the data. [default: 1]"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Examples per device per step. [default: 4]"),
    learning_rate: float | None = typer.Option(
        None, "--learning-rate", "--lr", help="Peak learning rate of the optimizer. [default: 2e-4]"
    ),
    max_length: int | None = typer.Option(None, "--max-length", min=8, help="Tokens per example. [default: 1024]"),
    device: DeviceChoice | None = typer.Option(None, "--device", help="auto, cpu or cuda. [default: auto]"),
    backend: BackendChoice | None = typer.Option(None, "--backend", help="trl (SFTTrainer) or peft-loop (plain loop). [default: trl]"),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the LoRA initialization and data order. [default: 0]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars and the summary table."),
    as_json: bool = JsonOption,
) -> None:
    """Train a LoRA adapter on the base model with the il, iwm, sr or experience-model schedule.

    Settings come from the [train] table of --config; flags override it. Only in the table: lora_r (8), lora_alpha
    (16), lora_dropout (0.05), target_modules (q_proj and v_proj where the base has them), lr_scheduler (linear),
    gradient_accumulation (1), iwm_share (0.5: the most of an iwm run the world-modeling stage takes), packing (false),
    bf16 and gradient_checkpointing (on for a CUDA GPU that has them), num_threads (torch's threads; 1 on a CPU),
    logging_steps (1), max_lost_context_share (0.1: warn when more of a dataset's rows lose more than older turns to
    max_length) and base_cache_dir (where a GGUF base is converted once)."""
    from ee_middleware.trainers.training import TrainConfig
    from ee_middleware.trainers.training import train as run_training
    from ee_middleware.trainers.training.errors import MissingDatasetError

    cfg = None
    written_before = False
    try:
        cfg = TrainConfig.load(
            config,
            base_model=base_model,
            data=data,
            schedule=schedule.value if schedule else None,
            output_dir=output_dir,
            max_steps=max_steps,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            device=device.value if device else None,
            backend=backend.value if backend else None,
            seed=seed,
        )
        written_before = _holds_adapter(cfg.output_dir)
        try:
            with warnings_as_lines(), library_bars_off(enabled=not progress or as_json):
                result = run_training(cfg, progress=progress and not as_json)
        except MissingDatasetError as exc:
            raise exc.named_by(_data_setting(ctx, config)) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (termination_as_interrupt): exit 130
        raise interrupted(_interrupted_text(cfg, interrupt_name(exc), written_before)) from exc
    except MissingSettingError as exc:  # a usage error (the command's usage line, exit 2), as ee's other jobs say it
        raise typer.BadParameter(str(exc)) from exc
    except EEError as exc:  # said here for the standalone app too; --json's error object names its type
        from ee_middleware.cli.app import fail

        fail(str(exc), exc)
    if as_json:
        print_json({"adapter_dir": str(result.adapter_dir), **result.metrics})
    elif not progress:
        typer.echo(str(result.adapter_dir))


def _holds_adapter(folder: Path) -> bool:
    from ee_middleware.trainers.training.api import ADAPTER_FILES

    return all((Path(folder) / name).is_file() for name in ADAPTER_FILES)


def _interrupted_text(cfg: Any, signal_name: str, written_before: bool) -> str:
    """What the line of a training run stopped by a signal says (:func:`~ee_middleware.cli.common.interrupted`), as
    ``ee replay run`` and ``ee eval run`` say theirs: whether the adapter was written, and that the same command trains
    again from the start (a run keeps no checkpoint)."""
    if cfg is None:
        said = "before it started training"
    elif not written_before and _holds_adapter(cfg.output_dir):  # stopped after the adapter was renamed into place
        return f"training stopped ({signal_name}) after the adapter was written to {cfg.output_dir}; it is complete."
    else:
        said = f"before the adapter was written: nothing was written to {cfg.output_dir}"
    return f"training stopped ({signal_name}) {said}. Training keeps no checkpoints: the same command starts it again from the beginning."


def _data_setting(ctx: typer.Context, config: Path | None) -> str:
    """The setting that named the data folder, as an error about it says it."""
    if getattr(ctx.get_parameter_source("data"), "name", None) == "COMMANDLINE":
        return "--data"
    if config is not None:
        from ee_middleware._toml import read_toml_table

        if "data" in read_toml_table(config, "train"):
            return f"data in [train] of {config}"
    return "--data (default: data; or data in [train])"


def register(root: typer.Typer) -> None:
    """Add ``ee train`` to the root app."""
    root.command(
        "train",
        epilog=examples(
            "ee train --config train.toml",
            "ee train --base-model ./models/smollm2 --data ./data --schedule il --output-dir ./out/il --max-steps 200",
        ),
    )(train)


app = typer.Typer(help="Train a LoRA adapter.", add_completion=False, pretty_exceptions_enable=False)
register(app)
