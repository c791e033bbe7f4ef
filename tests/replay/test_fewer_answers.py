"""A policy whose model answers fewer alternatives than asked: the replay's records and summary count it, summed over
every worker (local processes, Ray actors, the job's own process while they start).

The served model is a real local HTTP server that answers one choice whatever ``n`` is (as Ollama's and
llama-cpp-python's OpenAI endpoints do); the client asks it again for the rest.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.models.openai_compat import FewerChoicesWarning
from ee_middleware.models.protocol import Choice, Sampling
from ee_middleware.records import FEWER_ANSWERS, ReplayRecord
from ee_middleware.replay import job
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import ReplaySummary, run_replay
from ee_middleware.replay.runner import ReplayOutcome
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import send_json, serving
from tests.conftest import BFCL_ENTRIES

K = 3
A_CALL = '<tool_call>{"name": "pwd", "arguments": {}}</tool_call>'
"""A served policy's answer: a usable call (a model that answers none fails the trajectory, see test_unusable_policy)."""


def _records(store: Path) -> list[ReplayRecord]:
    """The store's replay records, as far as their counts go (the table keeps their details as JSON)."""
    fields = ("replay_id", "trajectory_id", "status", "policy", "sandbox", "k", "seed", "states")
    rows = LocalExperienceStore(store).replays().to_dicts()
    return [ReplayRecord(**{name: row[name] for name in fields}, details=json.loads(row["details_json"] or "{}")) for row in rows]


def _counting_writers(store: Path) -> int:
    """How many processes wrote replay records with counts into ``store`` (each writes a spool segment of its own)."""
    writers = 0
    for segment in store.rglob("*.jsonl"):
        lines = [json.loads(line.split(" ", 1)[1]) for line in segment.read_text().splitlines() if line]
        writers += any(line["kind"] == "replay" and "fewer_answers" in line["data"]["details"] for line in lines)
    return writers


def _summed(records: list[ReplayRecord]) -> dict[str, int]:
    return {name: sum(record.fewer_answers()[name] for record in records) for name in FEWER_ANSWERS}


@pytest.mark.parametrize(("executor", "workers"), [("local", 1), ("local", 2), ("ray", 2)])
def test_a_server_that_ignores_n_is_counted_in_the_summary_summed_over_every_worker(
    executor: str, workers: int, bfcl_store_path: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K=3 from a server that answers one choice per request: each state's proposal takes 3 requests (n=3, 2, 1), its
    first answer short. Before, the summary said nothing of it (the counts stayed on each worker's client)."""
    if executor == "ray":
        pytest.importorskip("ray")
    # every trajectory to the workers (none replayed by the job's process while they start): each gets some at once
    monkeypatch.setattr(job, "light_in_process", lambda config: False)
    model = serve(lambda messages: A_CALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)  # (said once per client: the job's process's, with 1 worker)
        summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=K, workers=workers, executor=executor, policy=model.spec))
    assert summary.done == BFCL_ENTRIES and summary.failed == {} and summary.states > BFCL_ENTRIES
    assert len(model.requests) == K * summary.states, "every state's proposal: one request for n=K, then K-1 more"
    assert summary.server_short_answers == summary.states
    assert summary.extra_requests == (K - 1) * summary.states
    assert (summary.short_answers, summary.missing_answers, summary.failed_extra_requests) == (0, 0, 0), "the client got all K"
    counts = {name: summary.to_dict()[name] for name in FEWER_ANSWERS}
    assert _summed(_records(bfcl_store_path)) == counts, "the stored records carry the counts the summary sums"
    assert _counting_writers(bfcl_store_path) == workers, "each worker counted (and wrote) its own"


class OneChoiceClient:
    """A chat client of one's own (the ChatClient protocol) that answers one choice whatever ``n`` is, and does not ask
    again: the policy gets fewer than K, and the refill supplies the rest."""

    model = "one-choice"

    def complete(self, messages: Any, *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()) -> list[Choice]:
        return [Choice.from_message({"role": "assistant", "content": A_CALL})]

    def describe(self) -> dict[str, Any]:
        return {"model": self.model}

    def close(self) -> None:
        pass


def one_choice_client() -> OneChoiceClient:
    """The policy plug-in (``tests.replay.test_fewer_answers:one_choice_client``)."""
    return OneChoiceClient()


def test_a_client_that_answers_fewer_than_k_counts_missing_answers_over_two_workers(bfcl_store_path: Path) -> None:
    policy = f"{__name__}:one_choice_client"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=K, workers=2, policy=policy))
    assert summary.done == BFCL_ENTRIES and summary.failed == {}
    assert (summary.short_answers, summary.missing_answers) == (summary.states, (K - 1) * summary.states)
    assert (summary.server_short_answers, summary.extra_requests) == (0, 0), "a client that counts none"
    assert _summed(_records(bfcl_store_path))["missing_answers"] == (K - 1) * summary.states


