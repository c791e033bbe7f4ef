"""``ee curriculum run`` reads its settings from ``--config`` (``[curriculum]``), flags and TASKS override the file, and
the file's mistakes are refused naming the file, the table and the key.

Before, the command had no ``--config``. The policy and the judge are scripted stand-ins behind real local HTTP servers;
the sandbox is the real BFCL one and the store holds real BFCL expert trajectories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.testing.http import ScriptedChatServer
from tests.cli.test_experience_config import help_entries
from tests.cli.test_experience_timeout import _policy
from tests.evals.test_curriculum import _tasks

runner = CliRunner()
VERDICT = json.dumps({"reasoning": "it listed the folder", "reward": 1})


def _flat(text: str) -> str:
    return " ".join(text.split())


def _config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "curriculum.toml"
    config.write_text(text)
    return config


def test_run_reads_its_table_and_flags_and_tasks_override_it(bfcl_store_path: Path, tmp_path: Path) -> None:
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with (
        ScriptedChatServer(lambda body: _policy(body["messages"]), models=["p"]) as policy,
        ScriptedChatServer(lambda body: VERDICT, models=["j"]) as judge,
    ):
        config = _config(
            tmp_path,
            f'[curriculum]\ntasks = "{tasks}"\npolicy = "openai:{policy.base_url}#p"\nsandbox = "bfcl"\n'
            f'judge = "openai:{judge.base_url}#j"\nstore = "{bfcl_store_path}"\nk = 2\napp = "from-the-file"\n',
        )
        from_file = runner.invoke(app, ["curriculum", "run", "--config", str(config), "--json"])
        assert from_file.exit_code == 0, from_file.output
        summary = json.loads(from_file.stdout)
        assert summary["rollouts"] == 2 and summary["kept"] >= 1, summary

        flagged = runner.invoke(app, ["curriculum", "run", "--config", str(config), "--k", "1", "--json"])
        assert flagged.exit_code == 0, flagged.output
        assert json.loads(flagged.stdout)["rollouts"] == 1, "--k overrides the file's k"

        missing = tmp_path / "none.jsonl"
        argument = runner.invoke(app, ["curriculum", "run", str(missing), "--config", str(config)])
        assert argument.exit_code == 2 and f"{missing} does not exist" in _flat(argument.output), "TASKS overrides the file's tasks"
        config.write_text(config.read_text().replace(str(tasks), str(missing)))
        in_file = runner.invoke(app, ["curriculum", "run", "--config", str(config)])
        assert in_file.exit_code == 2 and f"tasks in [curriculum] of {config}" in _flat(in_file.output), in_file.output


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("judge_max_token = 64", "judge_max_token: Extra inputs are not permitted (did you mean judge_max_tokens?)"),
        ('k = "2"', "k: Input should be a valid integer (got '2'): in [curriculum] of CONFIG, TOML is typed: \"2\" is a string"),
        ("timeout_s = 0", "timeout_s: Input should be greater than 0 (got 0)"),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range"],
)
def test_run_refuses_a_files_mistake_naming_the_file_the_table_and_the_key(
    line: str, expected: str, bfcl_store_path: Path, tmp_path: Path
) -> None:
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    config = _config(
        tmp_path,
        f'[curriculum]\ntasks = "{tasks}"\npolicy = "openai:http://127.0.0.1:9/v1#p"\nsandbox = "bfcl"\n'
        f'judge = "openai:http://127.0.0.1:9/v1#j"\nstore = "{bfcl_store_path}"\n{line}\n',
    )
    result = runner.invoke(app, ["curriculum", "run", "--config", str(config)])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert error.startswith("error: Invalid curriculum run configuration:") and f"[curriculum] of {config}" in error, error
    assert expected.replace("CONFIG", str(config)) in error, error


def test_run_without_a_judge_names_the_flag_and_the_key(bfcl_store_path: Path, tmp_path: Path) -> None:
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    config = _config(tmp_path, f'[curriculum]\ntasks = "{tasks}"\npolicy = "mutate"\nsandbox = "bfcl"\nstore = "{bfcl_store_path}"\n')
    result = runner.invoke(app, ["curriculum", "run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "needs --judge (or judge in the [curriculum] table of the --config file)" in _flat(result.stderr), result.stderr
    bare = runner.invoke(app, ["curriculum", "run"])
    assert (
        bare.exit_code == 2
        and "Try 'ee curriculum run -h' for help." in bare.stderr
        and "needs TASKS (the argument)" in _flat(bare.stderr)
        and "--policy" in bare.stderr
    ), bare.output


def test_help_names_the_config_table_and_the_defaults() -> None:
    result = runner.invoke(app, ["curriculum", "run", "--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert result.exit_code == 0, result.output
    assert "TOML file with a [curriculum] table; flags override it." in _flat(result.output)
    entries = help_entries(result.output)
    missing = [flag for flag in ("--k", "--judge-max-tokens", "--app", "--timeout") if "[default:" not in entries.get(flag, "")]
    assert not missing, missing


SANDBOX_OPTIONS: list[dict[str, object]] = []


def recording_bfcl_sandbox(*, region: str = "us", allow_network: bool = False) -> object:
    """A user's sandbox factory with an option of its own (the real BFCL sandbox inside); records what it was given."""
    from ee_middleware.bfcl.sandbox import BFCLSandbox

    SANDBOX_OPTIONS.append({"region": region, "allow_network": allow_network})
    return BFCLSandbox(allow_network=allow_network)


