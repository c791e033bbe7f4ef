"""The manifest of a local store: which Parquet parts are live, swapped atomically by compaction.

Readers take one manifest and read exactly its parts, so a read is one consistent snapshot: never
half of a merge, never a trajectory without its steps. Compaction (under the store's compaction
lock) writes new parts first, then swaps in a manifest with the next ``generation`` in one atomic
rename. Parts a merge replaced stay on disk as *retired* for :data:`RETIRED_PART_GRACE_S`, so a
reader that took the older manifest still finds them; should one be gone all the same, the reader
sees that the generation moved on and reads again (:class:`PartVanished`), never warning that a
part is damaged. A damaged part is one the current manifest lists and nobody can read.

``manifest.json``::

    {"generation": 7,
     "parts": {"trajectories": ["part-....parquet", ...], "steps": [...], ...},
     "retired": [{"table": "steps", "name": "part-....parquet", "retired_at": 1767225600.0}]}

A store written before manifests existed has none: every part file in the table folders is live
(the first compaction writes the manifest).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_write_bytes

MANIFEST = "manifest.json"
RETIRED_PART_GRACE_S = 600.0
"""How long a part replaced by a merge stays on disk for readers that picked it before the merge."""


class PartVanished(Exception):
    """A part of the manifest a read started from is gone because compaction moved on: read again."""


@dataclass
class Manifest:
    """Live parts per table, and retired parts waiting for their grace period to end."""

    generation: int | None
    """``None`` for a store without a manifest (every part file is live)."""
    parts: dict[str, list[str]]
    retired: list[dict[str, Any]] = field(default_factory=list)
    unreadable: str | None = None
    """Why ``manifest.json`` could not be read, when it could not (every part file is then live)."""

    def paths(self, root: Path, table: str) -> list[Path]:
        return [root / table / name for name in self.parts.get(table, [])]

    def same_as(self, other: Manifest) -> bool:
        return self.generation == other.generation and self.parts == other.parts


def read_manifest(root: Path, tables: Iterable[str]) -> Manifest:
    """The current manifest, or a listing of every part file for a store without one."""
    path = root / MANIFEST
    try:
        data = json.loads(path.read_bytes())
        return Manifest(
            generation=int(data["generation"]),
            parts={t: [str(n) for n in data["parts"].get(t, [])] for t in tables},
            retired=list(data.get("retired", [])),
        )
    except FileNotFoundError:
        return Manifest(generation=None, parts={t: [p.name for p in list_part_files(root / t)] for t in tables})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return Manifest(generation=None, parts={t: [p.name for p in list_part_files(root / t)] for t in tables}, unreadable=str(exc))


def write_manifest(root: Path, manifest: Manifest, *, fsync: bool) -> None:
    """Swap in ``manifest`` atomically (call under the compaction lock)."""
    data = {"generation": manifest.generation, "parts": manifest.parts, "retired": manifest.retired}
    atomic_write_bytes(root / MANIFEST, json.dumps(data, indent=1).encode(), fsync=fsync)


def list_part_files(folder: Path) -> list[Path]:
    """Every part file in a table folder, oldest name first (live, retired or left over)."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet")


def retire(manifest: Manifest, table: str, names: Iterable[str]) -> None:
    now = time.time()
    manifest.retired.extend({"table": table, "name": name, "retired_at": now} for name in names)


def expired(manifest: Manifest) -> list[dict[str, Any]]:
    """Retired parts whose grace period is over."""
    now = time.time()
    return [r for r in manifest.retired if now - float(r.get("retired_at", 0)) >= RETIRED_PART_GRACE_S]
