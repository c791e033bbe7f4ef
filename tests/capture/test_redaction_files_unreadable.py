"""A recorder whose process may not read the store's redaction files refuses to record, naming the file and the fix
(sweep W).

The pseudonym key (``redaction.key``, owner-only as ee makes it) of a store another service user writes: the recorder
logged a warning and recorded with a salt of its own, so the same e-mail address got another tag in its runs than in the
store's (``[REDACTED:email:456d4b6a]``, then ``[REDACTED:email:8cc4f2d4]``), and ``flush()`` said True. An unreadable
``redaction.json`` was refused, but with the advice to delete it, which would have later writers redact less."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from tests.unreadable import needs_held_user, open_folder, python_as_held_user

RECORD = """
import sys
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from ee_middleware import record_experience
from ee_middleware.errors import ConfigError
from ee_middleware.testing import ScriptedChatModel

model = ScriptedChatModel(policy=lambda messages, tools: AIMessage("Noted."), model_name="m")
try:
    agent = record_experience(create_agent(model, []), app="mail", store="store")
except ConfigError as exc:
    print("refused:", exc)
    sys.exit(3)
agent.invoke({"messages": [("user", "mail jane@example.com please")]})
print("flush", agent.flush())
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    with open_folder("ee-redaction-unreadable-") as path:
        yield path


def _tasks(store: Path) -> list[str]:
    opened = LocalExperienceStore(store)
    try:
        return sorted(t.task or "" for t in opened.iter_trajectories(status=None))
    finally:
        opened.close()


@needs_held_user
@pytest.mark.parametrize("unreadable", ["redaction.key", "redaction.json"])
def test_a_recorder_that_may_not_read_the_stores_redaction_files_refuses_to_record(folder: Path, unreadable: str) -> None:
    code, said = python_as_held_user(RECORD, folder)  # the first writer makes the store, its key and its settings
    assert code == 0 and "flush True" in said, said
    (tagged,) = _tasks(folder / "store")
    assert tagged.startswith("mail [REDACTED:email:") and "jane" not in tagged
    for path in (folder / "store").rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    (folder / "store" / unreadable).chmod(0)  # another service user's: this one may not read it

    code, said = python_as_held_user(RECORD, folder)

    said = " ".join(said.split())
    assert code == 3, said
    assert f"{folder / 'store' / unreadable}" in said and "Permission denied" in said
    assert "run as the user that owns it, or let this one" in said.lower() and "chmod g+r FILE" in said
    assert "or delete it to use the defaults" not in said
    (folder / "store" / unreadable).chmod(0o600)
    assert _tasks(folder / "store") == [tagged], "nothing recorded with another tag"
