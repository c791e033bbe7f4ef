"""``ee traces ingest`` into a store recorded with a redaction vault adds the pseudonyms it makes to that vault, as capture
does (sweep s23 finding 10): before, ingest redacted with the store's rules and salt but wrote no vault entry, so replay
of an ingested run could never restore its redacted arguments. The stores here are made by the real recorder with
``vault=True`` (its ``redaction.json``, salt and ``<store>.vault``), the spans are OTLP GenAI spans, and what replay
restores is read with replay's own :class:`~ee_middleware.replay.privacy.ReplayPrivacy`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.recorder import Recorder
from ee_middleware.capture.vault import KEY_ENV, new_key
from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.ingest import ingest_files
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import GENAI_FILE, _request

MAIL = "zed.new@example.org"


@pytest.fixture(autouse=True)
def _no_vault_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EE_VAULT", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)


def _captured_store(tmp_path: Path) -> Path:
    """A store as capture leaves it with ``vault=True``: redaction.json naming ``<store>.vault``, the salt, the vault."""
    path = tmp_path / "experience"
    Recorder(CaptureConfig(store=str(path), vault=True)).close()
    assert json.loads((path / "redaction.json").read_text())["vault"] == str(tmp_path / "experience.vault")
    return path


def _spans(tmp_path: Path) -> Path:
    """The GenAI run of ``otlp_builders`` with an e-mail address in its task and in its tool call's arguments."""
    text = json.dumps(_request(GENAI_FILE))
    text = text.replace('\\"invoice\\": 7', f'\\"invoice\\": 7, \\"email\\": \\"{MAIL}\\"').replace(
        "Refund invoice 7", f"Refund invoice 7 of {MAIL}"
    )
    path = tmp_path / "spans.jsonl"
    path.write_text(text + "\n")
    return path


def _replayed_arguments(store_path: Path) -> tuple[dict[str, Any], list[Any]]:
    """The stored run's tool call arguments as replay gives them to the sandbox, and what it could not restore."""
    store = LocalExperienceStore(store_path)
    [trajectory] = list(store.iter_trajectories())
    call = trajectory.steps[0].action.tool_call
    assert call is not None and call.arguments["email"].startswith("[REDACTED:email:"), call
    assert MAIL not in trajectory.model_dump_json(), "the store keeps the pseudonym"
    restored, missing = ReplayPrivacy.of_store(store).restore(call)
    return restored.arguments, missing


def test_ingest_adds_its_pseudonyms_to_the_stores_vault_so_replay_restores_them(tmp_path: Path) -> None:
    store_path = _captured_store(tmp_path)
    report = ingest_files([_spans(tmp_path)], str(store_path))
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    arguments, missing = _replayed_arguments(store_path)
    assert (arguments, missing) == ({"invoice": 7, "email": MAIL}, [])


def test_an_encrypted_vault_is_fed_with_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, new_key())
    store_path = _captured_store(tmp_path)
    report = ingest_files([_spans(tmp_path)], str(store_path))
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    assert MAIL not in (tmp_path / "experience.vault").read_text(), "encrypted"
    assert _replayed_arguments(store_path) == ({"invoice": 7, "email": MAIL}, [])


def test_an_encrypted_vault_without_the_key_stops_ingest_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, new_key())
    store_path = _captured_store(tmp_path)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=f"encrypted: set {KEY_ENV}.*ingest adds each pseudonym.*EE_VAULT=off"):
        ingest_files([_spans(tmp_path)], str(store_path))
    assert list(LocalExperienceStore(store_path).iter_trajectories()) == []
    result = CliRunner().invoke(app, ["traces", "ingest", str(_spans(tmp_path)), "--store", str(store_path)], env={"COLUMNS": "500"})
    assert result.exit_code != 0 and f"set {KEY_ENV}" in result.output, result.output


