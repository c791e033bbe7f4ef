"""A job's configuration file: its own table, other jobs' tables, and the mistakes that used to run on defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.capture.config import CaptureConfig
from ee_middleware.errors import ConfigError
from ee_middleware.replay.config import ReplayConfig


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ee.toml"
    path.write_text(text)
    return path


def test_settings_outside_any_table_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = _file(tmp_path, 'k = 3\npolicy = "mutate"\n')
    with pytest.raises(ConfigError, match=r"no \[replay\] table, and k, policy are outside any table: .*Put a line \[replay\] above them"):
        ReplayConfig.load(path)
    with pytest.raises(ConfigError, match=r"no \[capture\] table, and k, policy are outside any table"):
        CaptureConfig.load(path)


def test_a_near_miss_of_the_table_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no \[replay\] table but has \[replays\]: did you mean \[replay\]\?"):
        ReplayConfig.load(_file(tmp_path, "[replays]\nk = 3\n"))


def test_a_shared_file_without_the_jobs_table_runs_on_its_defaults(tmp_path: Path) -> None:
    path = _file(tmp_path, '[improve]\nbase = "m"\n\n[datasets]\nkinds = ["il"]\n\n[capture]\napp = "shop"\n')
    assert ReplayConfig.load(path, store="s").k == ReplayConfig(store="s").k
    assert CaptureConfig.load(path).app == "shop"


def test_the_jobs_table_is_read(tmp_path: Path) -> None:
    assert ReplayConfig.load(_file(tmp_path, "[replay]\nk = 3\n"), store="s").k == 3


def test_a_misspelled_setting_is_named_with_the_setting_meant(tmp_path: Path) -> None:
    """An unknown key names the known one it is close to, in the job's table and in nested tables."""
    from ee_middleware.jobs.config import ImproveConfig

    with pytest.raises(ConfigError, match=r"worker: Extra inputs are not permitted \(did you mean workers\?\)"):
        ReplayConfig.load(_file(tmp_path, "[replay]\nworker = 2\n"), store="s")
    improve = '[improve]\nstore = "s"\napp = "a"\nregistry = "r"\nruns = "runs"\nbase_model = "m"\n'
    with pytest.raises(ConfigError, match=r"schedul: .*\(did you mean schedule\?\)"):
        ImproveConfig.load(_file(tmp_path, improve + 'schedul = "il"\n'))
    with pytest.raises(ConfigError, match=r"budgets\.max_minute: .*\(did you mean max_minutes\?\)"):
        ImproveConfig.load(_file(tmp_path, improve + "[improve.budgets]\nmax_minute = 5\n"))
    with pytest.raises(ConfigError, match=r"zzz: Extra inputs are not permitted: in \[replay\] of "):  # nothing close: no guess
        ReplayConfig.load(_file(tmp_path, "[replay]\nzzz = 2\n"), store="s")


def test_a_problem_with_a_key_of_the_file_names_the_file_and_the_fix_in_every_job(tmp_path: Path) -> None:
    """Sweep (plug-ins) 7: ``ee replay run`` (and the other jobs' own loads) named neither the file nor the fix for an
    unknown key or a value out of range, where ``ee improve`` did; a value of the wrong type hidden by a flag passed."""
    path = _file(tmp_path, "[replay]\nkk = 2\n")
    with pytest.raises(ConfigError) as caught:
        ReplayConfig.load(path, store="s")
    assert str(caught.value).endswith(f"kk: Extra inputs are not permitted: in [replay] of {path} (remove the key, or correct its name)")
    path = _file(tmp_path, "[replay]\nk = 0\n")
    with pytest.raises(
        ConfigError, match=rf"k: Input should be greater than or equal to 1 \(got 0\): in \[replay\] of {re.escape(str(path))}$"
    ):
        ReplayConfig.load(path, store="s")
    assert "of " not in _message(lambda: ReplayConfig.load(None, store="s", k=0)), "a value no file gave names no file"
    path = _file(tmp_path, '[replay]\nk = "two"\n')
    with pytest.raises(
        ConfigError, match=r"k: Input should be a valid integer \(got 'two'\).*overridden here, by a flag or the job, but .*: fix it"
    ):
        ReplayConfig.load(path, store="s", k=1)


