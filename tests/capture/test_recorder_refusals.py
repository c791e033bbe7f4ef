"""A recorder whose settings are refused writes nothing first: no vault, no salt, no redaction.json, and no store
folder where the refusal does not depend on the store (real LangGraph agents, the real local store).

Defect (privacy sweep s23, finding 11c): ``offload="process"`` with an ``approve_if`` that cannot be pickled was refused
only after the recorder had made the store's salt and an empty ``<store>.vault`` (its header alone).

Defect (review r9b, finding 1): a recorder whose own ``redact_fn`` no other process can import by its name (a lambda, a
function defined in another function or in a script run as ``__main__``) was accepted and wrote that name into
``redaction.json``; from then on every other recorder of the store refused to start (the production app could not
restart) and the running ones failed every run. Such a ``redact_fn`` is now refused at the start of the recorder that
brings it, before anything is written."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
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


def keep_text(text: str) -> str:
    """An app's own ``redact_fn`` (module level in an importable module: every other process imports it by its name)."""
    return text


def test_a_recorder_refused_for_a_store_s_redact_fn_it_cannot_import_leaves_no_vault_behind(
    react_graph: Any, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose redaction.json names a lambda (recorded by an ee-middleware that still accepted one): a recorder is
    refused before it makes a vault, and the error says how to recover (the file and the key to edit)."""
    monkeypatch.setenv("EE_TRUSTED_REDACT_FNS", "*")  # the names the store records are trusted (the refusal: test_store_redaction_trust.py)
    first = record_experience(react_graph, app="shop", store=store_path, redact_fn=keep_text)
    first.invoke(USER_TASK)
    assert first.flush()
    first.recorder.close()
    recorded = json.loads((store_path / REDACTION_FILE).read_text())
    (store_path / REDACTION_FILE).write_text(json.dumps({**recorded, "custom_function": [f"{__name__}.keep_text", "__main__.<lambda>"]}))
    settings = (store_path / REDACTION_FILE).read_text()
    with pytest.raises(ConfigError, match=r"<lambda>.*cannot be imported here") as refused:
        record_experience(react_graph, app="shop", store=store_path, vault=True)
    assert _made(store_path) == ["redaction.key", REDACTION_FILE]  # the first recorder's, as they were
    assert json.loads((store_path / REDACTION_FILE).read_text()) == json.loads(settings)
    message = str(refused.value)
    assert f'{store_path / REDACTION_FILE}: remove "__main__.<lambda>" from its "custom_function" list' in message, message
    assert "runs already stored with it were redacted by it" in message, message


def _local_function() -> Any:
    def scrub_locally(text: str) -> str:
        return text

    return scrub_locally


class _Scrubber:
    def __call__(self, text: str) -> str:
        return text


@pytest.mark.parametrize(
    ("redact_fn", "why"),
    [
        pytest.param(lambda text: text, r"is a lambda", id="lambda"),
        pytest.param(_local_function(), r"scrub_locally is defined inside another function", id="local-function"),
        pytest.param(functools.partial(keep_text), r"has no 'module\.function' name", id="partial"),
        pytest.param(_Scrubber(), r"has no 'module\.function' name", id="callable-object"),
    ],
)
@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_redact_fn_no_other_process_can_import_is_refused_before_anything_is_written(
    react_graph: Any, store_path: Path, redact_fn: Any, why: str, offload: str
) -> None:
    with pytest.raises(
        ConfigError, match=rf"redact_fn cannot be used: .*{why}.*Define it at module level in an importable module"
    ) as refused:
        record_experience(react_graph, app="shop", store=store_path, vault=True, offload=offload, redact_fn=redact_fn)
    assert "replay, dataset builds, exports, ingest and every other recorder of the store import it by" in str(refused.value)
    assert _made(store_path) == []
    assert not store_path.exists()


SCRIPT = """
import sys

from langchain_core.messages import AIMessage
from langgraph.prebuilt import create_react_agent

from ee_middleware import record_experience
from ee_middleware.errors import ConfigError
from ee_middleware.testing import ScriptedChatModel


def mask_london(text):
    return text.replace("London", "[CITY]")


graph = create_react_agent(ScriptedChatModel(script=[AIMessage(content="ok")], model_name="m"), [])
try:
    agent = record_experience(graph, app="dev-script", store=sys.argv[1], redact_fn=mask_london)
except ConfigError as exc:
    print("REFUSED", exc)
    sys.exit(3)
agent.invoke({"messages": [("user", "a developer's one-off run, London")]})
print("RECORDED", agent.flush())
"""


def test_a_redact_fn_of_a_script_run_as_main_is_refused_and_the_store_s_other_recorders_keep_working(
    react_graph: Any, store_path: Path, tmp_path: Path
) -> None:
    """The review's production scenario: the app records with its importable redact_fn; a developer's one-off script
    (run as ``__main__``, a real process) records into the same store with a function defined in the script. It is
    refused, writing nothing; the app still starts and records (before: ``ConfigError ... __main__.mask_london``)."""
    app = record_experience(react_graph, app="shop", store=store_path, redact_fn=keep_text)
    app.invoke(USER_TASK)
    assert app.flush()
    app.recorder.close()
    settings = (store_path / REDACTION_FILE).read_text()
    script = tmp_path / "one_off.py"
    script.write_text(textwrap.dedent(SCRIPT))
    ran = subprocess.run([sys.executable, str(script), str(store_path)], capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert "__main__.mask_london is defined in the script run as __main__" in ran.stdout, ran.stdout
    assert "Define it at module level in an importable module" in ran.stdout
    assert (store_path / REDACTION_FILE).read_text() == settings, "the refused script wrote nothing into redaction.json"
    again = record_experience(react_graph, app="shop", store=store_path, redact_fn=keep_text)  # the app restarts
    again.invoke(USER_TASK)
    assert again.flush()
    assert again.recorder.stats.runs_failed == 0
    again.recorder.close()