def test_with_ee_vault_off_ingest_leaves_the_vault_alone_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As replay with ``EE_VAULT=off`` restores from no vault, ingest then adds to none, and notes what replay loses; an
    ingest of the same spans later (the run found stored) still adds them."""
    store_path = _captured_store(tmp_path)
    vault = tmp_path / "experience.vault"
    before = vault.read_text()
    monkeypatch.setenv("EE_VAULT", "off")
    report = ingest_files([_spans(tmp_path)], str(store_path))
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    assert vault.read_text() == before
    [note] = [n for n in report.notes if "EE_VAULT=off" in n]
    assert f"1 pseudonym(s) this ingest made were not added to the store's redaction vault {vault}" in note
    monkeypatch.delenv("EE_VAULT")
    arguments, missing = _replayed_arguments(store_path)
    assert arguments["email"].startswith("[REDACTED:email:") and len(missing) == 1
    again = ingest_files([_spans(tmp_path)], str(store_path))
    assert (len(again.already_stored), again.notes) == (1, [])
    assert _replayed_arguments(store_path) == ({"invoice": 7, "email": MAIL}, [])


def test_ee_vault_naming_another_file_is_the_one_fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As replay reads the vault ``EE_VAULT=PATH`` names instead of the recorded one, ingest adds to that one."""
    store_path = _captured_store(tmp_path)
    recorded = (tmp_path / "experience.vault").read_text()
    moved = tmp_path / "elsewhere" / "moved.vault"
    moved.parent.mkdir()
    shutil.copy2(tmp_path / "experience.vault", moved)  # the store's vault, where it is on this machine
    monkeypatch.setenv("EE_VAULT", str(moved))
    ingest_files([_spans(tmp_path)], str(store_path))
    assert (tmp_path / "experience.vault").read_text() == recorded and MAIL in moved.read_text()
    assert _replayed_arguments(store_path) == ({"invoice": 7, "email": MAIL}, [])


def test_a_store_without_a_vault_gets_none(tmp_path: Path) -> None:
    store_path = tmp_path / "experience"
    Recorder(CaptureConfig(store=str(store_path))).close()
    ingest_files([_spans(tmp_path)], str(store_path))
    assert not (tmp_path / "experience.vault").exists()
    arguments, missing = _replayed_arguments(store_path)
    assert arguments["email"].startswith("[REDACTED:email:") and len(missing) == 1


def _missing_vault_note(report: Any, vault: Path) -> str:
    [note] = [n for n in report.notes if "is missing" in n]
    assert f"The redaction vault {vault}" in note and "1 pseudonym(s) this ingest made" in note, note
    assert "EE_VAULT=PATH" in note and "plain text" in note, note
    return note


def test_a_missing_vault_of_an_encrypted_store_is_not_made_again_in_plain_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """r9b finding 2: a store recorded with an encrypted vault, copied without it (or whose vault moved), ingested with no
    key: before, ingest created a new plaintext ``<store>.vault`` holding the ingested runs' real values. Now it never
    creates one (only capture does): the runs are ingested, and the report and stderr say what was left out and how to
    point at the vault (as replay goes on without a missing vault)."""
    monkeypatch.setenv(KEY_ENV, new_key())
    store_path = _captured_store(tmp_path)
    vault = tmp_path / "experience.vault"
    (tmp_path / "away").mkdir()
    shutil.move(vault, tmp_path / "away" / "experience.vault")  # the vault stays on the recording machine
    monkeypatch.delenv(KEY_ENV)
    report = ingest_files([_spans(tmp_path)], str(store_path))
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    assert not vault.exists(), "no vault made: it would hold the values in plain text, apart from the store's own"
    _missing_vault_note(report, vault)
    arguments, missing = _replayed_arguments(store_path)
    assert arguments["email"].startswith("[REDACTED:email:") and len(missing) == 1


def test_a_vault_path_from_another_machine_makes_no_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """r9b finding 2: ``redaction.json`` names the recording machine's absolute path; ingest made its folders and a
    plaintext vault there. ``ee traces ingest`` says so on stderr and in its report, and exits 0."""
    store_path = _captured_store(tmp_path)
    elsewhere = tmp_path / "recmachine" / "data" / "experience.vault"
    settings = json.loads((store_path / "redaction.json").read_text())
    (store_path / "redaction.json").write_text(json.dumps({**settings, "vault": str(elsewhere)}))
    result = subprocess.run(
        [sys.executable, "-m", "ee_middleware.cli", "traces", "ingest", str(_spans(tmp_path)), "--store", str(store_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "500"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "recmachine").exists()
    assert f"The redaction vault {elsewhere}" in result.stderr and "EE_VAULT=PATH" in result.stderr, result.stderr
    assert "is missing" in result.stdout, result.stdout  # the report's note
    assert len(list(LocalExperienceStore(store_path).iter_trajectories())) == 1


def test_ee_vault_naming_a_missing_file_makes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only capture creates a vault: a mistyped ``EE_VAULT=PATH`` makes no file there either."""
    store_path = _captured_store(tmp_path)
    wrong = tmp_path / "typo" / "experience.vault"
    monkeypatch.setenv("EE_VAULT", str(wrong))
    report = ingest_files([_spans(tmp_path)], str(store_path))
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    assert not (tmp_path / "typo").exists()
    _missing_vault_note(report, wrong)
