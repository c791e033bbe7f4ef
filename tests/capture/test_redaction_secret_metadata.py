"""A secret's metadata (S14 D3): a number, a boolean, null or an ISO date/time under a name that is a secret word
followed by a metadata word (``password_version``, ``password_changed_at``, ``secret_rotation_days``) is kept, in
values, in JSON text and in ``key=value`` lines; any other value under such a name, and every value under a name that
holds a secret (``password``, ``password_hash``, ``secret_key``, ``pin``), is still replaced."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.redaction import RedactionRules, Redactor

KEPT: list[tuple[str, Any]] = [
    ("password_version", 3),
    ("password_length", 12),
    ("password_min_length", 8),
    ("password_changed_at", "2026-01-01"),
    ("passwordChangedAt", "2026-01-01T08:30:00Z"),
    ("password_last_changed", "2026-01-01T08:30:00.123+02:00"),
    ("pwdLastSet", 133497000000000000),
    ("secret_rotation_days", 90),
    ("password_expires_at", "2026-06-30 23:59:59"),
    ("password_max_age_days", 90),
    ("password_expired", True),
    ("password_expires_at", None),
    ("client_secret_expires_at", 0),
    ("secret_key_rotated_at", "2026-02-01"),
    ("credentials_age", 1.5),
    ("password_failed_attempts", 2),
    ("password_policy_version", 4),
]
"""(name, value) pairs that are a secret's metadata: kept."""

REPLACED: list[tuple[str, Any]] = [
    ("password_version", "v3-hunter2"),  # a string that is no date: may be the secret, so replaced
    ("password_changed_at", "yesterday, after hunter2 leaked"),
    ("password_changed_at", "20260101"),
    ("password_policy", "min 8 chars"),
    ("password_last", 482193),  # "last" alone: the last password
    ("password_set", 482193),
    ("password_hint", 1984),
    ("password_hash", 123456789),
    ("password_history_count", 3),  # (a history holds passwords: kept strict)
    ("secret_version_id", 7),
    ("password", 123456),
    ("password", "2026-01-01"),
    ("db_password", 424242),
    ("secret_key", 1234567),
    ("client_secret", 987654),
    ("api_key", 31337),
    ("pin", 4821),
    ("token", 5501),
    ("password_at", 1234),
]
"""(name, value) pairs that are (or may be) a secret: replaced."""


def _redactor() -> Redactor:
    return Redactor(RedactionRules(), salt=b"x" * 32)


@pytest.mark.parametrize(("name", "value"), KEPT)
def test_a_secrets_metadata_is_kept_in_values_json_text_and_lines(name: str, value: Any) -> None:
    redactor = _redactor()
    data = {"user_id": "u101", name: value}
    assert redactor.redact_value(data) == data
    assert json.loads(redactor.redact_json(data)) == data
    assert json.loads(redactor.redact_text(json.dumps(data))) == data
    assert json.loads(redactor.redact_text(json.dumps({"result": json.dumps(data)}))) == {"result": json.dumps(data)}
    if value is not None and not isinstance(value, bool):
        line = f"{name}={value}" if not isinstance(value, str) or " " not in value else f"{name}='{value}'"
        assert redactor.redact_text(line) == line


@pytest.mark.parametrize(("name", "value"), REPLACED)
def test_any_other_value_under_a_secret_name_is_still_replaced(name: str, value: Any) -> None:
    redactor = _redactor()
    data = {"user_id": "u101", name: value}
    redacted = redactor.redact_value(data)
    assert redacted["user_id"] == "u101"
    assert isinstance(redacted[name], str) and redacted[name].startswith("[REDACTED:secret:"), redacted
    assert json.loads(redactor.redact_json(data)) == redacted
    assert json.loads(redactor.redact_text(json.dumps(data))) == redacted
    written = f'"{value}"' if isinstance(value, str) else str(value)  # (a bare 20260101 is a number, as in JSON)
    line = redactor.redact_text(f"{name}={written}")
    assert re.fullmatch(rf'{name}="?\[REDACTED:secret:[0-9a-f]{{8}}\]"?', line), line


def test_a_number_under_a_metadata_name_is_still_ordinary_data_to_the_other_rules() -> None:
    """Kept as ordinary data, not exempt from every rule: a card number is still a card number."""
    redacted = _redactor().redact_value({"password_version": 4111111111111111})
    assert redacted["password_version"].startswith("[REDACTED:credit_card:")


def test_a_schema_property_about_a_secret_keeps_its_numbers() -> None:
    schema = {"type": "object", "properties": {"password": {"type": "string", "example": "hunter2"}, "password_length": 12}}
    redacted = _redactor().redact_value({"api_key": schema})
    assert redacted["api_key"]["properties"]["password_length"] == 12
    assert redacted["api_key"]["properties"]["password"]["example"].startswith("[REDACTED:secret:")


def test_a_captured_get_user_result_keeps_the_password_version_in_the_store(tmp_path) -> None:
    """The user's case, through real capture into a real store: a directory tool's row keeps its version counter and
    its dates (what the IWM target is built from) and still loses the password hash."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool
    def get_user(user_id: str) -> dict:
        """Look a user up."""
        return {"user_id": user_id, "password_version": 3, "password_changed_at": "2026-01-01", "password_hash": "$2b$12$abcdefghijkl"}

    script = [AIMessage(content="", tool_calls=[tool_call("get_user", user_id="u101")]), AIMessage(content="done")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [get_user]), app="helpdesk", store=tmp_path / "store")
    agent.invoke({"messages": [("user", "look up u101")]})
    agent.flush()
    [trajectory] = list(LocalExperienceStore(tmp_path / "store").iter_trajectories())
    row = json.loads(trajectory.steps[0].observation.content)
    assert row["password_version"] == 3 and row["password_changed_at"] == "2026-01-01", row
    assert row["password_hash"].startswith("[REDACTED:secret:"), row
