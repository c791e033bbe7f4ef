"""E-mail addresses URL-encoded in a URL (``maria.lopez%40example.org``, ``%2540``) are redacted, the URL around them
kept: recorded through a real ``create_agent`` graph into a real store whose every file is searched for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.tools import tool

from ee_middleware.capture.redaction import Redactor
from tests.capture.redaction_capture import assert_not_stored, record


def test_a_url_encoded_address_is_redacted_and_the_url_around_it_kept(tmp_path: Path) -> None:
    @tool
    def fetch(url: str) -> str:
        """GET a URL."""
        raise ValueError(f"HTTP 404 for {url}")

    url = "https://api.example.com/users?email=maria.lopez%40example.org&cc=j.doe%2540Example.COM&page=2"
    root = tmp_path / "store"
    store = record(root, [fetch], [("fetch", {"url": url})])
    assert_not_stored(store, root, ["maria.lopez", "j.doe", "example.org", "Example.COM"])
    [trajectory] = store.iter_trajectories()
    stored = trajectory.steps[0].action.tool_call.arguments["url"]
    assert stored.startswith("https://api.example.com/users?email=[REDACTED:email:") and stored.endswith("&page=2")
    assert stored.count("[REDACTED:email:") == 2


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("https://api.example.com/users?email=maria.lopez%40example.org&x=1", ("https://api.example.com/users?email=", "&x=1")),
        ("GET /u?e=first%2Blast%40Example.ORG HTTP/1.1", ("GET /u?e=", " HTTP/1.1")),
        ("twice: j.doe%2540example.com.", ("twice: ", ".")),
        ("lower %40 too: ann%40sub.example.co.uk", ("lower %40 too: ", "")),
    ],
)
def test_url_encoded_addresses_are_redacted(text: str, kept: tuple[str, str]) -> None:
    redacted = Redactor().redact_text(text)
    assert redacted == kept[0] + "[REDACTED:email]" + kept[1]


@pytest.mark.parametrize("text", ["50%40 items", "rate 3%40 of them", "%40", "100%40.5"])
def test_a_percent_40_that_is_no_address_is_kept(text: str) -> None:
    assert Redactor().redact_text(text) == text
