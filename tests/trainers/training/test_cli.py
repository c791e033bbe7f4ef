"""``ee train`` through the Typer app, with a TOML config and flag overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.train_cmds import app


def test_train_command_runs_from_a_toml_config(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapters" / "v1"
    toml = tmp_path / "train.toml"
    toml.write_text(
        f'[train]\nbase_model = "{tiny_model_dir}"\ndata = "{data_dir}"\nschedule = "iwm"\nmax_steps = 50\nbatch_size = 8\n'
        f'output_dir = "{tmp_path / "ignored"}"\nlearning_rate = 0.01\n'
    )
    result = CliRunner().invoke(app, ["--config", str(toml), "--max-steps", "4", "--output-dir", str(out), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["adapter_dir"] == str(out.resolve()) and metrics["steps"] == 4
    assert [s["name"] for s in metrics["stages"]] == ["iwm", "il"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "manifest.json").is_file()
    assert not (tmp_path / "ignored").exists()


def test_train_command_errors_are_one_red_line(tmp_path: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["--base-model", str(tmp_path / "missing"), "--data", str(data_dir), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "error: No base model at" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["--data", str(data_dir)])
    assert result.exit_code == 2 and "--base-model" in result.stderr  # a usage error, as the other jobs' missing settings


def test_datasets_show_reports_what_a_max_length_would_cut(tiny_model_dir: Path, data_dir: Path) -> None:
    from ee_middleware.cli.app import app as root

    whole = CliRunner().invoke(
        root, ["datasets", "show", str(data_dir), "--tokenizer", str(tiny_model_dir), "--max-length", "4096", "--json"]
    )
    assert whole.exit_code == 0, whole.output
    assert json.loads(whole.stdout)["il"]["budget"]["over_budget"] == 0
    short = CliRunner().invoke(
        root, ["datasets", "show", str(data_dir), "--tokenizer", str(tiny_model_dir), "--max-length", "96", "--json"]
    )
    assert short.exit_code == 0, short.output
    budget = json.loads(short.stdout)["il"]["budget"]
    assert budget["max_length"] == 96 and budget["rows"] == 16 and budget["over_budget"] > 0
    assert budget["older_turns_dropped"] + budget["compact_tools"] + budget["cut_from_left"] + budget["dropped_completion_too_long"] > 0
    assert budget["over_budget_share"] == round(budget["over_budget"] / budget["rows"], 4)
    text = CliRunner().invoke(
        root, ["datasets", "show", str(data_dir), "--tokenizer", str(tiny_model_dir), "--max-length", "96", "-n", "0"]
    )
    assert "at max_length 96:" in text.stdout and "cut from the left" in text.stdout
    no_tokenizer = CliRunner().invoke(root, ["datasets", "show", str(data_dir), "--max-length", "96"])
    assert no_tokenizer.exit_code == 1 and "--max-length needs --tokenizer" in no_tokenizer.stderr


@pytest.mark.parametrize("terminal", [True, False], ids=["on_a_terminal", "off_a_terminal"])
def test_train_progress_keeps_trl_log_lines_off_stdout(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, terminal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With progress on (the default), trl's per-log dicts ({'loss': ...}) went to stdout through tqdm.write, mixed into the
    command's answer (the summary table): they belong with the bars on stderr. Off a terminal (a job's log, sweep Z), the
    bar redrawn at every step and a dict line per logged step (120 KB for 300 steps) are a plain line every ~1/20 of the
    stage instead."""
    from ee_middleware.trainers.training import backends

    monkeypatch.setattr(backends, "_on_terminal", lambda: terminal)
    out = tmp_path / "adapter"
    result = CliRunner().invoke(
        app, ["--base-model", str(tiny_model_dir), "--data", str(data_dir), "--schedule", "il", "--max-steps", "2", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "LoRA training" in result.stdout
    assert "'loss'" not in result.stdout and "'train_runtime'" not in result.stdout
    if terminal:
        assert "'train_runtime'" in result.stderr
    else:
        lines = [line for line in result.stderr.splitlines() if line.startswith("stage il: ")]
        assert [line.split(", loss")[0] for line in lines] == ["stage il: step 1/2", "stage il: step 2/2"], result.stderr
        assert "'loss':" not in result.stderr and "'train_runtime'" not in result.stderr, "no dict line per logged step"


def test_a_missing_dataset_names_the_setting_that_gave_its_folder_and_the_command_that_builds_it(tmp_path: Path, monkeypatch) -> None:
    # Was: "No IL dataset at nodata/il.parquet. Build it first (ee_middleware.trainers.datasets), or point --data at ...":
    # a module, not the command; --data even when the folder came from [train]; the relative path never resolved.
    # Relative paths are read from the working directory and said absolute (sweep rtrain 7).
    from ee_middleware.cli.app import app as root

    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "train.toml"
    toml.write_text('[train]\nbase_model = "base"\ndata = "nodata"\n')
    cases = [
        (["--config", str(toml)], f"data in [train] of {toml} names the folder {tmp_path / 'nodata'}"),
        (["--config", str(toml), "--data", "other"], f"--data names the folder {tmp_path / 'other'}"),
        (["--base-model", "base"], f"--data (default: data; or data in [train]) names the folder {tmp_path / 'data'}"),
    ]
    for args, setting in cases:
        result = CliRunner().invoke(root, ["train", *args, "-o", str(tmp_path / "o")])
        assert result.exit_code == 1, result.output
        error = " ".join(result.stderr.split())
        folder = setting.rsplit(" ", 1)[-1]
        assert error.startswith(f"error: No IL dataset at {folder}/il.parquet: {setting}"), error
        assert f"ee datasets build --store STORE --out {folder}" in error and "ee_middleware.trainers" not in error


def test_a_run_that_fails_at_once_leaves_none_of_the_folders_it_created(tmp_path: Path) -> None:
    """Review of 7c14fe1: holding the output folder made its parent folders before any check, so a run that failed at
    once (a mistyped --data) left empty folders behind (adapters/nightly/<date>/); a folder that existed stays."""
    from ee_middleware.cli.app import app as root

    (tmp_path / "adapters").mkdir()
    out = tmp_path / "adapters" / "nightly" / "2026-12-01" / "adapter"
    result = CliRunner().invoke(root, ["train", "--base-model", str(tmp_path / "base"), "--data", str(tmp_path / "nodata"), "-o", str(out)])
    assert result.exit_code == 1 and "No IL dataset" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["adapters"]


def test_the_manifest_names_the_datasets_by_absolute_paths(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Before: ``datasets.<kind>.path`` and ``config.data`` were the paths as typed (``../data/iwm.parquet``), relative to
    where ``ee train`` ran, beside an absolute base-model path and adapter_dir: read from the adapter folder (or a
    registry copy), the lineage pointed nowhere."""
    import os

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = os.path.relpath(data_dir, work)
    result = CliRunner().invoke(
        app, ["--base-model", str(tiny_model_dir), "--data", data, "--schedule", "iwm", "--max-steps", "1", "-o", "../adapter", "--json"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "adapter" / "manifest.json").read_text())
    assert manifest["config"]["data"] == str(data_dir.resolve())
    assert {kind: d["path"] for kind, d in manifest["datasets"].items()} == {
        kind: str((data_dir / f"{kind}.parquet").resolve()) for kind in ("iwm", "il")
    }


def test_train_told_not_to_draw_progress_draws_no_library_bar(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """Sweep B, finding 8c: ``ee train --no-progress --json`` still wrote transformers' "Loading weights" bar to stderr
    (ee improve turned it off already)."""
    args = ["--base-model", str(tiny_model_dir), "--data", str(data_dir), "--max-steps", "1", "--device", "cpu"]
    for extra in (["--no-progress"], ["--json"]):
        result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / extra[0].strip("-")), *extra])
        assert result.exit_code == 0, result.output
        assert "Loading weights" not in result.stderr and "\r" not in result.stderr, result.stderr
