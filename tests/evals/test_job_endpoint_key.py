"""An [eval] table that spells the --endpoint flag as a key is told the key those flags make: model = "openai:URL#NAME"."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob

URL = "http://127.0.0.1:8000/v1"


def test_an_endpoint_key_is_told_the_model_key_it_goes_into_with_the_files_own_values(tmp_path: Path) -> None:
    """Before: "endpoint: Extra inputs are not permitted" and no hint, while the README says a key spelled as its flag
    gets "did you mean ...?" (found by sweep s19)."""
    config = tmp_path / "eval.toml"
    config.write_text(f'[eval]\nsuites = ["bfcl:simple:1"]\nendpoint = "{URL}"\nmodel = "base"\nout = "run"\ntimeout = 30\n')
    with pytest.raises(ConfigError) as caught:
        EvalJob.load(config)
    message = str(caught.value)
    assert message.startswith("Invalid eval configuration: endpoint: "), message
    assert 'model = "openai:URL#NAME"' in message and f'model = "openai:{URL}#base"' in message, message
    assert "timeout: Extra inputs are not permitted (did you mean timeout_s?)" in message, message  # the file's other problems


def test_an_endpoint_key_alone_gets_the_hint_with_the_name_left_to_write(tmp_path: Path) -> None:
    config = tmp_path / "eval.toml"
    config.write_text(f'[eval]\nsuites = ["bfcl:simple:1"]\nendpoint = "{URL}"\nout = "run"\n')
    with pytest.raises(ConfigError) as caught:
        EvalJob.load(config, model="noop")
    message = str(caught.value)
    assert f'model = "openai:{URL}#NAME"' in message and "; " not in message.removeprefix("Invalid eval configuration: "), message
