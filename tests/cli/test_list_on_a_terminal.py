"""``ee traces list`` and ``ee replay list`` on a terminal without ``--limit`` draw at most ``TERMINAL_ROWS`` rows and say
so (sweep of a store at 100k trajectories, M3): a table of 100k trajectories appeared after 83 s, 20 MB at once. A pipe,
a file and ``--json`` still get every row, as scripts expect; ``--limit`` still decides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli import common
from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory


@pytest.fixture
def store(tmp_path: Path) -> Path:
    opened = LocalExperienceStore(tmp_path / "store")
    opened.write([sample_trajectory(f"trajectory-{i}") for i in range(5)])
    opened.write_replay(sample_replay_record("trajectory-0"), [sample_rollout(f"rollout-{b}", "trajectory-0", 0, b) for b in range(5)])
    opened.close()
    return tmp_path / "store"


def _on_a_terminal(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    monkeypatch.setattr(common, "TERMINAL_ROWS", rows)
    monkeypatch.setattr(common, "_stdout_is_terminal", lambda: True)


@pytest.mark.parametrize(("command", "what", "which"), [("traces", "trajectories", "newest"), ("replay", "rollouts", "first")])
def test_a_terminal_gets_at_most_the_cap_and_the_line_saying_so(
    store: Path, monkeypatch: pytest.MonkeyPatch, command: str, what: str, which: str
) -> None:
    _on_a_terminal(monkeypatch, 3)
    result = CliRunner().invoke(app, [command, "list", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert f"the {which} 3 of 5 {what} in" in result.stdout, result.stdout  # (said on stdout too: stderr may go elsewhere)
    assert f"showing the {which} 3 of 5 {what}" in result.stderr and "--limit N" in result.stderr, result.stderr


@pytest.mark.parametrize(("command", "what"), [("traces", "trajectories"), ("replay", "rollouts")])
def test_limit_and_json_and_a_pipe_still_get_what_they_ask(store: Path, monkeypatch: pytest.MonkeyPatch, command: str, what: str) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # (rich takes a pipe for a terminal then: the listing must not)
    monkeypatch.setattr(common, "TERMINAL_ROWS", 3)
    piped = CliRunner().invoke(app, [command, "list", "--store", str(store)])  # (CliRunner's output is no terminal)
    assert f"5 {what} in" in piped.stdout and "showing the" not in piped.stderr, piped.output
    _on_a_terminal(monkeypatch, 3)
    assert len(json.loads(CliRunner().invoke(app, [command, "list", "--store", str(store), "--json"]).stdout)) == 5
    limited = CliRunner().invoke(app, [command, "list", "--store", str(store), "--limit", "4"])
    assert f"4 {what} in" in limited.stdout and "showing the" not in limited.stderr, limited.output
