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

from ee_middleware.store.int64 import check_replay
from ee_middleware.store.spool import SpoolWriter, encode_line, model_lines

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
    data.update(reason=redact(data["reason"]), details=_redacted_details(data["details"], redact))
    lines.append({"kind": "replay", "data": data})
    return lines


def _redacted_details(details: Any, redact: Any) -> Any:
    """A replay record's details redacted, the diff of each fidelity mismatch line by line without its markers
    (:func:`~ee_middleware.replay.fidelity.redact_diff`): redacted whole, a ``+`` marker and the text after it read as one
    value and the diff lost the sandbox's line."""
    mismatches = details.get("fidelity_mismatches") if isinstance(details, dict) else None
    if not isinstance(mismatches, list):
        return redact(details)
    from ee_middleware.replay.fidelity import redact_diff

    entries = []
    for mismatch in mismatches:
        if isinstance(mismatch, dict) and isinstance(mismatch.get("diff"), str):
            rest = redact({key: value for key, value in mismatch.items() if key != "diff"})
            mismatch = {**rest, "diff": redact_diff(mismatch["diff"], redact)}
        else:
            mismatch = redact(mismatch)
        entries.append(mismatch)
    return {**redact({key: value for key, value in details.items() if key != "fidelity_mismatches"}), "fidelity_mismatches": entries}


def replay_lines(record: ReplayRecord, rollouts: Sequence[Rollout], redactor: Redactor) -> list[bytes]:
    """The spool lines of :func:`replay_records` (``redactor.redact_value`` redacts), byte for byte, encoded faster where that is
    provably the same: a redactor with no rules at all changes nothing, so each rollout is encoded by pydantic in one step
    (:func:`~ee_middleware.store.spool.model_lines`) instead of dumped to a dict, walked by the redactor and encoded by ``json``.

    Raises :class:`~ee_middleware.errors.RecordError` before encoding anything when a rollout or the record has an integer
    the store cannot hold (:func:`~ee_middleware.store.int64.check_replay`): both writers refuse that batch whole."""
    check_replay(record, rollouts)
    if redactor.enabled or type(redactor).redact_value is not _redactor_type().redact_value:
        return [encode_line(r) for r in replay_records(record, rollouts, redactor.redact_value)]
    lines = model_lines("rollout", rollouts)
    lines.append(encode_line({"kind": "replay", "data": record.model_dump(mode="json")}))
    return lines


def _redactor_type() -> type[Redactor]:
    from ee_middleware.capture.redaction import Redactor

    return Redactor


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
        """Append one trajectory's rollouts and its replay record in a single batch, synced in groups, as the store
        itself does (:meth:`LocalExperienceStore.write_replay`)."""
        self._writer.append_lines(replay_lines(record, rollouts, replay_redactor(self)), durable=False)

    def close(self) -> None:
        """Seal the open segment (it can then be compacted)."""
        self._writer.seal()
