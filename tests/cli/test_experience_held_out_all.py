"""``ee experience dataset --held-out 1.0`` says what ``ee experience eval --held-out 1.0`` says: the share holds out
every trajectory, hold out a smaller one. Was: "Invalid value for --store: No real transition of an approved trajectory
outside the held-out share: record or approve more trajectories", which blamed the store (the two commands share the
split). On the real BFCL expert store, with a scripted experience model behind a real HTTP server for the eval."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.cli.test_experience_cli import _eval_args, served
from tests.replay.test_experience import copy_first_example

SAME = re.compile(
    r"a share of 1 holds out all (\d+) approved trajectories with tool calls: .*? Hold out a smaller share \(e\.g\. --held-out 0\.2\) or record and approve more trajectories\."
)


def _said(output: str) -> str:
    """The error as one line: the box typer draws around it, and its line breaks, left out."""
    return " ".join(output.replace("│", " ").split())


def test_a_dataset_that_holds_out_every_trajectory_names_the_share_as_eval_does(bfcl_store_path: Path, tmp_path: Path) -> None:
    args = ["experience", "dataset", "--store", str(bfcl_store_path), "--out", str(tmp_path / "em"), "--held-out", "1.0"]
    dataset = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert dataset.exit_code == 2, dataset.output
    said = _said(dataset.output)
    assert "Invalid value for --held-out" in said and "--store" not in said, said
    assert "no real transition is left to build em rows from" in said, said
    assert not (tmp_path / "em" / "em.parquet").exists()

    with served(copy_first_example) as model:
        evaluated = CliRunner().invoke(
            app, _eval_args(model, bfcl_store_path, tmp_path / "eval", "--held-out", "1.0"), env={"COLUMNS": "300"}
        )
    assert evaluated.exit_code == 2, evaluated.output
    [(held, *_)] = [m.groups() for m in [SAME.search(_said(dataset.output))] if m]
    [(held_eval, *_)] = [m.groups() for m in [SAME.search(_said(evaluated.output))] if m]
    assert held == held_eval == "6", (said, _said(evaluated.output))


def test_a_store_with_nothing_to_build_from_still_names_the_store(tmp_path: Path) -> None:
    """A store with no approved trajectory holds nothing out: its error stays about the store."""
    from ee_middleware.store.local import LocalExperienceStore

    LocalExperienceStore(tmp_path / "store", create=True).close()
    args = ["experience", "dataset", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "em"), "--held-out", "1.0"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    said = _said(result.output)
    assert "Invalid value for --store" in said and "record or approve more trajectories" in said, said


def test_with_one_approved_trajectory_it_is_held_out_and_no_dataset_trains_on_it(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Was (sweep S2): with one approved trajectory nothing was held out, so `ee experience dataset` trained on it; once a
    second was approved, `ee experience eval` held out one of the two (the one with the smallest hash), often that very
    one: the fidelity gate then read a model on a trajectory it was trained on. One is held out whatever the count."""
    import shutil

    from ee_middleware.replay.experience_eval import split_store
    from ee_middleware.store.local import LocalExperienceStore

    store_path = tmp_path / "store"
    shutil.copytree(bfcl_store_path, store_path)
    store = LocalExperienceStore(store_path)
    try:
        only, *others = store.trajectories(status="approved")["id"].to_list()
        store.reject(others, by="alice", reason="keep one")
        assert split_store(store, share=0.0, seed=0).held_out_ids == {only}
    finally:
        store.close()
    args = ["experience", "dataset", "--store", str(store_path), "--out", str(tmp_path / "em"), "--held-out", "0"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    said = _said(result.output)
    assert "the store has one approved trajectory with tool calls, and one is always held out" in said, said
    assert not (tmp_path / "em" / "em.parquet").exists()


def test_with_one_approved_trajectory_of_the_app_asked_for_the_app_is_named_not_the_store(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Sweep: a store of several approved trajectories, one of them of app B. Was: ``--app B`` was told "Invalid value for
    --store: the store has one approved trajectory with tool calls", which is false of the store."""
    from ee_middleware.store.local import LocalExperienceStore

    source = LocalExperienceStore(bfcl_store_path)
    first, *others = list(source.iter_trajectories(status="approved"))
    source.close()
    store = LocalExperienceStore(tmp_path / "store", create=True)
    store.write([first.model_copy(update={"app": "app-b"}), *others])
    store.approve([first.id, *(t.id for t in others)], by="test")
    store.close()
    args = ["experience", "dataset", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "em"), "--app", "app-b"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    said = _said(result.output)
    assert "Invalid value for --app: the app 'app-b' has one approved trajectory with tool calls" in said, said
    assert "or choose another --app" in said and "the store has" not in said, said
