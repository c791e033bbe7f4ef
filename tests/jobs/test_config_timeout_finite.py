"""``timeout_s = inf`` in ``ee improve``'s file is refused when the file is read, naming the setting and a finite value:
before, ``[improve.serving] timeout_s = inf`` and ``[eval] timeout_s = inf`` loaded (``> 0`` passes inf), the check
before the run probed with min(30, inf) and passed, and only the evaluate stage failed, after replay, datasets and
training, with the model client's error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig

IMPROVE = '[improve]\nstore = "s"\napp = "shop"\nregistry = "r"\nruns = "runs"\nbase_model = "m"\n'


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "improve.toml"
    path.write_text(IMPROVE + body)
    return path


def test_an_infinite_serving_timeout_is_refused_when_the_file_is_read(tmp_path: Path) -> None:
    path = _config(tmp_path, '[improve.serving]\nservers = ["http://127.0.0.1:9/v1"]\ntimeout_s = inf\n')
    with pytest.raises(ConfigError) as caught:
        ImproveConfig.load(path)
    message = str(caught.value)
    assert "serving.timeout_s" in message and "must be a finite number of seconds" in message, message
    assert "e.g. 600" in message and "(got inf)" in message, message


def test_an_infinite_eval_timeout_in_the_improve_file_is_refused_before_the_run(tmp_path: Path) -> None:
    """The check before a run builds every stage's configuration (the evaluate stage's as ``noop``); it fails there."""
    config = ImproveConfig.load(_config(tmp_path, "[eval]\ntimeout_s = inf\n"))
    with pytest.raises(ConfigError) as caught:
        config.check_evaluation_sandbox()
    message = str(caught.value)
    assert "timeout_s" in message and "must be a finite number of seconds" in message and "e.g. 120" in message, message


def test_a_finite_timeout_still_loads_and_reaches_the_evaluate_stage(tmp_path: Path) -> None:
    config = ImproveConfig.load(_config(tmp_path, '[improve.serving]\nservers = ["http://127.0.0.1:9/v1"]\ntimeout_s = 3600\n'))
    job = config.eval_job("openai:http://127.0.0.1:9/v1#m", tmp_path / "o", tmp_path / "split.json")
    assert (config.serving.timeout_s, job.timeout_s) == (3600.0, 3600.0)
