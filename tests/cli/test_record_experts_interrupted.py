"""`ee bfcl record-experts` stopped part way (Ctrl-C, SIGTERM) says how far it got, what it recorded and that the same
command goes on; the rerun records the rest, none twice. Before, it ended with the bare ``interrupted:`` line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ee_middleware.store.local import LocalExperienceStore

REPO = Path(__file__).resolve().parents[2]
ENTRIES = 30


def _spool_lines(store: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in (store / "spool").glob("*.jsonl")) if (store / "spool").is_dir() else 0


@pytest.mark.parametrize(("sent", "as_json"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_stopped_expert_recording_says_what_it_recorded_and_the_rerun_records_the_rest_once(
    tmp_path: Path, sent: signal.Signals, as_json: bool
) -> None:
    store = tmp_path / "experts"
    command = [sys.executable, "-m", "ee_middleware.cli", "bfcl", "record-experts", "--store", str(store)]
    command += ["--limit", str(ENTRIES), "--no-progress"]
    process = subprocess.Popen(
        [*command, *(["--json"] if as_json else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        deadline = time.monotonic() + 120
        while _spool_lines(store) == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first trajectory is written: the recording is under way
        assert process.poll() is None, "the recording ended before it could be stopped"
        process.send_signal(sent)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    line = " ".join(stderr.split())
    assert f"interrupted: recording multi_turn_base's experts stopped ({sent.name}" in line, line
    assert f"of {ENTRIES} entries:" in line and "The same command goes on" in line, line
    if as_json:
        partial = json.loads(stdout)
        assert partial["error"]["exit_code"] == 130 and partial["category"] == "multi_turn_base", partial
    reader = LocalExperienceStore(store)
    recorded_before = reader.trajectories(status="approved").height
    reader.close()
    assert 0 < recorded_before < ENTRIES
    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert len(report["already_recorded"]) == recorded_before and len(report["recorded"]) == ENTRIES - recorded_before, report
    reader = LocalExperienceStore(store)
    approved = reader.trajectories(status="approved").height
    reader.close()
    assert approved == ENTRIES
