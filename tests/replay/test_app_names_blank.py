"""An app name given with blanks around it is the name capture stores, and an empty one is refused, in every job that
selects trajectories by app: ``ee datasets build --app``, ``ee experience eval/dataset --app`` and ``ee curriculum
propose --app`` took ``" shop "`` (matching nothing: capture stores ``shop``) and ``""``, as replay and ee improve no
longer do."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError


def _configs(tmp_path: Path, app: str) -> list[object]:
    from ee_middleware.replay.curriculum_propose_config import CurriculumProposeConfig
    from ee_middleware.replay.experience_config import ExperienceDatasetConfig, ExperienceEvalConfig
    from ee_middleware.trainers.datasets.build import DatasetConfig

    store = str(tmp_path / "store")
    return [
        DatasetConfig.load(None, store=store, out=str(tmp_path / "ds"), app=app),
        ExperienceEvalConfig.load(None, model="openai:http://127.0.0.1:9/v1#em", store=store, app=app),
        ExperienceDatasetConfig.load(None, store=store, out=str(tmp_path / "em"), app=app),
        CurriculumProposeConfig.load(None, results=str(tmp_path), model="openai:http://127.0.0.1:9/v1#w", store=store, app=app),
    ]


def test_an_app_is_its_name_without_the_blanks_around_it(tmp_path: Path) -> None:
    assert [config.app for config in _configs(tmp_path, " shop ")] == ["shop"] * 4  # type: ignore[attr-defined]


@pytest.mark.parametrize("app", ["", "   "])
def test_an_empty_app_is_refused(tmp_path: Path, app: str) -> None:
    from ee_middleware.replay.curriculum_propose_config import CurriculumProposeConfig
    from ee_middleware.replay.experience_config import ExperienceDatasetConfig, ExperienceEvalConfig
    from ee_middleware.trainers.datasets.build import DatasetConfig

    store = str(tmp_path / "store")
    for load in (
        lambda: DatasetConfig.load(None, store=store, out=str(tmp_path / "ds"), app=app),
        lambda: ExperienceEvalConfig.load(None, model="openai:http://127.0.0.1:9/v1#em", store=store, app=app),
        lambda: ExperienceDatasetConfig.load(None, store=store, out=str(tmp_path / "em"), app=app),
        lambda: CurriculumProposeConfig.load(None, results=str(tmp_path), model="openai:http://127.0.0.1:9/v1#w", store=store, app=app),
    ):
        with pytest.raises(ConfigError, match="is empty or blank"):
            load()
