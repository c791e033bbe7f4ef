"""Training with progress off prints none of the ``datasets`` library's bars (S14 D9: trl's "Truncating train dataset"
and "Dropping fully masked examples" reached ``ee improve --no-progress``'s stderr), and leaves that library's global
switch as the caller had it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.trainers.training import TrainConfig, train

datasets = pytest.importorskip("datasets")


def _train(base: Path, data: Path, out: Path, *, progress: bool) -> None:
    train(TrainConfig(base_model=str(base), data=data, output_dir=out, batch_size=4, max_steps=1, seed=0), progress=progress)


def test_training_without_progress_prints_no_datasets_bars_and_restores_the_switch(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert datasets.is_progress_bar_enabled()
    _train(tiny_model_dir, data_dir, tmp_path / "quiet", progress=False)
    err = capfd.readouterr().err
    assert "Truncating train dataset" not in err and "examples/s" not in err, err
    assert datasets.is_progress_bar_enabled(), "the caller's setting (bars on) must be restored"


def test_a_caller_that_turned_the_datasets_bars_off_keeps_them_off() -> None:
    from ee_middleware.trainers.training.backends import _datasets_bars_off

    datasets.disable_progress_bars()
    try:
        with _datasets_bars_off(datasets, enabled=True):
            assert not datasets.is_progress_bar_enabled()
        assert not datasets.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bars()
    with _datasets_bars_off(datasets, enabled=False):  # progress on: left as it is
        assert datasets.is_progress_bar_enabled()
