"""Training into an existing folder never replaces a user's files, and never writes into a model's folder (sweep rtrain
finding 2): was, ``ee train -o notes`` replaced the user's README.md (with peft's model card) and manifest.json, and
``-o`` the base model's own folder put the adapter beside its weights, so the "base" loaded with the adapter applied."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.trainers.training import TrainConfig, TrainError, train
from ee_middleware.trainers.training.api import OUTPUT_FILES


def _config(base: Path, data: Path, out: Path) -> TrainConfig:
    return TrainConfig(base_model=str(base), data=data, output_dir=out, max_steps=1, batch_size=2, max_length=256, backend="peft-loop")


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.trainers.training import api

    monkeypatch.setattr(api, "_run_stages", lambda *args, **kwargs: pytest.fail("trained before refusing the folder"))


@pytest.mark.parametrize("names", [("README.md",), ("manifest.json", "notes.txt"), ("loss.png",), ("render_cuts.jsonl",)])
def test_a_folder_holding_a_file_the_run_writes_is_refused_before_training(
    names: tuple[str, ...], tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    for name in names:
        (out / name).write_text(f"MY {name}")
    _no_training(monkeypatch)
    taken = ", ".join(n for n in names if n != "notes.txt")
    with pytest.raises(TrainError, match=rf"notes already holds {taken}, which the adapter's folder is made of .*never replaced"):
        train(_config(tiny_model_dir, data_dir, out), progress=False)
    assert {p.name: p.read_text() for p in out.iterdir()} == {name: f"MY {name}" for name in names}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"], "no lock file or partial folder is left"


def test_the_base_models_own_folder_and_a_gguf_folder_are_refused(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    before = sorted(p.name for p in base.iterdir())
    _no_training(monkeypatch)
    with pytest.raises(TrainError, match=r"base holds a model \(config\.json and model\.safetensors\): an adapter is never written"):
        train(_config(base, data_dir, base), progress=False)
    assert sorted(p.name for p in base.iterdir()) == before

    gguf_folder = tmp_path / "gguf"
    gguf_folder.mkdir()
    (gguf_folder / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(TrainError, match=r"gguf holds a model \(m\.gguf\)"):
        train(_config(tiny_model_dir, data_dir, gguf_folder), progress=False)
    assert [p.name for p in gguf_folder.iterdir()] == ["m.gguf"]


def test_other_files_stay_beside_the_adapter_and_every_file_a_run_writes_is_guarded(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = train(_config(tiny_model_dir, data_dir, out), progress=False)
    written = {p.name for p in result.adapter_dir.iterdir()} - {"notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"
    assert written <= set(OUTPUT_FILES), f"a file the run writes is not refused when already there: {written - set(OUTPUT_FILES)}"
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "loss.png", "README.md"} <= written


def test_a_file_of_the_runs_names_put_there_during_the_run_is_kept_and_the_adapter_set_aside(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ee_middleware.trainers.training import api

    out = tmp_path / "run"
    real = api._run_stages

    def train_then_write(*args: Any, **kwargs: Any) -> Any:
        runs = real(*args, **kwargs)
        out.mkdir()
        (out / "README.md").write_text("written meanwhile")
        return runs

    monkeypatch.setattr(api, "_run_stages", train_then_write)
    with pytest.raises(
        TrainError, match=r"Not written to .*run: .*already holds README\.md.*This run's adapter is in \S+run\.unpublished-"
    ):
        train(_config(tiny_model_dir, data_dir, out), progress=False)
    assert [(p.name, p.read_text()) for p in out.iterdir()] == [("README.md", "written meanwhile")]
    [kept] = [p for p in tmp_path.iterdir() if p.name.startswith("run.unpublished-")]
    assert (kept / "adapter_model.safetensors").is_file() and (kept / "README.md").read_text() != "written meanwhile"
