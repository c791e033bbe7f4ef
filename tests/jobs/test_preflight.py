"""``ee improve``'s check before a run starts, through the real command: a real TOML file and a real store, a base-model
folder as far as the check reads it (its config.json and tokenizer config). Each case was found only hours into a run,
or not at all."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
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


def test_a_full_improve_file_checks_inside_a_host_cli_as_in_a_script(tmp_path: Path) -> None:
    # Whether a stage table may be left out was decided by asking whether the running click command was named 'improve':
    # a full improve file (no [datasets], no [gate]) passed the check in a script, but inside a company CLI's own click
    # or typer command (`nightly`) it was "has no [datasets] table".
    import click
    import typer
    from click.testing import CliRunner as ClickRunner

    from ee_middleware.jobs.config import ImproveConfig

    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), "[replay]\nk = 2\n")
    ImproveConfig.load(path).check()

    @click.command("nightly")
    def with_click() -> None:
        ImproveConfig.load(path).check()
        click.echo("checked")

    host = typer.Typer()

    @host.command("nightly")
    def with_typer(verbose: bool = False) -> None:
        ImproveConfig.load(path).check()
        typer.echo("checked")

    @host.command("other")
    def other() -> None: ...

    for result in (ClickRunner().invoke(with_click, []), runner.invoke(host, ["nightly"])):
        assert result.exit_code == 0 and "checked" in result.output, (result.output, result.exception)


def test_a_file_of_stage_tables_checks_with_the_improve_settings_given_in_code(tmp_path: Path) -> None:
    # A file of stage tables only, its [improve] settings given as flags, ran through `ee improve` but was refused through
    # the library (run_improve, an Airflow task): its left-out stage tables were taken for another job's file.
    from ee_middleware.jobs.config import ImproveConfig

    LocalExperienceStore(tmp_path / "s").close()
    path = tmp_path / "stages.toml"
    path.write_text("[replay]\nk = 2\n[train]\nmax_steps = 5\n")
    settings = {
        "store": tmp_path / "s",
        "app": "shop",
        "registry": tmp_path / "r",
        "runs": tmp_path / "runs",
        "base_model": _base_folder(tmp_path),
    }
    config = ImproveConfig.load(path, **{key: str(value) for key, value in settings.items()})
    config.check()
    assert config.replay_config().k == 2 and config.gate_policy().min_tasks == 20


REGISTRY_PLUGIN = """
from pathlib import Path

from ee_middleware.adapters.errors import RegistryError
from ee_middleware.adapters.registry import LocalAdapterRegistry


def open_team(location, *, create=True):
    # written before RegistryNotFoundError existed: a missing registry opened without create is a RegistryError, as
    # LocalAdapterRegistry itself raised it
    if not create and not (Path(location) / "index.json").is_file():
        raise RegistryError(f"No adapter registry at {location}.")
    return LocalAdapterRegistry(location, create=create)


def open_broken(location, *, create=True):
    raise ValueError("the team registry needs TEAM_REGISTRY_TOKEN")
"""


@pytest.fixture
def registry_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real installed registry plug-in: a module plus a dist-info declaring ``ee_middleware.adapter_registries``."""
    site = tmp_path / "site"
    (site / "team_registries-0.1.dist-info").mkdir(parents=True)
    (site / "team_registries.py").write_text(REGISTRY_PLUGIN)
    (site / "team_registries-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: team-registries\nVersion: 0.1\n")
    (site / "team_registries-0.1.dist-info" / "entry_points.txt").write_text(
        "[ee_middleware.adapter_registries]\nteam = team_registries:open_team\nbroken = team_registries:open_broken\n"
    )
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("team_registries", None)
    yield
    sys.modules.pop("team_registries", None)


def test_a_registry_plugin_that_says_registry_error_for_a_missing_registry_can_start_the_first_night(
    tmp_path: Path, registry_plugin: None
) -> None:
    # The check opens the registry without creating it and took only the new RegistryNotFoundError for "not there yet":
    # a plug-in raising RegistryError (as LocalAdapterRegistry did) failed every check, and only a run makes the registry.
    from ee_middleware.adapters.errors import RegistryError
    from ee_middleware.adapters.registry import open_registry
    from ee_middleware.jobs.config import ImproveConfig

    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path))
    team = tmp_path / "team-registry"
    ImproveConfig.load(path, registry=f"team:{team}").check()
    assert not team.exists(), "the check makes no registry"
    open_registry(f"team:{team}")  # as a run's register stage makes it
    ImproveConfig.load(path, registry=f"team:{team}").check()  # there now, no adapter live
    # a plug-in ee cannot build is not taken for a missing registry: the check still says why
    with pytest.raises(RegistryError, match="TEAM_REGISTRY_TOKEN"):
        ImproveConfig.load(path, registry=f"broken:{team}").check()


def test_a_misspelt_serving_backend_stops_the_job_before_a_run_starts(tmp_path: Path) -> None:
    # Sweep U M3: [improve.serving] backend = "vlm" was found by the check of the servers before a run, which named
    # neither the key nor the file's table ("Unknown serving backend 'vlm'"); now the check of the file names it.
    from ee_middleware.jobs.config import ImproveConfig

    LocalExperienceStore(tmp_path / "s").close()
    base = _base_folder(tmp_path)
    serving = '[improve.serving]\nbackend = "vlm"\nservers = ["http://127.0.0.1:8000/v1"]\n'
    error = _one_error(improve(_improve_file(tmp_path, base, serving)))
    assert "[improve.serving] backend = 'vlm':" in error and "'vllm'" in error, error
    assert RunsDir(tmp_path / "runs").list() == []
    ImproveConfig.load(_improve_file(tmp_path, base, serving.replace('"vlm"', '"vllm"'))).check()
    ImproveConfig.load(_improve_file(tmp_path, base, '[improve.serving]\nbackend = "vlm"\n')).check()  # no servers: unused
