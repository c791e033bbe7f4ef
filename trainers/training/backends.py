"""Two ways to run one stage of optimizer updates on a LoRA-wrapped model.

- ``trl``: trl's ``SFTTrainer`` on pre-tokenized examples (``input_ids`` + ``labels`` with ``-100`` on
  prompt tokens, which trl uses as is), so the completion-only loss is exact. It brings accelerate:
  the same code runs on one CPU, one GPU, or many GPUs under ``accelerate launch`` / ``torchrun``.
- ``peft-loop``: a plain PyTorch loop (AdamW, same schedule and gradient clipping as the Trainer's
  defaults), single process; a baseline for throughput comparisons.

Each stage has its own optimizer and learning-rate schedule over its own number of updates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.trainers.training.config import TrainConfig
from ee_middleware.trainers.training.render import Example

MAX_GRAD_NORM = 1.0  # the Trainer's default, used by both backends


@dataclass
class StageRun:
    """What one stage did: losses per optimizer update (global step numbers), tokens, time."""

    name: str
    steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Runtime:
    """Settings resolved for the device: where to train, in which precision, with which tricks."""

    device: str
    bf16: bool
    gradient_checkpointing: bool
    progress: bool


def run_stage(
    backend: str,
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    steps: int,
    config: TrainConfig,
    runtime: Runtime,
    *,
    name: str,
    offset: int,
) -> StageRun:
    """Run ``steps`` optimizer updates of stage ``name`` with ``backend``; step numbers start after ``offset``."""
    runner: Callable[..., StageRun] = {"trl": _run_trl, "peft-loop": _run_loop}[backend]
    started = time.perf_counter()
    run = runner(model, tokenizer, examples, steps, config, runtime, name=name, offset=offset)
    run.seconds = time.perf_counter() - started
    return run


def _run_trl(
    model: Any, tokenizer: Any, examples: list[Example], steps: int, config: TrainConfig, runtime: Runtime, *, name: str, offset: int
) -> StageRun:
    import datasets
    import transformers
    import trl

    run = StageRun(name)

    class _Record(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # the stage's last update is logged too (the mean since the last log), as the peft-loop backend does: the
            # Trainer logs every logging_steps only, so a stage shorter than that (an iwm schedule's IWM stage of 1-2
            # updates) recorded no loss at all, and a longer one lost its last partial window
            if state.global_step >= state.max_steps:
                control.should_log = True

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                run.losses.append((offset + state.global_step, float(logs["loss"])))

    data = datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})
    on_terminal = _on_terminal()
    with tempfile.TemporaryDirectory(prefix="ee-train-") as scratch:
        args = trl.SFTConfig(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_scheduler,
            warmup_steps=0,
            max_grad_norm=MAX_GRAD_NORM,
            logging_steps=config.logging_steps,
            save_strategy="no",
            report_to="none",
            seed=config.seed,
            data_seed=config.seed,
            bf16=runtime.bf16,
            **_checkpointing_args(transformers, runtime.gradient_checkpointing),
            use_cpu=runtime.device == "cpu",
            max_length=config.max_length,
            packing=config.packing,
            completion_only_loss=True,
            include_num_input_tokens_seen="non_padding",
            disable_tqdm=not runtime.progress or not on_terminal,
            dataloader_num_workers=0,
        )
        with _datasets_bars_off(datasets, enabled=not runtime.progress):  # (trl's dataset passes: "Truncating train dataset")
            trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[_Record()])
            if not runtime.progress:
                trainer.remove_callback(transformers.PrinterCallback)
            elif not on_terminal:  # a log file: about twenty plain lines, not a bar redrawn and a dict per step
                trainer.remove_callback(transformers.PrinterCallback)
                trainer.add_callback(_progress_lines(transformers, name, steps))
            else:  # the bar's log lines go where the bar goes: stdout holds the command's answer alone
                trainer.remove_callback(transformers.ProgressCallback)
                trainer.add_callback(_progress_on_stderr(transformers))
            trainer.train()
        run.steps = trainer.state.global_step
        run.tokens = int(trainer.state.num_input_tokens_seen)
    return run


@contextlib.contextmanager
def _datasets_bars_off(datasets: Any, *, enabled: bool) -> Iterator[None]:
    """With ``enabled`` (progress off), the ``datasets`` library's progress bars are off for the duration: trl maps and
    filters the training set through it ("Truncating train dataset", "Dropping fully masked examples from train
    dataset"), each a bar on stderr that ``--no-progress`` should not show. Its switch is global (``datasets.
    disable_progress_bars``), so it is put back on the way out, and left alone where the caller turned the bars off
    already or forced them on (``HF_DATASETS_DISABLE_PROGRESS_BARS=0``, which the library gives priority)."""
    forced_on = getattr(getattr(datasets, "config", None), "HF_DATASETS_DISABLE_PROGRESS_BARS", None) is False
    if not enabled or forced_on or not datasets.is_progress_bar_enabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _progress_on_stderr(transformers: Any) -> Any:
    """transformers' progress bar with its log lines (``{'loss': ...}``) on stderr beside the bar: its own
    ``ProgressCallback`` writes them with ``tqdm.write``, to stdout, into the command's answer."""
    import sys

    class _ProgressOnStderr(transformers.ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"}
                self.training_bar.write(str(shown), file=sys.stderr)

    return _ProgressOnStderr()


def _on_terminal() -> bool:
    """Whether progress goes to a terminal (stderr): elsewhere (a job's log) a redrawn bar is a line per redraw; a closed
    stderr is none (:func:`~ee_middleware._console.is_terminal`)."""
    import sys

    from ee_middleware._console import is_terminal

    return is_terminal(sys.stderr)


PROGRESS_LINES = 20
"""About how many lines the trl backend writes per stage off a terminal."""


def _progress_lines(transformers: Any, stage: str, steps: int) -> Any:
    """Off a terminal: a line on stderr every ~1/:data:`PROGRESS_LINES` of the stage's steps (and at its last), with the
    loss it logged (``stage il: step 15/300, loss 7.654``), instead of tqdm's bar and a dict line per logged step."""
    import sys

    every = max(1, steps // PROGRESS_LINES)

    class _ProgressLines(transformers.TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            step = state.global_step
            if state.is_world_process_zero and logs and "loss" in logs and (step % every == 0 or step >= state.max_steps):
                sys.stderr.write(f"stage {stage}: step {step}/{state.max_steps}, loss {float(logs['loss']):.4g}\n")

    return _ProgressLines()


def _checkpointing_args(transformers: Any, enabled: bool) -> dict[str, Any]:
    """The checkpointing switch under its current name (transformers 5.2x renamed it; the old one warns).

    Always explicit: trl's configs default it to on, which only slows training down on a CPU.
    """
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}} if enabled else {name: False}


def _run_loop(
    model: Any, tokenizer: Any, examples: list[Example], steps: int, config: TrainConfig, runtime: Runtime, *, name: str, offset: int
) -> StageRun:
    import torch
    import transformers

    run = StageRun(name)
    device = torch.device(runtime.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    if config.lr_scheduler == "linear":
        scheduler = transformers.get_linear_schedule_with_warmup(optimizer, 0, steps)
    else:
        scheduler = transformers.get_constant_schedule(optimizer)
    batches = _batches(examples, config.batch_size, config.seed)
    model.train()
    progress = StageProgress(runtime.progress, steps, name)
    window: list[float] = []
    for step in range(1, steps + 1):
        micro = [next(batches) for _ in range(config.gradient_accumulation)]
        items = sum(sum(1 for label in e.labels[1:] if label != -100) for batch in micro for e in batch)
        total = 0.0
        for batch in micro:
            input_ids, attention, labels = _collate(batch, pad_id, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=runtime.bf16):
                logits = model(input_ids=input_ids, attention_mask=attention).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
            ) / max(items, 1)
            loss.backward()
            total += loss.item()
            run.tokens += int(attention.sum())
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(total)
        if step % config.logging_steps == 0 or step == steps:
            run.losses.append((offset + step, sum(window) / len(window)))
            window = []
        progress.step(step, total)
    progress.close()
    run.steps = steps
    model.eval()
    return run


def _batches(examples: list[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    """Micro-batches forever: each pass is a fresh shuffle."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield [examples[i] for i in order[start : start + batch_size]]


def _collate(batch: list[Example], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return ids.to(device), attention.to(device), labels.to(device)


class StageProgress:
    """The peft-loop backend's progress through a stage's ``total`` steps: on a terminal a bar; elsewhere (a job's log)
    a line on stderr every ~1/:data:`PROGRESS_LINES` of the steps and at the last, as the trl backend writes them
    (``stage il: step 15/300, loss 7.654``): a bar redrawn into a file was one line growing by a redraw a step."""

    def __init__(self, enabled: bool, total: int, name: str) -> None:
        self.enabled, self.total, self.name = enabled, total, name
        self.every = max(1, total // PROGRESS_LINES)
        self.bar: Any = None
        if enabled and _on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"train {name}", unit="step")

    def step(self, step: int, loss: float) -> None:
        """Step ``step`` (from 1) is done with ``loss``."""
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (step % self.every == 0 or step >= self.total):
            import sys

            sys.stderr.write(f"stage {self.name}: step {step}/{self.total}, loss {loss:.4g}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch running out of GPU or host memory."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
