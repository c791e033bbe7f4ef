"""A real ``create_agent`` run recorded into a real local store, and every file of the store searched for raw values:
the capture path the redaction tests of hidden forms (numbers, escapes, URL-encoded addresses) go through."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage

from ee_middleware import record_experience
from ee_middleware.capture.redaction import Redactor
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call


def record(store: Path, tools: list[Any], calls: list[tuple[str, dict[str, Any]]]) -> LocalExperienceStore:
    """One run of a real create_agent graph calling ``calls`` in turn, recorded into ``store``."""
    script = [AIMessage(content="", tool_calls=[tool_call(name, **arguments)]) for name, arguments in calls]
    agent = record_experience(create_agent(ScriptedChatModel(script=[*script, AIMessage(content="done")]), tools), app="crm", store=store)
    try:
        agent.invoke({"messages": [("user", "please help")]})
    except ValueError:
        pass  # a tool that raises ends the run: recorded as a failed run
    agent.flush()
    agent.recorder.close()
    return LocalExperienceStore(store)


def files_text(root: Path) -> str:
    """Every byte of every file under ``root`` as text, and each Parquet file's values (compressed on disk) as JSON lines."""
    import polars as pl

    texts = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
            if path.suffix == ".parquet":
                texts.append(pl.read_parquet(path).write_ndjson())
    return "\n".join(texts)


def spellings(value: str) -> list[str]:
    """``value`` as it may read in a file: itself, JSON-escaped once (``\\u0438``) and twice (in JSON inside a string)."""
    once = json.dumps(value)[1:-1]
    return [value, once, json.dumps(once)[1:-1]]


def assert_not_stored(store: LocalExperienceStore, root: Path, values: list[str]) -> None:
    """None of ``values`` in any file of the store, in any spelling, before compaction (spool) and after (Parquet)."""
    for when in ("spool", "compacted"):
        if when == "compacted":
            store.compact()
        text = files_text(root)
        found = [spelling for value in values for spelling in spellings(value) if spelling in text]
        assert not found, f"{found} stored in plain text ({when})"


@contextlib.contextmanager
def redact_value_calls() -> Iterator[list[Any]]:
    """Every value ``Redactor.redact_value`` is given while the block runs, in order (the real method still redacts): how
    the tests count what a redaction walks."""
    given: list[Any] = []
    real = Redactor.redact_value

    def counted(self: Redactor, value: Any) -> Any:
        given.append(value)
        return real(self, value)

    Redactor.redact_value = counted  # type: ignore[method-assign]
    try:
        yield given
    finally:
        Redactor.redact_value = real  # type: ignore[method-assign]
