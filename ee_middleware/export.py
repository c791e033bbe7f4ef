"""Export trajectories to fine-tuning formats: OpenAI chat JSONL and Parquet.

Everything exported goes through the store's own redaction rules and salt once more
(:func:`~ee_middleware.capture.store_redaction.store_redactor`): what capture stored is already
redacted, and redacting twice changes nothing; anything a later writer left is caught here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware._files import atomic_open, atomic_path
from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.errors import OutputError, os_error_advice
from ee_middleware.records import ApprovalStatus
from ee_middleware.store.protocol import ExperienceStore


def export_jsonl(store: ExperienceStore, out: str | os.PathLike[str], *, status: ApprovalStatus | None = "approved") -> int:
    """One OpenAI chat fine-tuning example per line: ``{"messages": [...], "tools": [...]}``.

    The file is replaced whole or not at all; raises :class:`~ee_middleware.errors.OutputError`
    (leaving nothing behind) when it cannot be written.
    """
    path = _output_path(out, "jsonl")
    redact = store_redactor(store, create_salt=False).redact_value
    count = 0
    with _writing(path), atomic_open(path, "w") as fh:
        for trajectory in store.iter_trajectories(status=status):
            example = trajectory.to_openai_chat()
            example["messages"] = [_openai_message(m) for m in redact(example["messages"])]  # tool schemas: the app's code, kept
            fh.write(json.dumps(example, ensure_ascii=False) + "\n")
            count += 1
    return count


def export_parquet(store: ExperienceStore, out: str | os.PathLike[str], *, status: ApprovalStatus | None = "approved") -> int:
    """One row per trajectory: lineage columns, ``messages`` as nested chat structs, ``tools`` as JSON."""
    redact = store_redactor(store, create_salt=False).redact_value
    rows = [
        {
            "id": t.id,
            "app": t.app,
            "app_version": t.app_version,
            "model": t.model,
            "task": redact(t.task),
            "approval": t.approval.status,
            "final_answer": redact(t.final_answer),
            "num_steps": t.num_steps,
            "messages": [_message_struct(_openai_message(m)) for m in redact(t.messages)],
            "tools": json.dumps(t.tools, ensure_ascii=False),
        }
        for t in store.iter_trajectories(status=status)
    ]
    path = _output_path(out, "parquet")
    with _writing(path), atomic_path(path) as tmp:
        pl.DataFrame(rows, schema=_EXPORT_SCHEMA).write_parquet(tmp, compression="zstd")
    return len(rows)


def _output_path(out: str | os.PathLike[str], suffix: str) -> Path:
    path = Path(out).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give the file to write, for example {path / f'train.{suffix}'}.")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise OutputError(f"Cannot write {path}: {folder} is a file, not a folder. Give a path in a folder. Nothing was written.")
    return path


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write into one clear :class:`OutputError` (the atomic helpers already removed
    their temporary file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}. Nothing was written. {os_error_advice(exc)}") from exc


_CALL = pl.Struct({"id": pl.String(), "type": pl.String(), "function": pl.Struct({"name": pl.String(), "arguments": pl.String()})})
_MESSAGE = pl.Struct(
    {"role": pl.String(), "content": pl.String(), "tool_calls": pl.List(_CALL), "tool_call_id": pl.String(), "name": pl.String()}
)
_EXPORT_SCHEMA = {
    "id": pl.String(),
    "app": pl.String(),
    "app_version": pl.String(),
    "model": pl.String(),
    "task": pl.String(),
    "approval": pl.String(),
    "final_answer": pl.String(),
    "num_steps": pl.Int64(),
    "messages": pl.List(_MESSAGE),
    "tools": pl.String(),
}


def _openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with its tool calls' arguments as JSON text, as OpenAI's fine-tuning format takes them (a record built
    by hand, or by an API such as Ollama's own, can hold them as a JSON object)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or all(isinstance(_arguments(c), str) for c in calls):
        return message
    fixed = []
    for call in calls:
        arguments = _arguments(call)
        if not isinstance(arguments, str):
            function = call["function"]
            call = {**call, "function": {**function, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        fixed.append(call)
    return {**message, "tool_calls": fixed}


def _arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    return function.get("arguments", "") if isinstance(function, dict) else ""


def _message_struct(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    return {
        "role": message.get("role"),
        "content": content if content is None or isinstance(content, str) else json.dumps(content, ensure_ascii=False),
        "tool_calls": message.get("tool_calls") or [],
        "tool_call_id": message.get("tool_call_id"),
        "name": message.get("name"),
    }
