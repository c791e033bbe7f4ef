"""What a training run leaves next to its adapter: ``manifest.json``, ``loss.png``, and a summary table."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_write_text
from ee_middleware.messages import finite_or_null

MANIFEST_SCHEMA_VERSION = 1
_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the training stack (``None`` for a missing one)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


MANIFEST_FILE = "manifest.json"
LOSS_PLOT_FILE = "loss.png"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (a reader never sees half a file)."""
    path = folder / MANIFEST_FILE
    # a loss that is NaN at one step (fp16 overflow) is null: bare NaN is no JSON a strict reader takes
    atomic_write_text(path, json.dumps(finite_or_null(manifest), indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n")
    return path


RENDER_CUTS_FILE = "render_cuts.jsonl"


def write_render_cuts(path: Path, cuts: dict[str, list[dict[str, Any]]]) -> Path:
    """One JSON line per row the truncation policy fitted: dataset kind, row id, tokens before and after, what it lost."""
    lines = [json.dumps({"kind": kind, **cut}) for kind, rows in cuts.items() for cut in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def plot_loss(path: Path, losses: list[tuple[int, float]], boundaries: list[tuple[int, str]], title: str) -> Path:
    """Training loss per logged step; a dashed line where each later stage starts."""
    from ee_middleware._plots import quiet_matplotlib_config

    quiet_matplotlib_config()  # a home it cannot write: no warnings in every log
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    if losses:
        steps, values = zip(*losses, strict=True)
        axes.plot(steps, values, marker="." if len(steps) < 60 else None, linewidth=1.2)
    for step, label in boundaries:
        axes.axvline(step + 0.5, color="grey", linestyle="--", linewidth=1)
        axes.annotate(label, (step + 0.5, 1), xycoords=("data", "axes fraction"), xytext=(4, -14), textcoords="offset points", fontsize=8)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss (completion tokens)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path


def print_summary(manifest: dict[str, Any]) -> None:
    """A table of the run's metrics, per stage and in total."""
    from rich.table import Table

    from ee_middleware._console import make_console

    metrics = manifest["metrics"]
    table = Table(title=f"LoRA training: schedule {manifest['schedule']['name']} ({metrics['backend']}, {metrics['device']})")
    for column in ("stage", "steps", "tokens", "tokens/s", "first loss", "last loss", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in metrics["stages"]:
        table.add_row(
            stage["name"],
            str(stage["steps"]),
            f"{stage['tokens']:,}",
            f"{stage['tokens_per_s']:.1f}",
            _fmt(stage["first_loss"]),
            _fmt(stage["final_loss"]),
            f"{stage['seconds']:.1f}",
        )
    table.add_row(
        "total",
        str(metrics["steps"]),
        f"{metrics['tokens']:,}",
        f"{metrics['tokens_per_s']:.1f}",
        _fmt(metrics["first_loss"]),
        _fmt(metrics["final_loss"]),
        f"{metrics['train_seconds']:.1f}",
        style="bold",
    )
    console = make_console()
    console.print(table)
    cut = sum(d["render"]["truncated"] for d in manifest["datasets"].values())
    dropped = sum(
        d["render"]["dropped_too_long"] + d["render"]["dropped_empty"] + d["render"].get("dropped_control_tokens", 0)
        for d in manifest["datasets"].values()
    )
    console.print(f"adapter: {manifest['adapter_dir']}  (prompts cut to fit max_length: {cut}, rows dropped: {dropped})")


def loss_text(metrics: dict[str, Any], digits: int = 3) -> str:
    """``loss FIRST -> LAST`` of a training's metrics, per stage where it had several (``loss iwm 7.615 -> 7.629, il
    7.650 -> 7.634``): the first loss of one stage and the last of another measure different objectives on different rows,
    and read side by side they said the loss rose or fell where neither stage's did."""

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    stages = [s for s in metrics.get("stages") or [] if s.get("steps")]
    if len(stages) < 2:
        return f"loss {shown(metrics.get('first_loss'))} -> {shown(metrics.get('final_loss'))}"
    return "loss " + ", ".join(f"{s['name']} {shown(s.get('first_loss'))} -> {shown(s.get('final_loss'))}" for s in stages)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
