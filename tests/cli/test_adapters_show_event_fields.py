"""`ee adapters show` prints a registry plug-in's history events whose fields are null or only a date: an ``action`` (or
``by``) that is JSON null crashed the command (TypeError: unsupported format string passed to NoneType.__format__), and
a date without a time of day was shown with an invented ``00:00:00``.

A real installed registry plug-in (a module plus a dist-info declaring ``ee_middleware.adapter_registries``) over the
local registry's folder, opened by the real CLI as ``-r NAME:LOCATION`` (as tests/cli/test_adapters_show_event_times.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from tests.cli.test_adapters_show_event_times import _adapter

PLUGIN = '''
import json
import os

from ee_middleware.adapters.registry import LocalAdapterRegistry


class OddRegistry(LocalAdapterRegistry):
    """A registry whose history events get the fields TEAM_EVENT_FIELDS (a JSON object) gives, null ones included."""

    def history(self, *, app=None, adapter=None):
        fields = json.loads(os.environ["TEAM_EVENT_FIELDS"])
        return [{**event, **fields} for event in super().history(app=app, adapter=adapter)]


def open_odd(location, *, create=True):
    return OddRegistry(location, create=create)
'''


@pytest.fixture(autouse=True)
def registry_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    site = tmp_path / "site"
    info = site / "team_odd_registries-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "team_odd_registries.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-odd-registries\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ee_middleware.adapter_registries]\nteam-odd = team_odd_registries:open_odd\n")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("team_odd_registries", None)
    yield
    sys.modules.pop("team_odd_registries", None)


def _show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: str) -> list[str]:
    """`ee adapters show` of an adapter registered by alice, its history's events given ``fields``; the event lines."""
    monkeypatch.setenv("TEAM_EVENT_FIELDS", fields)
    folder = tmp_path / "registry"
    record = LocalAdapterRegistry(folder).register(_adapter(tmp_path / "a"), "support-bot", by="alice")
    result = CliRunner().invoke(app, ["adapters", "show", record.name, "-r", f"team-odd:{folder}"])
    assert result.exit_code == 0, result.output
    return [" ".join(line.split()) for line in result.output.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ('{"action": null}', "unknown by alice"),
        ('{"action": null, "by": null}', "unknown by unknown"),
        ('{"by": null}', "register by unknown"),
        ('{"action": 3}', "3 by alice"),
    ],
)
def test_show_prints_a_null_action_or_author_as_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: str, shown: str) -> None:
    [line] = _show(tmp_path, monkeypatch, fields)
    assert line.endswith(shown), line


@pytest.mark.parametrize("at", ["2026-11-30", "20261130"])
def test_show_prints_a_date_only_time_as_a_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    [line] = _show(tmp_path, monkeypatch, f'{{"at": "{at}"}}')
    assert line == "2026-11-30 (a date, no time) register by alice", line


def test_show_prints_a_time_at_the_calendars_edge_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datetime.min with a positive offset has no UTC reading (OverflowError): shown with its offset instead."""
    [line] = _show(tmp_path, monkeypatch, '{"at": "0001-01-01T00:00:00+02:00"}')
    assert line == "0001-01-01 00:00:00+02:00 register by alice", line
