"""``ee improve``'s likelihood stage says which held-out states it left out for ``[train] max_length``, as ``ee eval
likelihood`` does (real BFCL expert trajectories, a tiny random Llama as the base: a TEST model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.improve import run_improve
from tests.jobs.conftest import write_config

pytestmark = pytest.mark.heavy  # a whole ee improve run (every stage, tiny models): make test-heavy


def test_held_out_states_left_out_for_max_length_are_said_in_the_stage_its_warning_and_likelihood_json(
    workspace: Path, tiny_base: Path
) -> None:
    """Before: with [train] max_length 54, under the longest held-out expert action (54 tokens of the tiny base), the
    stage scored fewer of the 8 states with no word; likelihood.json's "states" and the report's "likelihood on N
    held-out states" were all that showed it, with no reason."""
    path = write_config(workspace, tiny_base)
    path.write_text(
        path.read_text().replace("likelihood_states = 4\n", "likelihood_states = 8\n").replace("max_length = 128", "max_length = 54")
    )
    with pytest.warns(UserWarning, match=r"likelihood: \d of the 8 held-out states were left out") as said:
        run = run_improve(ImproveConfig.load(path))
    assert run.status == "succeeded", run.data.get("error")
    like = json.loads((run.folder / "eval" / "likelihood.json").read_text())
    assert like["given"] == 8 and 0 < like["states"] < 8
    left_out = like["left_out"]
    assert f"{8 - like['states']} of the 8 held-out states were left out" in left_out
    assert "takes [train] max_length 54 tokens or more" in left_out and "[train] max_length 55 or more keeps them all" in left_out
    evaluate = run.stage("evaluate")
    assert f"likelihood: {left_out}" in evaluate["decisions"]
    assert f"(on {like['states']} of 8 held-out states)" in evaluate["summary"]
    assert any(left_out in str(w.message) for w in said)