def _message(load: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load()
    return str(caught.value)


# --- TOML types: a value from the file has its setting's type ---------------------------------------------------------

_IMPROVE = '[improve]\nstore = "s"\napp = "a"\nregistry = "r"\nruns = "runs"\nbase_model = "m"\n'


def _load(job: str, path: Path) -> object:
    """The job's config from ``path``, with the settings the command line would give (each job's own loader)."""
    from ee_middleware.evals.gate import GatePolicy
    from ee_middleware.evals.job import EvalJob
    from ee_middleware.jobs.config import ImproveConfig
    from ee_middleware.trainers.datasets.build import DatasetConfig
    from ee_middleware.trainers.training.config import TrainConfig

    loaders = {
        "replay": lambda: ReplayConfig.load(path, store="s"),
        "datasets": lambda: DatasetConfig.load(path, store="s", out="o"),
        "train": lambda: TrainConfig.load(path, base_model="m"),
        "eval": lambda: EvalJob.load(path, suites=["bfcl:simple:2"], model="oracle", out="o"),
        "gate": lambda: GatePolicy.load(path),
        "improve": lambda: ImproveConfig.load(path),
    }
    return loaders[job]()


@pytest.mark.parametrize(
    ("job", "text", "message"),
    [
        (
            "replay",
            "[replay]\nk = true\n",
            r"k: Input should be a valid integer \(got true\): in \[replay\] of .*ee\.toml, .*true is a boolean",
        ),
        (
            "replay",
            '[replay]\nallow_network = "yes"\n',
            r"allow_network: Input should be a valid boolean \(got \'yes\'\).*allow_network = true or",
        ),
        ("replay", "[replay]\nk = 2.5\n", r"k: Input should be a valid integer \(got 2\.5\).*whole number"),
        (
            "train",
            '[train]\nbatch_size = "4"\n',
            r"batch_size: Input should be a valid integer \(got \'4\'\): .*write batch_size = 4 without quotes",
        ),
        (
            "train",
            '[train]\nlearning_rate = "2e-4"\n',
            r"learning_rate: Input should be a valid number \(got '2e-4'\).*learning_rate = 2e-4 without",
        ),
        (
            "train",
            '[train]\ntarget_modules = "q_proj"\n',
            r'target_modules: Input should be a valid list of strings.*target_modules = \["q_proj"\]',
        ),
        ("train", "[train]\nschedule = 1\n", r'schedule: Input should be one of .*schedule = "il"'),
        ("datasets", '[datasets]\nheldout_share = "0.2"\n', r"heldout_share: Input should be a valid number \(got '0\.2'\)"),
        ("datasets", "[datasets]\napp = 7\n", r'app: Input should be a valid string \(got 7\).*app = "7"'),
        ("eval", '[eval]\ntrials = "2"\n', r"trials: Input should be a valid integer \(got '2'\)"),
        ("gate", '[gate]\nmin_tasks = "5"\n', r"min_tasks: Input should be a valid integer \(got '5'\)"),
        ("gate", '[gate]\nrequire_significant = "true"\n', r"require_significant: Input should be a valid boolean \(got 'true'\)"),
        ("improve", _IMPROVE + "likelihood_states = true\n", r"likelihood_states: Input should be a valid integer \(got true\)"),
        (
            "improve",
            _IMPROVE + '[improve.budgets]\nmax_minutes = "5"\n',
            r"budgets\.max_minutes: .*in \[improve\.budgets\] of .*max_minutes = 5",
        ),
        (
            "improve",
            _IMPROVE + '[improve.serving]\nservers = "http://x/v1"\n',
            r"serving\.servers: Input should be a valid list of strings",
        ),
    ],
)
def test_a_value_of_another_toml_type_is_refused_naming_file_key_value_and_type(tmp_path: Path, job: str, text: str, message: str) -> None:
    """Was: k = true replayed with k=1, "4" and "2e-4" were read as numbers, "yes" and "true" as True (pydantic's lax mode)."""
    with pytest.raises(ConfigError, match=message):
        _load(job, _file(tmp_path, text))


def test_secret_settings_of_the_wrong_type_are_named_without_their_value(tmp_path: Path) -> None:
    from ee_middleware._toml import _Layered, _wrong_types

    values = _Layered(api_key=12345678)
    values.path, values.table, values.from_file = tmp_path / "x.toml", "t", dict(values)

    class Secret(ReplayConfig):
        api_key: str | None = None

    [line] = _wrong_types(Secret, values)
    assert "api_key: Input should be a valid string" in line and "12345678" not in line, line


@pytest.mark.parametrize(
    ("job", "text"),
    [
        ("datasets", '[datasets]\nheldout_started_after = "2026-01-31"\nheldout_started_before = "2026-02-01T00:00:00Z"\n'),
        ("datasets", "[datasets]\nheldout_started_after = 2026-01-31T00:00:00Z\nheldout_started_before = 2026-02-01\n"),
        ("datasets", '[datasets]\nkinds = "il,iwm"\nheldout_ids = "ids.txt"\nchunk_mb = 8\n'),
        ("train", '[train]\ndata = "d"\nlearning_rate = 1\nepochs = 2\ntarget_modules = ["q_proj"]\nschedule = "sr"\nbf16 = false\n'),
        ("replay", '[replay]\nstore = "s"\ntemperature = 0\ntop_p = 1\n[replay.policy_settings]\nanything = "goes"\n'),
        ("eval", '[eval]\nsuites = ["bfcl:simple:2"]\ntimeout_s = 5\n'),
        ("gate", "[gate]\nmin_improvement = 0\nalpha = 0.1\n"),
        ("improve", _IMPROVE + 'suites = ["traces"]\n[improve.budgets]\nmax_minutes = 5\n[improve.serving]\nservers = ["http://x/v1"]\n'),
    ],
)
def test_toml_that_has_the_settings_types_keeps_working(tmp_path: Path, job: str, text: str) -> None:
    """Dates as TOML dates or ISO strings, paths as strings, an integer where a number goes, arrays for lists."""
    _load(job, _file(tmp_path, text))


# --- where settings are written ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "text", "key", "table"),
    [
        ("replay", "k = 2\n[replay]\nworkers = 2\n", "k", "replay"),
        ("improve", "likelihood = true\n" + _IMPROVE, "likelihood", "improve"),
        ("train", 'data = "d"\n[train]\nepochs = 2\n', "data", "train"),
    ],
)
def test_settings_above_the_jobs_table_are_refused(tmp_path: Path, job: str, text: str, key: str, table: str) -> None:
    """Was: ignored whenever the table existed (k = 2 above [replay] replayed with k=8)."""
    with pytest.raises(
        ConfigError, match=rf"{key} is outside any table .*reads its settings from \[{table}\]\. Move it below the \[{table}\] line"
    ):
        _load(job, _file(tmp_path, text))


