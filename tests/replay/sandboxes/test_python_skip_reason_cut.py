"""A world builder that raises: the skip reason quotes the environment, cut to whole values (sweep s23, finding 4b).

With the vault, ``reset`` gets the restored, real environment; the reason quoting it is redacted with the store's rules
only later (the runner's :meth:`ReplayPrivacy.redact_data`), and the sandbox has no redactor of its own. Was: the JSON
text was cut at 300 characters, so the value the cut fell in was no longer a value the rules take
(``"(415) 555-01...``: 8 of a phone number's 10 digits, printed and stored). Now the cut falls before that value (a
string or a number is quoted whole or not at all) and the text says so; what is quoted whole the runner redacts."""

from __future__ import annotations

from typing import Any

import pytest

from ee_middleware.capture.redaction import Redactor
from ee_middleware.errors import EnvironmentUnavailableError
from ee_middleware.replay.sandboxes.python import PythonSandbox

PHONE = "(415) 555-0134"
CARD = 4111111111111111


def build(environment: dict[str, Any] | None) -> Any:
    raise RuntimeError("cannot open the customer database")


def _reason(environment: dict[str, Any]) -> str:
    with pytest.raises(EnvironmentUnavailableError) as raised:
        PythonSandbox(build, tools={}).reset(environment)
    return str(raised.value)


def _partials(text: str, value: str) -> list[str]:
    """The proper beginnings of ``value`` (two characters or more) that ``text`` holds where ``value`` is not whole."""
    whole = text.replace(value, "")
    return [value[:k] for k in range(2, len(value)) if value[:k] in whole]


@pytest.mark.parametrize("pad", range(170, 300))
def test_the_value_the_cut_falls_in_is_left_out_whole(pad: int) -> None:
    environment = {"notes": "n" * pad, "customers": {"CU-1001": {"phones": [PHONE], "card": CARD, "email": "jane.doe@gmail.com"}}}
    reason = _reason(environment)
    assert "could not rebuild the world from the environment" in reason and "RuntimeError: cannot open" in reason
    for value in (PHONE, str(CARD), "jane.doe@gmail.com"):
        assert not [p for p in _partials(reason, value) if len(p) > 2], reason
    shown = reason.split("the environment ", 1)[1].split(": RuntimeError", 1)[0]
    quoted, _, note = shown.partition("... (cut at 300 characters, before a value, never inside one)")
    assert len(quoted) <= 300, note
    # what is quoted is redacted whole by the store's rules, as the runner does before printing and storing it
    redacted = Redactor(salt=b"s").redact_value(reason)
    assert "555" not in redacted and "4111" not in redacted and "jane" not in redacted, redacted


def test_a_short_environment_is_quoted_whole() -> None:
    reason = _reason({"db": "snapshots/run-7.sqlite", "seed": 3})
    assert 'the environment {"db": "snapshots/run-7.sqlite", "seed": 3}: RuntimeError' in reason
