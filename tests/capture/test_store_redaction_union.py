"""Every recorder of a store applies the store's recorded redaction (redaction.json) besides its own: real LangGraph
agents (``create_react_agent`` over a scripted model) record into one real local store, in thread and process mode.

Defect (privacy sweep s23, finding 1): a second recorder whose rules covered less than the store's (another service,
a worker started without the app's ``[capture]`` settings) wrote the app's patterns, off-by-default kinds and
``redact_fn`` values in plain text into the store, silently; ``ee traces show`` and the exports re-applied the rules as
they read, so the plain text on disk did not show there."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import offload
from ee_middleware.capture.store_redaction import REDACTION_FILE, read_store_redaction
from ee_middleware.errors import ConfigError
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.redaction_capture import files_text
from tests.capture.test_offload import no_child_left  # noqa: F401 - a fixture: no capture process is left behind

CODENAME = "Project Nightjar"
TICKET = "TCK-48213"
IP = "10.20.30.40"
PLAIN = (CODENAME, TICKET, IP)
TICKETS = {"ticket": r"TCK-\d{5}"}
"""The app's pattern: no built-in kind knows its ticket numbers."""


def hide_codename(text: str) -> str:
    """The app's own ``redact_fn`` (module level: importable by every recorder and later writer)."""
    return text.replace(CODENAME, "[codename]")


hide_codename_lambda = lambda text: text.replace(CODENAME, "[codename]")  # noqa: E731 - a lambda: importable by no one
"""The same ``redact_fn`` as a lambda (its name would be ``<module>.<lambda>``, which no other process can import)."""


def hide_codename_here() -> Any:
    """The same ``redact_fn`` defined inside a function (``<locals>``: importable by no one)."""

    def hide(text: str) -> str:
        return text.replace(CODENAME, "[codename]")

    return hide


APP_RULES: dict[str, Any] = {"redaction_patterns": TICKETS, "redaction_kinds": {"ip_address": True}, "redact_fn": hide_codename}
"""What the app records with: a pattern, a kind that is off by default, its own function."""


@tool
def look_up_ticket(ticket: str, customer: dict) -> str:
    """Look a support ticket up."""
    return json.dumps({"ticket": ticket, "project": CODENAME, "from": customer.get("ip"), "status": "open"})


def _agent(store: Path, **settings: Any) -> Any:
    """A real ReAct agent recorded into ``store``: one tool call with the values in nested arguments, then an answer."""
    script = [
        AIMessage(content="", tool_calls=[tool_call("look_up_ticket", ticket=TICKET, customer={"ip": IP, "project": CODENAME})]),
        AIMessage(content=f"Ticket {TICKET} of {CODENAME} from {IP} is open now."),
    ]
    graph = create_react_agent(ScriptedChatModel(script=script, model_name="scripted-expert"), [look_up_ticket])
    environment = {"customers": {"c1": {"ip": IP, "ticket": TICKET, "project": CODENAME}}}
    return record_experience(graph, app="support", store=store, environment=environment, **settings)


def _run(agent: Any) -> None:
    agent.invoke({"messages": [("user", f"{CODENAME}: what about ticket {TICKET}? I write from {IP} today.")]})
    assert agent.flush()


def _plain_in(root: Path) -> list[str]:
    text = files_text(root)
    return [value for value in PLAIN if value in text]


def _trajectories(root: Path) -> list[Any]:
    store = LocalExperienceStore(root)
    try:
        return list(store.iter_trajectories())
    finally:
        store.close()


def test_a_second_recorder_with_the_defaults_applies_the_store_s_patterns_kinds_and_redact_fn(store_path: Path) -> None:
    first = _agent(store_path, vault=True, **APP_RULES)
    _run(first)
    first.recorder.close()
    assert not _plain_in(store_path)
    second = _agent(store_path)  # another service: no [capture] settings
    _run(second)
    second.recorder.close()
    assert _plain_in(store_path) == [], "the second recorder wrote what the store's rules remove in plain text"
    runs = _trajectories(store_path)
    assert len(runs) == 2
    for trajectory in runs:
        text = json.dumps(trajectory.model_dump(mode="json"))
        assert "[codename]" in text and "[REDACTED:ticket:" in text and "[REDACTED:ip_address:" in text
        assert trajectory.environment["customers"]["c1"]["ticket"].startswith("[REDACTED:ticket:")
    # the same value has the same pseudonym in both runs (one store, one salt)
    tags = [set(re.findall(r"\[REDACTED:ticket:[0-9a-f]{8}\]", trajectory.task)) for trajectory in runs]
    assert tags[0] == tags[1] and len(tags[0]) == 1
    # what the second recorder used is kept as it was: the union, once
    settings = read_store_redaction(LocalExperienceStore(store_path))
    assert settings.rules.patterns == TICKETS and "ip_address" in settings.rules.enabled_kinds()
    assert settings.custom_functions == (f"{__name__}.hide_codename",)


