"""Job settings from a ``--config`` file, flags and the environment, through the real ``ee`` commands on a real store."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.cli.json_failure import json_failure

runner = CliRunner()


def ee(*args: str | Path, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _file(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_no_flag_turns_off_what_the_datasets_file_turns_on(bfcl_store_path: Path, tmp_path: Path) -> None:
    # --no-include-fidelity-mismatches and the others did not exist ('No such option', exit 2): a setting a file
    # switched on could not be switched off for one build.
    switches = ("include_synthetic", "include_sandbox_failures", "include_fidelity_mismatches")
    config = _file(tmp_path, f'[datasets]\nstore = "{bfcl_store_path}"\nkinds = ["il"]\n' + "".join(f"{s} = true\n" for s in switches))
    on = ee("datasets", "build", "--config", config, "--out", tmp_path / "on", "--json")
    assert on.exit_code == 0, on.output
    assert all(json.loads(on.stdout)["config"][s] is True for s in switches)
    flags = [f"--no-{s.replace('_', '-')}" for s in switches]
    off = ee("datasets", "build", "--config", config, "--out", tmp_path / "off", "--json", *flags)
    assert off.exit_code == 0, off.output
    assert all(json.loads(off.stdout)["config"][s] is False for s in switches)


def test_no_allow_network_turns_off_the_replay_files_allow_network(bfcl_store_path: Path, tmp_path: Path) -> None:
    plain = ee("replay", "run", "--store", bfcl_store_path, "--k", "1", "--limit", "1", "--json", "--no-progress")
    assert plain.exit_code == 0, plain.output
    config = _file(tmp_path, f'[replay]\nstore = "{bfcl_store_path}"\nk = 1\nallow_network = true\n')
    networked = ee("replay", "run", "--config", config, "--limit", "1", "--json", "--no-progress")
    assert networked.exit_code == 0, networked.output
    off = ee("replay", "run", "--config", config, "--no-allow-network", "--limit", "1", "--json", "--no-progress")
    assert off.exit_code == 0, off.output
    replay_id = json.loads(off.stdout)["replay_id"]
    assert replay_id == json.loads(plain.stdout)["replay_id"] != json.loads(networked.stdout)["replay_id"]


def test_an_ee_store_that_overrides_the_files_store_is_said_and_named_in_the_error(bfcl_store_path: Path, tmp_path: Path) -> None:
    # EE_STORE silently beat store in a [replay] / [datasets] file, and the error then said "check the --store path".
    missing = tmp_path / "no-store"
    replay = _file(tmp_path, f'[replay]\nstore = "{bfcl_store_path}"\nk = 1\n', "replay.toml")
    datasets = _file(tmp_path, f'[datasets]\nstore = "{bfcl_store_path}"\nkinds = ["il"]\n', "datasets.toml")
    for args in (["replay", "run", "--config", replay, "--json"], ["datasets", "build", "--config", datasets, "--out", tmp_path / "d"]):
        result = ee(*args, env={"EE_STORE": str(missing)})
        assert result.exit_code == 1, result.output
        assert f"note: EE_STORE={missing} overrides store = '{bfcl_store_path}'" in result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("error: No experience store at") and f"set by EE_STORE={missing}" in error, result.stderr
        flagged = ee(*args, "--store", bfcl_store_path, env={"EE_STORE": str(missing)})  # the flag beats both
        assert flagged.exit_code == 0 and "EE_STORE" not in flagged.stderr, flagged.output
    in_file = _file(tmp_path, f'[replay]\nstore = "{missing}"\n', "missing.toml")
    result = ee("replay", "run", "--config", in_file, env={"EE_STORE": ""})
    assert result.exit_code == 1 and f"set by store in [replay] of {in_file}" in result.stderr, result.output


def test_a_datasets_out_under_home_is_written_there(bfcl_store_path: Path, tmp_path: Path, monkeypatch) -> None:
    # out = "~/x" (or --out=~/x, which no shell expands) made a folder named '~' in the working directory, then failed
    # with a polars error; the store's path and ee train's output_dir expand ~.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    config = _file(tmp_path, f'[datasets]\nstore = "{bfcl_store_path}"\nkinds = ["il"]\nout = "~/from-file"\n')
    in_file = ee("datasets", "build", "--config", config, "--json", env={"HOME": str(home)})
    assert in_file.exit_code == 0, in_file.output
    flagged = ee("datasets", "build", "--config", config, "--out=~/from-flag", "--json", env={"HOME": str(home)})
    assert flagged.exit_code == 0, flagged.output
    assert (home / "from-file" / "il.parquet").is_file() and (home / "from-flag" / "il.parquet").is_file()
    assert not (tmp_path / "~").exists()
    assert json.loads(flagged.stdout)["config"]["out"] == str(home / "from-flag")


def test_a_replay_id_the_store_has_no_replay_of_is_refused_naming_the_ones_it_has(bfcl_store_path: Path, tmp_path: Path) -> None:
    # An unknown --replay-id (or a prefix of one) built 0 rollouts, 0 IWM and SR rows and exited 0, saying so only in a
    # table cell.
    replayed = ee("replay", "run", "--store", bfcl_store_path, "--k", "1", "--json", "--no-progress")
    assert replayed.exit_code == 0, replayed.output
    replay_id = json.loads(replayed.stdout)["replay_id"]
    build = ["datasets", "build", "--store", bfcl_store_path, "--kinds", "il,iwm", "--out", tmp_path / "d", "--json"]
    for wrong, meant in (("0123456789ab", None), (replay_id[:8], replay_id)):
        result = ee(*build, "--replay-id", wrong)
        assert result.exit_code == 1 and json_failure(result), result.output
        assert f"--replay-id {wrong}" in result.stderr and f"Its replays: {replay_id} (policy mutate" in result.stderr
        assert (f"Did you mean {replay_id}?" in result.stderr) == (meant is not None), result.stderr
        assert not (tmp_path / "d").exists()
    config = _file(tmp_path, '[datasets]\nreplay_id = "0123456789ab"\n')
    in_file = ee(*build, "--config", config)
    assert in_file.exit_code == 1 and "replay_id in [datasets]" in in_file.stderr, in_file.output
    right = ee(*build, "--replay-id", replay_id)
    assert right.exit_code == 0, right.output
    assert json.loads(right.stdout)["datasets"]["iwm"]["rows"] > 0


def test_a_heldout_flag_replaces_the_files_heldout_rule(bfcl_store_path: Path, tmp_path: Path) -> None:
    # --heldout-ids was combined with the file's heldout_share (3 held out instead of the 1 listed), though the usage
    # shows the held-out flags as alternatives to each other.
    from ee_middleware.store import LocalExperienceStore

    ids = sorted(LocalExperienceStore(bfcl_store_path).trajectories()["id"].to_list())
    listed = tmp_path / "heldout.txt"
    listed.write_text(ids[0] + "\n")
    config = _file(tmp_path, f'[datasets]\nstore = "{bfcl_store_path}"\nkinds = ["il"]\nheldout_share = 0.5\n')
    by_file = ee("datasets", "build", "--config", config, "--out", tmp_path / "share", "--json")
    assert by_file.exit_code == 0, by_file.output
    assert len(json.loads(by_file.stdout)["split"]["heldout_trajectories"]) > 1  # the file's rule alone holds out several
    by_flag = ee("datasets", "build", "--config", config, "--heldout-ids", listed, "--out", tmp_path / "ids", "--json")
    assert by_flag.exit_code == 0, by_flag.output
    split = json.loads(by_flag.stdout)["split"]
    assert split["heldout_trajectories"] == [ids[0]]
    assert json.loads(by_flag.stdout)["config"]["heldout_share"] == 0.0


def test_an_ee_store_with_credentials_is_said_with_them_hidden_and_the_same_folder_is_not_noted(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch
) -> None:
    # Was: "note: EE_STORE=pg://ee:S3cretPw@... overrides ..." on every run and "(This store was set by
    # EE_STORE=pg://ee:S3cretPw@...)" in its error; and the note for an EE_STORE naming the file's folder another way.
    replay = _file(tmp_path, f'[replay]\nstore = "{bfcl_store_path}"\nk = 1\n', "replay.toml")
    result = ee("replay", "run", "--config", replay, "--json", "--no-progress", env={"EE_STORE": "pg://ee:S3cretPw@db.internal/exp"})
    assert result.exit_code == 1, result.output
    assert "S3cretPw" not in " ".join(result.stderr.split()).split("Unknown store")[0], result.stderr
    assert (
        "note: EE_STORE=pg://***@db.internal/exp overrides" in result.stderr and "set by EE_STORE=pg://***@db.internal/exp" in result.stderr
    )
    monkeypatch.chdir(bfcl_store_path.parent)
    same = ee(
        "replay", "run", "--config", replay, "--limit", "1", "--json", "--no-progress", env={"EE_STORE": f"./{bfcl_store_path.name}/"}
    )
    assert same.exit_code == 0 and "overrides" not in same.stderr, same.output


def test_a_renamed_flag_s_bad_value_is_named_by_the_flag_beside_a_boolean_flag(tmp_path: Path) -> None:
    """Sweep B, finding 8b: ``--max-observation-tokens 0 --no-progress`` was said as ``iwm_max_observation_tokens``, the
    setting's own name: --no-progress's False equalled the 0, so two flags held the value and neither was named."""
    args = ["datasets", "build", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "d"), "--max-observation-tokens", "0"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 1 and "--max-observation-tokens: Input should be greater than or equal to 8" in result.stderr


def test_an_unknown_key_of_a_relative_config_path_is_named_once(tmp_path: Path, monkeypatch) -> None:
    """Sweep B, finding 8a: ``ee improve -c typo.toml`` named the file twice, as given and resolved."""
    monkeypatch.chdir(tmp_path)
    Path("typo.toml").write_text('[improve]\nstore="s"\napp="a"\nregistry="r"\nruns="runs"\nbase_model="b"\nschedul="il"\n')
    result = runner.invoke(app, ["improve", "-c", "typo.toml", "--no-progress"])
    assert result.exit_code == 1
    assert " ".join(result.stderr.split()).count("in [improve] of") == 1, result.stderr
