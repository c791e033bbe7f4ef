"""A model server's failure after the client's retries (5xx) during ``ee replay run``: the rule ``ee experience eval``
uses (:func:`~ee_middleware.replay.executors.fails_alone`, :class:`~ee_middleware.replay.executors.ServerFailuresInARow`).

A server that still answers ``GET /models`` failed that request, not every request: the trajectory fails alone (the
next run retries it) and the job goes on. A few trajectories in a row failed so mean its generation is down behind a
live listing (a vLLM whose engine died): the job stops. A server that does not answer the listing either is down: the
job stops at once, as before.

Against real HTTP servers (:class:`~ee_middleware.testing.http.ScriptedChatServer`), for a served policy and for an
experience-model sandbox, and the BFCL expert store."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.errors import ModelServerError
from ee_middleware.models.openai_compat import FewerChoicesWarning
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.executors import SERVER_FAILURES_IN_A_ROW
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import Reply, ScriptedChatServer
from tests.conftest import BFCL_ENTRIES
from tests.replay.test_experience import copy_first_example

A_CALL = '<tool_call>{"name": "pwd", "arguments": {}}</tool_call>'
"""A usable answer at every BFCL state (``pwd``: an offered tool with no arguments)."""
CRASH = Reply({"object": "error", "message": "'NoneType' object is not subscriptable", "type": "InternalServerError", "code": 500}, 500)
"""vLLM's answer when its tokenizer or chat template throws on one input."""
DEAD = Reply({"object": "error", "message": "Background loop has errored already.", "type": "InternalServerError", "code": 500}, 500)
"""vLLM's answer to every completion once its engine died (its API server still lists the model)."""
QUICK = ("--policy-setting", "backoff_s=0.01")
"""The client's retries as usual (3 attempts), without its half-second back-off."""


def _ee(*args: str) -> Any:
    from ee_middleware.cli.app import app

    return CliRunner().invoke(app, list(args))


def _tasks(store_path: Path) -> dict[str, str]:
    """Each trajectory's task, by its id."""
    store = LocalExperienceStore(store_path)
    try:
        tasks = {t.id: t.task or "" for t in store.iter_trajectories(status="approved")}
    finally:
        store.close()
    assert len(tasks) == BFCL_ENTRIES and all(tasks.values()) and len(set(tasks.values())) == BFCL_ENTRIES
    return tasks


