"""Stores recorded before JSON numbers were typed: a number under a secret name keeps the pseudonym it had then (that of
its digits as text), so replaying such a store compares its unchanged tool results equal; and the vault's header says
which format version it is, a newer one refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.vault import VERSION, Vault
from ee_middleware.errors import ConfigError
from ee_middleware.records import Observation
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.replay.runner import _same_observation

# (tool result, what a store recorded for it before 54775bd: default rules, salt b"s" * 32)
RECORDED = [
    (json.dumps({"user": "a-7", "password": 123456}), '{"user": "a-7", "password": "[REDACTED:secret:d8780f93]"}'),
    (json.dumps({"account": "A-7", "api_key": 80412377}), '{"account": "A-7", "api_key": "[REDACTED:secret:5febc49c]"}'),
    (json.dumps({"session": {"secret": 42}}), '{"session": {"secret": "[REDACTED:secret:c0710264]"}}'),
]


@pytest.mark.parametrize(("result", "recorded"), RECORDED)
def test_replaying_an_older_store_finds_its_unchanged_tool_results_the_same(result: str, recorded: str) -> None:
    privacy = ReplayPrivacy(json.dumps(RedactionRules().to_dict(), sort_keys=True), (b"s" * 32).hex(), None)
    replayed = privacy.redact_observation(Observation(content=result))
    assert replayed.content == recorded
    assert _same_observation(Observation(content=recorded), replayed, privacy)


def test_a_new_vault_says_its_version_and_a_newer_one_is_refused_clearly(tmp_path: Path) -> None:
    Vault(tmp_path / "v.vault", create=True)
    assert json.loads((tmp_path / "v.vault").read_text().splitlines()[0])["version"] == VERSION == 2
    newer = tmp_path / "newer.vault"
    newer.write_text(json.dumps({"format": "ee-redaction-vault", "version": VERSION + 1, "encryption": None}) + "\n")
    newer.chmod(0o600)
    with pytest.raises(ConfigError, match="newer than this ee-middleware reads"):
        Vault(newer)
