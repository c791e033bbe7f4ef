"""``ee experience eval|dataset --app`` and an experience sandbox replaying one app read that app's trajectories alone.

A store holding two apps (the same tools, another world) gave an experience model for one app training rows whose
retrieved demonstrations were the other app's tool answers, and measured it on the other app's held-out calls: the
replay buffer, the held-out split and the em rows read every approved trajectory of the store. On the real BFCL expert
store, half of its trajectories stored again under a second app."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.experience_eval import split_store
from ee_middleware.replay.retrieval import TransitionIndex, trajectory_transitions
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox
from ee_middleware.store.local import LocalExperienceStore
from tests.cli.test_experience_cli import _eval_args, served
from tests.replay.test_experience import copy_first_example

OTHER = "other-app"


@pytest.fixture
def two_apps(bfcl_store_path: Path, tmp_path: Path) -> tuple[Path, str, set[str], set[str]]:
    """A store of the BFCL experts' approved trajectories, every other one under :data:`OTHER`: its path, the first app,
    and each app's trajectory ids."""
    source = LocalExperienceStore(bfcl_store_path)
    trajectories = list(source.iter_trajectories(status="approved"))
    source.close()
    first = trajectories[0].app
    moved = [t.model_copy(update={"app": OTHER}) if n % 2 else t for n, t in enumerate(trajectories)]
    store = LocalExperienceStore(tmp_path / "two-apps", create=True)
    store.write(moved)
    store.approve([t.id for t in moved], by="test")
    store.close()
    ids = {name: {t.id for t in moved if t.app == name} for name in (first, OTHER)}
    assert ids[first] and ids[OTHER]
    return tmp_path / "two-apps", first, ids[first], ids[OTHER]


def test_the_split_and_the_buffer_hold_one_apps_trajectories(two_apps: tuple[Path, str, set[str], set[str]]) -> None:
    path, first, mine, theirs = two_apps
    store = LocalExperienceStore(path)
    split = split_store(store, share=0.3, app=first)
    assert split.held_out_ids and split.held_out_ids <= mine
    assert {t.trajectory_id for t in split.index.transitions} <= mine
    everything = split_store(store, share=0.3)
    assert {t.trajectory_id for t in everything.index.transitions} & theirs  # without --app: the whole store, as before
    index = TransitionIndex.of()
    assert index.refresh(store, app=OTHER) > 0
    assert {t.trajectory_id for t in index.transitions} <= theirs
    store.close()


def test_a_replay_of_one_app_gives_its_experience_sandbox_that_app(two_apps: tuple[Path, str, set[str], set[str]]) -> None:
    path, first, _, _ = two_apps
    config = ReplayConfig(store=path, sandbox="experience:openai:http://127.0.0.1:9/v1#em", app=first)
    assert config.sandbox_factory_options()["app"] == first
    assert "app" not in ReplayConfig(store=path, sandbox="experience:openai:http://127.0.0.1:9/v1#em").sandbox_factory_options()
    assert "app" not in ReplayConfig(store=path, sandbox="bfcl", app=first).sandbox_factory_options()
    sandbox = ExperienceSandbox("openai:http://127.0.0.1:9/v1#em", check_endpoint=False, **config.sandbox_factory_options())
    try:
        assert {t.trajectory_id for t in sandbox.index.transitions} == mine_with_steps(path, first)
    finally:
        sandbox.close()


def mine_with_steps(path: Path, app_name: str) -> set[str]:
    """The ids of ``app_name``'s approved trajectories that have a transition to index."""
    store = LocalExperienceStore(path)
    try:
        return {t.id for t in store.iter_trajectories(status="approved") if t.app == app_name and trajectory_transitions(t)}
    finally:
        store.close()


