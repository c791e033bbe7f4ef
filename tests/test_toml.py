"""A job's configuration file: its own table, other jobs' tables, and the mistakes that used to run on defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.capture.config import CaptureConfig
from ee_middleware.errors import ConfigError
from ee_middleware.replay.config import ReplayConfig


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ee.toml"
    path.write_text(text)
    return path


def test_settings_outside_any_table_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = _file(tmp_path, 'k = 3\npolicy = "mutate"\n')
    with pytest.raises(ConfigError, match=r"no \[replay\] table, and k, policy are outside any table: .*Put a line \[replay\] above them"):
        ReplayConfig.load(path)
    with pytest.raises(ConfigError, match=r"no \[capture\] table, and k, policy are outside any table"):
        CaptureConfig.load(path)


def test_a_near_miss_of_the_table_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no \[replay\] table but has \[replays\]: did you mean \[replay\]\?"):
        ReplayConfig.load(_file(tmp_path, "[replays]\nk = 3\n"))


def test_a_shared_file_without_the_jobs_table_runs_on_its_defaults(tmp_path: Path) -> None:
    path = _file(tmp_path, '[improve]\nbase = "m"\n\n[datasets]\nkinds = ["il"]\n\n[capture]\napp = "shop"\n')
    assert ReplayConfig.load(path, store="s").k == ReplayConfig(store="s").k
    assert CaptureConfig.load(path).app == "shop"


def test_the_jobs_table_is_read(tmp_path: Path) -> None:
    assert ReplayConfig.load(_file(tmp_path, "[replay]\nk = 3\n"), store="s").k == 3


def test_a_misspelled_setting_is_named_with_the_setting_meant(tmp_path: Path) -> None:
    """An unknown key names the known one it is close to, in the job's table and in nested tables."""
    from ee_middleware.jobs.config import ImproveConfig

    with pytest.raises(ConfigError, match=r"worker: Extra inputs are not permitted \(did you mean workers\?\)"):
        ReplayConfig.load(_file(tmp_path, "[replay]\nworker = 2\n"), store="s")
    improve = '[improve]\nstore = "s"\napp = "a"\nregistry = "r"\nruns = "runs"\nbase_model = "m"\n'
    with pytest.raises(ConfigError, match=r"schedul: .*\(did you mean schedule\?\)"):
        ImproveConfig.load(_file(tmp_path, improve + 'schedul = "il"\n'))
    with pytest.raises(ConfigError, match=r"budgets\.max_minute: .*\(did you mean max_minutes\?\)"):
        ImproveConfig.load(_file(tmp_path, improve + "[improve.budgets]\nmax_minute = 5\n"))
    with pytest.raises(ConfigError, match=r"zzz: Extra inputs are not permitted(;|$)"):  # nothing close: no guess
        ReplayConfig.load(_file(tmp_path, "[replay]\nzzz = 2\n"), store="s")
