"""A ``redact_fn`` a store's ``redaction.json`` names runs only where the process was told to trust it (sweep S 1).
The file is data: every host that records into a store can write it, and the function it names ran on every text any
reader of the store wrote, read-only commands included. ``"custom_function": "os.system"`` made ``ee traces show`` run
the stored conversation as shell commands. A process trusts a name it was given the function of (``redact_fn=``: and
the processes it starts, through ``EE_TRUSTED_REDACT_FNS``) or one ``EE_TRUSTED_REDACT_FNS`` lists (``*``: every one).
Real ``create_react_agent`` runs, a real local store, the real CLI in this process and in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.capture.store_redaction import REDACTION_FILE, TRUSTED_REDACT_FNS_ENV, UntrustedRedactFnError
from ee_middleware.cli.app import app
from ee_middleware.replay.privacy import ReplayPrivacy
from ee_middleware.store import LocalExperienceStore
from tests.capture.test_store_redaction import CODENAME, hide_codename
from tests.conftest import USER_TASK, record_once

SCRUBBER = f"{hide_codename.__module__}.{hide_codename.__qualname__}"


@pytest.fixture
def untrusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process told to trust nothing (a recorder earlier in this test process may have trusted its own function)."""
    monkeypatch.delenv(TRUSTED_REDACT_FNS_ENV, raising=False)


def _recorded(react_graph: object, store_path: Path) -> str:
    """A store recorded with the app's redact_fn; the trajectory's id."""
    trajectory = record_once(record_experience(react_graph, app="shop", store=store_path, redact_fn=hide_codename), store_path, USER_TASK)
    return str(trajectory.id)


def _names_in_store(store_path: Path, name: str) -> None:
    saved = store_path / REDACTION_FILE
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "custom_function": name}))


@pytest.mark.usefixtures("untrusting")
def test_a_function_a_store_names_that_no_one_trusted_is_never_run(react_graph: object, store_path: Path, tmp_path: Path) -> None:
    trajectory_id = _recorded(react_graph, store_path)
    os.environ.pop(TRUSTED_REDACT_FNS_ENV, None)  # a reader that never recorded: the nightly job, a reviewer's laptop
    planted = tmp_path / "ran"
    _names_in_store(store_path, f"{__name__}.plant_marker")
    os.environ["EE_TEST_MARKER"] = str(planted)
    try:
        shown = CliRunner().invoke(app, ["traces", "show", trajectory_id, "--store", str(store_path)])
        assert shown.exit_code != 0
        assert f"redact_fn={__name__}.plant_marker" in shown.output and f"{TRUSTED_REDACT_FNS_ENV}=" in shown.output
        with pytest.raises(UntrustedRedactFnError, match="was not told to trust it"):
            ReplayPrivacy.of_store(LocalExperienceStore(store_path))
        assert not planted.exists(), "the function the store names ran"
    finally:
        os.environ.pop("EE_TEST_MARKER", None)


def plant_marker(text: str) -> str:
    """What an attacker's function would do (a file, not a shell command), if it ran."""
    Path(os.environ["EE_TEST_MARKER"]).write_text(text)
    return text


@pytest.mark.usefixtures("untrusting")
def test_a_name_the_environment_lists_is_run(react_graph: object, store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _recorded(react_graph, store_path)
    for listed in (SCRUBBER, f"other.scrub, {SCRUBBER}", "*"):
        monkeypatch.setenv(TRUSTED_REDACT_FNS_ENV, listed)
        privacy = ReplayPrivacy.of_store(LocalExperienceStore(store_path))
        assert privacy.redact_data({"plan": f"the {CODENAME} plan"}) == {"plan": "the [codename] plan"}


@pytest.mark.usefixtures("untrusting")
def test_a_recorder_given_the_function_trusts_it_here_and_in_the_processes_it_starts(react_graph: object, store_path: Path) -> None:
    trajectory_id = _recorded(react_graph, store_path)
    assert SCRUBBER in os.environ[TRUSTED_REDACT_FNS_ENV].split(",")
    shown = subprocess.run(
        [sys.executable, "-m", "ee_middleware.cli", "traces", "show", trajectory_id, "--store", str(store_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert shown.returncode == 0, shown.stderr
