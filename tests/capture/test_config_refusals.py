"""Capture settings refused when given, not kept as something else:

- ``app_version`` as a TOML float (``1.10``) was stored as ``"1.1"`` (the version 1.1), ``nan`` as ``"nan"``;
- ``CaptureConfig.load(123)`` / ``record_experience(graph, config=123)`` raised a bare ``TypeError`` from pathlib;
- a blank ``vault`` path made a vault file named ``"  "`` and recorded it in the store's ``redaction.json``;
- an empty redaction pattern redacted nothing and was recorded in ``redaction.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware import record_experience
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.errors import ConfigError


@pytest.mark.parametrize("written", ["1.10", "nan", "2.0"])
def test_an_app_version_written_as_a_float_is_refused_with_how_to_quote_it(written: str, tmp_path: Path) -> None:
    path = tmp_path / "capture.toml"
    path.write_text(f'[capture]\napp = "shop"\napp_version = {written}\n')
    with pytest.raises(ConfigError, match=r"app_version must be text, got the number .* Write it in quotes") as caught:
        CaptureConfig.load(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match="app_version must be text"):
        CaptureConfig(app="shop", app_version=float(written))


def test_an_app_version_written_as_a_whole_number_or_text_is_still_its_text(tmp_path: Path) -> None:
    path = tmp_path / "capture.toml"
    path.write_text('[capture]\napp = "shop"\napp_version = 7\n')
    assert CaptureConfig.load(path).app_version == "7"
    assert CaptureConfig.load(path, app_version="1.10").app_version == "1.10"


@pytest.mark.parametrize("config", [123, 1.5, ["capture.toml"]])
def test_a_config_that_is_no_path_is_a_config_error_naming_the_parameter(config: Any, react_graph: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"CaptureConfig\.load's path \(record_experience's config=\) must be the path"):
        CaptureConfig.load(config)
    with pytest.raises(ConfigError, match=r"record_experience's config="):
        record_experience(react_graph, store=str(tmp_path / "experience"), config=config)


@pytest.mark.parametrize("vault", ["", "  "])
def test_a_blank_vault_path_is_refused(vault: str, react_graph: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"CaptureConfig\.vault must be a file's path or True.*empty or blank"):
        CaptureConfig(app="shop", vault=vault)
    path = tmp_path / "capture.toml"
    path.write_text(f'[capture]\napp = "shop"\nvault = "{vault}"\n')
    with pytest.raises(ConfigError, match=r"CaptureConfig\.vault"):
        CaptureConfig.load(path)
    with pytest.raises(ConfigError, match=r"CaptureConfig\.vault"):
        record_experience(react_graph, app="shop", store=str(tmp_path / "experience"), vault=vault)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.toml"], "no store, no vault file"


def test_an_empty_redaction_pattern_is_refused(react_graph: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Redaction pattern for kind 'x' is empty"):
        CaptureConfig(app="shop", redaction_patterns={"x": ""})
    path = tmp_path / "capture.toml"
    path.write_text('[capture]\napp = "shop"\n[capture.redaction_patterns]\nticket = "TCK-\\\\d+"\nx = ""\n')
    with pytest.raises(ConfigError, match=r"Redaction pattern for kind 'x' is empty.*in \[capture\.redaction_patterns\] of"):
        CaptureConfig.load(path)
    with pytest.raises(ConfigError, match=r"Redaction pattern for kind 'x' is empty"):
        record_experience(react_graph, app="shop", store=str(tmp_path / "experience"), redaction_patterns={"x": ""})
    assert not (tmp_path / "experience").exists()
    assert dict(CaptureConfig(app="shop", redaction_patterns={"ticket": "TCK-\\d+"}).redaction_patterns) == {"ticket": "TCK-\\d+"}
