"""Secrets and PII planted in a sandbox world, followed through every write path after capture.

The retail example's database (users with e-mail addresses and phone numbers) gains a ``note``
column on users and orders, holding seeded secrets of the capture corpus's kinds (API keys, card
numbers, IBANs, SSNs, passwords in prose, ...). The retail agent's 24 expert conversations run on
that database and are recorded with ``record_experience`` (default redaction); then the usual
pipeline runs: ``ee replay run`` in a sandbox over the same planted world (the mutation policy,
whose alternatives read other customers' profiles and orders), ``ee datasets build`` (IL, IWM, SR,
with a held-out split), and every export (``ee traces export`` as JSONL and Parquet,
``ee datasets export`` as chat JSONL and as a Hugging Face dataset). Every file under the store,
the dataset folder and the export folder is then searched for every planted value (Parquet
decoded, everything else as bytes), counted per kind and per place.

    python -m tests.replay.redaction_corpus --report [--seed 7] [--vault] [--json]

The test (tests/replay/test_redaction_everywhere.py) asserts 0 found everywhere, and that the
expert path stays faithful.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.capture.redaction_corpus import KINDS as CAPTURE_KINDS
from tests.examples.conftest import EXAMPLES

assert EXAMPLES.is_dir()  # importing it put examples/ on sys.path (the retail agent and its sandbox)

PLACES = (
    "store/trajectories",
    "store/steps",
    "store/rollouts",
    "store/replays",
    "store/other",
    "datasets/il",
    "datasets/iwm",
    "datasets/sr",
    "datasets/heldout",
    "datasets/other",
    "exports/traces",
    "exports/datasets",
)
NOTE_KINDS = tuple(k for k in CAPTURE_KINDS if k.default_on and k.name not in ("private_key",))
"""The kinds planted in note fields (one-line values; private keys span lines, which a note cannot show whole)."""


@dataclass(frozen=True)
class Plant:
    kind: str
    origin: str
    """Where in the world it sits: ``users.email``, ``users.phone``, ``users.note``, ``orders.note``."""
    value: str

    def needles(self) -> set[str]:
        values = {self.value, json.dumps(self.value)[1:-1]}
        if self.kind in ("credit_card", "iban"):
            values.add(self.value.replace(" ", "").replace("-", ""))
        return {v for v in values if len(v) >= 6}


# --- the planted world ----------------------------------------------------------------------------------


def plant_world(db: sqlite3.Connection, seed: int, corpus_seed: int) -> list[Plant]:
    """Add ``note`` columns to users and orders and fill them with seeded secrets; return every planted
    value, the database's own e-mail addresses and phone numbers included."""
    rng = random.Random(f"retail-corpus:{corpus_seed}:{seed}")
    plants: list[Plant] = []
    for table, key in (("users", "user_id"), ("orders", "order_id")):
        db.execute(f"ALTER TABLE {table} ADD COLUMN note TEXT")
        for (row_id,) in db.execute(f"SELECT {key} FROM {table} ORDER BY {key}").fetchall():
            parts = []
            for kind in rng.sample(NOTE_KINDS, 2):
                value = kind.make(rng)
                parts.append(rng.choice(kind.texts).format(v=value))
                plants.append(Plant(kind.name, f"{table}.note", value))
            db.execute(f"UPDATE {table} SET note = ? WHERE {key} = ?", (" / ".join(parts), row_id))
    for email, phone in db.execute("SELECT email, phone FROM users"):
        plants += [Plant("email", "users.email", email), Plant("phone", "users.phone", phone)]
    db.commit()
    return plants


def world_plants(corpus_seed: int, seeds: tuple[int, ...] = (0, 1)) -> list[Plant]:
    from retail_db.data import create_database

    plants = []
    for seed in seeds:
        db = sqlite3.connect(":memory:")
        create_database(db, seed)
        plants += plant_world(db, seed, corpus_seed)
        db.close()
    return plants