def test_a_record_written_before_the_counts_reads_them_as_zero() -> None:
    """Records stored by an older version (no ``details["fewer_answers"]``) count 0 in a summary."""
    old = ReplayRecord.parse(
        {"replay_id": "r", "trajectory_id": "t", "status": "done", "policy": "openai", "sandbox": "bfcl", "k": 2, "seed": 0, "states": 3}
    )
    assert old.fewer_answers() == dict.fromkeys(FEWER_ANSWERS, 0)
    summary = ReplaySummary(replay_id="r", sandbox="bfcl", policy="openai", k=2, executor="local", workers=1)
    summary.add(ReplayOutcome(old))
    summary.add(ReplayOutcome(old.model_copy(update={"details": {"fewer_answers": {"server_short_answers": 3, "extra_requests": 3}}})))
    assert (summary.states, summary.server_short_answers, summary.extra_requests, summary.short_answers) == (6, 3, 3, 0)


def test_ee_replay_run_json_reports_the_counts_summed_over_two_workers(bfcl_store_path: Path, serve: Any) -> None:
    from ee_middleware.cli.app import app

    model = serve(lambda messages: A_CALL)
    args = ["replay", "run", "--store", str(bfcl_store_path), "--policy", model.spec, "--k", str(K), "--workers", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"done", "states", "branches", "rejected_by_reason", "branches_per_s"} <= set(summary), "the keys it had are kept"
    assert summary["done"] == BFCL_ENTRIES
    assert (summary["server_short_answers"], summary["extra_requests"]) == (summary["states"], (K - 1) * summary["states"])
    assert summary["short_answers"] == summary["missing_answers"] == summary["failed_extra_requests"] == 0
    assert len(model.requests) == K * summary["states"]

    result = CliRunner().invoke(app, [*args[:-1], "--again"])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())
    assert f"asked again in {2 * summary['states']} further request(s)" in shown and "fewer than n=3 choices" in shown


class RefusingOnceServer:
    """A real HTTP server that answers one choice per request whatever ``n`` is, and refuses the first request for
    ``n=K`` with 400 (a state longer than a small context: that trajectory alone fails, and its worker rebuilds its
    policy). For :data:`SLOW_WINDOW_S` after that refusal, the other trajectories' requests take :data:`SLOW_S` to
    answer: the ones the worker asked for ahead are then surely still running when it closes the failed policy.
    It counts what it answered: ``first`` (``n=K``, answered) and ``further`` (``n<K``: the client asking again)."""

    SLOW_S = 0.5
    SLOW_WINDOW_S = 1.5

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first = self.further = self.refused = 0
        self.refused_task: str | None = None
        self.refused_at = 0.0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                send_json(self, {"object": "list", "data": [{"id": "em"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                task = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
                with server.lock:
                    refuse = body.get("n", 1) == K and server.refused_task is None
                    if refuse:
                        server.refused, server.refused_task, server.refused_at = 1, task, time.monotonic()
                    slow = server.refused_task not in (None, task) and time.monotonic() - server.refused_at < server.SLOW_WINDOW_S
                if refuse:
                    error = {"message": "this request exceeds the context length", "type": "invalid_request_error"}
                    send_json(self, {"error": error}, status=400)
                    return
                time.sleep(server.SLOW_S if slow else 0.01)
                with server.lock:  # counted once answered (the client counts it once it reads the answer)
                    if body.get("n", 1) == K:
                        server.first += 1
                    else:
                        server.further += 1
                message = {"role": "assistant", "content": A_CALL}
                send_json(self, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def refusing_once() -> Iterator[tuple[RefusingOnceServer, str]]:
    model = RefusingOnceServer()
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), model.handler())) as base_url:
        yield model, f"openai:{base_url}#em"


@pytest.mark.parametrize("workers", [1, 2])
def test_the_counts_of_a_policy_rebuilt_after_a_failure_are_all_summed_with_its_requests_still_in_flight(
    workers: int, bfcl_store_path: Path, refusing_once: tuple[RefusingOnceServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trajectory fails on a 400 while the next one's proposals, asked for ahead on the same policy, are still being
    answered. Before, the worker read the failed policy's counts once, as it closed it, and closing its client cut
    those requests off (the server had answered them, the client asked again): the summary counted 38 short answers
    where the server had answered 43 to 46."""
    model, spec = refusing_once
    monkeypatch.setattr(job, "light_in_process", lambda config: False)  # every trajectory to the workers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=K, workers=workers, policy=spec))
    assert model.refused == 1 and len(summary.failed) == 1 and summary.done == BFCL_ENTRIES - 1, summary.failed
    assert "exceeds the context length" in next(iter(summary.failed.values())), summary.failed
    assert (summary.server_short_answers, summary.extra_requests) == (model.first, model.further), "every answer the server gave"
    assert _summed(_records(bfcl_store_path)) == {name: summary.to_dict()[name] for name in FEWER_ANSWERS}
