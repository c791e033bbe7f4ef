"""``ee traces show`` says where a tool result was cut at capture (``max_observation_chars``): the stored text has no
marker of its own, so without this line a reviewer reads a cut result as the tool's whole answer."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory


def test_show_marks_an_observation_cut_at_capture(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    trajectory = sample_trajectory("cut")
    steps = list(trajectory.steps)
    at = next(i for i, step in enumerate(steps) if step.observation is not None)
    cut = steps[at].observation.model_copy(update={"truncated_chars": 5549})
    steps[at] = steps[at].model_copy(update={"observation": cut})
    store.write([trajectory.model_copy(update={"steps": steps})])

    shown = CliRunner().invoke(app, ["traces", "show", "cut", "--store", str(store.root)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "5,549 more chars cut at capture" in " ".join(shown.stdout.split()), shown.stdout


def test_show_marks_nothing_on_a_whole_observation(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("whole")])
    shown = CliRunner().invoke(app, ["traces", "show", "whole", "--store", str(store.root)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "cut at capture" not in shown.stdout