@pytest.mark.parametrize(
    ("job", "text", "message"),
    [
        (
            "replay",
            '[train]\nbase_model = "m"\n',
            r"has no \[replay\] table, which the replay job reads .*; it has \[train\] \(read by ee train\)",
        ),
        ("train", "[replay]\nk = 2\n", r"has no \[train\] table.*it has \[replay\] \(read by ee replay run\)"),
        ("datasets", "[eval]\ntrials = 2\n[gate]\nmin_tasks = 1\n", r"no \[datasets\] table.*it has \[eval\] .*, \[gate\] "),
        (
            "gate",
            "[policy]\nmin_improvement = 0.5\nmin_tasks = 1\n",
            r"no \[gate\] table.*it has \[policy\] \(read by no ee job\)\. .*rename it \[gate\]",
        ),
        ("eval", '[train]\nbase_model = "m"\n', r"no \[eval\] table"),
        ("improve", '[capture]\napp = "shop"\n', r"no \[improve\] table.*it has \[capture\] \(read by record_experience"),
        # the experience and curriculum commands' tables are ee's own too (was: "read by no ee job", "rename it [replay]")
        (
            "replay",
            "[experience_eval]\ntop_k = 3\n",
            r"no \[replay\] table.*it has \[experience_eval\] \(read by ee experience eval\)\. Give",
        ),
        ("train", "[curriculum]\nk = 2\n", r"no \[train\] table.*it has \[curriculum\] \(read by ee curriculum run\)\. Give"),
    ],
)
def test_a_file_without_the_jobs_table_is_refused_naming_the_tables_it_has(tmp_path: Path, job: str, text: str, message: str) -> None:
    """Was: the job ran on its defaults (ee eval gate --policy with a [policy] table passed on min_tasks 20, min_improvement 0)."""
    with pytest.raises(ConfigError, match=message):
        _load(job, _file(tmp_path, text))


