"""``ee improve`` with an experience-model sandbox (DreamGym's synthetic replay) whose every prediction is unusable.

The replay stage carried on: the datasets were built without a single synthetic branch, an adapter was trained on the
expert steps alone, and nothing said why. Real parts: BFCL expert trajectories recorded by the real LangGraph agent, the
experience model a tiny randomly initialised local Llama (TEST model: an untrained model answers garbage, as a base
model rarely answers the JSON asked for), the real improve job and ``ee replay run``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.errors import JobError, RunConfigChangedError
from ee_middleware.jobs.improve import run_improve
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import write_config


def test_a_replay_stage_whose_experience_model_gave_no_usable_prediction_fails_saying_what_to_change(
    workspace: Path, tiny_base: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    garbage = save_tiny_llama(tmp_path / "world-model", build_test_tokenizer(["ls cd mkdir observation {}"]), max_positions=4096)
    improve = "[improve.budgets]\nmax_trajectories = 1\n"
    path = write_config(workspace, tiny_base, improve=improve, k=2)
    replay = f'[replay]\nk = 2\nsandbox = "experience:local:{garbage}"\n[replay.sandbox_settings]\nmax_tokens = 8\n'
    path.write_text(path.read_text().replace("[replay]\nk = 2\n", replay, 1))

    with pytest.raises(JobError, match=r"^The experience model gave no usable observation for any of the \d+ alternative") as failed:
        run_improve(ImproveConfig.load(path))
    message = str(failed.value)
    assert "the answer was cut off at max_tokens" in message, message  # the random model's answers run to max_tokens (046bebd)
    runs = RunsDir(workspace / "runs").list()
    assert len(runs) == 1 and runs[0].data["status"] == "failed"
    stages = {m["stage"]: m for m in runs[0].stages()}
    assert set(stages) == {"select", "replay"} and stages["replay"]["status"] == "failed"  # no datasets, no adapter

    # Continued, the run fails alike (the replay finished: read from the stored records), without replaying again.
    with pytest.raises(JobError, match="no usable observation") as again:
        run_improve(ImproveConfig.load(path))
    assert str(again.value) == message
    assert len(RunsDir(workspace / "runs").list()) == 1

    # Every answer was cut off at max_tokens, none of them having begun the JSON object (a random model rambles at any
    # limit): it names more tokens, in a new run (a run's [replay] settings are fixed once its select stage has
    # finished), and the model's JSON shape, with the command that replays once the model is fixed.
    assert "Every answer was cut off at max_tokens before a whole observation: raise max_tokens" in message, message
    assert "then start a new run with `ee improve --config FILE --new-run`." in message, message
    assert "But none of them had begun the JSON object asked for" in message, message
    assert "It must answer one JSON object" in message and "after fixing the model behind the same spec" in message, message

    # The command the error names replays the same configuration's next attempt, which the continued run then reads.
    command = shlex.split(message.split("`ee replay run --again", 1)[1].split("`", 1)[0])
    result = CliRunner().invoke(app, ["replay", "run", "--again", *command, "--no-progress", "--json"])
    summary = json.loads(result.stdout)
    assert summary["attempt"] == 2 and summary["selected"] == 8, result.output  # every approved trajectory of the app
    assert ImproveConfig.load(path).replay_config().replay_id == summary["replay_id"]

    # More tokens are another configuration: a continued run refuses them, a new run replays with them.
    path.write_text(path.read_text().replace("max_tokens = 8", "max_tokens = 9"))
    with pytest.raises(RunConfigChangedError, match="--new-run"):
        run_improve(ImproveConfig.load(path))
    with pytest.raises(JobError, match="cut off at max_tokens") as roomier:  # a random model is cut off at 9 tokens too
        run_improve(ImproveConfig.load(path), new_run=True)
    assert "now 9" in str(roomier.value), "the new run replayed under the new max_tokens"
    assert [run.data["status"] for run in RunsDir(workspace / "runs").list()] == ["abandoned", "failed"]
