"""``ee experience eval`` and ``ee experience dataset`` read their settings from ``--config`` (``[experience_eval]``,
``[experience_dataset]``), flags override the file, the file's mistakes are refused naming the file, the table and the
key, and ``retriever_settings`` (or ``--retriever-setting``) reach the retriever.

Before, neither command had ``--config``, and a retriever took no options. The experience model is a scripted stand-in
behind a real local HTTP server; the store holds real BFCL expert trajectories; the retriever is a user's own class
(:class:`~tests.replay.sandboxes.test_experience_retriever_settings.SharedWords`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.replay import conftest as replay_fixtures
from tests.replay.sandboxes.test_experience_retriever_settings import SPEC
from tests.replay.test_experience import copy_first_example

serve = replay_fixtures.serve  # scripted models behind real local HTTP servers
runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "experience.toml"
    config.write_text(text)
    return config


def _eval_table(model: Any, store: Path, out: Path, more: str = "") -> str:
    return (
        f'[experience_eval]\nmodel = "{model.spec}"\nstore = "{store}"\nout = "{out}"\nheld_out = 0.34\ntop_k = 2\nlimit = 2\n'
        f'retriever = "{SPEC}"\n{more}\n[experience_eval.retriever_settings]\nmin_shared = 2\nweight = 0.5\n'
    )


def test_eval_reads_its_table_and_the_retrievers_options_reach_a_users_retriever(serve: Any, bfcl_store_path: Path, tmp_path: Path) -> None:
    model = serve(copy_first_example)
    out = tmp_path / "eval"
    config = _write(tmp_path, _eval_table(model, bfcl_store_path, out) + 'api_key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"\n')
    result = runner.invoke(app, ["experience", "eval", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["top_k"] == 2 and report["held_out_transitions"] == 2 and report["variants"]["retrieval"]["model"] == model.spec
    assert report["retriever"] == "shared-words(min_shared=2, weight=0.5)", "the retriever was built with the file's options"
    assert report["retriever_settings"] == {"min_shared": 2, "weight": 0.5}, "the report records them (a credential left out)"
    assert "sk-proj" not in (out / "report.json").read_text()


def test_eval_flags_override_the_file(serve: Any, bfcl_store_path: Path, tmp_path: Path) -> None:
    model = serve(copy_first_example)
    out, elsewhere = tmp_path / "eval", tmp_path / "flagged"
    config = _write(tmp_path, _eval_table(model, bfcl_store_path, out))
    args = ["experience", "eval", "--config", str(config), "--top-k", "1", "--limit", "1", "--out", str(elsewhere)]
    result = runner.invoke(app, [*args, "--retriever-setting", "min_shared=1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((elsewhere / "report.json").read_text())
    assert not out.exists() and report["top_k"] == 1 and report["held_out_transitions"] == 1
    assert report["retriever"] == "shared-words(min_shared=1, weight=0.5)", "the flag's option, merged key by key into the file's"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("topk = 2", ["topk: Extra inputs are not permitted (did you mean top_k?)", "(remove the key, or correct its name)"]),
        (
            'seed = "7"',
            ["seed: Input should be a valid integer (got '7')", 'TOML is typed: "7" is a string; write seed = 7 without quotes'],
        ),
        ("held_out = 2.0", ["held_out: Input should be less than or equal to 1 (got 2.0)"]),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range"],
)
def test_eval_refuses_a_files_mistake_naming_the_file_the_table_and_the_key(
    line: str, expected: list[str], serve: Any, bfcl_store_path: Path, tmp_path: Path
) -> None:
    model = serve(copy_first_example)
    config = _write(tmp_path, f'[experience_eval]\nmodel = "{model.spec}"\nstore = "{bfcl_store_path}"\n{line}\n')
    result = runner.invoke(app, ["experience", "eval", "--config", str(config)])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert error.startswith("error: Invalid experience eval configuration:") and f"[experience_eval] of {config}" in error, error
    assert all(text in error for text in expected), error
    assert not model.requests and not (tmp_path / "experience-eval").exists()


def test_eval_without_a_model_names_the_flag_and_the_key(bfcl_store_path: Path, tmp_path: Path) -> None:
    config = _write(tmp_path, f'[experience_eval]\nstore = "{bfcl_store_path}"\n')
    result = runner.invoke(app, ["experience", "eval", "--config", str(config)])
    assert (
        result.exit_code == 2
        and "Usage: ee experience eval" in result.stderr
        and "needs --model (or model in the [experience_eval] table of the --config file)" in _flat(result.stderr)
    )
    misspelt = _write(tmp_path, f'[experience_eval]\nstore = "{bfcl_store_path}"\nmodels = "openai:http://x/v1#em"\n')
    result = runner.invoke(app, ["experience", "eval", "--config", str(misspelt)])
    assert "models: Extra inputs are not permitted (did you mean model?)" in _flat(result.stderr), result.stderr


def test_eval_refuses_an_empty_model_naming_the_flag(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was: "The experience sandbox needs a model: 'experience:local:DIR' ..." (a prefix these flags do not take), naming
    neither flag; an empty ``trained`` in the table said the same."""
    for args in (["--model="], ["--model", "openai:http://127.0.0.1:9/v1#em", "--trained="]):
        result = runner.invoke(app, ["experience", "eval", *args, "--store", str(bfcl_store_path), "--out", str(tmp_path / "e")])
        flag = args[-1].rstrip("=")
        assert result.exit_code == 1 and f"{flag}: Value error, '' is empty or blank" in _flat(result.stderr), result.stderr
        assert "experience:local:DIR" not in result.stderr


