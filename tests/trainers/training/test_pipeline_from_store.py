"""The whole path on real parts: BFCL experts -> replay -> IL/IWM/SR datasets -> LoRA adapters for each schedule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.training import ContextBudgetWarning, TrainConfig, train

pytestmark = pytest.mark.heavy  # replay, datasets and LoRA training per test: make test-heavy


@pytest.fixture(scope="module")
def built_data(replayed_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "data"
    build_datasets(DatasetConfig.load(store=replayed_store_template, out=out))
    return out


@pytest.mark.parametrize("schedule", ["il", "iwm", "sr"])
def test_datasets_built_from_a_replayed_store_train_an_adapter(
    built_data: Path, tiny_model_dir: Path, tmp_path: Path, schedule: str
) -> None:
    config = TrainConfig.load(
        base_model=str(tiny_model_dir),
        data=str(built_data),
        schedule=schedule,
        output_dir=str(tmp_path / f"adapter-{schedule}"),
        max_steps=4,
        batch_size=2,
        max_length=512,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    # BFCL states run to thousands of tokens with this tiny test tokenizer: at 512 most rows cannot keep
    # full tool schemas, and training says so.
    with pytest.warns(ContextBudgetWarning, match="lose more than older turns at max_length=512"):
        result = train(config, progress=False)
    assert (result.adapter_dir / "adapter_config.json").exists() and (result.adapter_dir / "adapter_model.safetensors").exists()
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 4
    # Lineage: the manifest names exactly the files this schedule trained on, each by path, content hash and row count.
    trained_on = manifest["datasets"]
    assert set(trained_on) == ({"il"} if schedule == "il" else {schedule, "il"})
    for kind, entry in trained_on.items():
        path = built_data / f"{kind}.parquet"
        assert Path(entry["path"]).resolve() == path.resolve()
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["rows"] == pl.read_parquet(path).height > 0
        render = entry["render"]
        assert render["rows"] == entry["rows"] == render["examples"] + render["dropped_too_long"] + render["dropped_empty"]
