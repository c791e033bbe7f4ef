"""``ee replay`` flag values and specs as users type them (sweep of 2026-12-07): a NaN ``--temperature`` was called "not
>= 0" and a NaN ``--tool-timeout`` named the setting, not the flag; a policy spec with a blank around it (``" mutate"``)
failed with "Bad options ... takes no option temperature" (the job took it for a model policy); ``ee replay show PREFIX``
said "no trajectory or rollout" where the prefix starts several ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.config import ReplayConfig

runner = CliRunner()


def ee(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("command", [("replay", "run", "--store", "s"), ("eval", "run")])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_temperature_that_is_not_a_finite_number_at_least_0_is_refused_naming_the_flag(command: tuple[str, ...], value: str) -> None:
    result = ee(*command, "--temperature", value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--temperature': must be a finite number >= 0 (0: greedy), got {value}" in result.output, result.output


def test_a_nan_tool_timeout_is_refused_naming_the_flag(bfcl_store_path: Path) -> None:
    result = ee("replay", "run", "--store", str(bfcl_store_path), "--isolation", "subprocess", "--tool-timeout", "nan", "--no-progress")
    assert result.exit_code == 1, result.output
    assert "--tool-timeout: Input should be a number, not NaN (got nan)" in result.output and "tool_timeout_s" not in result.output


def test_specs_are_taken_without_the_blanks_around_them() -> None:
    config = ReplayConfig.load(None, store="s", policy=" mutate ", sandbox="\tbfcl ")
    plain = ReplayConfig.load(None, store="s")
    assert (config.policy, config.sandbox) == ("mutate", "bfcl")
    assert config.policy_options() == {} and config.replay_id == plain.replay_id


def test_a_policy_spec_with_blanks_around_it_replays_as_the_policy_it_names(bfcl_store_path: Path) -> None:
    spaced = ee(
        "replay", "run", "--store", str(bfcl_store_path), "--policy", " mutate", "--k", "1", "--limit", "1", "--no-progress", "--json"
    )
    assert spaced.exit_code == 0, spaced.output
    plain = ee(
        "replay", "run", "--store", str(bfcl_store_path), "--policy", "mutate", "--k", "1", "--limit", "1", "--no-progress", "--json"
    )
    assert plain.exit_code == 0, plain.output
    first, again = json.loads(spaced.stdout), json.loads(plain.stdout)
    assert first["policy"] == "mutate" and first["done"] == 1, first
    assert again["replay_id"] == first["replay_id"] and again["already_done"] == 1, again


def test_replay_show_of_a_prefix_of_several_ids_says_it_is_ambiguous(bfcl_store_path: Path) -> None:
    result = ee("replay", "show", "bfcl-", "--store", str(bfcl_store_path))
    assert result.exit_code == 1, result.output
    assert "(ambiguous: 6 ids start with it)" in result.output, result.output