def _one_trajectory(store_path: Path) -> tuple[str, str]:
    """The id and task of a trajectory of the store (each has a task no other one has)."""
    tasks = _tasks(store_path)
    trajectory_id = sorted(tasks)[len(tasks) // 2]
    return trajectory_id, tasks[trajectory_id]


def _mentions(body: dict[str, Any], text: str) -> bool:
    return any(text in json.dumps(message.get("content")) for message in body["messages"])


def _records(store_path: Path) -> dict[str, str]:
    """Each stored replay record's trajectory and status."""
    store = LocalExperienceStore(store_path)
    try:
        replays = store.replays()
        return dict(zip(replays["trajectory_id"].to_list(), replays["status"].to_list(), strict=True))
    finally:
        store.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_policy_server_that_fails_one_prompt_fails_that_trajectory_alone(workers: int, bfcl_store_path: Path) -> None:
    """A served policy whose server answers HTTP 500 to one trajectory's prompts (every attempt) and everything else,
    GET /models included, stopped the whole job at that trajectory. Now that trajectory fails alone and the job replays
    and stores the others, exiting as a job with a failed trajectory does; the next run retries it."""
    target, task = _one_trajectory(bfcl_store_path)
    store = str(bfcl_store_path)
    crashing = [True]
    with ScriptedChatServer(lambda body: CRASH if crashing[0] and _mentions(body, task) else A_CALL) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        spec = f"openai:{server.base_url}#m"
        args = ("replay", "run", "--store", store, "--policy", spec, "--k", "2", "--workers", str(workers), "--no-progress", *QUICK)
        result = _ee(*args, "--json")
        assert result.exit_code == 1, result.output
        summary = json.loads(result.stdout)
        assert summary["done"] == BFCL_ENTRIES - 1 and list(summary["failed"]) == [target], summary["failed"]
        assert "ModelServerError" in summary["failed"][target] and "HTTP 500" in summary["failed"][target]
        assert server.model_listings >= 1, "the server was asked whether it still lists its models"
        records = _records(bfcl_store_path)
        assert records.pop(target) == "failed" and set(records.values()) == {"done"} and len(records) == BFCL_ENTRIES - 1
        rollouts = LocalExperienceStore(store).rollouts()
        assert rollouts.height and target not in set(rollouts["trajectory_id"].to_list())

        crashing[0] = False  # the server fixed
        again = _ee(*args, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["done"] == 1 and _records(bfcl_store_path)[target] == "done", "the next run retried it"


def test_a_policy_server_whose_generation_is_dead_behind_a_live_listing_stops_the_job(bfcl_store_path: Path) -> None:
    """vLLM with a dead engine answers GET /models and fails every completion: the job stops after a few trajectories
    in a row failed so (those kept as failed, for the next run), not after every trajectory, nor at the first."""
    assert BFCL_ENTRIES > SERVER_FAILURES_IN_A_ROW + 1
    with ScriptedChatServer([DEAD]) as server:
        config = ReplayConfig.load(
            store=bfcl_store_path, k=2, workers=1, policy=f"openai:{server.base_url}#m", policy_settings={"backoff_s": 0.01}
        )
        with pytest.raises(ModelServerError, match="failed the last 3 trajectories in a row") as stopped:
            run_replay(config)
    message = str(stopped.value)
    assert "Background loop has errored already" in message and "generation is down" in message
    assert f"{SERVER_FAILURES_IN_A_ROW - 1} trajectories finished before this are saved" in message
    assert stopped.value.url.startswith(server.base_url) and stopped.value.status == 500
    records = _records(bfcl_store_path)
    assert len(records) == SERVER_FAILURES_IN_A_ROW - 1 and set(records.values()) == {"failed"}
    tasks = _tasks(bfcl_store_path)
    asked = {task for task in tasks.values() for body in server.requests if _mentions(body, task)}
    assert len(asked) <= SERVER_FAILURES_IN_A_ROW + 1, "the trajectories left were not asked for (but one asked ahead)"


def test_a_policy_server_that_does_not_list_its_models_either_stops_the_job_at_once(bfcl_store_path: Path) -> None:
    """A server whose GET /models fails too (after its retries) is down: the first failure stops the job, nothing is
    marked failed (as for a server that cannot be reached at all)."""
    with ScriptedChatServer([DEAD], models=DEAD) as server:
        config = ReplayConfig.load(
            store=bfcl_store_path, k=2, workers=1, policy=f"openai:{server.base_url}#m", policy_settings={"backoff_s": 0.01}
        )
        with pytest.raises(ModelServerError, match="0 trajectories finished before this are saved") as stopped:
            run_replay(config)
    assert "in a row" not in str(stopped.value) and server.model_listings >= 1
    assert _records(bfcl_store_path) == {}


def test_an_experience_model_server_that_fails_one_prompt_fails_that_trajectory_alone(bfcl_store_path: Path) -> None:
    """The experience-model sandbox's server fails (HTTP 500, every attempt) the predictions of one trajectory and
    answers the rest, GET /models included: that trajectory fails alone, the others are replayed through the model."""
    target, task = _one_trajectory(bfcl_store_path)

    def predict(body: dict[str, Any]) -> Any:
        return CRASH if task in body["messages"][-1]["content"] else copy_first_example(body["messages"])

    with ScriptedChatServer(predict, models=["em"]) as server:
        config = ReplayConfig.load(store=bfcl_store_path, k=2, workers=1, sandbox=f"experience:openai:{server.base_url}#em")
        summary = run_replay(config)
    assert list(summary.failed) == [target] and summary.done == BFCL_ENTRIES - 1
    assert "ModelServerError" in summary.failed[target] and "HTTP 500" in summary.failed[target]
    records = _records(bfcl_store_path)
    assert records.pop(target) == "failed" and set(records.values()) == {"done"}
    rollouts = LocalExperienceStore(bfcl_store_path).rollouts()
    assert rollouts.height and rollouts["synthetic"].all() and target not in set(rollouts["trajectory_id"].to_list())
