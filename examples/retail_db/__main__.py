"""Record the retail agent's expert runs, replay them in the database sandbox, and show one.

    cd examples && python -m retail_db --out ../demo-output/retail
    # or, from the repository root:
    PYTHONPATH=examples python -m retail_db --out demo-output/retail

The runs are recorded with the default redaction: e-mail addresses and phone numbers are stored as
pseudonyms (``[REDACTED:email:1a2b3c4d]``). Replay compares the sandbox's answers redacted alike,
and flags the lookups whose argument it cannot give the sandbox; with ``--vault`` capture keeps the
real values in a vault beside the store and replay re-executes those lookups with them
(docs/sandboxes.md, "Redaction and replay"). ``--no-redact`` records plain text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .agent import APP, record_experts


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retail_db", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("demo-output/retail"), help="output folder, made by the demo and remade on each run"
    )
    parser.add_argument("--k", type=_at_least_one, default=8, help="alternatives per recorded state (1 or more)")
    parser.add_argument("--no-redact", action="store_true", help="record without redaction (the data is synthetic)")
    parser.add_argument("--vault", action="store_true", help="keep a redaction vault, so replay gives the sandbox the real values")
    args = parser.parse_args(argv)

    from rich.console import Console

    from ee_middleware._files import clear_demo_folders, make_demo_folder
    from ee_middleware.cli.app import app as cli
    from ee_middleware.store import LocalExperienceStore

    console = Console()
    (out,) = clear_demo_folders((args.out, "--out"))  # (a folder it did not make is refused, never removed)
    make_demo_folder(out)
    store = out / "experience"
    console.rule("[bold]1. The retail agent serves its customers (every run is recorded)")
    answers = record_experts(store, out, redact=False if args.no_redact else None, **({"vault": True} if args.vault else {}))
    console.print(f"{len(answers)} conversations recorded in {store}")
    sandbox = "retail_db.sandbox:make_sandbox"
    first = LocalExperienceStore(store).trajectories(app=APP).sort("started_at")["id"][0]
    status = 0
    for title, argv_ in [
        (
            "2. Replay every state with K alternatives in the database sandbox",
            ["replay", "run", "--store", str(store), "--sandbox", sandbox, "--k", str(args.k)],
        ),
        ("3. One conversation's alternatives beside the expert's calls", ["replay", "show", first, "--store", str(store)]),
    ]:
        console.rule(f"[bold]{title}")
        console.print(f"[dim]$ ee {' '.join(argv_)}[/]")
        try:
            cli(argv_, standalone_mode=False)
        except SystemExit as exc:  # `ee replay run` exits 1 when a trajectory failed
            status = status or int(exc.code or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
