"""``ee curriculum propose`` reads its settings from ``--config`` (``[curriculum_propose]``), flags override the file,
and the file's mistakes are refused naming the file, the table and the key.

Before, the command had no ``--config``. The writer is a scripted stand-in behind a real local HTTP server; the store
holds real BFCL expert trajectories and the eval results name one of their tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.testing.http import ScriptedChatServer
from tests.cli.test_experience_config import help_entries

runner = CliRunner()
VARIANT = json.dumps({"instruction": "Show me what is in this folder.", "tools": ["ls"]})


def _flat(text: str) -> str:
    return " ".join(text.split())


def _config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "curriculum.toml"
    config.write_text(text)
    return config


def _results(tmp_path: Path) -> Path:
    """An eval run's folder whose task the policy solved half the time (p(1-p) = 0.25)."""
    results = tmp_path / "run" / "results.jsonl"
    results.parent.mkdir()
    rows = [{"suite": "bfcl", "task_id": "multi_turn_base_0", "trial": i, "success": ok} for i, ok in enumerate([True, False])]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return results.parent


def test_propose_reads_its_table_and_flags_override_it(bfcl_store_path: Path, tmp_path: Path) -> None:
    results = _results(tmp_path)
    with ScriptedChatServer(lambda body: VARIANT, models=["w"]) as writer:
        out = tmp_path / "from-the-file.jsonl"
        config = _config(
            tmp_path,
            f'[curriculum_propose]\nresults = "{results}"\nmodel = "openai:{writer.base_url}#w"\nstore = "{bfcl_store_path}"\n'
            f'n = 2\nout = "{out}"\nmax_tokens = 64\nseed = 7\n',
        )
        from_file = runner.invoke(app, ["curriculum", "propose", "--config", str(config), "--json"])
        assert from_file.exit_code == 0, from_file.output
        summary = json.loads(from_file.stdout)
        assert summary["requested"] == 2 and summary["out"] == str(out) and out.is_file(), summary
        assert {r["max_tokens"] for r in writer.requests} == {64} and writer.requests[0]["seed"] == 7, writer.requests[0]

        flagged_out = tmp_path / "by-the-flag.jsonl"
        flagged = runner.invoke(app, ["curriculum", "propose", "-c", str(config), "--n", "1", "--out", str(flagged_out), "--json"])
        assert flagged.exit_code == 0, flagged.output
        summary = json.loads(flagged.stdout)
        assert summary["requested"] == 1 and summary["out"] == str(flagged_out), "--n and --out override the file's"


def test_an_out_of_the_file_that_is_a_folder_is_named_by_its_key(bfcl_store_path: Path, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        f'[curriculum_propose]\nresults = "{tmp_path}"\nmodel = "mutate"\nstore = "{bfcl_store_path}"\nout = "{tmp_path}"\n',
    )
    result = runner.invoke(app, ["curriculum", "propose", "-c", str(config)])
    assert result.exit_code == 1, result.output
    assert f"out = '{tmp_path}' in [curriculum_propose] of {config}: {tmp_path} is a folder" in _flat(result.stderr), result.stderr
    # the flag's folder-to-be (before: --out tasks/ wrote a file named tasks), and the flag named when it gave the folder
    slashed = runner.invoke(app, ["curriculum", "propose", "-c", str(config), "--out", f"{tmp_path}/new/"])
    assert slashed.exit_code == 2 and "ends in '/', which names a folder: --out names the file" in _flat(slashed.output)
    flagged = runner.invoke(app, ["curriculum", "propose", "-c", str(config), "--out", str(tmp_path)])
    assert flagged.exit_code == 2 and f"{tmp_path} is a folder: --out names the tasks file" in _flat(flagged.output), flagged.output
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('from = "run"', "from: Extra inputs are not permitted (did you mean results?): in [curriculum_propose] of CONFIG"),
        ("max_token = 64", "max_token: Extra inputs are not permitted (did you mean max_tokens?)"),
        ('n = "2"', "n: Input should be a valid integer (got '2'): in [curriculum_propose] of CONFIG, TOML is typed: \"2\" is a string"),
        ("timeout_s = 0", "timeout_s: Input should be greater than 0 (got 0)"),
    ],
    ids=["flag-name", "unknown-key", "wrong-type", "out-of-range"],
)
def test_propose_refuses_a_files_mistake_naming_the_file_the_table_and_the_key(
    line: str, expected: str, bfcl_store_path: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, f'[curriculum_propose]\nresults = "{tmp_path}"\nmodel = "mutate"\nstore = "{bfcl_store_path}"\n{line}\n')
    result = runner.invoke(app, ["curriculum", "propose", "--config", str(config)])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert error.startswith("error: Invalid curriculum propose configuration:") and f"[curriculum_propose] of {config}" in error, error
    assert expected.replace("CONFIG", str(config)) in error, error


def test_propose_without_a_model_names_the_flag_and_the_key(bfcl_store_path: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, f'[curriculum_propose]\nresults = "{tmp_path}"\nstore = "{bfcl_store_path}"\n')
    result = runner.invoke(app, ["curriculum", "propose", "-c", str(config)], env={"EE_STORE": None})
    assert result.exit_code == 2, result.output
    assert "needs --model (or model in the [curriculum_propose] table of the --config file)." in _flat(result.stderr), result.stderr
    bare = runner.invoke(app, ["curriculum", "propose"], env={"EE_STORE": None})
    assert bare.exit_code == 2 and "needs --from (or results in the [curriculum_propose] table" in _flat(bare.stderr), bare.output


def test_curriculum_propose_is_ee_s_own_table(tmp_path: Path) -> None:
    """Given to ee curriculum run, a file with [curriculum_propose] alone names who reads it (was: 'did you mean
    [curriculum]?', a near miss of a table no ee job read)."""
    config = _config(tmp_path, "[curriculum_propose]\nn = 2\n")
    result = runner.invoke(app, ["curriculum", "run", "-c", str(config)])
    assert result.exit_code == 1, result.output
    assert "it has [curriculum_propose] (read by ee curriculum propose)" in _flat(result.stderr), result.stderr


def test_help_names_the_config_table_and_the_defaults() -> None:
    result = runner.invoke(app, ["curriculum", "propose", "--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert result.exit_code == 0, result.output
    assert "TOML file with a [curriculum_propose] table; flags override it." in _flat(result.output)
    entries = help_entries(result.output)
    missing = [flag for flag in ("--n", "--out", "--seed", "--max-tokens", "--timeout") if "[default:" not in entries.get(flag, "")]
    assert not missing, missing


def test_a_rejected_trajectory_is_no_parent_of_a_variant(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: every stored trajectory could be a variant's parent, a rejected one too (its task, tools and world carried
    into the tasks a curriculum trains on), though a rejected trajectory never feeds training."""
    from ee_middleware import LocalExperienceStore

    results = _results(tmp_path)
    store = LocalExperienceStore(bfcl_store_path)
    parents = [t.id for t in store.iter_trajectories() if t.environment and t.environment.get("entry_id") == "multi_turn_base_0"]
    assert parents
    store.reject(parents, by="alice", reason="leaks a customer's address")
    store.close()
    with ScriptedChatServer(lambda body: VARIANT, models=["w"]) as writer:
        args = ["curriculum", "propose", "--from", str(results), "--model", f"openai:{writer.base_url}#w"]
        done = runner.invoke(app, [*args, "--store", str(bfcl_store_path), "--n", "1", "--out", str(tmp_path / "t.jsonl"), "--json"])
        assert writer.requests == []
    assert done.exit_code == 1, done.output
    assert "has a stored trajectory that is not rejected" in _flat(done.output), done.output
