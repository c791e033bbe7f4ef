"""The train config (TOML + overrides) and the schedules' step arithmetic (no model needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ee_middleware.errors import ConfigError
from ee_middleware.trainers.training import TrainConfig
from ee_middleware.trainers.training.schedule import budget, mixed, plan


def test_config_loads_toml_and_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text('[train]\nbase_model = "/models/x"\nschedule = "iwm"\ntarget_modules = ["q_proj", "k_proj"]\nepochs = 3\n')
    config = TrainConfig.load(toml, epochs=None, max_steps=7)
    assert config.schedule == "iwm" and config.epochs == 3 and config.max_steps == 7
    assert config.target_modules == ("q_proj", "k_proj")
    with pytest.raises(ValidationError):
        config.epochs = 1  # frozen


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--base-model"):
        TrainConfig.load(None)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig.load(None, base_model="x", schedule="rl")
    with pytest.raises(ConfigError, match="learning_rat"):
        TrainConfig.load(None, base_model="x", learning_rat=1e-4)


@pytest.mark.parametrize(
    ("key", "bound"),
    [("batch_size", "2147483647"), ("lora_r", "65536"), ("gradient_accumulation", "2147483647"), ("logging_steps", "2147483647")],
)
def test_a_count_too_large_for_training_is_a_config_error_naming_the_key_and_file(tmp_path: Path, key: str, bound: str) -> None:
    """Sweep U: batch_size = 99999999999999999999 failed in itertools.islice, lora_r = ... inside torch, as 'unexpected'
    errors (a bug in ee-middleware); gradient_accumulation and logging_steps were accepted and recorded."""
    toml = tmp_path / "train.toml"
    toml.write_text(f'[train]\nbase_model = "/models/x"\n{key} = 99999999999999999999\n')
    with pytest.raises(ConfigError, match=rf"{key}: Input should be less than or equal to {bound}.*train.toml"):
        TrainConfig.load(toml)


@pytest.mark.parametrize("il_rows", [1, 5, 16, 33, 100])
@pytest.mark.parametrize("iwm_rows", [1, 7, 64, 500])
@pytest.mark.parametrize("epochs", [0.5, 1, 3])
def test_iwm_schedule_spends_exactly_the_il_budget(il_rows: int, iwm_rows: int, epochs: float) -> None:
    counts = {"il": il_rows, "iwm": iwm_rows}
    il = plan("il", counts, per_update=4, epochs=epochs, max_steps=None)
    iwm = plan("iwm", counts, per_update=4, epochs=epochs, max_steps=None)
    assert sum(s.steps for s in iwm) == sum(s.steps for s in il) == budget(il_rows, 4, epochs, None)
    assert all(s.steps >= 1 for s in iwm)
    if len(iwm) == 2:
        assert iwm[0].name == "iwm" and iwm[1].name == "il"
        assert iwm[0].steps <= max(1, -(-iwm_rows // 4))  # at most one pass over the IWM rows


def test_iwm_stage_takes_at_most_its_share() -> None:
    stages = plan("iwm", {"il": 8, "iwm": 1000}, per_update=1, epochs=1, max_steps=100, iwm_share=0.3)
    assert [s.steps for s in stages] == [30, 70]


def test_sr_mixes_sr_and_il_rows_with_the_seed() -> None:
    stages = plan("sr", {"il": 10, "sr": 6}, per_update=4, epochs=1, max_steps=None)
    assert [(s.kinds, s.steps) for s in stages] == [(("sr", "il"), 4)]
    items = mixed([[f"sr{i}" for i in range(6)], [f"il{i}" for i in range(10)]], seed=3)
    assert sorted(items) == sorted([f"sr{i}" for i in range(6)] + [f"il{i}" for i in range(10)])
    first_half = items[:8]
    assert any(x.startswith("sr") for x in first_half) and any(x.startswith("il") for x in first_half)
    assert items == mixed([[f"sr{i}" for i in range(6)], [f"il{i}" for i in range(10)]], seed=3)


def test_importing_training_and_its_cli_loads_no_heavy_library() -> None:
    code = (
        "import sys, ee_middleware.trainers.training, ee_middleware.cli.train_cmds; "
        "print(sorted({'torch','transformers','peft','trl'} & set(sys.modules)))"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
