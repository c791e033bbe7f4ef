"""The registry conformance kit checks each history event's time (``at``): an ISO 8601 string (without a zone: UTC), as
the local registry writes it, `ee adapters show` prints it and ee improve's promote compares it with its run's times,
made when the kit ran. (The promote also reads a datetime or epoch seconds, from a plug-in written before the kit
checked: tests/jobs/test_promote_registry_history.py.) The registries are the local registry with its history's times
given in another form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.testing import _adapter, check_registry


class TimedHistory(LocalAdapterRegistry):
    """The local registry, its history's ``at`` given in the form ``form`` names."""

    def __init__(self, root: Path, form: str) -> None:
        super().__init__(root)
        self.form = form

    def history(self, *, app: str | None = None, adapter: str | None = None) -> list[dict[str, Any]]:
        return [{**event, "at": self._at(event["at"])} for event in super().history(app=app, adapter=adapter)]

    def _at(self, text: str) -> Any:
        moment = datetime.fromisoformat(text)
        return {
            "iso": text,
            "iso-naive": moment.astimezone(UTC).replace(tzinfo=None).isoformat(),
            "aware": moment,
            "epoch": moment.timestamp(),
            "unreadable": "just now",
            "iso-12h-off": moment.replace(hour=(moment.hour + 12) % 24).isoformat(),
            "iso-naive-12h-off": moment.astimezone(UTC).replace(hour=(moment.hour + 12) % 24, tzinfo=None).isoformat(),
        }[self.form]


def test_iso_times_with_their_zone_pass_the_kit(tmp_path: Path) -> None:
    check_registry(lambda: TimedHistory(tmp_path / "reg", "iso"), tmp_path / "work")


@pytest.mark.parametrize("form", ["iso-naive", "iso-naive-12h-off"])
def test_iso_times_without_a_zone_fail_the_kit_saying_why(tmp_path: Path, form: str) -> None:
    """A time without a zone could be any zone's: ee improve's promote cannot place a rollback within 14 hours of its run."""
    with pytest.raises(AssertionError, match="names no zone: it could be any zone's time") as caught:
        check_registry(lambda: TimedHistory(tmp_path / "reg", form), tmp_path / "work")
    assert "datetime.now(UTC).isoformat()" in str(caught.value)


@pytest.mark.parametrize(
    ("form", "said"),
    [
        ("unreadable", "at='just now' is not an ISO 8601 string"),
        ("aware", "at=datetime.datetime("),
        ("epoch", "is not an ISO 8601 string"),
        ("iso-12h-off", "is not when the kit made it"),
    ],
)
def test_other_times_fail_the_kit_naming_the_event(tmp_path: Path, form: str, said: str) -> None:
    with pytest.raises(AssertionError, match="the register event's at=") as caught:
        check_registry(lambda: TimedHistory(tmp_path / "reg", form), tmp_path / "work")
    assert said in str(caught.value)


def test_another_apps_older_events_in_the_registry_do_not_fail_the_kit(tmp_path: Path) -> None:
    """A shared or staging registry where ``conformance`` is a fresh app but another app has history from a week ago
    (and an interrupted promote): the kit checks only the events it made. Before, it failed on the other app's time."""
    LocalAdapterRegistry(tmp_path / "reg").register(_adapter(tmp_path / "other", 99), "other-app", by="admin")
    history = tmp_path / "reg" / "history.jsonl"
    week_ago = (datetime.now(UTC) - timedelta(days=7)).isoformat(timespec="milliseconds")
    events = [{**json.loads(line), "at": week_ago} for line in history.read_text().splitlines() if line.strip()]
    assert events, "the local registry keeps its history in history.jsonl"
    history.write_text("".join(json.dumps(event) + "\n" for event in events))

    check_registry(lambda: LocalAdapterRegistry(tmp_path / "reg"), tmp_path / "work")


def test_a_time_off_by_hours_is_not_when_the_kit_made_it(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="is not when the kit made it"):
        check_registry(lambda: TimedHistory(tmp_path / "reg", "iso-12h-off"), tmp_path / "work")
