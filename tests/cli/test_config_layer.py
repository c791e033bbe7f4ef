"""The rules every job's ``--config`` file follows (ee_middleware/_toml.py), through each real ``ee`` command on a real file:
TOML types, keys outside the job's table, another job's file, flags named as typed, tables merged, encodings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()


def ee(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args], env={"EE_STORE": ""})


def _file(tmp_path: Path, text: str, name: str = "job.toml", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    return result.stderr.strip().splitlines()[-1]


def test_replay_run(bfcl_store_path: Path, tmp_path: Path) -> None:
    # k = true replayed with k=1; `k = 2` above [replay] was ignored (k=8); --policy-setting replaced the file's whole
    # [replay.policy_settings]; a UTF-16 file was "unexpected UnicodeDecodeError ... a bug in ee-middleware".
    store = f'store = "{bfcl_store_path}"\n'
    typed = _file(tmp_path, f"[replay]\n{store}k = true\n")
    assert f"k: Input should be a valid integer (got true): in [replay] of {typed}" in _error(ee("replay", "run", "--config", typed))
    above = _file(tmp_path, f"k = 2\n[replay]\n{store}", "above.toml")
    assert "k is outside any table" in _error(ee("replay", "run", "--config", above))
    train = _file(tmp_path, '[train]\nbase_model = "m"\n', "train.toml")
    assert "has no [replay] table" in _error(ee("replay", "run", "--config", train, "--store", bfcl_store_path))
    timeout = ee("replay", "run", "--store", bfcl_store_path, "--isolation", "subprocess", "--tool-timeout", "-5")
    assert "--tool-timeout: Input should be greater than 0 (got -5.0)" in _error(timeout)

    settings = "[replay.policy_settings]\nsame_tool_share = 0.9\ninvalid_share = {}\n"
    run = ("--k", "1", "--limit", "1", "--json", "--no-progress")
    merged = ee("replay", "run", "--config", _file(tmp_path, f"[replay]\n{store}" + settings.format(0.5), "a.toml"), *run,
                "--policy-setting", "invalid_share=0.0")  # fmt: skip
    assert merged.exit_code == 0, merged.output
    utf16 = _file(tmp_path, f"[replay]\n{store}" + settings.format(0.0), "b.toml", "utf-16")  # as PowerShell 5 writes it
    written = ee("replay", "run", "--config", utf16, *run)
    assert written.exit_code == 0, written.output
    assert json.loads(merged.stdout)["replay_id"] == json.loads(written.stdout)["replay_id"]


def test_datasets_build(bfcl_store_path: Path, tmp_path: Path) -> None:
    # heldout_share = "0.2" was read as 0.2; heldout_after got 'did you mean heldout_share?'; --max-observation-tokens 2
    # was reported as iwm_max_observation_tokens with its value hidden ("token" read as a secret's name).
    head = f'[datasets]\nstore = "{bfcl_store_path}"\nout = "{tmp_path / "d"}"\n'
    typed = _file(tmp_path, head + 'heldout_share = "0.2"\n')
    error = _error(ee("datasets", "build", "--config", typed))
    assert f"heldout_share: Input should be a valid number (got '0.2'): in [datasets] of {typed}" in error
    assert "write heldout_share = 0.2 without quotes" in error
    flag_spelled = _file(tmp_path, head + 'heldout_after = "2026-01-01"\n', "flag.toml")
    assert "heldout_after: Extra inputs are not permitted (did you mean heldout_started_after?)" in _error(
        ee("datasets", "build", "--config", flag_spelled)
    )
    tokens = ee("datasets", "build", "--store", bfcl_store_path, "--out", tmp_path / "d", "--max-observation-tokens", "2")
    assert "--max-observation-tokens: Input should be greater than or equal to 8 (got 2)" in _error(tokens)
    after = ee("datasets", "build", "--store", bfcl_store_path, "--out", tmp_path / "d", "--heldout-after", "yesterday")
    assert "--heldout-after: Input should be a valid datetime" in _error(after) and "(got 'yesterday')" in _error(after)
    # before: digits alone were seconds since 1970 (20270101, what `date +%Y%m%d` prints, was 1970-08-23: every
    # trajectory held out); a date without dashes is that date, other digits are refused
    basic = ee("datasets", "build", "--store", bfcl_store_path, "--out", tmp_path / "d", "--heldout-after", "20270101", "--json")
    assert "(--heldout-after 2027-01-01T00:00:00) holds out none" in " ".join(basic.output.split()), basic.output
    unquoted = _file(tmp_path, head + "heldout_started_after = 20270101\n", "int.toml")  # a TOML integer: told to quote it,
    assert 'write a string in quotes, heldout_started_after = "20270101"' in _error(ee("datasets", "build", "--config", unquoted))
    quoted = _file(tmp_path, head + 'heldout_started_after = "20270101"\n', "quoted.toml")  # and then it is that date
    from_file = ee("datasets", "build", "--config", quoted, "--json")
    assert "(--heldout-after 2027-01-01T00:00:00) holds out none" in " ".join(from_file.output.split()), from_file.output
    from ee_middleware.trainers.datasets.build import DatasetConfig  # an integer given in code, as the date too

    in_code = DatasetConfig(store=bfcl_store_path, out=tmp_path / "d", heldout_started_after=20270101)  # type: ignore[arg-type]
    assert in_code.heldout_started_after is not None and in_code.heldout_started_after.year == 2027
    epoch = ee("datasets", "build", "--store", bfcl_store_path, "--out", tmp_path / "d", "--heldout-after", "1798761600")
    assert "--heldout-after: Value error, '1798761600' is no ISO 8601 time: write a date (2027-01-01)" in _error(epoch)


def test_train(tmp_path: Path) -> None:
    # batch_size = "4" and learning_rate = "2e-4" trained as numbers; a replay.toml trained on the defaults; a file
    # saved as UTF-8 with a byte-order mark was "Invalid statement (at line 1, column 1)".
    typed = _file(tmp_path, f'[train]\nbase_model = "{tmp_path / "m"}"\nbatch_size = "4"\nlearning_rate = "2e-4"\n')
    error = _error(ee("train", "--config", typed))
    assert "batch_size: Input should be a valid integer (got '4')" in error and "learning_rate: Input should be a valid number" in error
    replay = _file(tmp_path, "[replay]\nk = 2\n", "replay.toml")
    error = _error(ee("train", "--config", replay, "--base-model", tmp_path / "m"))
    assert f"{replay} has no [train] table, which the training job reads its settings from; it has [replay]" in error
    alias = _file(tmp_path, "[train]\nlr = 1e-4\n", "alias.toml")  # --lr is --learning-rate's other name
    assert "lr: Extra inputs are not permitted (did you mean learning_rate?)" in _error(ee("train", "--config", alias, "--base-model", "m"))
    bom = _file(tmp_path, f'[train]\nbase_model = "m"\ndata = "{tmp_path / "no-data"}"\n', "bom.toml", "utf-8-sig")
    assert f"No IL dataset at {tmp_path / 'no-data' / 'il.parquet'}" in _error(ee("train", "--config", bom))  # read through


def test_eval_run(tmp_path: Path) -> None:
    # --timeout -1 was reported as timeout_s; a gate policy file given to ee eval run ran on the defaults.
    args = ("eval", "run", "--suite", "bfcl:simple:2", "--model-spec", "oracle", "--out", tmp_path / "e")
    negative = ee(*args, "--timeout", "-1")  # a usage error naming the flag (cli.common.positive_seconds)
    assert negative.exit_code == 2 and "Invalid value for '--timeout': must be a finite number of seconds > 0" in " ".join(
        negative.output.split()
    ), negative.output
    gate = _file(tmp_path, "[gate]\nmin_tasks = 1\n")
    assert "has no [eval] table" in _error(ee(*args, "--config", gate))
    typed = _file(tmp_path, '[eval]\ntrials = "2"\ntimeout = 5\n', "eval.toml")
    error = _error(ee(*args, "--config", typed))
    assert "trials: Input should be a valid integer (got '2')" in error
    assert not (tmp_path / "e").exists()


def test_eval_gate(tmp_path: Path) -> None:
    # A policy written under [policy] was ignored and the gate passed on min_tasks 20, min_improvement 0.
    args = ("eval", "gate", "--candidate", tmp_path / "c", "--baseline", tmp_path / "b", "--policy")
    policy = _file(tmp_path, "[policy]\nmin_improvement = 0.5\nmin_tasks = 1\n")
    error = _error(ee(*args, policy))
    assert (
        "has no [gate] table" in error
        and "it has [policy] (read by no ee job). If [policy] holds this job's settings, rename it [gate]" in error
    )
    typed = _file(tmp_path, '[gate]\nrequire_significant = "true"\n', "gate.toml")
    assert "require_significant: Input should be a valid boolean (got 'true')" in _error(ee(*args, typed))


def test_improve(tmp_path: Path) -> None:
    # likelihood = true on line 1 was ignored; k = "8" in [replay] replayed with k=8; improve.toml written by
    # PowerShell 5 (UTF-16) failed with an unexpected UnicodeDecodeError, and UTF-8 with a BOM with "Invalid statement".
    from ee_middleware.store.local import LocalExperienceStore

    LocalExperienceStore(tmp_path / "s").close()
    improve = (
        f'[improve]\nstore = "{tmp_path / "s"}"\napp = "shop"\nregistry = "{tmp_path / "r"}"\nruns = "{tmp_path / "runs"}"\n'
        f'base_model = "{tmp_path / "no-model"}"\n'
    )
    above = _file(tmp_path, "likelihood = true\n" + improve, "above.toml")
    assert "likelihood is outside any table" in _error(ee("improve", "--config", above))
    typed = _file(tmp_path, improve + '[replay]\nk = "8"\n', "typed.toml")
    assert "k: Input should be a valid integer (got '8'): in [replay] of" in _error(ee("improve", "--config", typed))
    for encoding in ("utf-16", "utf-8-sig"):
        written = _file(tmp_path, improve + "[replay]\nk = 2\n", f"{encoding}.toml", encoding)
        error = _error(ee("improve", "--config", written))  # read through: the start-up check gets to the base model
        assert "base_model in [improve] (or --base-model): No base model at" in error, error


JOBS = {
    ("replay", "run"): "ee_middleware.replay.config:ReplayConfig",
    ("datasets", "build"): "ee_middleware.trainers.datasets.build:DatasetConfig",
    ("train",): "ee_middleware.trainers.training.config:TrainConfig",
    ("eval", "run"): "ee_middleware.evals.job:EvalJob",
    ("eval", "gate"): "ee_middleware.evals.gate:GatePolicy",
    ("improve",): "ee_middleware.jobs.config:ImproveConfig",
}
NOT_SETTINGS = {"--config", "--progress", "--json", "--allow-partial", "--candidate", "--baseline", "--policy", "--adapter", "--registry"}
NOT_SETTINGS |= {"--new-run", "--force", "--example-config", "--endpoint", "--allow-mixed-models"}  # (per call, as --force)


def test_the_readme_gives_the_key_of_every_flag_spelled_otherwise_in_the_file() -> None:
    # The README said "all flags can live in a [replay] table" but no page said that --heldout-after is
    # heldout_started_after, --tool-timeout tool_timeout_s, ...
    import importlib
    import re

    from typer.main import get_command

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [paragraph] = [p for p in readme.split("\n\n") if p.startswith("**Config files.**")]
    documented = set(re.findall(r"`(--[a-z-]+)", paragraph))
    undocumented = []
    for path, target in JOBS.items():
        command: Any = get_command(app)
        for name in path:
            command = command.commands[name]
        module, _, cls = target.partition(":")
        fields = set(getattr(importlib.import_module(module), cls).model_fields)
        for option in command.params:
            flags = [opt for opt in option.opts if opt.startswith("--")]
            if getattr(option, "param_type_name", "") != "option" or not set(flags) - NOT_SETTINGS:
                continue
            spelled_otherwise = [flag for flag in flags if flag[2:].replace("-", "_") not in fields]
            undocumented += [f"ee {' '.join(path)} {flag}" for flag in spelled_otherwise if flag not in documented]
    assert not undocumented, f"README's **Config files.** paragraph names no key for {undocumented}"


def test_an_error_about_a_flag_names_the_spelling_typed(tmp_path: Path) -> None:
    # `ee train --lr 0` was reported as --learning-rate (the option's longest name), a flag the user never typed. The real
    # `ee` process, as its console script runs it: click keeps no record of the spelling, the command line does.
    import subprocess
    import sys

    script = "import sys; from ee_middleware.cli import main; sys.argv[0] = 'ee'; sys.exit(main())"
    for typed, shown in ((["--lr", "0"], "--lr"), (["--learning-rate=0"], "--learning-rate")):
        args = [sys.executable, "-c", script, "train", "--data", str(tmp_path / "d"), "--base-model", str(tmp_path / "m"), *typed]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "EE_STORE": ""})
        assert done.returncode == 1, done.stderr
        assert f"Invalid train configuration: {shown}: Input should be greater than 0" in done.stderr, done.stderr


def test_a_host_clis_own_flags_are_not_named_as_ees(tmp_path: Path) -> None:
    # The flag naming read whatever click command was running: inside a company CLI wrapping TrainConfig.load, an error
    # named the host's own option (and its spelling), which sets no ee setting by that name.
    import click
    from click.testing import CliRunner as ClickRunner

    from ee_middleware.errors import ConfigError
    from ee_middleware.trainers.training.config import TrainConfig

    @click.command("nightly-train")
    @click.option("--step-size", "learning_rate", type=float)
    def host(learning_rate: float) -> None:
        TrainConfig.load(None, base_model="m", learning_rate=learning_rate)

    result = ClickRunner().invoke(host, ["--step-size", "0"])
    assert isinstance(result.exception, ConfigError), result.output
    assert "Invalid train configuration: learning_rate: Input should be greater than 0" in str(result.exception)
