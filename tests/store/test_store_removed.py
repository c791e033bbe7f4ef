"""A store folder removed while a process writes to it (a clean-up job, a volume provisioned again, "start fresh").

The writer kept its open segment, which was gone with the folder: every later record was written into a deleted file and
acknowledged (capture counted the runs as written, flush() returned True), and the folder was never made again. With
the segment sealed before the removal, the next write made the spool folder again but no marker, so the folder was not a
store (``ee traces list`` refused it). Now a write that finds its segment deleted goes to a new one, the folder and its
marker are made again, and a warning says so.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import StoreWriteError
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.testing.store_conformance import sample_trajectory


def test_records_written_after_the_store_folder_was_removed_are_stored_in_it_again(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    shutil.rmtree(store_path)
    with caplog.at_level(logging.WARNING, logger="ee_middleware.store"):
        store.write([sample_trajectory("after")])
    store.write([sample_trajectory("later")])
    assert (store_path / "ee-store.json").is_file(), "the store folder and its marker are made again"
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["after", "later"]
    (warning,) = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert "with a new marker" in warning and str(store_path) in warning
    store.close()


def test_a_store_removed_while_no_segment_was_open_is_made_again_as_a_store(store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    store.close()  # sealed (as every 10 minutes, or at 64 MiB): the next write opens a new segment
    shutil.rmtree(store_path)
    with caplog.at_level(logging.WARNING, logger="ee_middleware.store"):
        store.write([sample_trajectory("after")])
    assert LocalExperienceStore(store_path, create=False).trajectories()["id"].to_list() == ["after"]
    assert any("with a new marker" in r.getMessage() for r in caplog.records)
    store.close()


def test_a_spool_folder_removed_alone_is_made_again_and_the_marker_left_as_it_is(store_path: Path) -> None:
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    marker = (store_path / "ee-store.json").read_bytes()
    shutil.rmtree(store_path / "spool")
    store.write([sample_trajectory("after")])
    assert (store_path / "ee-store.json").read_bytes() == marker
    assert [s.parent for s in spool.list_segments(store_path / "spool")] == [store_path / "spool"]
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["after"]
    store.close()


def _customer_agent(store_path: Path, patterns: dict[str, str] | None = None) -> Any:
    """A real LangGraph agent recording with a pattern of its own and pseudonyms (the defaults), whose tool answers with a
    customer id and an e-mail."""
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    from ee_middleware import CaptureConfig, record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool
    def lookup(customer: str) -> str:
        """Customer record."""
        return ANSWER

    turn = [AIMessage(content="", tool_calls=[tool_call("lookup", customer="x")]), AIMessage(content="done")]
    model = ScriptedChatModel(script=turn * 3)
    patterns = patterns if patterns is not None else {"customer_id": r"CUST-\d{6}"}
    config = CaptureConfig(app="shop", store=str(store_path), redaction_patterns=patterns, offload="thread")
    return record_experience(create_react_agent(model, [lookup]), config=config)


ANSWER = "customer CUST-123456 owes 40 EUR, mail ann@example.com"


def _observations(store_path: Path) -> list[str]:
    store = LocalExperienceStore(store_path, create=False)
    try:
        return [s.observation.content for t in store.iter_trajectories() for s in t.steps if getattr(s, "observation", None)]
    finally:
        store.close()


def test_a_store_folder_made_again_while_recording_keeps_the_recorders_redaction_settings_and_salt(store_path: Path) -> None:
    from ee_middleware.replay.privacy import ReplayPrivacy

    agent = _customer_agent(store_path)
    agent.invoke({"messages": [("user", "who?")]})
    assert agent.flush()
    [before] = _observations(store_path)
    assert "CUST-123456" not in before and "ann@example.com" not in before
    shutil.rmtree(store_path)  # a clean-up job while the app runs
    agent.invoke({"messages": [("user", "who?")]})
    assert agent.flush()
    [after] = _observations(store_path)
    assert after == before, "the same values get the same pseudonyms after the folder was made again"
    store = LocalExperienceStore(store_path, create=False)
    redactor = ReplayPrivacy.of_store(store).redactor  # what replay reads from the folder made again
    assert redactor is not None and redactor.redact(ANSWER) == before, "replay redacts the app's pattern with the same salt"
    store.close()


def test_a_store_folder_made_again_without_what_its_writers_keep_fails_the_batch_until_it_can_be_written(
    store_path: Path,
) -> None:
    # The hook's failure is made here (a real failure of the redaction files is hard to arrange between the removal and
    # the next write); the spool, the store and the folder are real.
    store = LocalExperienceStore(store_path)
    failing = [OSError(errno.EACCES, "Permission denied")]

    def restore() -> None:
        if failing:
            raise failing.pop()
        (store_path / "kept.txt").write_text("again")

    store.add_restore_hook("test", restore)
    store.write([sample_trajectory("before")])
    shutil.rmtree(store_path)
    with pytest.raises(StoreWriteError, match=r"could not be written again: .*Permission denied"):
        store.write([sample_trajectory("lost")])
    assert spool.list_segments(store_path / "spool") == [], "the batch is not stored"
    store.write([sample_trajectory("after")])  # the next write runs the hook again
    assert (store_path / "kept.txt").read_text() == "again"
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["after"]
    store.close()


def test_every_writer_whose_segment_went_writes_its_settings_again_not_only_the_one_that_made_the_folder(store_path: Path) -> None:
    """Two recorders with their own patterns on one store, and the folder removed: only the writer that found the
    folder gone wrote its settings again, so the other's pattern was lost to replay (its values in plain text); and
    where another writer (a second LocalExperienceStore object, as ingest or a CLI has) made the folder again first, the
    recorder restored nothing (found by review)."""
    import json

    from ee_middleware.replay.privacy import ReplayPrivacy

    customers = _customer_agent(store_path, {"customer_id": r"CUST-\d{6}"})
    amounts = _customer_agent(store_path, {"amount": r"\d+ EUR"})
    for agent in (customers, amounts):
        agent.invoke({"messages": [("user", "who?")]})
        assert agent.flush()
    shutil.rmtree(store_path)
    other = LocalExperienceStore(store_path)  # another writer makes the folder again first
    other.write([sample_trajectory("other")])
    other.close()
    for agent in (customers, amounts):
        agent.invoke({"messages": [("user", "who?")]})
        assert agent.flush()
    patterns = json.loads((store_path / "redaction.json").read_text())["rules"]["patterns"]
    assert set(patterns) == {"customer_id", "amount"}
    store = LocalExperienceStore(store_path, create=False)
    redacted = ReplayPrivacy.of_store(store).redactor.redact(ANSWER)
    store.close()
    assert "CUST-123456" not in redacted and "40 EUR" not in redacted and "ann@example.com" not in redacted, redacted