def test_run_gives_the_sandbox_the_tables_sandbox_settings(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: [curriculum] had no sandbox_settings (a sandbox's factory options could be given to ee replay run only)."""
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    SANDBOX_OPTIONS.clear()
    with (
        ScriptedChatServer(lambda body: _policy(body["messages"]), models=["p"]) as policy,
        ScriptedChatServer(lambda body: VERDICT, models=["j"]) as judge,
    ):
        config = _config(
            tmp_path,
            f'[curriculum]\ntasks = "{tasks}"\npolicy = "openai:{policy.base_url}#p"\n'
            f'sandbox = "tests.cli.test_curriculum_config:recording_bfcl_sandbox"\n'
            f'judge = "openai:{judge.base_url}#j"\nstore = "{bfcl_store_path}"\n'
            '[curriculum.sandbox_settings]\nregion = "eu"\n',
        )
        result = runner.invoke(app, ["curriculum", "run", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert SANDBOX_OPTIONS and all(given == {"region": "eu", "allow_network": False} for given in SANDBOX_OPTIONS), SANDBOX_OPTIONS


def test_sandbox_setting_flags_give_the_sandbox_options_over_the_table_key_by_key(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: ee curriculum run had no --sandbox-setting (ee replay run has): a factory's options only from a config file."""
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    SANDBOX_OPTIONS.clear()
    with (
        ScriptedChatServer(lambda body: _policy(body["messages"]), models=["p"]) as policy,
        ScriptedChatServer(lambda body: VERDICT, models=["j"]) as judge,
    ):
        config = _config(tmp_path, '[curriculum]\n[curriculum.sandbox_settings]\nregion = "eu"\nallow_network = false\n')
        result = runner.invoke(
            app,
            [
                "curriculum", "run", str(tasks), "--config", str(config), "--policy", f"openai:{policy.base_url}#p",
                "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json",
                "--sandbox", "tests.cli.test_curriculum_config:recording_bfcl_sandbox", "--sandbox-setting", "region=apac",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert SANDBOX_OPTIONS and all(given == {"region": "apac", "allow_network": False} for given in SANDBOX_OPTIONS), SANDBOX_OPTIONS

    bad = runner.invoke(app, ["curriculum", "run", str(tasks), "--config", str(config), "--sandbox-setting", "region"])
    assert bad.exit_code != 0 and "--sandbox-setting 'region': write KEY=VALUE" in _flat(bad.output + bad.stderr), bad.output


def test_run_refuses_an_option_the_sandbox_does_not_take_before_any_rollout(bfcl_store_path: Path, tmp_path: Path) -> None:
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    config = _config(
        tmp_path,
        f'[curriculum]\ntasks = "{tasks}"\npolicy = "openai:http://127.0.0.1:9/v1#p"\nsandbox = "bfcl"\n'
        f'judge = "openai:http://127.0.0.1:9/v1#j"\nstore = "{bfcl_store_path}"\n[curriculum.sandbox_settings]\nallow_netwrk = true\n',
    )
    result = runner.invoke(app, ["curriculum", "run", "--config", str(config)])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert "Bad options for sandbox 'bfcl'" in error and "allow_network" in error, error