def _planted_world(environment: dict[str, Any] | None) -> Any:
    from retail_db.sandbox import RetailWorld

    world = RetailWorld.from_environment(environment)
    plant_world(world.db, environment["seed"], int(environment["plant"]))  # type: ignore[index]
    return world


def make_planted_sandbox() -> Any:
    """The retail sandbox over the planted world (``tests.replay.redaction_corpus:make_planted_sandbox``)."""
    import functools

    from retail_db.sandbox import _on_world, is_error_text, tool_error_text
    from retail_db.tools import DB_TOOLS, READ_ONLY_TOOLS

    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(
        _planted_world,
        tools={name: functools.partial(_on_world, tool) for name, tool in DB_TOOLS.items()},
        read_only_tools=READ_ONLY_TOOLS,
        kind="retail-db-planted",
        is_error_result=is_error_text,
        format_error=tool_error_text,
    )


def record_planted_experts(store: Path, workdir: Path, corpus_seed: int, **capture: Any) -> int:
    """The retail agent's expert conversations on the planted database, recorded with ``capture`` settings."""
    from retail_db.agent import APP, RetailShop, build_graph, make_tasks

    from ee_middleware import record_experience

    class PlantedShop(RetailShop):
        def reset(self, seed: int | None = None) -> None:
            super().reset(seed)
            with self.connect() as db:
                plant_world(db, self.seed, corpus_seed)

    from retail_db.agent import SYSTEM_PROMPT
    from retail_db.data import DATASET

    tasks = make_tasks()
    shop = PlantedShop(workdir / "retail.sqlite")
    agent = record_experience(
        build_graph(shop, tasks),
        app=APP,
        store=store,
        environment=lambda _input, config: {"dataset": DATASET, "seed": config["configurable"]["db_seed"], "plant": corpus_seed},
        approve_if=lambda t: t.status == "completed",
        **capture,
    )
    for i, task in enumerate(tasks):
        shop.reset(task.seed)
        config = {"configurable": {"thread_id": f"retail-{i}", "db_seed": task.seed}}
        agent.invoke({"messages": [("system", SYSTEM_PROMPT), ("user", task.user)]}, config)
    agent.flush()
    return len(tasks)


# --- the pipeline -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    planted: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind, origin) -> values planted."""
    found: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind, place) -> planted values found in plain text there."""
    replay: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    files: int = 0

    @property
    def total_found(self) -> int:
        return sum(self.found.values())


def run_pipeline(workdir: Path, *, seed: int = 7, k: int = 4, capture: dict[str, Any] | None = None) -> Outcome:
    """Record, replay, build datasets and export under ``workdir``; search every file written."""
    from ee_middleware.export import export_jsonl, export_parquet
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets, export_chat_jsonl, read_dataset, to_hf_dataset
    from ee_middleware.trainers.datasets.privacy import dataset_redactor

    store, datasets, exports = workdir / "experience", workdir / "datasets", workdir / "exports"
    record_planted_experts(store, workdir, seed, **(capture or {}))
    summary = run_replay(ReplayConfig(store=store, sandbox=f"{__name__}:make_planted_sandbox", k=k, seed=seed))
    built = build_datasets(DatasetConfig(store=store, out=datasets, heldout_share=0.25, seed=seed))
    opened = LocalExperienceStore(store)
    export_jsonl(opened, exports / "traces.jsonl")
    export_parquet(opened, exports / "traces.parquet")
    il, iwm = datasets / "il.parquet", datasets / "iwm.parquet"
    export_chat_jsonl(read_dataset(il), exports / "datasets" / "il.jsonl", redactor=dataset_redactor(il))
    to_hf_dataset(read_dataset(iwm), redactor=dataset_redactor(iwm)).save_to_disk(str(exports / "datasets" / "iwm-hf"))
    opened.close()
    outcome = Outcome(replay=summary.to_dict(), datasets=built)
    plants = world_plants(seed)
    blobs = _blobs(workdir, store, datasets, exports, outcome)
    for plant in plants:
        outcome.planted[plant.kind, plant.origin] += 1
        for place, blob in blobs.items():
            if any(n in blob for n in plant.needles()):
                outcome.found[plant.kind, place] += 1
    return outcome


def _blobs(workdir: Path, store: Path, datasets: Path, exports: Path, outcome: Outcome) -> dict[str, str]:
    """Every file's text (Parquet decoded), by place."""
    import polars as pl

    texts: dict[str, list[str]] = {place: [] for place in PLACES}
    for root, prefix in ((store, "store"), (datasets, "datasets"), (exports, "exports")):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            outcome.files += 1
            text = pl.read_parquet(path).write_ndjson() if path.suffix == ".parquet" else path.read_bytes().decode("utf-8", "replace")
            if prefix == "store" and path.parent.name == "spool":  # "<crc> <json>" lines that name their table in "kind"
                for line in text.splitlines():
                    try:
                        kind = json.loads(line[9:]).get("kind")
                    except ValueError:
                        kind = None
                    texts[_SPOOL_PLACES.get(kind, "store/other")].append(line)
            else:
                texts[_place(prefix, path.relative_to(root))].append(text)
    return {place: "\n".join(parts) for place, parts in texts.items()}


