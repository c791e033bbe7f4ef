"""``ee traces show`` prints the trajectory's environment reference (what replay rebuilds the world from, the first
thing to check when replay skips a trajectory), not only with ``--json``."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory


def test_show_prints_the_environment_reference(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    with_env = sample_trajectory("with-env").model_copy(update={"environment": {"db": "snapshots/run-7.sqlite", "seed": 3}})
    without = sample_trajectory("no-env").model_copy(update={"environment": None})
    store.write([with_env, without])

    shown = CliRunner().invoke(app, ["traces", "show", "with-env", "--store", str(store.root)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert 'environment={"db": "snapshots/run-7.sqlite", "seed": 3}' in shown.stdout, shown.stdout

    bare = CliRunner().invoke(app, ["traces", "show", "no-env", "--store", str(store.root)], env={"COLUMNS": "200"})
    assert bare.exit_code == 0 and "environment=-" in bare.stdout, bare.stdout
