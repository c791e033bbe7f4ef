"""A dataset file gone from a run's datasets folder fails ``ee improve``'s train stage saying what to do in the job's
terms: it named ``--data (or data in [train])``, which ee improve sets itself and refuses in [train]."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.jobs.errors import JobError
from ee_middleware.jobs.runs import RunsDir
from ee_middleware.jobs.stages import QuietProgress, StageContext, train
from tests.jobs.scripted_stages import scripted_config


def test_a_dataset_removed_from_the_runs_folder_names_the_datasets_stage(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    config = scripted_config(tmp_path)
    runs = RunsDir(config.runs)
    run = runs.create("improve", config.describe(), "hash")
    run.write_stage("datasets", {"stage": "datasets", "status": "done", "attempt": 1, "outputs": {"rows": {"il": 8, "iwm": 8}}})
    (run.folder / "data").mkdir()  # the folder the datasets stage wrote, its files gone
    with pytest.raises(JobError) as raised:
        train(StageContext(config, run, runs, QuietProgress(), None))
    message = " ".join(str(raised.value).split())
    assert f"where run {run.id}'s datasets stage built its datasets" in message, message
    assert str(run.stage_path("datasets")) in message and "ee improve --new-run" in message and "--data" not in message
