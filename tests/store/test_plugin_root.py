"""A plug-in store whose ``root`` is its own (``info()`` reports ``root``, and a plug-in exposes one naturally: here its
database file) is never taken for the local store's folder. Was (a sweep): ``ee traces export`` said the store "was
removed (or moved) while the export read it" on every export; wrapping a recorded agent again with the same spec
raised ConfigError ("the store given here differs"); a paused run's note was written under ``<database file>/paused``
and warned. A real SQLite plug-in (tests/store/sqlite_plugin.py), real create_agent runs, the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.testing import ScriptedChatModel
from tests.store.sqlite_plugin import SqliteMetaStore

DB_ENV = "EE_TEST_ROOTED_DB"
SPEC = f"{__name__}:rooted_store"


class RootedStore(SqliteMetaStore):
    """The SQLite plug-in with a ``root`` of its own: its database file."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.root = Path(location)


def rooted_store() -> RootedStore:
    return RootedStore(os.environ[DB_ENV])


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv(DB_ENV, str(tmp_path / "experience.sqlite"))
    graph = create_agent(ScriptedChatModel(script=[AIMessage(content="Hello.")]), [])
    agent = record_experience(graph, app="greeter", store=SPEC, approve_if=lambda t: True)
    agent.invoke({"messages": [("user", "Hi")]})
    agent.flush()
    return agent


def test_a_plugin_root_that_is_a_file_is_no_store_folder(recorded: object, tmp_path: Path) -> None:
    again = record_experience(recorded, app="greeter", store=SPEC)  # the README: the same settings give the agent back
    assert again is recorded
    result = CliRunner().invoke(app, ["traces", "export", "--store", SPEC, "--format", "jsonl", "--out", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    assert "removed (or moved)" not in result.output and len((tmp_path / "out.jsonl").read_text().splitlines()) == 1
    recorded.recorder.close()  # type: ignore[attr-defined]
    assert not (tmp_path / "experience.sqlite" / "paused").exists()


class DownStore(SqliteMetaStore):
    """The SQLite plug-in whose backend does not answer: read_meta raises ConnectionRefusedError (an OSError)."""

    def read_meta(self, name: str) -> bytes | None:
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_backend_that_does_not_answer_is_no_reason_to_delete_the_redaction_settings(tmp_path: Path) -> None:
    """Was (a sweep): '... is unreadable ([Errno 111] Connection refused) ... restore it, or delete it to use the
    defaults': deleting it would have later writers redact less than the runs stored so far."""
    from ee_middleware.capture.store_redaction import read_store_redaction
    from ee_middleware.errors import ConfigError

    store = DownStore(str(tmp_path / "experience.sqlite"))
    with pytest.raises(ConfigError) as raised:
        read_store_redaction(store)
    said = str(raised.value)
    assert "could not be read: the store's read_meta raised ConnectionRefusedError" in said and "try again once the store answers" in said
    assert "Do not delete it" in said and "delete it to use the defaults" not in said


class RepairingStore(SqliteMetaStore):
    """The SQLite plug-in with a repair of its own, whose report is in its own words."""

    def repair(self) -> dict[str, object]:
        return {"vacuumed": True, "rows_dropped": 0}


class ListRepairStore(SqliteMetaStore):
    """A repair whose report is no dict (the protocol has no repair(): a plug-in returns what it likes)."""

    def repair(self) -> list[str]:
        return ["fixed 2 rows"]


def list_repair_store() -> ListRepairStore:
    return ListRepairStore(os.environ[DB_ENV])


def repairing_store() -> RepairingStore:
    return RepairingStore(os.environ[DB_ENV])


def test_ee_store_repair_and_compact_speak_of_a_plugin_in_its_own_terms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was (a sweep): a plug-in's own repair() report ended in 'unexpected KeyError: quarantined_parts' (the local store's
    keys); one without repair() gave --json only 'the command failed'; compact said 'Compacted 0 spool segment(s) into
    Parquet parts', the local store's layout."""
    monkeypatch.setenv(DB_ENV, str(tmp_path / "experience.sqlite"))
    runner = CliRunner()
    own = runner.invoke(app, ["store", "repair", "--store", f"{__name__}:repairing_store"])
    assert own.exit_code == 0, own.output
    assert "its report:" in own.output and "vacuumed: true" in own.output and "unexpected" not in own.output
    listed = runner.invoke(app, ["store", "repair", "--store", f"{__name__}:list_repair_store"])  # the review: AttributeError
    assert listed.exit_code == 0 and 'report: ["fixed 2 rows"]' in listed.output, listed.output
    none = runner.invoke(app, ["store", "repair", "--store", SPEC, "--json"])
    assert none.exit_code == 1
    assert "has no repair()" in none.stdout + none.stderr and "the command failed (exit 1)" not in none.stdout, none.output
    compacted = runner.invoke(app, ["store", "compact", "--store", SPEC])
    assert compacted.exit_code == 0, compacted.output
    assert "spool segment" not in compacted.output and "RootedStore: compact() returned" in compacted.output, compacted.output


class DownInfoStore(SqliteMetaStore):
    """The SQLite plug-in whose backend does not answer info()."""

    def info(self) -> dict[str, object]:
        raise TimeoutError("the database did not answer within 5 s")


def down_info_store() -> DownInfoStore:
    return DownInfoStore(os.environ[DB_ENV])


def test_ee_store_info_says_a_plugin_that_does_not_answer_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was (a sweep): 'Cannot read the experience store ...: check the file and its folder (permissions, the disk)', of a
    store with no file of ee's."""
    monkeypatch.setenv(DB_ENV, str(tmp_path / "experience.sqlite"))
    result = CliRunner().invoke(app, ["store", "info", "--store", f"{__name__}:down_info_store"])
    said = " ".join((result.stdout + result.stderr).split())
    assert result.exit_code == 1, result.output
    assert "its info() (DownInfoStore) raised TimeoutError: the database did not answer within 5 s" in said, said
    assert "Try again once the store answers" in said and "permissions" not in said, said
