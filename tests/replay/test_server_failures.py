"""A model server's failure after the client's retries (5xx) during ``ee replay run``: the rule ``ee experience eval``
uses (:func:`~ee_middleware.replay.executors.fails_alone`, :class:`~ee_middleware.replay.executors.ServerFailuresInARow`).

A server that still answers ``GET /models`` failed that request, not every request: the trajectory fails alone (the
next run retries it) and the job goes on. A few trajectories in a row failed so mean its generation is down behind a
live listing (a vLLM whose engine died): the job stops. A server that does not answer the listing either is down: the
job stops at once, as before.

Against real HTTP servers (:class:`~ee_middleware.testing.http.ScriptedChatServer`), for a served policy and for an
experience-model sandbox, and the BFCL expert store."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from ee_middleware.testing.http import Reply, ScriptedChatServer, send_json, serving
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
    # sweep V: it said "2 trajectories finished before this are saved" of 2 failed ones, none saved
    assert f"0 trajectories replayed before this are saved, and {SERVER_FAILURES_IN_A_ROW - 1} failed (recorded so" in message
    assert stopped.value.url.startswith(server.base_url) and stopped.value.status == 500
    records = _records(bfcl_store_path)
    assert len(records) == SERVER_FAILURES_IN_A_ROW - 1 and set(records.values()) == {"failed"}
    tasks = _tasks(bfcl_store_path)
    asked = {task for task in tasks.values() for body in server.requests if _mentions(body, task)}
    assert len(asked) <= SERVER_FAILURES_IN_A_ROW + 1, "the trajectories left were not asked for (but one asked ahead)"


def test_a_job_stopped_by_its_policy_server_still_prints_its_summary_with_json(bfcl_store_path: Path) -> None:
    """Sweep V: with --json, the error object replaced the whole summary, so a script lost `failed`, `states` and the
    other counts on exactly the runs where they matter."""
    with ScriptedChatServer([DEAD]) as server:
        spec = f"openai:{server.base_url}#m"
        result = _ee("replay", "run", "--store", str(bfcl_store_path), "--policy", spec, "--k", "2", "--no-progress", "--json",
                     "--policy-setting", "backoff_s=0.01")  # fmt: skip
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert len(summary["failed"]) == SERVER_FAILURES_IN_A_ROW - 1 and summary["done"] == 0
    assert "failed the last 3 trajectories in a row" in summary["error"] and "0 trajectories replayed before this" in summary["error"]
    # 3 failed in a row, 2 recorded failed: the message says which one is not (a replay sweep of 2026-12-07)
    assert "The last of them is not recorded as failed: the next run replays it." in summary["error"]
    assert "error: " in result.stderr


def test_a_policy_server_that_does_not_list_its_models_either_stops_the_job_at_once(bfcl_store_path: Path) -> None:
    """A server whose GET /models fails too (after its retries) is down: the first failure stops the job, nothing is
    marked failed (as for a server that cannot be reached at all)."""
    with ScriptedChatServer([DEAD], models=DEAD) as server:
        config = ReplayConfig.load(
            store=bfcl_store_path, k=2, workers=1, policy=f"openai:{server.base_url}#m", policy_settings={"backoff_s": 0.01}
        )
        with pytest.raises(ModelServerError, match="0 trajectories replayed before this are saved") as stopped:
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


# -- which server is asked, and how long it is waited for ------------------------------------------------------------


class RoutedPolicy:
    """A user's policy plug-in (``--policy tests.replay.test_server_failures:RoutedPolicy``) that asks a served model
    through a ChatPolicy of its own: the job sees no ``.client`` of it. Its server is ``EE_TEST_ROUTED_URL``."""

    name = "routed"

    def __init__(self, **_options: Any) -> None:
        from ee_middleware.replay.policies.chat import OpenAIPolicy

        self.inner = OpenAIPolicy(os.environ["EE_TEST_ROUTED_URL"], "m", backoff_s=0.01, timeout_s=5)

    def propose(self, point: Any, k: int, *, seed: int) -> Any:
        return self.inner.propose(point, k, seed=seed)

    def describe(self) -> dict[str, Any]:
        return {"routed": self.inner.describe()}

    def close(self) -> None:
        self.inner.close()


def _nothing_listens() -> str:
    """A base URL on a local port nothing listens on (connections refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_down_policy_server_is_not_judged_by_the_experience_server_that_is_up(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy plug-in's own served client (not among the clients the job knows) whose server is down, with an
    experience sandbox whose server is up: the failed URL matched no known client, so every client was asked and the
    experience server's listing made the down policy server's failure "one trajectory's". The job failed 2 trajectories
    (each after a full retry cycle) and then stopped saying the server "still lists its models ... restart it", which
    is false. Now only a client with no base_url of its own stands in for the unmatched URL: the job stops at once."""
    monkeypatch.setenv("EE_TEST_ROUTED_URL", _nothing_listens())
    with ScriptedChatServer(lambda body: copy_first_example(body["messages"]), models=["em"]) as experience:
        config = ReplayConfig.load(
            store=bfcl_store_path,
            k=2,
            workers=1,
            policy=f"{__name__}:RoutedPolicy",
            sandbox=f"experience:openai:{experience.base_url}#em",
        )
        with pytest.raises(ModelServerError, match="0 trajectories replayed before this are saved") as stopped:
            run_replay(config)
        listings = experience.model_listings
    message = str(stopped.value)
    assert "Connection refused" in message or "ConnectError" in message, message
    assert "still lists its models" not in message and stopped.value.url.startswith(os.environ["EE_TEST_ROUTED_URL"])
    assert _records(bfcl_store_path) == {}, "no trajectory marked failed"
    assert listings <= 2, "the experience server was asked only by its sandbox's own checks, never for the policy's failure"


def test_fails_alone_asks_only_the_server_that_failed_or_a_client_without_a_url() -> None:
    """:func:`fails_alone` on real clients and servers: a failure of a URL no client names is judged by a client without
    a ``base_url`` of its own (a user's client, which may be the one that made it), never by a client of another server."""
    from ee_middleware.models.openai_compat import OpenAIChatClient
    from ee_middleware.replay.executors import fails_alone

    down = OpenAIChatClient(_nothing_listens(), "m", retries=0)
    with ScriptedChatServer(["unused"], models=["em"]) as up:
        other = OpenAIChatClient(up.base_url, "em")
        try:
            with pytest.raises(ModelServerError) as failed:
                down.complete([{"role": "user", "content": "hi"}])
            exc = failed.value

            class OwnClient:
                """A user's client of the up server that names no base_url."""

                def list_models(self) -> list[str]:
                    return other.list_models()

            assert not fails_alone(exc, [other]), "another server's listing says nothing of the one that failed"
            assert fails_alone(exc, [other, OwnClient()]), "a client without a URL of its own may be the one that failed"
            assert not fails_alone(exc, [down, other]), "the failed URL's own client is asked: its server is down"
            assert up.model_listings == 1, "the up server was asked only through the client without a URL"
        finally:
            other.close()
            down.close()


class WedgedServer:
    """A real HTTP server that reads every request and never answers it (a hung server: a wedged engine, a stuck
    proxy), except the first ``listings_answered`` ``GET /models``. ``url`` is its base URL once its ``with`` began."""

    def __init__(self, listings_answered: int = 0) -> None:
        self.listings_answered = listings_answered
        self.posts = 0
        self.listings = 0
        self.url = ""
        self._release = threading.Event()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> WedgedServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.listings += 1
                if owner.listings <= owner.listings_answered:
                    send_json(self, {"object": "list", "data": [{"id": "em"}, {"id": "m"}]})
                    return
                owner._release.wait(60)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.posts += 1
                owner._release.wait(60)

        self.url = self._stack.enter_context(serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release.set()  # the handlers' threads end before the server closes
        self._stack.close()


def test_a_hung_policy_server_stops_the_job_after_one_short_listing_check(bfcl_store_path: Path) -> None:
    """A policy server that takes requests and never answers: after the POST's retries (3 attempts of timeout_s), the
    job asked GET /models with the client's own timeout and retries too (3 more attempts: 10.0 s instead of 6.7 s at
    timeout_s=1, ~3 min more at the defaults) before stopping. Now it asks once (7.3 s), within min(30 s, timeout_s):
    tests/models/test_endpoint_probe.py checks that limit."""
    with WedgedServer() as server:
        config = ReplayConfig.load(
            store=bfcl_store_path,
            k=2,
            workers=1,
            policy=f"openai:{server.url}#m",
            policy_settings={"backoff_s": 0.01, "timeout_s": 1.0},
        )
        with pytest.raises(ModelServerError, match="0 trajectories replayed before this are saved") as stopped:
            run_replay(config)
        posts, listings = server.posts, server.listings
    assert "after 3 attempt(s): timed out after 1 s" in str(stopped.value) and posts >= 3, "(several states are asked at once)"
    assert listings == 1, f"one GET /models attempt after the failure, not the client's {listings}"


def test_a_hung_experience_server_stops_the_evaluation_after_one_short_listing_check(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ee experience eval`` follows the same rule: an experience server that listed its models at the check before
    work, then hangs, is asked GET /models once (not with the client's retries) before the evaluation stops."""
    from ee_middleware.models import openai_compat
    from ee_middleware.replay.experience_eval import evaluate, split_store
    from ee_middleware.replay.sandboxes.experience import ExperienceSandbox

    store = LocalExperienceStore(bfcl_store_path)
    try:
        split = split_store(store, share=0.34, seed=0)
    finally:
        store.close()
    waits: list[float] = []
    monkeypatch.setattr(openai_compat, "_sleep", waits.append)
    with WedgedServer(listings_answered=1) as server:
        sandbox = ExperienceSandbox(f"openai:{server.url}#em", index=split.index, timeout_s=1.0)
        try:
            with pytest.raises(ModelServerError, match=r"after 3 attempt\(s\): timed out after 1 s"):
                evaluate(sandbox, split, top_k=3)
        finally:
            sandbox.close()
        posts, listings = server.posts, server.listings
    assert posts == 3 and listings == 1 + 1, "the check before work, then one GET /models attempt after the failure"
    assert len(waits) == 2, "the back-off of the prediction's retries only"
