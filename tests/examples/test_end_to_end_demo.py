"""``make demo`` runs examples/end_to_end.py; ``make demo-quick`` (in CI) its ``--quick`` variant, run here.

The quick variant is the whole loop on real parts except the model: a tiny random Llama (a TEST model)
stands in for SmolLM2-135M-Instruct. Real BFCL expert recordings, replay, datasets, a LoRA adapter,
a real local model server process with runtime LoRA loading, evaluation through it, the gate, the
promotion into the server, and a request through the alias router answered by the promoted adapter.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import psutil
import pytest

from ee_middleware.jobs.runs import RunsDir

pytestmark = pytest.mark.heavy  # the quick demo's whole loop (CI also runs make demo-quick): make test-heavy

DEMO = Path(__file__).resolve().parents[2] / "examples" / "end_to_end.py"


def _servers_under(folder: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "local_server" in cmdline and str(folder) in cmdline:
            found.append(process)
    return found


def test_the_quick_demo_runs_the_whole_loop_and_stops_its_server(tmp_path: Path, capsys, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("end_to_end", DEMO)
    demo = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "end_to_end", demo)  # its dataclasses look their module up
    spec.loader.exec_module(demo)
    out = tmp_path / "demo-output"
    assert demo.main(["--out", str(out), "--quick"]) == 0

    [run] = RunsDir(out / "runs").list()
    assert run.status == "succeeded", run.data.get("error")
    stages = {m["stage"]: m for m in run.stages()}
    assert all(m["status"] == "done" for m in stages.values()) and len(stages) == 8
    assert set(stages["datasets"]["outputs"]["rows"]) == {"il", "iwm", "sr"}
    assert stages["datasets"]["outputs"]["heldout_trajectories"] == demo.QUICK.heldout
    evaluation = stages["evaluate"]["outputs"]
    assert evaluation["served_by"] and all(spec.startswith("openai:") for spec in evaluation["models"].values())
    promote = stages["promote"]["outputs"]
    assert promote["promoted"] == stages["gate"]["outputs"]["passed"]
    if promote["promoted"]:  # loaded and verified on the running server, then the alias switched
        assert promote["verified_on"] == evaluation["served_by"]

    report = (run.folder / "report.md").read_text()
    assert "tiny RANDOM Llama" in report and "How big this run was" in report and "Lineage" in report
    timings = json.loads((out / "timings.json").read_text())
    assert timings["status"] == "succeeded" and set(timings["improve_stages"]) == set(stages)

    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    for text in ("1. Record", "3. Improve", "held-out evaluation", "Demo wall time per step", "Report:"):
        assert text in printed
    if promote["promoted"]:
        assert f"answered by '{promote['live']}'" in printed
    assert _servers_under(out) == []