def test_em_rows_of_one_app_are_built_and_grounded_on_that_app_alone(
    two_apps: tuple[Path, str, set[str], set[str]], tmp_path: Path
) -> None:
    path, first, mine, theirs = two_apps
    args = ["experience", "dataset", "--store", str(path), "--out", str(tmp_path / "em"), "--app", first, "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["app"] == first
    rows = pl.read_parquet(tmp_path / "em" / "em.parquet")
    assert rows.height and set(rows["trajectory_id"].to_list()) <= mine
    # no prompt shows the other app's answers: every retrieved demonstration is of this app's trajectories
    store = LocalExperienceStore(path)
    seen = {t.id: {x.observation for x in trajectory_transitions(t)} for t in store.iter_trajectories(status="approved")}
    theirs_only = set().union(*(seen[i] for i in theirs)) - set().union(*(seen[i] for i in mine))
    store.close()
    assert theirs_only
    prompts = "\n".join(json.dumps(p) for p in rows["prompt"].to_list())
    assert not [o for o in theirs_only if len(o) > 40 and json.dumps(o)[1:-1] in prompts]


def test_an_app_the_store_has_no_trajectories_of_is_named_with_those_it_has(
    two_apps: tuple[Path, str, set[str], set[str]], tmp_path: Path
) -> None:
    path, first, _, _ = two_apps
    args = ["experience", "dataset", "--store", str(path), "--out", str(tmp_path / "em"), "--app", "no-such-app"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "Invalid value for --app" in said and f"of: {first}, {OTHER}" in said, said
    with served(copy_first_example) as model:
        evaluated = CliRunner().invoke(app, _eval_args(model, path, tmp_path / "eval", "--app", "no-such-app"), env={"COLUMNS": "300"})
    assert evaluated.exit_code == 2, evaluated.output
    assert "Invalid value for --app" in " ".join(evaluated.output.replace("│", " ").split())


def test_an_eval_of_one_app_predicts_and_retrieves_that_apps_transitions(
    two_apps: tuple[Path, str, set[str], set[str]], tmp_path: Path
) -> None:
    path, first, _, _ = two_apps
    with served(copy_first_example) as model:
        everything = CliRunner().invoke(app, _eval_args(model, path, tmp_path / "all", "--json"))
        mine = CliRunner().invoke(app, _eval_args(model, path, tmp_path / "mine", "--app", first, "--json"))
    assert everything.exit_code == 0 and mine.exit_code == 0, (everything.output, mine.output)
    whole, one = json.loads(everything.stdout), json.loads(mine.stdout)
    assert one["app"] == first and whole["app"] is None
    assert one["indexed_transitions"] < whole["indexed_transitions"]
    assert json.loads((tmp_path / "mine" / "report.json").read_text())["app"] == first


def test_an_out_path_that_is_a_file_is_refused_before_any_prediction(bfcl_store_path: Path, tmp_path: Path) -> None:
    """It was refused after every prediction had been made ("afile is a file, not a folder"): an hour of work on CPU."""
    (tmp_path / "afile").write_text("mine\n")
    with served(copy_first_example) as model:
        evaluated = CliRunner().invoke(app, _eval_args(model, bfcl_store_path, tmp_path / "afile"), env={"COLUMNS": "300"})
        assert not model.requests
    assert evaluated.exit_code == 2, evaluated.output
    said = " ".join(evaluated.output.replace("│", " ").split())
    assert "Invalid value for '--out'" in said and "is no folder" in said, said
    args = ["experience", "dataset", "--store", str(bfcl_store_path), "--out", str(tmp_path / "afile" / "em")]
    built = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert built.exit_code == 2, built.output
    assert "above it is a file" in " ".join(built.output.replace("│", " ").split())
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_a_fidelity_report_of_another_app_is_refused_for_this_apps_replay() -> None:
    """Review R13 L3: the report records its app, but the fidelity gate never compared it."""
    from ee_middleware.errors import SandboxError
    from ee_middleware.replay.sandboxes.experience import load_fidelity

    report = {"app": "support-bot", "variants": {"retrieval": {"model": None, "top_k": 3, "tools": {"get": {"token_f1": 0.9}}}}}
    assert load_fidelity(report, app="support-bot") == {"get": 0.9}
    assert load_fidelity(report) == {"get": 0.9} and load_fidelity({**report, "app": None}, app="shop") == {"get": 0.9}
    with pytest.raises(SandboxError, match=r"measured the app 'support-bot', not 'shop'.*ee experience eval --app shop"):
        load_fidelity(report, app="shop")


@pytest.mark.parametrize(("command", "written"), [("eval", "report.json"), ("dataset", "em.parquet")])
def test_a_folder_where_a_command_writes_its_file_is_refused_before_any_work(
    bfcl_store_path: Path, tmp_path: Path, command: str, written: str
) -> None:
    """Sweep: OUT/report.json (OUT/em.parquet) a folder. Was: refused once every prediction (every row) was made, with the
    advice to write "a file inside that folder (such as OUT/report.json/NAME)", a name the user cannot choose."""
    out = tmp_path / "out"
    (out / written).mkdir(parents=True)
    with served(copy_first_example) as model:
        args = (
            _eval_args(model, bfcl_store_path, out)
            if command == "eval"
            else ["experience", "dataset", "--store", str(bfcl_store_path), "--out", str(out)]
        )
        result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        assert not model.requests
    said = " ".join(result.output.replace("│", " ").split())
    assert (
        result.exit_code == 2 and f"Invalid value for --out: {out / written} is a folder, where this command writes its {written}" in said
    ), said
    assert "move that folder away, or choose another output folder" in said and (out / written).is_dir()
