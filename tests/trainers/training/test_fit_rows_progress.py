"""Rendering and fitting every row to ``max_length`` happens before the first step and takes about 0.1 s per long row on
a CPU core (minutes on a large build, whatever ``--max-steps`` is): with progress on it shows a bar on stderr (S15: the
README's ``ee train`` printed nothing for minutes), with progress off none."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.trainers.training import TrainConfig, train


def _train(base: Path, data: Path, out: Path, *, progress: bool) -> None:
    train(TrainConfig(base_model=str(base), data=data, output_dir=out, batch_size=4, max_steps=1, seed=0), progress=progress)


@pytest.mark.parametrize("progress", [True, False])
def test_fitting_rows_shows_a_bar_only_with_progress(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], progress: bool
) -> None:
    _train(tiny_model_dir, data_dir, tmp_path / "out", progress=progress)
    err = capfd.readouterr().err
    assert ("rows to max_length 1024" in err) is progress, err
