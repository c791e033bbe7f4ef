"""SR at a turn of parallel tool calls, and SR's rows of single-call turns pinned to the golden.

A model response with several tool calls is stored as several steps sharing a ``decision_index`` and their state;
replay branches each of them. SR's example at that state teaches the turn the expert made (all of its calls, as
IL's target makes them) after a rationale that contrasts it with the alternatives replayed at its steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.trainers.datasets.golden_sr import GOLDEN, build, outputs


def test_single_call_sr_rows_are_the_golden_rows(replayed_store: Path) -> None:
    """Every turn of the replayed BFCL store makes one call: its SR rows are byte-identical to the golden's."""
    assert outputs(build(replayed_store)) == json.loads(GOLDEN.read_text())
