"""The end-to-end demo on the embedded defaults (what ``make demo`` runs).

    python examples/end_to_end.py --out demo-output

Stages, each on real parts and with nothing downloaded:

1. **Capture**: a hand-built LangGraph agent answers tasks with real tools; every run is recorded
   through OpenTelemetry into an experience store and reviewed (examples/capture_demo.py).
2. **Expert trajectories from BFCL**: a LangGraph agent whose scripted model emits BFCL's
   ground-truth calls turn by turn, on the real ``bfcl-eval`` backends, recorded and auto-approved
   (``ee bfcl record-experts``).
3. **Replay**: at every recorded state, K alternative tool calls proposed by the schema-driven
   mutation policy run in the BFCL sandbox from exactly that state, and the real observations are
   stored as rollouts (``ee replay run``), then inspected (``ee replay show``).
4. **Datasets**: IL, IWM and SR datasets from the expert steps and rollouts (``ee datasets build``,
   with the deterministic template teacher), and a look at them (``ee datasets show``).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _capture_demo() -> object:
    spec = importlib.util.spec_from_file_location("capture_demo", HERE / "capture_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (recreated on each run)")
    parser.add_argument("--bfcl-entries", type=int, default=20, help="BFCL multi_turn_base entries to record as experts")
    parser.add_argument("--k", type=int, default=4, help="alternatives per recorded state")
    parser.add_argument("--workers", type=int, default=2, help="replay worker processes")
    args = parser.parse_args(argv)

    from rich.console import Console

    from ee_middleware.cli.app import app as cli
    from ee_middleware.store import LocalExperienceStore

    console = Console()
    shutil.rmtree(args.out, ignore_errors=True)
    console.rule("[bold magenta]Stage 1: capture a LangGraph agent's runs")
    status = _capture_demo().run_demo(args.out / "experience", args.out / "workspace")  # type: ignore[attr-defined]
    if status:
        return status

    bfcl_store = args.out / "bfcl-experience"
    commands = [
        (
            "Stage 2: expert trajectories from BFCL (real backends, real LangGraph agent)",
            ["bfcl", "record-experts", "--store", str(bfcl_store), "--category", "multi_turn_base", "--limit", str(args.bfcl_entries)],
        ),
        (
            "Stage 3: replay every recorded state with K alternatives in the BFCL sandbox",
            [
                "replay",
                "run",
                "--store",
                str(bfcl_store),
                "--sandbox",
                "bfcl",
                "--policy",
                "mutate",
                "--k",
                str(args.k),
                "--workers",
                str(args.workers),
            ],
        ),
    ]
    for title, argv_ in commands:
        console.rule(f"[bold magenta]{title}")
        console.print(f"[dim]$ ee {' '.join(argv_)}[/]")
        cli(argv_, standalone_mode=False)

    store = LocalExperienceStore(bfcl_store)
    first = store.trajectories(status="approved")["id"][0]
    console.rule("[bold magenta]What one trajectory's alternatives did")
    argv_ = ["replay", "show", first, "--store", str(bfcl_store)]
    console.print(f"[dim]$ ee {' '.join(argv_)}[/]")
    cli(argv_, standalone_mode=False)

    data = args.out / "datasets"
    for title, argv_ in [
        ("Stage 4: IL, IWM and SR datasets", ["datasets", "build", "--store", str(bfcl_store), "--kinds", "il,iwm,sr", "--out", str(data)]),
        ("What the datasets hold", ["datasets", "show", str(data), "--examples", "1", "--plot", str(data / "lengths.png")]),
    ]:
        console.rule(f"[bold magenta]{title}")
        console.print(f"[dim]$ ee {' '.join(argv_)}[/]")
        cli(argv_, standalone_mode=False)

    info = store.info()
    console.print(
        f"\n[bold green]Done.[/] {info['trajectories']} BFCL expert trajectories and {info['rollouts']} rollouts in {bfcl_store}; "
        f"datasets in {data}; the captured app runs are in {args.out / 'experience'}.\n"
        f"Try: .venv/bin/ee replay list --store {bfcl_store} --errors --limit 10"
    )
    replays = store.replays()
    return 0 if info["rollouts"] > 0 and set(replays["status"].to_list()) == {"done"} else 1


if __name__ == "__main__":
    sys.exit(main())
