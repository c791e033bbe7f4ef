"""What a failed ``ee ... --json`` prints on stdout: one JSON object, ``{"error": {"type", "message", "exit_code"}}``."""

from __future__ import annotations

import json
from typing import Any


def json_failure(result: Any, kind: str | None = None) -> dict[str, Any]:
    """The error object of a failed ``--json`` command (a ``CliRunner`` result), checked: stdout holds it alone, its
    ``exit_code`` is the command's, and its message is the one the stderr line says (``kind``: its ``type``, if given)."""
    answer = json.loads(result.stdout)
    assert list(answer) == ["error"] and list(answer["error"]) == ["type", "message", "exit_code"], answer
    error = answer["error"]
    assert error["exit_code"] == result.exit_code != 0, (error, result.exit_code)
    if error["type"] != "CommandFailed":  # a command that wrote its error lines itself: they are on stderr
        assert error["message"] in result.stderr, (error["message"], result.stderr)
    if kind is not None:
        assert error["type"] == kind, error
    return error
