"""A recorder whose settings are refused writes nothing first: no vault, no salt, no redaction.json, and no store
folder where the refusal does not depend on the store (real LangGraph agents, the real local store).

Defect (privacy sweep s23, finding 11c): ``offload="process"`` with an ``approve_if`` that cannot be pickled was refused
only after the recorder had made the store's salt and an empty ``<store>.vault`` (its header alone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware import record_experience
from ee_middleware.capture.store_redaction import REDACTION_FILE
from ee_middleware.errors import ConfigError
from tests.conftest import USER_TASK


def _made(store_path: Path) -> list[str]:
    """What a recorder made of the store's redaction: its vault, salt and settings (the names that exist)."""
    paths = [store_path.with_name(store_path.name + ".vault"), store_path / "redaction.key", store_path / REDACTION_FILE]
    return [path.name for path in paths if path.exists()]


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"offload": "process", "approve_if": lambda trajectory: True}, id="unpicklable-approve_if"),
        pytest.param({"offload": "process", "redact_fn": lambda text: text}, id="unpicklable-redact_fn"),
        pytest.param({"tracer_provider": object()}, id="not-a-tracer-provider"),
    ],
)
def test_a_refused_recorder_leaves_no_vault_salt_or_settings_behind(react_graph: Any, store_path: Path, settings: dict) -> None:
    with pytest.raises(ConfigError):
        record_experience(react_graph, app="shop", store=store_path, vault=True, **settings)
    assert _made(store_path) == []
    assert not store_path.exists(), "settings that do not depend on the store are refused before its folder is made"


def test_a_recorder_refused_for_a_store_s_redact_fn_it_cannot_import_leaves_no_vault_behind(react_graph: Any, store_path: Path) -> None:
    first = record_experience(react_graph, app="shop", store=store_path, redact_fn=lambda text: text)
    first.invoke(USER_TASK)
    assert first.flush()
    first.recorder.close()
    settings = (store_path / REDACTION_FILE).read_text()
    with pytest.raises(ConfigError, match=r"<lambda>.*cannot be imported here"):
        record_experience(react_graph, app="shop", store=store_path, vault=True)
    assert _made(store_path) == ["redaction.key", REDACTION_FILE]  # the first recorder's, as they were
    assert json.loads((store_path / REDACTION_FILE).read_text()) == json.loads(settings)
