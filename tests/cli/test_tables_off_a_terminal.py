"""Tables printed off a terminal (a nightly job's log, CI, a pipe) keep their cells whole. Before, rich rendered at 80
columns there and squeezed a wide table's columns until adapter names, hashes and dates ended in "…": the log held
no name a later command could take. Off a terminal the console is now 200 columns wide unless ``COLUMNS`` says
otherwise. The REAL CLI (CliRunner: not a terminal) listing a REAL local registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware._console import OFF_TERMINAL_WIDTH, SECTION_WIDTH, make_console
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from tests.cli.test_adapters_show_event_times import _adapter


@pytest.fixture(autouse=True)
def _off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


REASON = "bfcl multi_turn_base fell 0.031 below the live adapter's score at the gate"


def _registry(tmp_path: Path) -> Path:
    registry = LocalAdapterRegistry(tmp_path / "registry")
    registry.register(_adapter(tmp_path / "a"), "warehouse-inventory-agent", by="alice@example.com")
    failed = registry.register(_adapter(tmp_path / "b"), "warehouse-inventory-agent", by="bob@example.com")
    registry.mark_failed(failed.name, REASON)
    registry.register(_adapter(tmp_path / "c"), "booking-agent", by="carol@example.com")
    return registry.root


def test_adapters_list_off_a_terminal_prints_a_row_a_line_with_its_cells_whole(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    listed = json.loads(CliRunner().invoke(app, ["adapters", "list", "-r", str(root), "--json"]).stdout)
    table = CliRunner().invoke(app, ["adapters", "list", "-r", str(root)])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    for row in listed:
        line = next((line for line in lines if row["name"] in line), "")
        for cell in (row["app"], row["created_by"], row["reason"] or ""):
            assert cell in line, f"{cell!r} is not on {row['name']}'s line:\n{table.stdout}"


def test_columns_still_decides_off_a_terminal(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    narrow = CliRunner().invoke(app, ["adapters", "list", "-r", str(root)], env={"COLUMNS": "60"})
    assert narrow.exit_code == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 60, narrow.stdout


def test_a_console_off_a_terminal_is_wide_unless_columns_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_console().width == OFF_TERMINAL_WIDTH and make_console(stderr=True).width == OFF_TERMINAL_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console().width == 100


def test_rules_and_panels_off_a_terminal_keep_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """A section rule or a panel fills the width it is given: at 200 columns every ee improve stage's rule was a line
    of 200 characters in the job's log. They keep the 80 columns they had; tables take what their cells need."""
    from rich.panel import Panel

    out = make_console()
    out.rule("ee improve [1/8] select")
    out.print(Panel("a trajectory's header", title="trajectory"), width=out.section_width)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line) == SECTION_WIDTH for line in lines), [len(line) for line in lines]


def test_ee_traces_show_off_a_terminal_draws_its_panel_at_80_columns(tmp_path: Path) -> None:
    from ee_middleware.bfcl.experts import record_experts

    store = tmp_path / "store"
    record_experts(store, "multi_turn_base", limit=1)
    listed = json.loads(CliRunner().invoke(app, ["traces", "list", "--store", str(store), "--status", "all", "--json"]).stdout)
    shown = CliRunner().invoke(app, ["traces", "show", listed[0]["id"], "--store", str(store)])
    assert shown.exit_code == 0, shown.output
    panel = [line for line in shown.stdout.splitlines() if line.startswith(("╭", "╰"))]
    assert len(panel) == 2 and all(len(line) == SECTION_WIDTH for line in panel), panel


@pytest.mark.parametrize("terminal", [False, True], ids=["off_a_terminal", "on_a_terminal"])
def test_columns_0_prints_the_table_all_the_same(tmp_path: Path, terminal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep W: ``COLUMNS=0`` had every table command print nothing and exit 0 (an empty store, to the reader)."""
    root = _registry(tmp_path)
    monkeypatch.setenv("COLUMNS", "0")
    if terminal:
        monkeypatch.setenv("TTY_COMPATIBLE", "1")
        monkeypatch.setenv("TTY_INTERACTIVE", "1")
        assert make_console().is_terminal and make_console().width == SECTION_WIDTH
    table = CliRunner().invoke(app, ["adapters", "list", "-r", str(root)])
    assert table.exit_code == 0 and "warehouse-inventory-agent" in table.stdout and "booking-agent" in table.stdout, table.stdout


def test_library_bars_are_off_in_a_log_whatever_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: without --no-progress, transformers' and huggingface_hub's "Loading weights" bars were drawn into a
    nightly job's log (a run of carriage returns per model load); off a terminal they are off now, as with the flag."""
    import io
    import os
    import sys

    from ee_middleware.cli.common import library_bars_off

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no terminal
    with library_bars_off(enabled=False):
        assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    with library_bars_off(enabled=False):  # on a terminal, the bars the user asked for
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
