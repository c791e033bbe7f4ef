"""`ee adapters show` prints each history event's time (``at``) in every form ee improve's promote stage reads from a
registry: an ISO 8601 string, a datetime, or epoch seconds (tests/jobs/test_promote_registry_history.py), in UTC and
saying so; a time without a zone as given, saying it names none. Before, it printed ``event['at'][:19]``, and a registry
plug-in whose history gives a datetime or a number crashed the command (TypeError: not subscriptable).

A real installed registry plug-in (a module plus a dist-info declaring ``ee_middleware.adapter_registries``) over the
local registry's folder, opened by the real CLI as ``-r NAME:LOCATION``."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app

PLUGIN = '''
import os
from datetime import datetime, timedelta, timezone

from ee_middleware.adapters.registry import LocalAdapterRegistry

AT = datetime(2026, 11, 30, 21, 5, 9, 250000, tzinfo=timezone.utc)


def _at(form):
    return {
        "iso": AT.isoformat(timespec="milliseconds"),
        "iso-offset": AT.astimezone(timezone(timedelta(hours=2))).isoformat(),
        "aware": AT.astimezone(timezone(timedelta(hours=-5))),
        "naive": datetime(2026, 11, 30, 13, 5, 9),
        "iso-naive": "2026-11-30T13:05:09",
        "epoch": AT.timestamp(),
        "epoch-int": int(AT.timestamp()),
        "unreadable": "last Tuesday",
        "missing": None,
    }[form]


class TimedRegistry(LocalAdapterRegistry):
    """A registry whose history gives each event's time in the form TEAM_AT_FORM names."""

    def history(self, *, app=None, adapter=None):
        return [{**event, "at": _at(os.environ["TEAM_AT_FORM"])} for event in super().history(app=app, adapter=adapter)]


def open_timed(location, *, create=True):
    return TimedRegistry(location, create=create)
'''


@pytest.fixture(autouse=True)
def registry_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    site = tmp_path / "site"
    info = site / "team_show_registries-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "team_show_registries.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-show-registries\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ee_middleware.adapter_registries]\nteam-timed = team_show_registries:open_timed\n")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("team_show_registries", None)
    yield
    sys.modules.pop("team_show_registries", None)


def _adapter(folder: Path) -> Path:
    """A small LoRA adapter folder (config and safetensors weights): what the registry reads."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "base_model_name_or_path": "/models/base"}))
    header = json.dumps({"w.lora_A.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<16f", *range(16)))
    return folder


@pytest.mark.parametrize(
    ("form", "shown"),
    [
        ("iso", "2026-11-30 21:05:09 UTC"),
        ("iso-offset", "2026-11-30 21:05:09 UTC"),
        ("aware", "2026-11-30 21:05:09 UTC"),
        ("epoch", "2026-11-30 21:05:09 UTC"),
        ("epoch-int", "2026-11-30 21:05:09 UTC"),
        ("naive", "2026-11-30 13:05:09 (no zone)"),
        ("iso-naive", "2026-11-30 13:05:09 (no zone)"),
        ("unreadable", "time 'last Tuesday'"),
        ("missing", "time unknown"),
    ],
)
def test_show_prints_each_event_time_a_registry_plug_in_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str, shown: str
) -> None:
    monkeypatch.setenv("TEAM_AT_FORM", form)
    folder = tmp_path / "registry"
    record = LocalAdapterRegistry(folder).register(_adapter(tmp_path / "a"), "support-bot", by="alice")
    LocalAdapterRegistry(folder).switch_live(record.name, by="bob")

    result = CliRunner().invoke(app, ["adapters", "show", record.name, "-r", f"team-timed:{folder}"])

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert f"{shown} register by alice" in lines
    assert f"{shown} promote by bob" in lines


def test_show_json_keeps_the_registry_s_own_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--json is the registry's history as it gave it (the local registry's ISO strings), unchanged."""
    monkeypatch.setenv("TEAM_AT_FORM", "iso")
    folder = tmp_path / "registry"
    record = LocalAdapterRegistry(folder).register(_adapter(tmp_path / "a"), "support-bot", by="alice")

    result = CliRunner().invoke(app, ["adapters", "show", record.name, "-r", f"team-timed:{folder}", "--json"])

    assert result.exit_code == 0, result.output
    assert [event["at"] for event in json.loads(result.stdout)["history"]] == ["2026-11-30T21:05:09.250+00:00"]
