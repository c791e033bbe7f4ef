"""``seed`` makes a training run repeatable, with both backends; and the trl backend records the loss of a stage
shorter than ``logging_steps``, as the peft-loop backend does (sweep rtrain findings 1 and 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.trainers.training import TrainConfig, train

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.torch")


def _weights(adapter: Path) -> dict[str, Any]:
    return safetensors.load_file(str(adapter / "adapter_model.safetensors"))


def _train(base: Path, data: Path, out: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {"base_model": str(base), "data": data, "output_dir": out, "max_steps": 1, "batch_size": 2, "max_length": 256}
    return train(TrainConfig(**(values | overrides)), progress=False)


@pytest.mark.parametrize("backend", ["trl", "peft-loop"])
def test_the_same_seed_gives_the_same_adapter_and_another_seed_another(
    backend: str, tiny_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Was: lora_A's initialisation came from torch's global generator, never seeded before the adapter was made, so two
    runs with ``--seed 0`` differed as much as runs with seeds 0 and 1 (the first loss matched: lora_B starts at 0)."""
    torch.manual_seed(12345)  # the process's generator in some state: the run must not depend on it
    first = _weights(_train(tiny_model_dir, data_dir, tmp_path / "a", seed=7, backend=backend).adapter_dir)
    torch.rand(100)  # ... nor on what was drawn in between
    second = _weights(_train(tiny_model_dir, data_dir, tmp_path / "b", seed=7, backend=backend).adapter_dir)
    other = _weights(_train(tiny_model_dir, data_dir, tmp_path / "c", seed=8, backend=backend).adapter_dir)
    assert first.keys() == second.keys() == other.keys() and any("lora_A" in name for name in first)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert all(not torch.equal(first[name], other[name]) for name in first if "lora_A" in name)


def test_a_stage_shorter_than_logging_steps_records_its_loss_with_trl(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """Was: the trl backend logged every ``logging_steps`` updates only, so with logging_steps = 5 and 3 updates (or an iwm
    schedule's IWM stage of 1-2 updates) no loss was recorded: first_loss/final_loss null, an empty loss.png."""
    result = _train(tiny_model_dir, data_dir, tmp_path / "iwm", schedule="iwm", max_steps=3, logging_steps=5)
    stages = result.metrics["stages"]
    assert [stage["steps"] for stage in stages] == [1, 2], stages
    assert all(stage["first_loss"] is not None and stage["final_loss"] is not None for stage in stages), stages
    assert [step for step, _ in result.manifest["losses"]] == [1, 3], "each stage's last update, at its global step"
    assert result.metrics["first_loss"] is not None and result.metrics["final_loss"] is not None

    long = _train(tiny_model_dir, data_dir, tmp_path / "il", max_steps=7, logging_steps=3)
    assert [step for step, _ in long.manifest["losses"]] == [3, 6, 7], "every logging_steps, and the last partial window"
    loop = _train(tiny_model_dir, data_dir, tmp_path / "il-loop", max_steps=7, logging_steps=3, backend="peft-loop")
    assert [step for step, _ in loop.manifest["losses"]] == [3, 6, 7], "the same steps as the peft-loop backend logs"


def test_the_adapter_config_is_written_alike_in_every_process(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """Was: peft wrote target_modules from a set, in an order Python's string hashing (PYTHONHASHSEED, random per process)
    decides, so two runs of byte-identical weights got two content hashes: two registry versions of one adapter
    (sweep rimprove finding 1)."""
    import json

    modules = ["v_proj", "q_proj", "o_proj", "k_proj", "up_proj", "gate_proj", "down_proj"]
    adapter = _train(tiny_model_dir, data_dir, tmp_path / "all", target_modules=modules).adapter_dir
    written = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert written == sorted(modules), written


@pytest.mark.parametrize("backend", ["trl", "peft-loop"])
def test_the_same_rows_in_another_order_give_the_same_adapter(backend: str, tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """A dataset file's row order follows the order the store's trajectories were written in (ingest order, several
    recording processes): the same store content written in another order gave other batches, another adapter and
    another loss curve with the same seed. Rows are trained in the order of their (content-derived) ids."""
    import polars as pl

    reordered = tmp_path / "reordered"
    reordered.mkdir()
    for path in data_dir.glob("*.parquet"):
        frame = pl.read_parquet(path)
        assert frame.height > 1
        frame.reverse().write_parquet(reordered / path.name)
    first = _train(tiny_model_dir, data_dir, tmp_path / "a", seed=7, backend=backend, max_steps=2)
    second = _train(tiny_model_dir, reordered, tmp_path / "b", seed=7, backend=backend, max_steps=2)
    assert first.manifest["losses"] == second.manifest["losses"]
    weights, again = _weights(first.adapter_dir), _weights(second.adapter_dir)
    for name in weights:
        assert torch.equal(weights[name], again[name]), name


def test_the_peft_loop_backend_writes_progress_lines_off_a_terminal(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before: a tqdm bar redrawn into the log file (stderr off a terminal), one line growing by a carriage return a
    step; the trl backend writes lines there. Now both write `stage il: step N/M, loss X` about 20 times a stage."""
    values: dict[str, Any] = {"base_model": str(tiny_model_dir), "data": data_dir, "output_dir": tmp_path / "out", "max_length": 256}
    train(TrainConfig(**values, max_steps=7, batch_size=2, backend="peft-loop"), progress=True)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("stage il: step ")]
    assert [line.split(",")[0] for line in lines] == [f"stage il: step {n}/7" for n in range(1, 8)], err
    assert "train il" not in err and not any("\r" in line for line in lines), "no bar of its own drawn into the log"
