"""Reading the dataset files (Parquet, one chat prompt/completion pair a row) for training.

Only ``id``, ``kind``, ``prompt``, ``completion``, ``tools`` and (IWM) ``observation_truncated_chars`` are used;
``prompt``, ``completion`` and ``tools`` hold JSON text of OpenAI chat messages / tool schemas. Other columns (lineage) are
ignored. Each file is hashed (sha256) so the manifest says exactly what was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware.trainers.datasets.split import is_heldout_file
from ee_middleware.trainers.training.errors import MissingDatasetError, TrainDataError, build_advice
from ee_middleware.trainers.training.errors import rebuild_hint as _rebuild_hint

REQUIRED_COLUMNS = ("id", "prompt", "completion", "tools")
FILE_NAMES = {"il": "il.parquet", "iwm": "iwm.parquet", "sr": "sr.parquet", "em": "em.parquet"}


@dataclass(frozen=True)
class ChatRow:
    """One training example: the state (prompt messages), the target message, the tools offered."""

    id: str
    kind: str
    prompt: list[dict[str, Any]]
    completion: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    completion_is_head: bool = False
    """The completion's text is the head of a longer text (an IWM row's observation cut to the build's budget or at
    capture: ``observation_truncated_chars``): the end of turn after it is not the model's to learn."""


@dataclass
class DatasetFile:
    """A dataset file read for training, with what the manifest records about it."""

    kind: str
    path: Path
    sha256: str
    rows: list[ChatRow] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    source_hashes: tuple[str, ...] = ()
    """The ``source_hash`` values of its rows (the store content it was built from; one per build), sorted."""

    def describe(self) -> dict[str, Any]:
        data = {"path": str(self.path), "sha256": self.sha256, "rows": len(self.rows), "metadata": self.metadata}
        return data | ({"source_hash": ",".join(self.source_hashes)} if self.source_hashes else {})


def load_dataset(data_dir: Path, kind: str) -> DatasetFile:
    """Read and check ``<data_dir>/<kind>.parquet``; raise :class:`TrainDataError` naming the file and row."""
    import polars as pl

    path = Path(data_dir) / FILE_NAMES[kind]
    if not path.is_file():
        raise MissingDatasetError(path, kind)
    try:
        frame = pl.read_parquet(path)
        metadata = dict(pl.read_parquet_metadata(path) or {})
    except Exception as exc:
        raise TrainDataError(f"{path} is not a readable Parquet file ({type(exc).__name__}: {exc}). {_rebuild_hint(path, kind)}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise TrainDataError(
            f"{path} lacks the column(s) {', '.join(missing)}; a dataset needs {', '.join(REQUIRED_COLUMNS)}. {_rebuild_hint(path, kind)}"
        )
    if frame.height == 0:
        raise TrainDataError(f"{path} has no rows. Approve more trajectories or re-run replay, then rebuild the {kind.upper()} dataset.")
    metadata = {k: v for k, v in metadata.items() if k not in ("ARROW:schema",)}
    if is_heldout_file(metadata):
        raise TrainDataError(
            f"{path} is a held-out dataset (built by `ee datasets build --heldout-...` for evaluation): it is never trained on. "
            "Point --data at the training folder (the parent of heldout/), or evaluate with it instead."
        )
    hashes = tuple(sorted(frame["source_hash"].drop_nulls().unique().to_list())) if "source_hash" in frame.columns else ()
    # in the order of their ids (content-derived), not the file's: a file's order follows the order the store's
    # trajectories were written in (ingest order, several recording processes), and the seeded shuffle of row positions
    # would make the same rows another training (another adapter) for each
    rows = sorted(rows_from_frame(frame, path, kind), key=lambda row: row.id)
    # the manifest names the file by its absolute path: one relative to where ee train ran points nowhere from the adapter
    return DatasetFile(kind=kind, path=path.resolve(), sha256=_sha256(path), rows=rows, metadata=metadata, source_hashes=hashes)


