"""The registry conformance kit checks each history event's time (``at``): an ISO 8601 string (without a zone: UTC), as
the local registry writes it, `ee adapters show` prints it and ee improve's promote compares it with its run's times,
made when the kit ran. (The promote also reads a datetime or epoch seconds, from a plug-in written before the kit
checked: tests/jobs/test_promote_registry_history.py.) The registries are the local registry with its history's times
given in another form."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.testing import check_registry


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
        }[self.form]


@pytest.mark.parametrize("form", ["iso", "iso-naive"])
def test_iso_times_pass_the_kit(tmp_path: Path, form: str) -> None:
    check_registry(lambda: TimedHistory(tmp_path / "reg", form), tmp_path / "work")


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
