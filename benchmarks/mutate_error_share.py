"""How often the ``mutate`` policy's alternatives end in an error observation, on two domains.

    .venv/bin/python benchmarks/mutate_error_share.py [--domains retail,bfcl] [--bfcl-limit 200] [--k 8] [--seed 0]
        [--invalid-share 0.15] [--out results.json]

Domains:

- ``retail``: the database-backed customer-support example (examples/retail_db, 24 expert
  conversations, recorded without redaction), replayed in its SQLite sandbox;
- ``bfcl``: BFCL ``multi_turn_base`` expert trajectories on the real ``bfcl-eval`` backends.

Each domain's experts are recorded once into a temporary store, then ``run_replay`` runs the
``mutate`` policy with K alternatives per state, exactly as ``ee replay run`` does. Reported per
domain: branches, the share that are error observations (overall, for alternatives that keep the
expert's tool and for those that call another tool), the share of proposals the sandbox refused,
fidelity mismatches, and the most common error texts. ``--invalid-share`` sets the policy's
share of deliberately invalid values (only for versions of the policy that take it).

The error share is not a number to drive to zero: an alternative that fails teaches the world model
what fails. What it measures is whether proposals look like the domain (an ``order_id`` drawn from
the order ids the conversation has seen) or like noise (``order_id="Johnson"``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def record_retail(store: Path) -> str:
    sys.path.insert(0, str(EXAMPLES))
    from retail_db.agent import record_experts

    record_experts(store, store.parent, redact=False)
    return "retail_db.sandbox:make_sandbox"


def record_bfcl(store: Path, limit: int) -> str:
    from ee_middleware.bfcl.experts import record_experts

    report = record_experts(store, "multi_turn_base", limit=limit)
    if report.failed:
        raise SystemExit(f"BFCL experts failed to record: {report.failed}")
    return "bfcl"


def measure(domain: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    store = folder / domain / "experience"
    store.parent.mkdir(parents=True)
    sandbox = record_retail(store) if domain == "retail" else record_bfcl(store, args.bfcl_limit)
    extra: dict[str, Any] = {}
    if args.invalid_share is not None:
        extra["policy_settings"] = {"invalid_share": args.invalid_share}
    config = ReplayConfig(store=store, sandbox=sandbox, policy="mutate", k=args.k, seed=args.seed, **extra)
    started = time.perf_counter()
    summary = run_replay(config)
    seconds = time.perf_counter() - started
    opened = LocalExperienceStore(store)
    experts = {(t.id, s.index): s.action.tool_call.name for t in opened.iter_trajectories() for s in t.steps if s.action.tool_call}
    rows = list(opened.iter_rollouts())
    same = [r for r in rows if r.action.tool_call and r.action.tool_call.name == experts.get((r.trajectory_id, r.step_index))]
    other = [r for r in rows if r not in same]
    errors = Counter(_error_kind(r.observation.content) for r in rows if r.is_error)
    refused = sum(summary.refused_tools.values())
    return {
        "domain": domain,
        "trajectories": summary.done,
        "states": summary.states,
        "branches": summary.branches,
        "error_share": _share(rows),
        "error_share_same_tool": _share(same),
        "error_share_other_tool": _share(other),
        "same_tool_branches": len(same),
        "refused_share": round(refused / (refused + summary.branches), 4) if refused + summary.branches else 0.0,
        "fidelity_mismatches": summary.fidelity_mismatches,
        "top_errors": errors.most_common(6),
        "seconds": round(seconds, 2),
    }


def _share(rows: list[Any]) -> float:
    return round(sum(r.is_error for r in rows) / len(rows), 4) if rows else 0.0


def _error_kind(text: str) -> str:
    """An error text with its specifics (quoted values, numbers, ids) masked, to count kinds of errors."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text.split("\n")[0])
    return re.sub(r"#?W?\d[\d.\-]*", "N", text)[:90]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default="retail,bfcl")
    parser.add_argument("--bfcl-limit", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--invalid-share", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here too.")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    results = []
    with tempfile.TemporaryDirectory(prefix="ee-mutate-") as tmp:
        for domain in args.domains.split(","):
            results.append(measure(domain.strip(), Path(tmp), args))
    table = Table(title=f"mutate policy, k={args.k}, seed={args.seed}: share of branches that are error observations")
    for column in ("domain", "states", "branches", "errors", "same tool", "other tool", "refused", "fidelity mismatches"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["domain"],
            str(r["states"]),
            str(r["branches"]),
            f"{r['error_share']:.1%}",
            f"{r['error_share_same_tool']:.1%} of {r['same_tool_branches']}",
            f"{r['error_share_other_tool']:.1%} of {r['branches'] - r['same_tool_branches']}",
            f"{r['refused_share']:.1%}",
            str(r["fidelity_mismatches"]),
        )
    console = Console(width=140)
    console.print(table)
    for r in results:
        console.print(f"[bold]{r['domain']}[/] most common errors: " + "; ".join(f"{n}x {kind}" for kind, n in r["top_errors"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