_SPOOL_PLACES = {"trajectory": "store/trajectories", "rollout": "store/rollouts", "replay": "store/replays"}


def _place(prefix: str, relative: Path) -> str:
    top = relative.parts[0]
    if prefix == "store":
        return f"store/{top}" if top in ("trajectories", "steps", "rollouts", "replays") else "store/other"
    if prefix == "datasets":
        if top == "heldout":
            return "datasets/heldout"
        return f"datasets/{relative.stem}" if relative.stem in ("il", "iwm", "sr") else "datasets/other"
    return "exports/datasets" if top == "datasets" else "exports/traces"


# --- report ---------------------------------------------------------------------------------------


def report(outcome: Outcome) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    kinds = sorted({k for k, _ in outcome.planted})
    table = Table(title="Planted world values found in plain text (values) by kind and place")
    table.add_column("kind")
    table.add_column("planted", justify="right")
    for place in PLACES:
        table.add_column(place.replace("datasets/", "ds/").replace("exports/", "exp/"), justify="right")
    for kind in kinds:
        planted = sum(n for (k, _), n in outcome.planted.items() if k == kind)
        cells = [str(outcome.found[kind, p]) if outcome.found[kind, p] else "0" for p in PLACES]
        table.add_row(kind, str(planted), *cells)
    table.add_row("all", str(sum(outcome.planted.values())), *[str(sum(outcome.found[k, p] for k in kinds)) for p in PLACES])
    buffer = StringIO()
    console = Console(file=buffer, width=220, force_terminal=False)
    console.print(table)
    replay = outcome.replay
    console.print(
        f"files searched: {outcome.files}; found: {outcome.total_found}; replay: {replay.get('done')} done, "
        f"{replay.get('states')} states, {replay.get('branches')} branches, fidelity mismatches {replay.get('fidelity_mismatches')}, "
        f"unrestorable expert steps {replay.get('unrestorable', 'n/a')}, unrestored branches {replay.get('unrestored_branches', 'n/a')}"
    )
    for kind, info in outcome.datasets.get("datasets", {}).items():
        console.print(f"dataset {kind}: {info.get('rows')} rows; placeholders: {info.get('placeholders', 'n/a')}")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="print the table (default)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--vault", action="store_true", help="record with a redaction vault (replay restores real values)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        capture = {"vault": True} if args.vault else {}
        outcome = run_pipeline(Path(tmp), seed=args.seed, k=args.k, capture=capture)
    if args.json:
        found = {f"{k}@{p}": n for (k, p), n in sorted(outcome.found.items())}
        print(json.dumps({"found": found, "total_found": outcome.total_found, "replay": outcome.replay}, indent=2, default=str))
    else:
        print(report(outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
