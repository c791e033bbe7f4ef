"""The registry conformance kit's checks say which call broke which promise: they are plain asserts in an installed
package, which pytest does not rewrite, so without a message of their own a broken registry failed with an empty
AssertionError. The registries are the local registry with one realistic mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.adapters.registry import AdapterRecord, LocalAdapterRegistry
from ee_middleware.adapters.testing import check_registry


class SwitchReturnsTheNewOne(LocalAdapterRegistry):
    """``switch_live()`` returns the adapter it made live, not the one it replaced."""

    def switch_live(self, name: str, *, by: str | None = None, action: str = "promote", reason: str | None = None) -> AdapterRecord | None:
        super().switch_live(name, by=by, action=action, reason=reason)
        return self.get(name)


class NothingLive(LocalAdapterRegistry):
    """``resolve()`` reads a table it never updates: no app ever has a live adapter."""

    def resolve(self, alias: str) -> str | None:
        return None


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            SwitchReturnsTheNewOne,
            r"^switch_live\('conformance-v1-[0-9a-f]{8}'\), the app's first returned AdapterRecord\(.*\.\.\. where the protocol "
            r"requires None: switch_live\(\) returns the adapter it replaced, and none was live\. Return the record",
        ),
        (
            NothingLive,
            r"^resolve\('conformance'\) after switch_live\('conformance-v2-[0-9a-f]{8}'\) returned None where the protocol "
            r"requires 'conformance-v2-[0-9a-f]{8}': resolve\(\) names the adapter live for the app now\.",
        ),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_a_broken_registry_fails_naming_the_call_and_the_promise(broken: type[LocalAdapterRegistry], message: str, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=message) as caught:
        check_registry(lambda: broken(tmp_path / "reg"), tmp_path / "work")
    assert len(str(caught.value)) < 600, "a record in a failure is clipped"
