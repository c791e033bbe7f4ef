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


def test_a_spec_with_blanks_around_it_is_the_policy_it_names_and_keeps_its_id() -> None:
    """Told apart as the policy it names (no sampling options for `mutate`), its id as it always was: the spec as written
    (review: stripping it changed the ids of specs that worked, `local:DIR `, and their replays were done again)."""
    from ee_middleware.replay.config import _shaping_id

    config = ReplayConfig.load(None, store="s", policy=" mutate ")
    assert config.mutation_policy and config.policy_options() == {} and config.policy_defaults() == {}
    assert config.rollout_shaping["policy"] == " mutate " and config.configuration_id == _shaping_id(config.rollout_shaping)
    served = ReplayConfig.load(None, store="s", policy="openai:http://127.0.0.1:8000/v1#m ")
    assert not served.mutation_policy and served.rollout_shaping["policy"] == "openai:http://127.0.0.1:8000/v1#m "


def test_a_policy_spec_with_blanks_around_it_replays_as_the_policy_it_names(bfcl_store_path: Path) -> None:
    runs = [
        ee("replay", "run", "--store", str(bfcl_store_path), "--policy", " mutate", "--k", "1", "--limit", "1", "--no-progress", "--json")
        for _ in range(2)
    ]
    assert [r.exit_code for r in runs] == [0, 0], [r.output for r in runs]
    first, again = (json.loads(r.stdout) for r in runs)
    assert first["done"] == 1 and first["branches"] > 0, first
    assert again["replay_id"] == first["replay_id"] and again["already_done"] == 1, again


def test_replay_show_of_a_prefix_of_several_ids_says_it_is_ambiguous(bfcl_store_path: Path) -> None:
    result = ee("replay", "show", "bfcl-", "--store", str(bfcl_store_path))
    assert result.exit_code == 1, result.output
    assert "(ambiguous: 6 ids start with it)" in result.output, result.output


def make_policy() -> object:
    """A user's policy factory taking no options (no sampling parameters)."""
    from ee_middleware.replay.policies.mutate import MutationPolicy

    return MutationPolicy()


def test_a_sampling_flag_a_policy_factory_does_not_take_is_not_followed_by_advice_to_run_again(bfcl_store_path: Path) -> None:
    """Refused as the first worker built the policy, it said "(0 trajectories replayed before this are saved; re-run the
    same command to continue.)": running it again failed the same way (a plug-in sweep of 2026-12-07)."""
    result = ee(
        "replay", "run", "--store", str(bfcl_store_path), "--policy", "tests.cli.test_replay_flag_values:make_policy",
        "--temperature", "0.5", "--k", "1", "--limit", "1", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "takes no option temperature" in result.output and "re-run the same command" not in result.output, result.output