def test_an_empty_file_and_the_nightly_jobs_file_leave_a_stage_table_out(tmp_path: Path) -> None:
    assert _load("replay", _file(tmp_path, "# nothing yet\n")).k == 8  # type: ignore[attr-defined]
    improve = _file(tmp_path, _IMPROVE + "[train]\nepochs = 2\n")
    assert _load("replay", improve).k == 8  # type: ignore[attr-defined]  # ee improve's stages
    assert _load("gate", improve).min_tasks == 20  # type: ignore[attr-defined]
    from ee_middleware.jobs.config import ImproveConfig

    stages = _file(tmp_path, "[replay]\nk = 2\n")  # ee improve's file, its [improve] settings given as flags
    flags = {"store": "s", "app": "a", "registry": "r", "runs": "runs", "base_model": "m"}
    assert ImproveConfig.load(stages, **flags).replay_config().k == 2


def test_a_table_given_by_overrides_merges_into_the_files_key_by_key(tmp_path: Path) -> None:
    """--policy-setting invalid_share=0.0 replaced the whole [replay.policy_settings] (same_tool_share was dropped)."""
    path = _file(tmp_path, "[replay]\n[replay.policy_settings]\nsame_tool_share = 0.9\ninvalid_share = 0.1\n")
    config = ReplayConfig.load(path, store="s", policy_settings={"invalid_share": 0.0})
    assert config.policy_settings == {"same_tool_share": 0.9, "invalid_share": 0.0}
    both = _file(tmp_path, "[replay]\n[replay.policy_settings]\nsame_tool_share = 0.9\ninvalid_share = 0.0\n")
    assert config.replay_id == ReplayConfig.load(both, store="s").replay_id


