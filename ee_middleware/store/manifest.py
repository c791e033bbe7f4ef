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
     "retired": [{"table": "steps", "name": "part-....parquet", "retired_at": 1767225600.0}],
     "kept": [{"name": "<segment>.jsonl", "size": 81920, "newer": 3, "newest": "1.9", "rejected": 0, "first_rejected": null}]}

``kept`` (only where there are such): spool segments kept in the spool for records of a newer record schema than the
compacting version reads, whose other records are in the parts already; compaction folds them again only if they
change (they are sealed: they do not), instead of adding another copy of those records at every compaction.

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
    refused: OSError | None = None
    """The system's error, when ``manifest.json`` could not be read for it (no permission, a folder in its place, a
    failed disk) rather than for damage: the file may be whole, and must not be replaced by a listing of part files."""
    kept: list[dict[str, Any]] = field(default_factory=list)
    """Spool segments kept for records of a newer schema, their other records folded already (see the module's
    docstring); an entry out of shape (a hand edit) is left out, and its segment folded again."""

    def paths(self, root: Path, table: str) -> list[Path]:
        return [root / table / name for name in self.parts.get(table, [])]

    def same_as(self, other: Manifest) -> bool:
        return self.generation == other.generation and self.parts == other.parts


def read_manifest(root: Path, tables: Iterable[str]) -> Manifest:
    """The current manifest, or a listing of every part file for a store without one."""
    path = root / MANIFEST
    tables = list(tables)
    try:
        return _parse(json.loads(path.read_bytes()), tables)
    except FileNotFoundError:
        return Manifest(generation=None, parts={t: [p.name for p in list_part_files(root / t)] for t in tables})
    except OSError as exc:
        parts = {t: [p.name for p in list_part_files(root / t)] for t in tables}
        return Manifest(generation=None, parts=parts, unreadable=exc.strerror or str(exc), refused=exc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Manifest(generation=None, parts={t: [p.name for p in list_part_files(root / t)] for t in tables}, unreadable=str(exc))


def _parse(data: Any, tables: list[str]) -> Manifest:
    """The manifest ``data`` holds; :class:`ValueError` naming the first thing out of shape (a manifest edited by hand)."""
    if not isinstance(data, dict):
        raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
    generation, parts, retired = data.get("generation"), data.get("parts"), data.get("retired", [])
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ValueError(f"'generation' is {_shown(generation)}, not a whole number")
    if not isinstance(parts, dict):
        raise ValueError(f"'parts' is {_shown(parts)}, not an object of part names per table")
    for table in tables:
        names = parts.get(table, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and _is_part_name(n) for n in names):
            raise ValueError(f"'parts' of {table!r} is {_shown(names)}, not a list of part file names (part-....parquet)")
    if not isinstance(retired, list) or not all(_is_retired_entry(r, tables) for r in retired):
        raise ValueError(f"'retired' is {_shown(retired)}, not a list of {{'table', 'name', 'retired_at'}} entries")
    kept = data.get("kept", [])
    kept = [entry for entry in kept if _is_kept_entry(entry)] if isinstance(kept, list) else []
    return Manifest(generation=generation, parts={t: list(parts.get(t, [])) for t in tables}, retired=list(retired), kept=kept)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_part_name(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet") and "/" not in name and "\\" not in name


def _is_retired_entry(entry: Any, tables: list[str]) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("table") in tables
        and isinstance(entry.get("name"), str)
        and _is_part_name(entry["name"])
        and isinstance(entry.get("retired_at"), (int, float))
        and not isinstance(entry.get("retired_at"), bool)
    )


def _is_kept_entry(entry: Any) -> bool:
    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    return (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and entry["name"].endswith(".jsonl")
        and "/" not in entry["name"]
        and all(count(entry.get(key)) for key in ("size", "newer", "rejected"))
        and isinstance(entry.get("newest"), str)
        and (entry.get("first_rejected") is None or isinstance(entry["first_rejected"], str))
    )


def write_manifest(root: Path, manifest: Manifest, *, fsync: bool) -> None:
    """Swap in ``manifest`` atomically (call under the compaction lock)."""
    data: dict[str, Any] = {"generation": manifest.generation, "parts": manifest.parts, "retired": manifest.retired}
    if manifest.kept:
        data["kept"] = manifest.kept
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
