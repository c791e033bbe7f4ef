"""``ee improve``'s check before a run starts, through the real command: a real TOML file and a real store, a base-model
folder as far as the check reads it (its config.json and tokenizer config). Each case was found only hours into a run,
or not at all."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir
from ee_middleware.store import LocalExperienceStore
from tests.jobs.test_config import _base_folder, _improve_file

runner = CliRunner()


def improve(path: Path, *args: str):
    return runner.invoke(app, ["improve", "--config", str(path), "--no-progress", *args])


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_stage_setting_the_job_sets_itself_is_refused_naming_what_sets_it(tmp_path: Path) -> None:
    # [train] base_model, output_dir, [datasets] out, [replay] store/app and [eval] suites were dropped without a word:
    # the run trained on [improve] base_model, evaluated only the traces suite, and run.json recorded 'other-base'.
    LocalExperienceStore(tmp_path / "s").close()
    stages = (
        '[replay]\nstore = "other-store"\napp = "other-app"\nk = 2\n[datasets]\nout = "my-data"\n'
        '[train]\nbase_model = "other-base"\noutput_dir = "my-adapter"\n[eval]\nsuites = ["bfcl:simple:3"]\n'
    )
    path = _improve_file(tmp_path, _base_folder(tmp_path), stages)
    error = _one_error(improve(path))
    for setting, what in (
        ("[replay] store", "[improve] store"),
        ("[replay] app", "[improve] app"),
        ("[datasets] out", "[improve] runs"),
        ("[train] base_model", "[improve] base_model"),
        ("[train] output_dir", "[improve] runs"),
        ("[eval] suites", "[improve] suites"),
    ):
        assert f"{setting}: " in error and what in error.split(f"{setting}: ", 1)[1], (setting, error)
    assert "[replay] k" not in error
    assert RunsDir(tmp_path / "runs").list() == [] and not (tmp_path / "my-data").exists()
    from ee_middleware.jobs.config import ImproveConfig

    ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path), "[replay]\nk = 2\n[train]\nmax_steps = 2\n")).check()


def test_a_check_that_fails_leaves_no_registry_behind_and_a_passing_one_makes_none(tmp_path: Path) -> None:
    # The check opened the registry with create=True: `ee improve --example-config` output, unedited, made /data/adapters
    # (.lock, index.json) though the check then failed on base_model; a misspelt registry was made without a word.
    from ee_middleware.jobs.config import ImproveConfig

    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, tmp_path / "no-base")
    error = _one_error(improve(path))
    assert "No base model at" in error
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()
    ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path))).check()
    assert not (tmp_path / "r").exists(), "the run makes the registry, not the check"


def test_a_misspelt_teacher_or_target_module_stops_the_job_before_a_run_starts(tmp_path: Path) -> None:
    # [datasets] teacher = "templat" failed the run at its datasets stage, [train] target_modules = ["nope_proj"] at its
    # train stage (after replay and datasets); the README says a typo never fails a run hours in.
    from ee_middleware.jobs.config import ImproveConfig

    LocalExperienceStore(tmp_path / "s").close()
    base = _base_folder(tmp_path)  # GPT-2's architecture (config.json), no weights: the check reads no weights
    teacher = '[datasets]\nkinds = ["il", "iwm", "sr"]\nteacher = "templat"\n'
    error = _one_error(improve(_improve_file(tmp_path, base, teacher)))
    assert "[datasets] teacher = 'templat': Unknown teacher 'templat'" in error and "'template'" in error
    error = _one_error(improve(_improve_file(tmp_path, base, '[train]\ntarget_modules = ["nope_proj"]\n')))
    assert "[train] target_modules = ['nope_proj']" in error and "no module(s) named nope_proj" in error and "c_attn" in error
    assert RunsDir(tmp_path / "runs").list() == []
    ImproveConfig.load(_improve_file(tmp_path, base, '[datasets]\nkinds = ["il", "iwm", "sr"]\nteacher = "template"\n')).check()
    ImproveConfig.load(_improve_file(tmp_path, base, '[train]\ntarget_modules = ["c_attn"]\n')).check()
    # the teacher of a job that builds no sr dataset is never used, so never looked up
    ImproveConfig.load(_improve_file(tmp_path, base, '[datasets]\nkinds = ["il", "iwm"]\nteacher = "templat"\n')).check()


def test_device_cuda_on_a_machine_without_a_gpu_stops_the_job_before_a_run_starts(tmp_path: Path) -> None:
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: device = 'cuda' is right here")
    LocalExperienceStore(tmp_path / "s").close()
    error = _one_error(improve(_improve_file(tmp_path, _base_folder(tmp_path), '[train]\ndevice = "cuda"\n')))
    assert '[train] device = "cuda", but torch sees no CUDA GPU' in error and 'device = "auto"' in error
    assert RunsDir(tmp_path / "runs").list() == []