# --- encodings ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-32"])
def test_utf8_with_a_bom_and_utf16_with_a_bom_are_read(tmp_path: Path, encoding: str) -> None:
    """PowerShell 5's `ee improve --example-config > improve.toml` writes UTF-16 with a BOM: 'unexpected
    UnicodeDecodeError ... a bug in ee-middleware'; UTF-8 with a BOM: 'Invalid statement (at line 1, column 1)'."""
    import codecs

    text = '[replay]\nk = 3\npolicy = "mutate"  # é\n'
    boms = {"utf-16-le-bom": (codecs.BOM_UTF16_LE, "utf-16-le"), "utf-16-be-bom": (codecs.BOM_UTF16_BE, "utf-16-be")}
    bom, codec = boms.get(encoding, (b"", encoding))
    path = tmp_path / "ee.toml"
    path.write_bytes(bom + text.encode(codec))
    assert ReplayConfig.load(path, store="s").k == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('[replay]\nnote = "caf\xe9"\n'.encode("latin-1"), r"is not UTF-8 text \(byte 0xe9 at offset 20 is not\).*Save it as UTF-8"),
        ("[replay]\nk = 3\n".encode("utf-16-le"), r"holds NUL characters: is it UTF-16 without a byte-order mark\? Save it as UTF-8"),
    ],
)
def test_a_file_in_another_encoding_is_a_clear_error_naming_it(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "ee.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=rf"Config file {path} {message}"):
        ReplayConfig.load(path, store="s")


# --- keys spelled as flags, and secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "key", "meant"),
    [
        ("datasets", "heldout_after", "heldout_started_after"),
        ("datasets", "heldout_before", "heldout_started_before"),
        ("datasets", "max_observation_tokens", "iwm_max_observation_tokens"),
        ("datasets", "max_error_share", "iwm_max_error_share"),
        ("replay", "tool_timeout", "tool_timeout_s"),
        ("replay", "policy_setting", "policy_settings"),
        ("eval", "timeout", "timeout_s"),
        ("eval", "model_spec", "model"),
        ("eval", "suite", "suites"),
    ],
)
def test_a_key_spelled_as_its_flag_names_the_key(tmp_path: Path, job: str, key: str, meant: str) -> None:
    """Was: heldout_after got 'did you mean heldout_share?', model_spec no hint."""
    with pytest.raises(ConfigError, match=rf"{key}: Extra inputs are not permitted \(did you mean {meant}\?\)"):
        _load(job, _file(tmp_path, f"[{job}]\n{key} = 1\n"))


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("apiKey", True),
        ("token", True),
        ("hf_token", True),
        ("client_secret", True),
        ("password", True),
        ("Authorization", True),
        ("credentials", True),
        ("max_tokens", False),
        ("max_new_tokens", False),
        ("iwm_max_observation_tokens", False),
        ("keys", False),
    ],
)
def test_a_count_of_tokens_is_not_a_secret(name: str, secret: bool) -> None:
    from ee_middleware._toml import _is_secret_name

    assert _is_secret_name(name) is secret


def test_an_error_about_a_count_of_tokens_says_the_value(tmp_path: Path) -> None:
    """'iwm_max_observation_tokens: Input should be >= 8' hid '(got 2)': "token" was taken for a secret's name."""
    with pytest.raises(ConfigError, match=r"iwm_max_observation_tokens: Input should be greater than or equal to 8 \(got 2\)"):
        _load("datasets", _file(tmp_path, "[datasets]\niwm_max_observation_tokens = 2\n"))


def test_a_folder_given_as_the_config_file_is_said_to_be_one(tmp_path: Path) -> None:
    """Sweep U: `--config dirconf` (a folder) got the message for a folder where a file is to be written."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    (tmp_path / "dirconf").mkdir()
    with pytest.raises(ConfigError, match=r"Config file .*dirconf is a folder: give the path of the TOML file"):
        ReplayConfig.load(tmp_path / "dirconf", store=tmp_path)
    result = CliRunner().invoke(app, ["replay", "run", "--config", str(tmp_path / "dirconf"), "--store", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder: give the path of the TOML file" in result.output and "to write" not in result.output


def test_sr_k_above_what_a_replay_records_per_state_is_refused_naming_the_bound(tmp_path: Path) -> None:
    # a replay records at most 256 alternatives per state (--k), so an SR row can show its teacher no more
    with pytest.raises(ConfigError, match=r"sr_k: Input should be less than or equal to 256 \(got 10000000000\)"):
        _load("datasets", _file(tmp_path, "[datasets]\nsr_k = 10000000000\n"))


def test_an_unknown_train_key_is_named_in_its_file_when_base_model_is_missing_too(tmp_path: Path) -> None:
    # the file's own mistake is said first, where it is (it lost the file's name when base_model was missing as well)
    from ee_middleware.trainers.training.config import TrainConfig

    path = _file(tmp_path, "[train]\nlora_rank = 8\n")
    with pytest.raises(ConfigError, match=rf"did you mean lora_r\?\): in \[train\] of {re.escape(str(path))} \(remove the key"):
        TrainConfig.load(path)