def test_apps_with_different_redact_fns_each_apply_the_other_s_at_capture(store_path: Path) -> None:
    """Two apps with their own ``redact_fn`` each: the second applies both (the first started before it)."""

    first = _agent(store_path, redact_fn=hide_codename)
    _run(first)
    first.recorder.close()
    second = _agent(store_path, redaction_patterns=TICKETS, redaction_kinds={"ip_address": True}, redact_fn=hide_ip)
    _run(second)
    second.recorder.close()
    [_, later] = sorted(_trajectories(store_path), key=lambda t: t.started_at)
    assert CODENAME not in json.dumps(later.model_dump(mode="json")), "the second app applied the first app's redact_fn too"
    assert read_store_redaction(LocalExperienceStore(store_path)).custom_functions == (
        f"{__name__}.hide_codename",
        f"{__name__}.hide_ip",
    )


def hide_ip(text: str) -> str:
    """A second app's ``redact_fn``."""
    return text.replace(IP, "[ip]")


def test_a_recorded_redact_fn_this_process_cannot_import_stops_the_recorder_naming_it_and_the_fix(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose redaction.json names a lambda (an ee-middleware before the refusal at capture recorded one): a
    recorder is refused, naming it and how to recover (the file and key to edit); following that, it records."""
    monkeypatch.setenv("EE_TRUSTED_REDACT_FNS", "*")  # the names the store records are trusted (the refusal: test_store_redaction_trust.py)
    first = _agent(store_path, redact_fn=hide_codename)
    _run(first)
    first.recorder.close()
    name = f"{__name__}.<lambda>"
    saved = json.loads((store_path / REDACTION_FILE).read_text())
    (store_path / REDACTION_FILE).write_text(json.dumps({**saved, "custom_function": [f"{__name__}.hide_codename", name]}))
    before = sorted(p.relative_to(store_path) for p in store_path.rglob("*"))
    with pytest.raises(ConfigError, match=rf"redact_fn={re.escape(name)}.*cannot be imported here.*module level") as refused:
        _agent(store_path)
    assert sorted(p.relative_to(store_path) for p in store_path.rglob("*")) == before, "a refused recorder wrote nothing"
    message = str(refused.value)
    assert f'edit {store_path / REDACTION_FILE}: remove "{name}" from its "custom_function" list' in message, message
    assert "can never be imported, here or by any other process" in message and "runs already stored with it were redacted by it" in message
    # the recovery the message names: the name out of the list (the importable one stays, and is applied)
    (store_path / REDACTION_FILE).write_text(json.dumps({**saved, "custom_function": [f"{__name__}.hide_codename"]}))
    again = _agent(store_path)
    _run(again)
    again.recorder.close()
    assert CODENAME not in files_text(store_path)
    # a function whose module is not importable here is refused the same way
    (store_path / REDACTION_FILE).write_text(json.dumps({**saved, "custom_function": "no_such_module_here.scrub"}))
    with pytest.raises(ConfigError, match=r"redact_fn=no_such_module_here\.scrub.*No module named 'no_such_module_here'.*PYTHONPATH"):
        _agent(store_path, offload="process")


@pytest.mark.usefixtures("rules_read_at_every_run")
@pytest.mark.parametrize("redact_fn", [hide_codename_lambda, hide_codename_here()], ids=["lambda", "local-function"])
def test_a_writer_with_a_redact_fn_no_one_can_import_is_refused_and_the_running_recorders_go_on(store_path: Path, redact_fn: Any) -> None:
    """Review r9b, finding 1: the app records (its redact_fn importable); another writer brings a lambda. It was accepted
    and wrote its name into redaction.json, and the app's running recorder failed every later run (not stored)."""
    app = _agent(store_path, **APP_RULES)
    _run(app)
    saved = (store_path / REDACTION_FILE).read_text()
    with pytest.raises(ConfigError, match=r"redact_fn cannot be used: .*Define it at module level in an importable module"):
        _agent(store_path, redact_fn=redact_fn)
    assert (store_path / REDACTION_FILE).read_text() == saved, "the refused writer recorded nothing"
    _run(app)  # the app's next run reads the store's rules again: still its own
    stats = app.recorder.stats
    app.recorder.close()
    assert stats.runs_failed == 0 and stats.trajectories_written == 2
    assert _plain_in(store_path) == []


def test_the_capture_process_applies_the_store_s_recorded_rules_too(store_path: Path, no_child_left: None) -> None:  # noqa: F811
    first = _agent(store_path, **APP_RULES)
    _run(first)
    first.recorder.close()
    second = _agent(store_path, offload="process")
    assert second.recorder.offload is not None
    _run(second)
    stats = second.recorder.stats
    second.recorder.close()
    assert stats.offload_start_failures == 0 and stats.runs_not_offloaded == 0, "the run was recorded by the capture process"
    assert _plain_in(store_path) == []


@pytest.fixture
def rules_read_at_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorder reads its store's redaction.json again at every run (by default every few seconds at most)."""
    monkeypatch.setattr(offload, "STORE_RULES_CHECK_S", 0.0, raising=False)


@pytest.mark.usefixtures("rules_read_at_every_run")
def test_a_recorder_started_before_another_writer_widened_the_store_s_rules_applies_them_from_then_on(store_path: Path) -> None:
    early = _agent(store_path)  # the defaults, recorded first
    later = _agent(store_path, **APP_RULES)  # the app, started afterwards: redaction.json now holds its rules
    _run(early)
    early.recorder.close()
    later.recorder.close()
    assert _plain_in(store_path) == [], "the recorder started first applied the rules recorded after it started"


@pytest.mark.usefixtures("rules_read_at_every_run")
def test_a_capture_process_started_before_another_writer_widened_the_store_s_rules_applies_them_from_then_on(
    store_path: Path,
    no_child_left: None,  # noqa: F811
) -> None:
    early = _agent(store_path, offload="process")  # its capture process reads the store's settings as it starts
    assert early.recorder.offload is not None and early.recorder.offload.ready()  # (started: it has read them)
    later = _agent(store_path, **APP_RULES)
    _run(early)
    stats = early.recorder.stats
    early.recorder.close()
    later.recorder.close()
    assert stats.runs_not_offloaded == 0 and stats.offload_start_failures == 0, "the capture process recorded the run"
    assert _plain_in(store_path) == []


@pytest.mark.usefixtures("rules_read_at_every_run")
def test_a_redact_fn_recorded_after_a_recorder_started_that_it_cannot_import_fails_its_runs_not_stores_them_plain(
    store_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EE_TRUSTED_REDACT_FNS", "*")  # the names the store records are trusted (the refusal: test_store_redaction_trust.py)
    monkeypatch.setenv("EE_CAPTURE_STRICT", "0")  # as in production: a run's failure is logged and counted, not raised
    early = _agent(store_path)
    saved = json.loads((store_path / REDACTION_FILE).read_text())
    (store_path / REDACTION_FILE).write_text(json.dumps({**saved, "custom_function": "no_such_module_here.scrub"}))
    with caplog.at_level(logging.ERROR, logger="ee_middleware.capture"):
        early.invoke({"messages": [("user", f"{CODENAME}: what about ticket {TICKET}?")]})
        assert early.flush() is False
    stats = early.recorder.stats
    early.recorder.close()
    assert stats.runs_failed == 1 and stats.trajectories_written == 0
    assert "redact_fn=no_such_module_here.scrub" in caplog.text
    assert f'edit {store_path / REDACTION_FILE}: remove "no_such_module_here.scrub" from its "custom_function" list' in caplog.text
    assert _trajectories(store_path) == [] and CODENAME not in files_text(store_path)


@pytest.mark.usefixtures("rules_read_at_every_run")
def test_the_first_run_after_the_store_s_rules_are_read_again_stores_its_thread_id_under_them(store_path: Path) -> None:
    """Review r9b, finding 4: the re-read of redaction.json was queued on the finisher thread while the run encoded its
    thread id (the conversation id) at once, with the rules it had: the task was redacted by a pattern another writer
    had added, the thread id beside it was stored in plain text. The finisher is kept busy here (a real job that waits)
    so that a queued re-read cannot run before the run starts, as it could not under load."""
    early = _agent(store_path)  # the defaults
    _run(early)
    later = _agent(store_path, redaction_patterns={"token": r"tok\d-\d{6}"})  # another writer adds a pattern
    later.recorder.close()
    gate = threading.Event()
    early.recorder.finisher.submit(lambda: gate.wait(10))
    secret = "tok3-884202"
    early.invoke({"messages": [("user", f"ref {secret}")]}, {"configurable": {"thread_id": f"thr-{secret}"}})
    gate.set()
    assert early.flush()
    early.recorder.close()
    [run] = [t for t in _trajectories(store_path) if "ref " in (t.task or "")]
    assert secret not in (run.task or "") and "[REDACTED:token:" in run.task
    assert secret not in (run.thread_id or ""), f"the thread id was stored under the old rules: {run.thread_id}"
    assert run.thread_id.startswith("thr-[REDACTED:token:")
    assert secret not in files_text(store_path)
