"""Replay results into a local store's spool: what :meth:`LocalExperienceStore.write_replay` writes, without the store's tables.

A replay worker process writes nothing but replay results, so it opens its store through :class:`ReplaySpool`
instead of :class:`~ee_middleware.store.local.LocalExperienceStore`: the same records, the same redaction, the
same crash-safe spool segment of its own, but no polars and no Parquet to import (about 0.12 s less CPU to start a
worker, on the path before the first trajectory). ``LocalExperienceStore.write_replay`` builds its records here too,
so both write the same lines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ee_middleware.store.spool import SpoolWriter

if TYPE_CHECKING:
    from ee_middleware.capture.redaction import Redactor
    from ee_middleware.records import ReplayRecord, Rollout

MARKER = "ee-store.json"
"""The store's format marker file in its folder."""


def replay_records(record: ReplayRecord, rollouts: Sequence[Rollout], redact: Any) -> list[dict[str, Any]]:
    """The spool records of one trajectory's replay, redacted with ``redact``: its rollouts, then its record.

    The record comes last: a crash part-way leaves rollouts without a record, the trajectory is replayed again,
    and the repeated rollouts (same ids) are dropped on read.
    """
    lines = [{"kind": "rollout", "data": _redacted_rollout(r.model_dump(mode="json"), redact)} for r in rollouts]
    data = record.model_dump(mode="json")
    data.update(reason=redact(data["reason"]), details=redact(data["details"]))
    lines.append({"kind": "replay", "data": data})
    return lines


def _redacted_rollout(data: dict[str, Any], redact: Any) -> dict[str, Any]:
    call = (data.get("action") or {}).get("tool_call")
    if call:
        call["arguments"] = redact(call.get("arguments") or {})
    data["observation"]["content"] = redact(data["observation"]["content"])
    source = data.get("synthetic_source")
    if source and source.get("reasoning"):
        source["reasoning"] = redact(source["reasoning"])
    return data


def replay_redactor(owner: Any) -> Redactor:
    """The redaction the data of ``owner.root``'s store was recorded with (``redaction.json`` and the salt).

    Cached on ``owner`` and read again when ``redaction.json`` changes.
    """
    from ee_middleware.capture.store_redaction import REDACTION_FILE, store_redactor

    try:
        stamp = (Path(owner.root) / REDACTION_FILE).stat().st_mtime_ns
    except FileNotFoundError:
        stamp = None
    cached = getattr(owner, "_redaction", None)
    if cached is None or cached[0] != stamp:
        cached = owner._redaction = (stamp, store_redactor(owner))
    return cached[1]


class ReplaySpool:
    """Appends replay results to the spool of the local store in ``root`` (this process's own segment)."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._writer = SpoolWriter(self.root / "spool", fsync=fsync)

    def __repr__(self) -> str:
        return f"ReplaySpool({str(self.root)!r})"

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        """Durably append one trajectory's rollouts and its replay record in a single batch, as the store itself does."""
        self._writer.append(replay_records(record, rollouts, replay_redactor(self).redact_value))

    def close(self) -> None:
        """Seal the open segment (it can then be compacted)."""
        self._writer.seal()
