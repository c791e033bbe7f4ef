"""No behaviour change in capture: real LangGraph runs store exactly the trajectories (steps,
states, observations, messages, redaction placeholders) and export exactly the spans recorded in
tests/capture/golden/trajectories.json, which was written before capture's encoding was reworked
for speed (issue 11.5). See tests/capture/golden_capture.py for the scenarios. Both places capture's
work can run give the golden: background threads (``offload="thread"``) and the child process
(``offload="process"``: real child, its spans read back from it), and both again with the recorder's
own spans made directly as plain data, as for every user without a tracer provider of their own
(``-direct``: no SDK span, so only the trajectories are compared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.capture.golden_capture import GOLDEN, record_all


@pytest.fixture(scope="module", params=["thread", "process", "thread-direct", "process-direct"])
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return record_all(Path(tmp_path_factory.mktemp(f"golden-{request.param}")), offload=request.param)


GOLDEN_DATA = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("scenario", sorted(GOLDEN_DATA))
def test_stored_trajectories_match_the_golden(recorded, scenario):
    assert recorded[scenario]["trajectories"] == GOLDEN_DATA[scenario]["trajectories"]


@pytest.mark.parametrize("scenario", sorted(GOLDEN_DATA))
def test_exported_spans_match_the_golden(recorded, scenario):
    if recorded[scenario]["spans"] is None:
        pytest.skip("spans made directly reach no exporter")
    assert recorded[scenario]["spans"] == GOLDEN_DATA[scenario]["spans"]


def test_the_golden_covers_redaction_errors_and_truncation():
    text = GOLDEN.read_text()
    for kind in ("email", "phone", "api_key", "secret", "credit_card", "password", "url_credentials", "bearer_token"):
        assert f"[REDACTED:{kind}:" in text, kind
    statuses = {t["status"] for s in GOLDEN_DATA.values() for t in s["trajectories"]}
    assert statuses == {"completed", "error", "interrupted"}
    assert any(
        step["observation"] and step["observation"]["truncated_chars"] for t in GOLDEN_DATA["long"]["trajectories"] for step in t["steps"]
    )
    assert "sk-abcdefghijklmnop1234" in text  # redaction off keeps values (scenario "plain")
