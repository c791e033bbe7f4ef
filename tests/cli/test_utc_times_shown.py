"""Times a command labels "UTC" are UTC: ``ee traces show`` and ``ee traces list`` wrote a plug-in store's times as
they came (10:00 at UTC-05:00 printed as "10:00 UTC", five hours off), and the approval history cut an ISO text with an
offset to its local clock. A real local store behind a plug-in that hands out its times at another offset."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.cli.common import utc_clock
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

STARTED = dt.datetime(2026, 11, 3, 15, 4, 5, tzinfo=dt.UTC)


def test_utc_clock_converts_and_reads_a_time_without_a_zone_as_utc() -> None:
    five_behind = dt.timezone(dt.timedelta(hours=-5))
    assert utc_clock(STARTED.astimezone(five_behind)) == "2026-11-03 15:04:05"
    assert utc_clock(STARTED.replace(tzinfo=None)) == "2026-11-03 15:04:05"
    assert utc_clock("2026-11-03T10:04:05-05:00") == "2026-11-03 15:04:05" and utc_clock(None) == ""
    assert utc_clock("2026-12-01 10:00 UTC") == "2026-12-01 10:00 UTC"  # (review) no ISO time: as it is, never an error


def test_show_and_list_print_a_plugins_times_in_utc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("run-1").model_copy(update={"started_at": STARTED})])
    store.approve("run-1", by="alice")
    store.close()
    monkeypatch.setenv("EE_TEST_STORE_ROOT", str(store.root))
    runner = CliRunner()
    shown = runner.invoke(app, ["traces", "show", "run-1", "--store", "tests.cli.store_plugins:offset_times"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "started=2026-11-03 15:04:05 UTC" in shown.output, shown.output
    listed = runner.invoke(app, ["traces", "list", "--store", "tests.cli.store_plugins:offset_times"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "11-03 15:04" in listed.output and "10:04" not in listed.output, listed.output


def test_adapters_list_shows_created_in_utc(tmp_path: Path) -> None:
    """(review) The "created (UTC)" column cut the stored text to its clock: a registry record written at -05:00 showed its
    local time under "UTC"."""
    import re

    from ee_middleware.adapters.registry import LocalAdapterRegistry
    from tests.cli.test_adapters_show_event_times import _adapter

    registry = LocalAdapterRegistry(tmp_path / "registry")
    registry.register(_adapter(tmp_path / "a"), "warehouse", by="alice")
    index = registry.root / "index.json"
    index.write_text(re.sub(r'"created_at": "[^"]*"', '"created_at": "2026-11-03T10:04:05-05:00"', index.read_text()))
    result = CliRunner().invoke(app, ["adapters", "list", "-r", str(registry.root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2026-11-03 15:04" in result.output and "10:04" not in result.output, result.output