def unread_at_build(data_dir: Path) -> list[str]:
    """What the build of the datasets in ``data_dir`` could not read of its store (``datasets.json``'s
    ``incomplete_store_read``: a build given ``--allow-partial`` on a damaged store); empty for a whole build, or where
    no readable ``datasets.json`` says."""
    try:
        record = json.loads((Path(data_dir) / "datasets.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    unread = record.get("incomplete_store_read") if isinstance(record, dict) else None
    return [str(item) for item in unread] if isinstance(unread, list) else []


def check_one_build(datasets: dict[str, DatasetFile]) -> None:
    """Raise :class:`TrainDataError` when the files a schedule trains on come from different builds (their rows'
    ``source_hash`` differ). Builds before 19c6991 left an earlier build's files beside a later one's in the
    folder: the two describe different states of the store, and the earlier file may hold trajectories the later
    build held out. Files without ``source_hash`` (not made by the builders) are not checked."""
    built = {kind: d for kind, d in datasets.items() if d.source_hashes}
    if len({d.source_hashes for d in built.values()}) < 2:
        return
    files = " and ".join(f"{d.path.name} (source {', '.join(d.source_hashes)})" for d in built.values())
    folder = next(iter(built.values())).path.parent
    kinds = [kind for kind in datasets if kind != "em"]  # em.parquet comes from ee experience dataset, on its own
    advice = build_advice(kinds[0], folder, together=kinds)
    raise TrainDataError(
        f"{folder} holds dataset files of different builds: {files}. They were built from different states of the "
        "store (an older ee datasets build left an earlier build's files beside a later one's), and the earlier one may "
        f"hold trajectories the later build held out. Rebuild them together: `{advice.command}`"
        + (f" ({advice.note})" if advice.note else "")
        + (f" (the store and options of the latest build, which {advice.recorded} records)" if advice.recorded else "")
    )


def rows_from_frame(frame: Any, path: Path, kind: str) -> list[ChatRow]:
    """The chat rows of a dataset frame, checked; errors name ``path`` and the row."""
    return list(_checked_rows(frame, path, kind))


def check_rows(frame: Any, path: Path, kind: str) -> int:
    """Check every row of a dataset frame as :func:`rows_from_frame` does, keeping none (memory stays flat with the
    file); the number of rows. Raises the same :class:`TrainDataError`."""
    return sum(1 for _ in _checked_rows(frame, path, kind))


def _checked_rows(frame: Any, path: Path, kind: str) -> Iterator[ChatRow]:
    # (a file without ids, which ee datasets export takes, names its rows by their index)
    columns = [c for c in ("id", "kind", "observation_truncated_chars") if c in frame.columns] + ["prompt", "completion", "tools"]
    try:
        for index, record in enumerate(frame.select(columns).iter_rows(named=True)):
            yield _parse_row(path, index, record, kind)
    except _BadRow as bad:  # the advice reads the build's datasets.json: once, for the row that is wrong
        raise TrainDataError(f"{bad} {_rebuild_hint(path, kind)}") from None


class _BadRow(Exception):
    """A row that is not a chat prompt/completion pair (the message without the rebuild advice)."""


def _parse_row(path: Path, index: int, record: dict[str, Any], kind: str) -> ChatRow:
    where = f"{path} row {index} (id {record.get('id')!r})"
    prompt = _json_list(where, "prompt", record["prompt"])
    completion = _json_list(where, "completion", record["completion"])
    tools = _json_list(where, "tools", record["tools"] if record["tools"] is not None else "[]")
    for column, messages in (("prompt", prompt), ("completion", completion)):
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _BadRow(f"{where}: {column} must be a list of chat messages with a 'role' (OpenAI shape), got {str(message)[:80]!r}.")
            problem = _tool_calls_problem(message.get("tool_calls"))
            if problem is not None:
                raise _BadRow(f"{where}: a {column} message's tool_calls {problem}.")
    if not prompt:
        raise _BadRow(f"{where}: prompt has no messages.")
    if len(completion) != 1 or completion[0]["role"] != "assistant":
        raise _BadRow(f"{where}: completion must be a list with one assistant message.")
    row_id = record.get("id")
    row_kind = record.get("kind") or kind
    return ChatRow(
        id=str(row_id if row_id is not None else index),
        kind=row_kind,
        prompt=prompt,
        completion=completion,
        tools=tools,
        completion_is_head=row_kind == "iwm" and (record.get("observation_truncated_chars") or 0) > 0,
    )


def _tool_calls_problem(calls: Any) -> str | None:
    """What is wrong with a message's ``tool_calls`` for a chat template (OpenAI shape: ``[{"id", "type": "function",
    "function": {"name", "arguments"}}]``), or ``None``: a call without its ``function`` failed in the base model's
    template, which was then blamed ("a limit of the model's own template")."""
    if calls is None:
        return None
    if not isinstance(calls, list):
        return f"must be a list of calls, got {type(calls).__name__}"
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return f'must each have a "function" with a "name" (OpenAI shape), got {str(call)[:80]!r}'
        if not isinstance(function.get("arguments", ""), (str, dict)):
            return f"arguments must be JSON text (or an object), got {type(function['arguments']).__name__} in {str(call)[:80]!r}"
    return None


def _json_list(where: str, column: str, text: Any) -> list[Any]:
    if not isinstance(text, str):
        raise _BadRow(f"{where}: {column} must be JSON text, got {type(text).__name__}.")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _BadRow(f"{where}: {column} is not valid JSON ({exc}).") from None
    if not isinstance(value, list):
        raise _BadRow(f"{where}: {column} must be a JSON list, got {type(value).__name__}.")
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
