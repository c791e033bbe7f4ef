from __future__ import annotations

import pytest

from ee_middleware.capture.config import CaptureConfig
from ee_middleware.errors import ConfigError


def test_toml_then_environment_then_arguments(tmp_path, monkeypatch):
    path = tmp_path / "ee.toml"
    path.write_text(
        '[capture]\napp = "from-toml"\nstore = "/data/exp"\nmax_observation_chars = 500\n[capture.redaction_patterns]\nticket = "T-\\\\d+"\n'
    )
    config = CaptureConfig.load(path)
    assert (config.app, config.store, config.max_observation_chars, dict(config.redaction_patterns)) == (
        "from-toml",
        "/data/exp",
        500,
        {"ticket": "T-\\d+"},
    )
    monkeypatch.setenv("EE_APP", "from-env")
    monkeypatch.setenv("EE_REDACT", "0")
    assert (CaptureConfig.load(path).app, CaptureConfig.load(path).redact) == ("from-env", False)
    assert CaptureConfig.load(path, app="from-code").app == "from-code"


def test_bad_configuration_names_the_problem(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        CaptureConfig.load(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[capture\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        CaptureConfig.load(tmp_path / "bad.toml")
    monkeypatch.setenv("EE_MAX_OBSERVATION_CHARS", "lots")
    with pytest.raises(ConfigError, match="EE_MAX_OBSERVATION_CHARS='lots' is not an integer"):
        CaptureConfig.load()
    monkeypatch.delenv("EE_MAX_OBSERVATION_CHARS")
    with pytest.raises(ConfigError, match="non-empty string"):
        CaptureConfig(app="")
