"""The experience sandbox's settings (``[replay.sandbox_settings]``) are checked when it is built, as every sandbox's are.

A misspelt key or a value of the wrong type went straight into ``ExperienceSandbox(**settings)``: ``ee replay run`` said
"unexpected TypeError ... a bug in ee-middleware" for ``topk = 3`` and for ``min_fidelity = 0.6``, and for
``min_fidelity = { "*" = "0.6" }`` it failed every trajectory with a bare TypeError ('<' between float and str). The
model is a scripted stand-in behind a real local HTTP server; the store holds real BFCL expert trajectories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import SandboxError
from ee_middleware.replay.sandboxes.registry import build_sandbox
from ee_middleware.store.local import LocalExperienceStore
from tests.replay.test_experience import copy_first_example


def _replay(store: Path, tmp_path: Path, sandbox: str, settings: str) -> Any:
    config = tmp_path / "replay.toml"
    config.write_text(f'[replay]\nstore = "{store}"\nsandbox = "{sandbox}"\nk = 1\n\n[replay.sandbox_settings]\n{settings}\n')
    return CliRunner().invoke(app, ["replay", "run", "--config", str(config), "--limit", "1", "--no-progress"])


def _report(tmp_path: Path) -> Path:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"variants": {"retrieval": {"tools": {"ls": {"token_f1": 0.9}}}}}))
    return report


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("topk = 3", ["Bad options for sandbox 'experience:", "takes no option topk (did you mean top_k?)", "top_k, real"]),
        (
            'min_fidelity = 0.6\nfidelity = "REPORT"',
            ["Bad settings for sandbox 'experience:", "min_fidelity must be a table", 'min_fidelity = { "*" = 0.6 }'],
        ),
        (
            'min_fidelity = { "*" = "0.6" }\nfidelity = "REPORT"',
            ["Bad settings for sandbox 'experience:", "min_fidelity['*'] must be a number between 0 and 1", "without quotes"],
        ),
        ("min_fidelity = { ls = 6 }", ["min_fidelity['ls'] must be a number between 0 and 1", "got 6 (int)"]),
        ('top_k = "3"', ["Bad settings for sandbox 'experience:", "top_k must be a whole number", "top_k = 3"]),
        ('model = "openai:http://x/v1#em"', ["Bad options for sandbox 'experience:", "leave out model"]),
    ],
    ids=["misspelt-key", "number-for-table", "string-threshold", "threshold-out-of-range", "string-top-k", "model-setting"],
)
def test_a_bad_experience_setting_is_one_error_naming_it_and_the_fix_before_any_work(
    settings: str, expected: list[str], bfcl_store_path: Path, serve: Any, tmp_path: Path
) -> None:
    model = serve(copy_first_example)
    result = _replay(bfcl_store_path, tmp_path, f"experience:{model.spec}", settings.replace("REPORT", str(_report(tmp_path))))
    assert result.exit_code == 1, result.output
    error = result.output.strip()
    assert error.startswith("error: ") and len(error.splitlines()) == 1, result.output
    assert all(text in error for text in expected), error
    assert "TypeError" not in error and "a bug in ee-middleware" not in error
    assert not model.requests, "nothing was predicted"
    store = LocalExperienceStore(bfcl_store_path)
    assert store.replays().is_empty(), "no trajectory was replayed (or failed)"
    store.close()


def test_a_built_in_sandbox_names_its_options_instead_of_advising_a_new_parameter(bfcl_store_path: Path, tmp_path: Path) -> None:
    result = _replay(bfcl_store_path, tmp_path, "bfcl", "allow_networks = true")
    assert result.exit_code == 1
    assert "takes no option allow_networks (did you mean allow_network?). Its options are allow_network" in result.output
    assert "Add a keyword parameter" not in result.output, "bfcl is ee's own: the setting is wrong, not the factory"


def test_good_settings_build_the_sandbox_with_them(serve: Any, tmp_path: Path) -> None:
    model = serve(copy_first_example)
    sandbox = build_sandbox(
        f"experience:{model.spec}", top_k=2, min_fidelity={"*": 0.5, "ls": 1}, fidelity=str(_report(tmp_path)), refresh_s=5
    )
    assert sandbox.top_k == 2 and sandbox.min_fidelity == {"*": 0.5, "ls": 1.0} and sandbox.covers("ls") is False
    sandbox.close()
    with pytest.raises(SandboxError, match="max_tokens must be a whole number >= 1"):
        build_sandbox(f"experience:{model.spec}", max_tokens=0)


@pytest.mark.parametrize(
    ("setting", "value"), [("fidelity", "/no/such/report.json"), ("fidelity", {"ls": 0.9}), ("fidelity_variant", "retrieval")]
)
def test_a_fidelity_report_without_min_fidelity_is_refused_not_ignored(setting: str, value: Any) -> None:
    """``fidelity`` is read only to hold tools to ``min_fidelity``: given alone it was silently ignored (a report path
    that does not exist too) while it changed the replay's id (sweep of 2026-12-07). Refused before any model is reached."""
    with pytest.raises(SandboxError) as raised:
        build_sandbox("experience:openai:http://127.0.0.1:9/v1#m", **{setting: value})
    text = str(raised.value)
    assert f"{setting} is read only to hold tools to min_fidelity, which is not set: add min_fidelity = " in text, text
    assert f"or leave {setting} out" in text, text
