"""Capture's redaction kept with a plug-in store: real ``create_react_agent`` graphs record into a SQLite store of the
user's own (tests/store/sqlite_plugin.py, no local folder), in this process and in another. With the store's
``read_meta``/``write_meta`` every writer gets capture's rules and one salt; a store without them is refused rules its
later writers would lose, and warned about pseudonyms that differ per process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from ee_middleware import record_experience
from ee_middleware.capture import store_redaction
from ee_middleware.capture.redaction import SALT_FILE
from ee_middleware.capture.store_redaction import REDACTION_FILE, read_store_redaction, store_redactor
from ee_middleware.errors import ConfigError
from ee_middleware.store.metadata import MetadataNotKeptWarning
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.store.sqlite_plugin import SqliteMetaStore, SqliteStore

REPO = Path(__file__).resolve().parents[2]
TASK = "I'm ann@example.com, customer CUST-1234. Do we have pears?"
CUSTOMER = {"customer": r"CUST-\d{4}"}
PLACEHOLDERS = re.compile(r"\[REDACTED:(?:email|customer):[0-9a-f]+\]")


@tool
def check_stock(item: str) -> str:
    """How many of an item are in stock."""
    return "0"


def record_into(store: SqliteStore, **settings: object) -> str:
    """Record one run of a real ReAct agent into ``store``; return the task the store holds for it (redacted)."""
    script = [AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]), AIMessage(content="No pears, ann@example.com.")]
    agent = record_experience(create_react_agent(ScriptedChatModel(script=script), [check_stock]), app="shop", store=store, **settings)
    agent.invoke({"messages": [("user", TASK)]})
    assert agent.flush()
    agent.recorder.close()
    return list(store.iter_trajectories())[-1].task


def test_a_plug_in_store_with_the_metadata_methods_gives_every_process_and_writer_capture_s_rules_and_one_salt(tmp_path: Path) -> None:
    """Defect: a plug-in store kept neither redaction.json nor redaction.key: the same e-mail got another pseudonym in each
    process, and later writers knew nothing of the customer pattern (replay wrote CUST-1234 in plain text)."""
    location = str(tmp_path / "experience.sqlite")
    code = (
        "import sys; from tests.capture.test_plugin_store_redaction import record_into, CUSTOMER; "
        "from tests.store.sqlite_plugin import SqliteMetaStore; "
        "print(record_into(SqliteMetaStore(sys.argv[1]), redaction_patterns=CUSTOMER))"
    )
    other = subprocess.run([sys.executable, "-c", code, location], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert other.returncode == 0, other.stderr[-3000:]
    here = record_into(SqliteMetaStore(location), redaction_patterns=CUSTOMER)
    assert "ann@example.com" not in here and "CUST-1234" not in here
    assert PLACEHOLDERS.findall(other.stdout) == PLACEHOLDERS.findall(here) != [], "the same values get the same pseudonyms"
    later = SqliteMetaStore(location)  # a later writer (replay, datasets, exports) on its own handle
    assert read_store_redaction(later).rules.patterns == CUSTOMER and later.read_meta(REDACTION_FILE) is not None
    assert later.read_meta(SALT_FILE) is not None
    redactor = store_redactor(later)
    assert redactor.redact_text("ann@example.com") in here and redactor.redact_text("CUST-1234") in here


def test_a_second_recorder_with_other_rules_leaves_the_union_in_a_plug_in_store(tmp_path: Path) -> None:
    location = str(tmp_path / "experience.sqlite")
    record_into(SqliteMetaStore(location), redaction_patterns=CUSTOMER)
    record_into(SqliteMetaStore(location), redaction_patterns={"ticket": r"TCK-\d+"}, redaction_kinds={"ip_address": True})
    settings = read_store_redaction(SqliteMetaStore(location))
    assert settings.rules.patterns == {**CUSTOMER, "ticket": r"TCK-\d+"} and "ip_address" in settings.rules.enabled_kinds()


def _scrub(text: str) -> str:
    return text.replace("pears", "[fruit]")


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"redaction_patterns": CUSTOMER}, "the pattern customer"),
        ({"redaction_kinds": {"ip_address": True}}, "the kind ip_address"),
        ({"redact_fn": _scrub}, "redact_fn=tests.capture.test_plugin_store_redaction._scrub"),
    ],
    ids=["pattern", "kind", "redact_fn"],
)
def test_a_store_that_keeps_no_metadata_is_refused_rules_its_later_writers_would_lose(tmp_path: Path, settings: dict, named: str) -> None:
    """Defect: recording with a custom rule into a store without a folder or the methods worked, and replay then wrote
    what the rule removed in plain text. Now it is refused, naming the store and the two methods."""
    store = SqliteStore(str(tmp_path / "experience.sqlite"))
    with pytest.raises(
        ConfigError, match=rf"Cannot record into SqliteStore\(.*\) with {re.escape(named)}.*read_meta\(name\).*write_meta\("
    ):
        record_into(store, **settings)
    assert store.trajectories().height == 0


def test_a_store_that_keeps_no_metadata_records_with_the_defaults_and_warns_what_it_loses(tmp_path: Path, monkeypatch) -> None:
    """Refusing the defaults would stop every existing app recording into such a store (redaction is on by default), and
    nothing is written in plain text by later writers then: it records, and warns about the per-process pseudonyms."""
    monkeypatch.setattr(store_redaction, "_WARNED", set(), raising=False)  # (said once a process: another test may have said it)
    store = SqliteStore(str(tmp_path / "experience.sqlite"))
    with pytest.warns(MetadataNotKeptWarning, match=r"SqliteStore.*another pseudonym in each process.*read_meta\(name\).*write_meta\("):
        task = record_into(store)
    assert "ann@example.com" not in task and "[REDACTED:email:" in task
    assert read_store_redaction(store).recorded is False


def test_the_warning_is_given_once_a_process_not_once_a_recorder(tmp_path: Path, monkeypatch) -> None:
    """An app building a recorder per request or per worker into such a store got the same warning every time (the
    store's repr differs per object, and LangChain resets the warnings registry): once a process is enough."""
    import warnings

    monkeypatch.setattr(store_redaction, "_WARNED", set(), raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(3):
            record_into(SqliteStore(str(tmp_path / f"experience-{n}.sqlite")))
    assert [w.category for w in caught if issubclass(w.category, MetadataNotKeptWarning)] == [MetadataNotKeptWarning]


def test_a_filter_that_makes_the_warning_an_error_refuses_every_recorder_not_only_the_first(tmp_path: Path, monkeypatch) -> None:
    """An app (or a test suite with filterwarnings=error) refusing stores that keep no salt: the first build was
    refused and every later one went through once the warning had been noted as said (found by review)."""
    import warnings

    monkeypatch.setattr(store_redaction, "_WARNED", set(), raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataNotKeptWarning)
        for n in range(2):
            with pytest.raises(MetadataNotKeptWarning):
                record_into(SqliteStore(str(tmp_path / f"experience-{n}.sqlite")))
