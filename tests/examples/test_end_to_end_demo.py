"""``make demo`` runs examples/end_to_end.py: capture, BFCL expert trajectories, replay. It must exit 0."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ee_middleware import LocalExperienceStore

DEMO = Path(__file__).resolve().parents[2] / "examples" / "end_to_end.py"


def test_end_to_end_demo_records_replays_and_shows(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("end_to_end", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path / "demo-output"
    assert demo.main(["--out", str(out), "--bfcl-entries", "3", "--k", "2", "--workers", "1"]) == 0
    store = LocalExperienceStore(out / "bfcl-experience")
    assert store.trajectories(status="approved").height == 3
    replays = store.replays()
    assert replays.height == 3 and store.rollouts().height == int(replays["branches"].sum()) > 0
    assert all((out / "datasets" / f"{kind}.parquet").exists() for kind in ("il", "iwm", "sr"))
    printed = capsys.readouterr().out
    assert "Stage 3" in printed and "expert" in printed and "Done." in printed
