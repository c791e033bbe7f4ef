"""An experience sandbox whose model spec holds credentials (``experience:openai:http://user:pw@host/v1#em``) names
the model masked (what its synthetic observations and ``ee experience eval``'s report store) and still finds its
fidelity in a report, whether the report names the model masked (written since) or as given (written before).

The experience model is a real local HTTP server (:class:`~ee_middleware.testing.http.ScriptedChatServer`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.replay.sandboxes.registry import build_sandbox
from ee_middleware.testing.http import ScriptedChatServer

PREDICTION = json.dumps({"reasoning": "a listing", "observation": "notes.txt", "is_error": False})


def _report(path: Path, model: str) -> Path:
    tools = {"ls": {"token_f1": 0.9}}
    report = {
        "variants": {
            "no-retrieval": {"top_k": 0, "model": model, "tools": tools},
            "retrieval": {"top_k": 3, "model": model, "tools": tools},
        }
    }
    path.write_text(json.dumps(report))
    return path


@pytest.mark.parametrize("written", ["masked", "as given"])
def test_the_fidelity_of_a_model_with_credentials_is_found_in_a_report(tmp_path: Path, written: str) -> None:
    with ScriptedChatServer([PREDICTION], models=["em"]) as server:
        host = server.base_url.removeprefix("http://")
        model = f"openai:http://alice:s3cr3tpw@{host}#em"
        named = f"openai:http://***@{host}#em" if written == "masked" else model
        sandbox = build_sandbox(f"experience:{model}", top_k=0, min_fidelity={"*": 0.5}, fidelity=str(_report(tmp_path / "r.json", named)))
        try:
            assert sandbox.model == f"openai:http://***@{host}#em"
            assert sandbox.fidelity == {"ls": 0.9}
        finally:
            sandbox.close()


def test_a_report_of_another_model_is_refused_without_showing_credentials(tmp_path: Path) -> None:
    with ScriptedChatServer([PREDICTION], models=["em"]) as server:
        host = server.base_url.removeprefix("http://")
        report = _report(tmp_path / "r.json", "openai:http://bob:0therpw@elsewhere/v1#em")
        with pytest.raises(SandboxError, match="measured") as refused:
            build_sandbox(f"experience:openai:http://alice:s3cr3tpw@{host}#em", top_k=0, min_fidelity={"*": 0.5}, fidelity=str(report))
    assert "s3cr3tpw" not in str(refused.value) and "0therpw" not in str(refused.value)