def test_eval_refuses_a_retriever_option_the_retriever_does_not_take(serve: Any, bfcl_store_path: Path, tmp_path: Path) -> None:
    model = serve(copy_first_example)
    config = _write(tmp_path, _eval_table(model, bfcl_store_path, tmp_path / "eval").replace("min_shared = 2", "min_share = 2"))
    result = runner.invoke(app, ["experience", "eval", "--config", str(config)])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert f"Bad options for retriever {SPEC!r}" in error and "takes no option min_share (did you mean min_shared?)" in error, error
    assert not model.requests
    flagged = runner.invoke(
        app, ["experience", "eval", "--model", model.spec, "--store", str(bfcl_store_path), "--retriever-setting", "k3=1"]
    )
    assert flagged.exit_code == 1 and "Bad options for retriever 'bm25'" in _flat(flagged.stderr), flagged.output


def _dataset_table(store: Path, out: Path) -> str:
    return (
        f'[experience_dataset]\nstore = "{store}"\nout = "{out}"\nheld_out = 0.34\ntop_k = 1\nretriever = "{SPEC}"\n'
        "retriever_settings = { min_shared = 10000 }\n"
    )


def test_dataset_reads_its_table_and_flags_override_it(bfcl_store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "em"
    config = _write(tmp_path, _dataset_table(bfcl_store_path, out))
    from ee_middleware.replay.retrieval import NothingRetrievedWarning

    with pytest.warns(NothingRetrievedWarning, match="scored none of the"):
        result = runner.invoke(app, ["experience", "dataset", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["held_out"] == 0.34 and summary["path"] == str(out / "em.parquet")
    assert summary["retriever"] == "shared-words(min_shared=10000, weight=1)" and summary["retriever_settings"] == {"min_shared": 10000}
    prompts = [json.loads(p) for p in pl.read_parquet(out / "em.parquet")["prompt"]]
    assert all(len(p) == 2 for p in prompts), "no transition shares 10000 words: no example in any prompt (system + question)"

    flagged = tmp_path / "flagged"
    args = ["experience", "dataset", "--config", str(config), "--out", str(flagged), "--retriever-setting", "min_shared=1"]
    result = runner.invoke(app, [*args, "--held-out", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (
        summary["held_out"] == 0.5 and summary["path"] == str(flagged / "em.parquet") and summary["retriever_settings"] == {"min_shared": 1}
    )
    prompts = [json.loads(p) for p in pl.read_parquet(flagged / "em.parquet")["prompt"]]
    assert any(len(p) == 4 for p in prompts), "top_k 1 from the file: one example (a call and its answer) where one matches"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('teachr = "template"', "teachr: Extra inputs are not permitted (did you mean teacher?)"),
        ("top_k = true", "top_k: Input should be a valid integer (got true)"),
        ('retriever_settings = "k1=1.2"', "retriever_settings: Input should be a valid dictionary"),
    ],
    ids=["unknown-key", "wrong-type", "settings-not-a-table"],
)
def test_dataset_refuses_a_files_mistake_naming_the_file_the_table_and_the_key(
    line: str, expected: str, bfcl_store_path: Path, tmp_path: Path
) -> None:
    config = _write(tmp_path, f'[experience_dataset]\nstore = "{bfcl_store_path}"\nout = "{tmp_path / "em"}"\n{line}\n')
    result = runner.invoke(app, ["experience", "dataset", "--config", str(config)])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert error.startswith("error: Invalid experience dataset configuration:") and f"[experience_dataset] of {config}" in error, error
    assert expected in error, error
    assert not (tmp_path / "em").exists()


def test_a_file_for_the_other_experience_command_is_named() -> None:
    # one file may hold both tables; a file with only the other one is not silently read as empty
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "eval.toml"
        config.write_text('[experience_eval]\nmodel = "openai:http://x/v1#em"\n')
        result = runner.invoke(app, ["experience", "dataset", "--config", str(config), "--store", folder, "--out", folder])
    assert result.exit_code == 1
    assert "has no [experience_dataset] table" in _flat(result.stderr), result.stderr


def test_an_out_the_file_gives_that_is_a_file_is_refused_naming_the_key(bfcl_store_path: Path, tmp_path: Path) -> None:
    blocking = tmp_path / "a-file"
    blocking.write_text("")
    config = _write(tmp_path, f'[experience_dataset]\nstore = "{bfcl_store_path}"\nout = "{blocking}"\n')
    result = runner.invoke(app, ["experience", "dataset", "--config", str(config)])
    assert result.exit_code == 1 and f"out = '{blocking}' in [experience_dataset] of {config}" in _flat(result.stderr), result.output


@pytest.mark.parametrize(
    ("command", "table", "defaults"),
    [
        (
            ["experience", "eval"],
            "experience_eval",
            ["--held-out", "--top-k", "--seed", "--max-tokens", "--timeout", "--out", "--retriever"],
        ),
        (["experience", "dataset"], "experience_dataset", ["--held-out", "--top-k", "--seed", "--teacher", "--timeout", "--retriever"]),
    ],
)
def test_help_names_the_config_table_the_retriever_setting_and_the_defaults(command: list[str], table: str, defaults: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert result.exit_code == 0, result.output
    assert f"TOML file with an [{table}] table; flags override it." in _flat(result.output) and "--retriever-setting" in result.output
    missing = [flag for flag in defaults if "[default:" not in help_entries(result.output).get(flag, "")]
    assert not missing, missing


def help_entries(output: str) -> dict[str, str]:
    """Each option's entry in a command's --help: its line and the indented lines under it, by its long name."""
    entries: dict[str, str] = {}
    name = ""
    for line in output.splitlines():
        if line.startswith("  -"):
            names = [word.rstrip(",") for word in line.split() if word.startswith("-")]
            name = next((n for n in names if n.startswith("--")), names[0])
            entries[name] = line
        elif name and line.startswith("    "):
            entries[name] += " " + line.strip()
        else:
            name = ""
    return entries


def test_a_retriever_named_by_flag_is_not_given_the_settings_of_the_files_retriever(tmp_path: Path) -> None:
    """Sweep: ``[experience_dataset] retriever = <plug-in>`` with its ``retriever_settings``, run with ``--retriever bm25``.
    Was: "bm25 takes no option min_shared", which named neither the file nor the retriever the options were for. The
    file's settings are left out with a warning; settings given with the flag, or for the same retriever, are kept."""
    from ee_middleware.replay.experience_config import ExperienceDatasetConfig

    config = tmp_path / "em.toml"
    config.write_text(
        f'[experience_dataset]\nstore = "{tmp_path}"\nout = "{tmp_path / "em"}"\nretriever = "{SPEC}"\n[experience_dataset.retriever_settings]\nmin_shared = 2\n'
    )
    with pytest.warns(
        UserWarning,
        match=rf"retriever_settings in \[experience_dataset\] of {config} are for the retriever '{SPEC}', not for 'bm25'.*--retriever-setting",
    ):
        flagged = ExperienceDatasetConfig.load(config, retriever="bm25")
    assert (flagged.retriever, flagged.retriever_settings) == ("bm25", {})
    with pytest.warns(UserWarning, match=r"are for the retriever .*SharedWords', not for 'bm25'"):
        both = ExperienceDatasetConfig.load(config, retriever="bm25", retriever_settings={"k1": 1.2})
    assert both.retriever_settings == {"k1": 1.2}, "the flag's settings alone: not merged into the other retriever's"
    assert ExperienceDatasetConfig.load(config, retriever=f" {SPEC}").retriever_settings == {"min_shared": 2}
    config.write_text(
        f'[experience_dataset]\nstore = "{tmp_path}"\nout = "{tmp_path / "em"}"\n[experience_dataset.retriever_settings]\nk1 = 1.2\n'
    )
    with pytest.warns(UserWarning, match=r"are for the retriever 'bm25', not for"):  # (the file's: the default one)
        assert ExperienceDatasetConfig.load(config, retriever=SPEC).retriever_settings == {}


@pytest.mark.parametrize("spelt", ["Template", " template", "TEMPLATE "])
def test_the_template_teacher_is_taken_however_it_is_spelt(tmp_path: Path, spelt: str) -> None:
    """Sweep: ``--teacher Template`` was "Unknown model client 'template'", with a list of accepted forms that left it out."""
    from ee_middleware.replay.experience_config import TEMPLATE_TEACHER, ExperienceDatasetConfig

    assert ExperienceDatasetConfig.load(None, store=str(tmp_path), out=tmp_path / "em", teacher=spelt).teacher == TEMPLATE_TEACHER


def test_a_flag_naming_the_same_kind_of_part_keeps_the_files_settings(tmp_path: Path) -> None:
    """Review: another model or host of the same ``openai:`` policy (or ``experience:`` sandbox) is the same kind of part,
    whose settings (an ``api_key``, ``extra_body``, ``top_k``) still apply. Was: left out as another part's."""
    import warnings

    from ee_middleware.replay.config import ReplayConfig

    config = tmp_path / "replay.toml"
    config.write_text(
        f'[replay]\nstore = "{tmp_path}"\npolicy = "openai:http://gpu1:8000/v1#qwen-7b"\nsandbox = "experience:openai:http://gpu1:8000/v1#wm-a"\n'
        '[replay.policy_settings]\napi_key = "sk-x"\n[replay.sandbox_settings]\ntop_k = 3\n'
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ReplayConfig.load(
            config, policy="openai:http://gpu2:8000/v1#qwen-14b", sandbox="experience:openai:http://gpu1:8000/v1#wm-b"
        )
    assert (loaded.policy_settings, loaded.sandbox_settings) == ({"api_key": "sk-x"}, {"top_k": 3})
    with pytest.warns(
        UserWarning,
        match=r"policy_settings in \[replay\] .* are for the policy 'openai:http://gpu1:8000/v1#qwen-7b', not for 'local:/models/q'",
    ):
        assert ReplayConfig.load(config, policy="local:/models/q").policy_settings == {}
