"""The README's main command runs this demo: it must record every task and exit 0."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ee_middleware import LocalExperienceStore

DEMO = Path(__file__).resolve().parents[2] / "examples" / "capture_demo.py"


def test_capture_demo_records_every_task(tmp_path: Path, capsys):
    spec = importlib.util.spec_from_file_location("capture_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    store_path = tmp_path / "demo" / "experience"
    assert demo.main(["--store", str(store_path)]) == 0
    frame = LocalExperienceStore(store_path).trajectories()
    assert frame.height == len(demo.TASKS)
    counts = dict(frame.group_by("approval").len().iter_rows())
    assert counts == {"approved": 4, "rejected": 1, "pending": 1}, "one tool error stays pending, one run rejected by hand"
    exported = (store_path.parent / "approved.jsonl").read_text().splitlines()
    assert len(exported) == 4 and all("tools" in json.loads(line) for line in exported)
    assert "jane.doe@example.com" not in (store_path.parent / "approved.jsonl").read_text()
    out = capsys.readouterr().out
    assert "What was stored" in out and "Wrote 4 examples" in out
